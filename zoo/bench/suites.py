"""Running cases and suites: zoo and its peers alternating in one process, device sweeps in
subprocess workers (``python -m zoo.bench --worker ...``) on CPU."""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from zoo.bench import hardware, records as rec_lib
from zoo.bench.catalog import Case, suite_cases
from zoo.bench.timing import run_alternating

WORKER_PREFIX = "ZOO_BENCH_RECORDS "


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def run_case(case: Case, *, strategies: Sequence[str] = ("single",),
             peers: Sequence[str] = ("eager",), torch_threads: int | str | None = None,
             devices: list | None = None, warmup: int = 3, steps: int = 20, rounds: int = 4,
             batch_size: int | None = None, peak_measured: float | None = None,
             log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Benchmarks one case: zoo under each strategy and the peer in each mode, alternating.

    Returns one record per (framework, strategy), each with every field the report needs; a
    contender that fails to build (e.g. ``torch.compile`` without a compiler) gives a record with
    an ``error`` field instead of timings.
    """
    import jax
    from zoo.bench.peer_runner import PeerRunner
    from zoo.bench.zoo_runner import ZooRunner
    devices = list(devices or jax.devices())
    kind = devices[0].device_kind
    peak_table = hardware.table_peak_flops(kind, case.compute_dtype)
    contenders: dict[str, Any] = {}
    records: list[dict] = []
    first_zoo = None
    for s in strategies:
        log(f"  {case.name}: compiling zoo/{s} over {1 if s == 'single' else len(devices)} "
            f"device(s)")
        runner = ZooRunner(case, s, devices, batch_size)
        if runner.implementations and first_zoo is None:
            log(f"  {case.name}: runs " + ", ".join(f"{what} {how}" for what, how
                                                   in runner.implementations.items()))
        contenders[f"zoo/{s}"] = runner
        first_zoo = first_zoo or runner
    if case.peer and first_zoo is not None:
        torch_device = "cuda" if devices[0].platform == "gpu" else "cpu"
        for mode in peers:
            try:
                log(f"  {case.name}: building torch/{mode}")
                contenders[f"torch-{mode}/single"] = PeerRunner(
                    case, first_zoo.host_batch, mode, torch_device, torch_threads,
                    players=first_zoo.players)
            except Exception as e:  # torch.compile may need a compiler that is not there
                msg = _first_line(e)[:300]
                log(f"  {case.name}: torch/{mode} failed: {msg}")
                records.append(rec_lib.error_record(case, f"torch-{mode}", "single", msg,
                                                    devices=1, batch_size=first_zoo.batch_size))
    log(f"  {case.name}: timing {', '.join(contenders)} ({warmup} warm-up + {steps} steps each, "
        f"{rounds} alternating rounds)")
    chronos = run_alternating({k: r.step for k, r in contenders.items()}, warmup=warmup,
                              steps=steps, rounds=rounds)
    # Host "devices" forced on a CPU share its cores: their peak is the host's, not n times it.
    peak_devices = lambda n: 1 if devices[0].platform == "cpu" else n
    for key, runner in contenders.items():
        framework, strategy = key.split("/")
        stats = chronos[key].stats()
        if isinstance(runner, ZooRunner):
            n = runner.strategy.num_shards
            rec = rec_lib.record(
                case, "zoo", strategy, n, runner.batch_size, stats,
                param_count=runner.param_count, lower_s=runner.lower_s,
                compile_s=runner.compile_s, compile_total_s=runner.lower_s + runner.compile_s,
                device_kind=kind, loss_last=runner.loss(), **runner.memory,
                implementations=runner.implementations,
                init_s=runner.init_s,
                device_memory_stats=hardware.device_memory_stats(devices[0]),
                page_faults_per_step=chronos[key].faults_per_step(),
                **rec_lib.flops_fields(runner.family_flops, runner.xla_flops, runner.jaxpr_flops,
                                       stats["median"], peak_table, peak_measured,
                                       peak_devices(n)))
        else:
            rec = rec_lib.record(
                case, framework, strategy, 1, first_zoo.batch_size, stats,
                param_count=runner.param_count, compile_s=runner.compile_s,
                torch_threads=runner.threads, device_kind=kind, loss_last=runner.loss(),
                device_memory_stats=runner.memory(),
                page_faults_per_step=chronos[key].faults_per_step(),
                **rec_lib.flops_fields(first_zoo.family_flops, None, first_zoo.jaxpr_flops,
                                       stats["median"], peak_table, peak_measured, 1))
        records.append(rec)
    rec_lib.add_peer_ratios(records)
    for r in records:
        if "step_s" in r:
            ratio = r.get("speedup_vs_torch_eager")
            log(f"  {case.name}: {r['framework']}/{r['strategy']} x{r['devices']}: "
                f"{r['step_s']['median'] * 1e3:.1f} ms/step, {r['examples_per_s']:,.0f} examples/s"
                + (f", {ratio:.2f}x torch eager" if ratio else ""))
    return records


def runnable_strategies(case: Case, strategies: Sequence[str], n: int
                        ) -> tuple[tuple[str, ...], str | None]:
    """The ``strategies`` that can run ``case`` over ``n`` devices, and a note on the others:
    a strategy over every device needs the case's batch to split over them (Zaremba's LSTM
    batch of 20 does not over 8)."""
    from zoo.core.parallel import check_divisible
    spread = [s for s in strategies if s != "single"]
    try:
        if spread:
            check_divisible(case.batch_size, n, "devices", case.train.get("grad_accum_steps", 1))
    except ValueError as e:
        return (tuple(s for s in strategies if s == "single"),
                f"{case.name}: {', '.join(spread)} not run over {n} devices: "
                + str(e).split("; use")[0])
    return tuple(strategies), None


def _run_cases(cases: Sequence[Case], peak: dict | None, on_error: dict | None,
               on_case: Callable[[list[dict]], None] | None = None,
               notes: list[str] | None = None, **kwargs: Any) -> list[dict]:
    """:func:`run_case` over ``cases``; a case that fails gives an error record (``on_error``:
    its extra fields) instead of stopping the rest, or (``on_error=None``) raises. A strategy
    whose devices the case's batch does not split over is left out, with a note in ``notes``.
    ``peak``: measured peaks by dtype. ``on_case(records so far)`` after each case."""
    import jax
    out = []
    n = len(kwargs.get("devices") or jax.devices())
    for case in cases:
        strategies, skipped = runnable_strategies(case, kwargs["strategies"], n)
        if skipped:
            kwargs["log"]("  note: " + skipped)
            if notes is not None:
                notes.append(skipped)
        if not strategies:
            continue
        m = (peak or {}).get(case.compute_dtype)
        try:
            out += run_case(case, peak_measured=m["best_flops_per_s"] if m else None,
                            **{**kwargs, "strategies": strategies})
        except Exception as e:
            if on_error is None:
                raise
            out.append(rec_lib.error_record(case, "zoo", ",".join(kwargs["strategies"]), e,
                                            **on_error))
            kwargs["log"](f"  {case.name} failed: {out[-1]['error']}")
        if on_case is not None:
            on_case(out)
    return out


def run_suite(*, suite: str = "quick", cases: Iterable[str] | None = None,
              strategies: Sequence[str] = ("single",), peers: Sequence[str] = ("eager",),
              sweep: Sequence[int] = (), sweep_strategies: Sequence[str] = ("pmap", "mesh"),
              sweep_cases: Iterable[str] | None = None, warmup: int = 3, steps: int = 20,
              rounds: int = 4, peak: bool = True, peak_n: int | None = None,
              torch_threads: int | str | None = None,
              log: Callable[[str], None] = print,
              on_case: Callable[[list[dict]], None] | None = None) -> dict:
    """Runs a suite in this process (plus one subprocess per swept device count on CPU).
    ``on_case(records so far)`` runs after each case (the caller can keep them, should the run
    be cut short).

    Returns ``{"meta": ..., "records": [...], "notes": [...]}``.
    """
    t_start = time.perf_counter()
    selected, notes = suite_cases(suite, cases)
    env = hardware.environment()
    log(f"zoo bench: suite {suite}, {len(selected)} case(s) on {env['device_count']} x "
        f"{env['device_kind']} ({env['platform']}); jax {env['jax']}, flax {env['flax']}, "
        f"torch {env['torch']}")
    for n in notes:
        log("  note: " + n)
    measured = None
    if peak:
        dtypes = sorted({c.compute_dtype for c in selected}) or ["float32"]
        measured = {d: hardware.measure_matmul_peak(peak_n, dtype=d) for d in dtypes}
        for d, m in measured.items():
            log(f"  measured matmul peak ({m['n']}x{m['n']} {d}): "
                f"{m['best_flops_per_s'] / 1e9:.1f} GFLOP/s")
    if peers and env["torch"] is None:
        peers = ()
        notes.append("torch is not installed: no peers (pip install 'zoo[bench]')")
    records = _run_cases(selected, measured, {}, on_case, notes, strategies=strategies,
                         peers=peers, warmup=warmup, torch_threads=torch_threads, steps=steps,
                         rounds=rounds, log=log)
    to_sweep = [c for c in selected if not sweep_cases or c.name in set(sweep_cases)]
    for n in sweep if to_sweep else ():
        swept = []
        for case in to_sweep:  # the device counts a case's batch splits over
            runnable, skipped = runnable_strategies(case, sweep_strategies, n)
            if skipped:
                notes.append("sweep: " + skipped)
                log("  note: " + notes[-1])
            if runnable == tuple(sweep_strategies):
                swept.append(case)
        if not swept:
            continue
        log(f"  sweep: {n} device(s), {', '.join(c.name for c in swept)}, strategies "
            f"{', '.join(sweep_strategies)}")
        try:
            recs = sweep_devices(n, suite=suite, cases=[c.name for c in swept],
                                 strategies=sweep_strategies, warmup=warmup, steps=steps,
                                 rounds=rounds, peak_measured=measured)
        except Exception as e:  # the whole worker: each of its cases failed
            recs = [rec_lib.error_record(c, "zoo", ",".join(sweep_strategies), e, devices=n)
                    for c in swept]
            log(f"  sweep over {n} device(s) failed: {recs[0]['error']}")
        for r in recs:
            r["sweep"] = True
        records += recs
    for d, m in (measured or {}).items():  # again at the end: the best of both is the peak
        again = hardware.measure_matmul_peak(peak_n, dtype=d)
        m["best_flops_per_s_end"] = again["best_flops_per_s"]
        if again["best_flops_per_s"] > m["best_flops_per_s"]:  # machines drift
            log(f"  measured matmul peak at the end is higher: "
                f"{again['best_flops_per_s'] / 1e9:.1f} GFLOP/s; fractions use it")
            rec_lib.refit_measured_peak(records, d, again["best_flops_per_s"], env["platform"])
            m["best_flops_per_s_start"] = m["best_flops_per_s"]
            m["best_flops_per_s"] = again["best_flops_per_s"]
    env["load_average_1m_end"] = hardware.load_average()
    meta = {**env, "suite": suite, "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(
                timespec="seconds"),
            "command": "zoo bench " + " ".join(sys.argv[1:]) if sys.argv else "",
            "strategies": list(strategies), "peers": list(peers), "sweep": list(sweep),
            "torch_threads": torch_threads,
            "warmup": warmup, "steps": steps, "rounds": rounds,
            "measured_peak": measured,
            "table_peak_flops_per_s": {d: hardware.table_peak_flops(env["device_kind"], d)
                                       for d in ("float32", "bfloat16")},
            "peak_table": {k: v for k, v in hardware.PEAK_FLOPS},
            "wall_s": time.perf_counter() - t_start}
    return {"meta": meta, "records": records, "notes": notes}


def sweep_devices(n: int, *, suite: str, cases: Sequence[str], strategies: Sequence[str],
                  warmup: int, steps: int, rounds: int, peak_measured: dict | None = None,
                  timeout: float = 900) -> list[dict]:
    """zoo records for ``n`` devices: in a subprocess with ``n`` host devices on CPU, in this
    process over the first ``n`` devices elsewhere (GPUs, TPUs)."""
    import jax
    if jax.devices()[0].platform != "cpu" or n == len(jax.devices()):
        if n > len(jax.devices()):
            raise ValueError(f"sweep asks for {n} devices; {len(jax.devices())} are present")
        selected, _ = suite_cases(suite, cases)
        return _run_cases(selected, peak_measured, None, strategies=strategies, peers=(),
                          devices=jax.devices()[:n], warmup=warmup, steps=steps, rounds=rounds,
                          log=lambda s: None)
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join([f"--xla_force_host_platform_device_count={n}"] + flags)
    # The worker must import the zoo this process runs (a source tree that is not installed,
    # say), not whatever else its interpreter would find first.
    import zoo
    source = str(Path(zoo.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([source, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    payload = {"suite": suite, "cases": list(cases), "strategies": list(strategies),
               "warmup": warmup, "steps": steps, "rounds": rounds, "peak": peak_measured}
    proc = subprocess.run([sys.executable, "-m", "zoo.bench", "--worker", json.dumps(payload)],
                          env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"worker for {n} devices exited {proc.returncode}: "
                           f"{proc.stderr.strip().splitlines()[-1:] if proc.stderr else ''}")
    line = [l for l in proc.stdout.splitlines() if l.startswith(WORKER_PREFIX)][-1]
    records = json.loads(line[len(WORKER_PREFIX):])
    got = {r.get("devices") for r in records if r.get("strategy") != "single"}
    if got - {n}:
        raise RuntimeError(f"the worker for {n} devices ran on {sorted(got)}; check XLA_FLAGS")
    return records


def worker(payload: str) -> int:
    """The subprocess side of :func:`sweep_devices`: runs the payload's cases without peers and
    prints their records on one line after :data:`WORKER_PREFIX`."""
    import jax
    from zoo.bench.report import json_default
    p = json.loads(payload)
    selected, _ = suite_cases(p["suite"], p["cases"])
    records = _run_cases(selected, p.get("peak"), {"devices": len(jax.devices())},
                         strategies=p["strategies"], peers=(), warmup=p["warmup"],
                         steps=p["steps"], rounds=p["rounds"],
                         log=lambda s: print(s, file=sys.stderr))
    print(WORKER_PREFIX + json.dumps(records, default=json_default))
    return 0
