"""``zoo bench``'s command line: :func:`main` parses the options and runs a suite.

Nothing heavy is imported until :func:`main` has set the environment JAX and PyTorch read when
they start (so this module is safe to import first).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
from pathlib import Path
from typing import Sequence

from zoo.bench import catalog, hardware


def _csv(s: str) -> tuple[str, ...]:
    return tuple(x for x in s.split(",") if x)


def _count(least: int):
    """An argparse type: an integer >= ``least``."""
    def parse(s: str) -> int:
        try:
            n = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not a whole number") from None
        if n < least:
            raise argparse.ArgumentTypeError(f"{n} must be >= {least}")
        return n
    return parse


def _threads_or_auto(s: str) -> int | str:
    if s == "auto":
        return s
    try:
        return _count(1)(s)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{e}; give a number of threads, or auto") from None


def _device_counts(s: str) -> tuple[int, ...]:
    return tuple(_count(1)(x) for x in _csv(s))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    from zoo.config import ArgumentParser
    p = ArgumentParser(
        prog="zoo bench",
        description="Benchmark zoo's model families (throughput, MFU, compile time, memory, "
                    "scaling) against PyTorch peers. With no arguments: the quick suite (~2 min "
                    "on a 2-core CPU), printing a markdown table.")
    p.add_argument("--suite", default="quick", choices=catalog.SUITES)
    p.add_argument("--cases", type=_csv, default=None, help="comma-separated case names")
    p.add_argument("--strategies", type=_csv, default=None, help="e.g. single,pmap,mesh")
    p.add_argument("--peers", type=_csv, default=None,
                   help="PyTorch modes: eager,compile ('' or none: no peers)")
    p.add_argument("--torch-compile", action="store_true", help="add torch.compile to the peers")
    p.add_argument("--threads", type=_count(1), default=None,
                   help="CPU cores for both zoo and the peers (the process is pinned to its first "
                        "N cores; the peers get N threads); default: all cores")
    p.add_argument("--torch-threads", type=_threads_or_auto, default=None,
                   help="CPU threads for the peers only: a number, or auto (the faster of all "
                        "cores and 1, timed per peer); default: as --threads")
    p.add_argument("--sweep", type=_device_counts, default=None,
                   help="device counts to sweep, e.g. 1,2,4,8 ('' : none)")
    p.add_argument("--sweep-strategies", type=_csv, default=None, help="default: pmap,mesh")
    p.add_argument("--sweep-cases", type=_csv, default=None)
    p.add_argument("--steps", type=_count(1), default=None,
                   help="timed steps per contender (20 or more for a steady median)")
    p.add_argument("--warmup", type=_count(0), default=None)
    p.add_argument("--rounds", type=_count(1), default=None, help="alternating rounds (default 4)")
    p.add_argument("--no-peak", action="store_true", help="skip the measured matmul peak")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--compile-only", action="store_true",
                   help="lower and compile every case at full size on abstract inputs (nothing "
                        "allocated, no step run): FLOPs and memory_analysis per case, e.g. the "
                        "gpu suite on a CPU before any GPU time")
    p.add_argument("--loop", action="store_true",
                   help="time each case's real training loop (zoo.train.train on synthetic "
                        "data) beside its step alone: loop / step throughput, no peers")
    p.add_argument("--profile", action="store_true",
                   help="profile each case's step: zoo's top XLA ops (jax.profiler trace) and the "
                        "PyTorch peer's top aten ops (torch.profiler), with their shares")
    p.add_argument("--log-every", type=_count(1), default=None,
                   help="--loop: steps between the loop's logs (its timing points); default: "
                        "about a second of steps at the step alone's speed")
    p.add_argument("--out", default=None,
                   help="output folder (default bench_results/<platform>-<UTC time>)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    from zoo.core import distributed
    distributed.add_arguments(p)
    return p.parse_args(list(argv))


def _torch_threads(args) -> int | str:
    return args.torch_threads or args.threads or hardware.cores()


def _write_results(args, argv, kind: str, stem: str, body: dict, table: str) -> int:
    """A mode's results to ``--out`` (default ``bench_results/<kind>-<suite>-<time>``):
    ``<stem>.json`` (the command and machine, and ``body``) and ``<stem>.md`` (``table``, also
    printed). Non-zero if any item of ``body`` holds an error."""
    import json
    out = Path(args.out) if args.out else Path("bench_results") / (
        f"{kind}-{args.suite}-{_dt.datetime.now(_dt.timezone.utc):%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join(["zoo bench", *argv]).strip(), **hardware.environment()}
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, **body}, indent=2, default=str))
    (out / f"{stem}.md").write_text(table + "\n")
    print(table)
    print(f"wrote {out / f'{stem}.json'}, {out / f'{stem}.md'}")
    return 1 if _say_failures([x for v in body.values() for x in v]) else 0


def _say_failures(records: list[dict]) -> bool:
    """One line on stderr for each record that holds an error (the table cuts them short);
    whether there were any."""
    failed = [r for r in records if "error" in r]
    for r in failed:
        where = "/".join(str(r[k]) for k in ("framework", "strategy") if r.get(k))
        devices = f" x{r['devices']}" if r.get("devices") else ""
        print(f"zoo bench: {r['case']} ({where}{devices}) failed: {r['error']}", file=sys.stderr)
    return bool(failed)


def _compile_only(args, strategies, argv) -> int:
    """``--compile-only``: lower and compile each case at full size (abstract inputs), report
    FLOPs and memory, write ``compile_only.json`` / ``.md``; non-zero if a case fails."""
    from zoo.bench import compile_only
    strategy = next((s for s in strategies if s in compile_only.STRATEGIES), "single")
    records = compile_only.run_compile_only(args.suite, args.cases, strategy)
    table = compile_only.compile_only_table(records)
    return _write_results(args, argv, "compile-only", "compile_only", {"records": records},
                          table)


def _loop(args, strategies, steps, warmup, argv) -> int:
    """``--loop``: each case's training loop beside its step alone; ``loop.json`` / ``.md``."""
    from zoo.bench import loop
    cases, notes = catalog.suite_cases(args.suite, args.cases)
    for note in notes:
        print(note)
    records = []
    for strategy in strategies:
        records += loop.run_loop_suite(cases, strategy, warmup=warmup, steps=steps,
                                       log_every=args.log_every)
    table = loop.loop_table(records)
    return _write_results(args, argv, "loop", "loop", {"records": records}, table)


def _profile(args, strategies, steps, warmup, peers, argv) -> int:
    """``--profile``: each case's top ops, zoo's and the peer's; ``profile.json`` / ``.md``."""
    from zoo.bench import profile
    cases, notes = catalog.suite_cases(args.suite, args.cases)
    for note in notes:
        print(note)
    threads = args.threads or hardware.cores()
    profiles = []
    for case in cases:
        print(f"  {case.name}: profiling")
        for framework, fn in (("zoo", lambda: profile.profile_zoo(case, strategies[0],
                                                                   warmup=warmup, steps=steps)),
                              ("torch-eager", lambda: profile.profile_peer(
                                  case, warmup=warmup, steps=steps, threads=threads)
                               if "eager" in peers else None)):
            try:
                profiles.append(fn())
            except Exception as e:  # one case's failure is recorded, the rest still run
                profiles.append({"case": case.name, "framework": framework,
                                 "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"})
    profiles = [p for p in profiles if p is not None]
    table = profile.profile_table(profiles)
    return _write_results(args, argv, "profile", "profile", {"profiles": profiles}, table)


# The options each mode reads beside --suite, --cases, --strategies, --threads, --out and the
# cluster's; None: the suite run.
MODE_READS = {
    None: {"--peers", "--torch-compile", "--torch-threads", "--sweep", "--sweep-strategies",
           "--sweep-cases", "--steps", "--warmup", "--rounds", "--no-peak", "--no-plots"},
    "--compile-only": set(),
    "--loop": {"--steps", "--warmup", "--log-every"},
    "--profile": {"--steps", "--warmup", "--peers"},
}


def _bad_input(args, strategies, peers, sweep_cases) -> str | None:
    """What is wrong with the options, if anything, found before any case is built."""
    from zoo.core.parallel import STRATEGIES
    modes = [m for m in MODE_READS if m and getattr(args, m[2:].replace("-", "_"))]
    if len(modes) > 1:
        return f"{' and '.join(modes)} are separate modes; choose one"
    mode = modes[0] if modes else None
    given = {"--peers": [x for x in args.peers or () if x != "none"],
             "--torch-compile": args.torch_compile, "--torch-threads": args.torch_threads,
             "--sweep": args.sweep, "--sweep-strategies": args.sweep_strategies,
             "--sweep-cases": args.sweep_cases, "--steps": args.steps,
             "--warmup": args.warmup is not None, "--rounds": args.rounds,
             "--no-peak": args.no_peak, "--no-plots": args.no_plots,
             "--log-every": args.log_every}
    unread = [o for o, value in given.items() if value and o not in MODE_READS[mode]]
    if unread:  # given to a mode that does not read them, they would do nothing
        return (f"{mode or 'the suite run (no --compile-only, --loop or --profile)'} reads "
                f"none of {', '.join(unread)}; leave {'it' if len(unread) == 1 else 'them'} out")
    if mode == "--compile-only" and set(strategies) - {"single", "mesh"}:
        return "--compile-only compiles under single or mesh; choose --strategies from those"
    if args.cases == ():
        return "--cases '' names no case; name at least one, or leave --cases out for the suite"
    for s in strategies + tuple(args.sweep_strategies or ()):
        if s not in STRATEGIES:
            return f"unknown strategy {s!r}; choose {', '.join(STRATEGIES)}"
    for m in peers:
        if m not in ("eager", "compile"):
            return f"unknown peer mode {m!r}; choose eager, compile"
    known = [c.name for c in catalog.case_table(args.suite)]
    for option, names in (("--cases", args.cases or ()), ("--sweep-cases", sweep_cases or ())):
        unknown = [n for n in names if n not in known]
        if unknown:
            return (f"{option}: unknown case(s) {', '.join(unknown)} in the {args.suite} suite; "
                    f"choose from {', '.join(known)}")
    if args.out:  # made now: a folder that cannot be written fails here, not after a case
        from zoo.config import make_folder
        try:
            make_folder(args.out, "--out")
        except ValueError as e:
            return str(e)
        if not os.access(args.out, os.W_OK):
            return f"--out {args.out} cannot be written"
    return None


def main(argv: Sequence[str]) -> int:
    """``zoo bench [options]`` (also ``python -m zoo.bench``); returns the exit status."""
    # On a GPU the PyTorch peers share the device: JAX must not grab 75% of its memory up front.
    # (Only works before JAX starts its backend, so `zoo bench` must not touch JAX before this.)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    # PyTorch's OpenMP threads spin for a while after each parallel region; with zoo's and the
    # peer's steps alternating, that spinning steals the cores from zoo's next steps (measured:
    # zoo's autoencoder step 14.9 ms alternating with spinning threads, 10.5 ms without). Passive
    # waiting lets each contender have the machine for its own steps. Set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from zoo.core import host_memory, xla_flags
    xla_flags.apply_cpu_defaults()  # the options zoo train runs with (zoo.core.xla_flags)
    host_memory.keep_freed_memory()  # as zoo train; the peers in this process get it too
    args = parse_args(argv)
    if args.threads:
        hardware.limit_cores(args.threads)
    if args.worker is not None:
        from zoo.bench.suites import worker
        return worker(args.worker)
    from zoo.core import distributed
    try:  # before anything touches a device
        distributed.join(distributed.cluster_from(args))
    except ValueError as e:
        print(f"zoo bench: error: {e}", file=sys.stderr)
        return 2
    strategies, peers, sweep, sweep_cases, steps, warmup = catalog.SUITE_DEFAULTS[args.suite]
    strategies = args.strategies or strategies
    peers = tuple(x for x in (args.peers if args.peers is not None else peers) if x != "none")
    if args.torch_compile and "compile" not in peers:
        peers = peers + ("compile",)
    sweep = args.sweep if args.sweep is not None else sweep
    sweep_cases = args.sweep_cases or sweep_cases
    steps = args.steps or steps
    warmup = args.warmup if args.warmup is not None else warmup
    problem = _bad_input(args, strategies, peers, sweep_cases)
    if problem:  # before any case is built: one line, exit 2
        print(f"zoo bench: error: {problem}", file=sys.stderr)
        return 2
    import jax
    if jax.process_count() > 1:
        # Across processes only the mesh spans every device; the peers and the device sweep
        # are one process's, so they are left out. Process 0 prints and writes the report.
        strategies, peers, sweep = ("mesh",), (), ()
    if args.compile_only:
        return _compile_only(args, strategies, argv)
    if args.loop:
        return _loop(args, strategies, steps, warmup, argv)
    if args.profile:
        return _profile(args, strategies, min(steps, 10), warmup, peers, argv)
    from zoo.bench.report import markdown_report, write_report, write_partial
    from zoo.bench.suites import run_suite
    out = Path(args.out) if args.out else Path("bench_results") / (
        f"{jax.devices()[0].platform}-{_dt.datetime.now(_dt.timezone.utc):%Y%m%d-%H%M%S}")
    first = jax.process_index() == 0
    result = run_suite(suite=args.suite, cases=args.cases, strategies=strategies, peers=peers,
                       sweep=sweep, sweep_cases=sweep_cases, warmup=warmup, steps=steps,
                       **({"sweep_strategies": args.sweep_strategies}
                          if args.sweep_strategies else {}),
                       **({"rounds": args.rounds} if args.rounds else {}),
                       peak=not args.no_peak,
                       torch_threads=_torch_threads(args),
                       log=print if first else (lambda line: None),
                       # A run cut short (a timeout, a crash) keeps the cases it finished.
                       on_case=(lambda records: write_partial(records, out)) if first else None)
    result["meta"]["threads"] = args.threads or hardware.cores()
    result["meta"]["command"] = " ".join(["zoo bench", *argv]).strip()
    result["meta"]["processes"] = jax.process_count()
    failed = any("error" in r and r["framework"] == "zoo" for r in result["records"])
    if jax.process_index() != 0:
        return 1 if failed else 0
    paths = write_report(result, out, plots=not args.no_plots)
    print()
    print(markdown_report(result))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    _say_failures(result["records"])
    return 1 if failed else 0
