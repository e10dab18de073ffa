"""XLA:CPU options, measured in one process: each case's train step (the bench's ZooRunner) is
compiled once per setting (and per compile round), with the setting as a per-compile XLA option,
and the executables take turns step by step in alternating rounds, so the machine's drift falls on
all of them alike. Correctness: from the same state and batch, each setting's first step must give
the default's loss (rtol 1e-5), and its last loss after the timed steps is reported beside it.
Each setting's compile time is the median of ``--compile-rounds`` compiles, each from a fresh
lowering, the settings in rotating order.

The settings are the YNNPACK library fusions XLA:CPU (jaxlib 0.10.2) uses by default,
``INDIVIDUAL_DOT, REDUCE, INDIVIDUAL_CONVOLUTION`` (found by matching compiled HLO); ``no-reduce``
is ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-REDUCE`` (the same HLO), ``no-ynnpack``
is ``--xla_cpu_experimental_ynn_fusion_type=`` (none); ``no-conv`` and ``dot-only`` (zoo's CPU
default) leave out YNNPACK's convolutions, and its convolutions and reductions. ``--xla_cpu_use_onednn``
alone changes nothing (no HLO is given to oneDNN); with ``xla_cpu_experimental_onednn_fusion_type``
it runs the dots (``onednn-dot``) and also elementwise ops (``onednn-dot-eltwise``) through oneDNN,
with YNNPACK off. The ``dot-only-*`` settings flip one more XLA:CPU switch each (vector
width, scheduler, emitters, Eigen's threads, copy insertion, YNNPACK's elementwise fusions,
fast min/max, LLVM's optimization level ``opt2``/``opt1``/``opt0``);
``dot-only-again`` repeats ``dot-only``'s options, so two identical executables show the
method's noise. ``--settings`` picks some of them (``default`` is always measured).

    python benchmarks/xla_cpu_flags.py --suite quick --out benchmarks/results/DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

YNN = "xla_cpu_experimental_ynn_fusion_type"
ONEDNN = {"xla_cpu_use_onednn": True, YNN: ""}
# Per-compile XLA options of each setting; "default" is XLA's own.
SETTINGS = {
    "default": {},
    "no-reduce": {YNN: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"},
    "no-conv": {YNN: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"},
    "dot-only": {YNN: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"},
    # The same options again: what two identical executables measure apart (the method's noise).
    "dot-only-again": {YNN: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"},
    "no-ynnpack": {YNN: ""},
    # YNNPACK's dot fusions that take in their elementwise neighbours, and its elementwise fusions.
    "ynn-dot-fusion": {YNN: "LIBRARY_FUSION_TYPE_DOT"},
    "ynn-dot-eltwise": {YNN: "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE"},
    "dot-only-eltwise": {YNN: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_ELTWISE"},
    "onednn-dot": {**ONEDNN, "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"},
    # oneDNN's dots one at a time: its dot fusions above abort the compile of any two dots that
    # feed one add ("partition compile failed"); one dot per fusion does not.
    "onednn-individual-dot": {**ONEDNN, "xla_cpu_experimental_onednn_fusion_type":
                              "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"},
    "onednn-dot-eltwise": {**ONEDNN, "xla_cpu_experimental_onednn_fusion_type":
                           "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE"},
    # zoo's default with 512-bit vectors for XLA's own loops (256 is XLA's preference on x86).
    "dot-only-vec512": {YNN: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
                        "xla_cpu_prefer_vector_width": 512},
    # zoo's default with XLA:CPU's scheduling and emitter switches flipped, one at a time.
    **{f"dot-only-{name}": {YNN: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT", flag: value}
       for name, flag, value in [
           ("concurrency-scheduler", "xla_cpu_enable_concurrency_optimized_scheduler", True),
           ("no-concurrency-scheduler", "xla_cpu_enable_concurrency_optimized_scheduler", False),
           ("tiling-propagation", "xla_cpu_experimental_enable_tiling_propagation", True),
           ("no-fusion-emitters", "xla_cpu_use_fusion_emitters", False),
           ("single-thread-eigen", "xla_cpu_multi_thread_eigen", False),
           ("memory-scheduler", "xla_cpu_scheduler_type", "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"),
           ("region-analysis", "xla_cpu_copy_insertion_use_region_analysis", True),
           # max/min without NaN propagation: lets LLVM vectorize max reductions (softmax)
           ("fast-min-max", "xla_cpu_enable_fast_min_max", True),
           # LLVM's optimization level for XLA's own kernels (XLA's default is 3): compile time
           ("opt2", "xla_backend_optimization_level", 2),
           ("opt1", "xla_backend_optimization_level", 1),
           ("opt0", "xla_backend_optimization_level", 0),
       ]},
}


def measure(case, settings: dict, *, warmup: int, steps: int, rounds: int,
            compile_rounds: int = 1) -> dict:
    import jax

    from zoo.bench import timing
    from zoo.bench.zoo_runner import ZooRunner
    runner = ZooRunner(case, "single")
    host = jax.device_get(runner.state)
    executables, states, first_loss = {}, {}, {}
    # Compile time (the runner's own compile paid the process's one-time costs): each setting
    # compiled from a fresh lowering (jax keeps a lowering, and its executable per options, in
    # caches cleared first), in ``compile_rounds`` rounds whose order rotates.
    names, compile_s = list(settings), {name: [] for name in settings}
    for r in range(compile_rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            jax.clear_caches()
            fresh = runner.step_fn.compiled.lower(runner.state, runner.batch)
            t0 = time.perf_counter()
            executables[name] = fresh.compile(dict(settings[name]))
            compile_s[name].append(time.perf_counter() - t0)
    for name in settings:
        # Each setting starts from the same state: the first loss is the same program's number.
        state = runner.strategy.place_state(host)
        state, metrics = executables[name](state, runner.batch)
        first_loss[name] = float(np.mean(jax.device_get(metrics[_loss_key(metrics)])))
        states[name] = state

    def stepper(name):
        def step():
            states[name], metrics = executables[name](states[name], runner.batch)
            jax.block_until_ready(states[name])
            last[name] = metrics
        return step

    last = {}
    chronos = timing.run_alternating({n: stepper(n) for n in settings}, warmup=warmup,
                                     steps=steps, rounds=rounds)
    out = {"case": case.name, "median_s": {}, "min_s": {}, "first_loss": first_loss,
           "last_loss": {},
           "compile_s": {n: float(np.median(t)) for n, t in compile_s.items()},
           "compile_runs_s": compile_s}
    for name in settings:
        stats = chronos[name].stats()
        out["median_s"][name], out["min_s"][name] = stats["median"], stats["min"]
        out["last_loss"][name] = float(np.mean(jax.device_get(last[name][_loss_key(last[name])])))
    return out


def _loss_key(metrics) -> str:
    return next(k for k in metrics if k.endswith("loss"))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--suite", default="quick")
    p.add_argument("--cases", default=None)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--compile-rounds", type=int, default=1,
                   help="compiles of each setting, in rotating order (the median is reported)")
    p.add_argument("--settings", default=",".join(SETTINGS),
                   help="comma-separated names of SETTINGS (default is always measured)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    names = ["default", *(n for n in args.settings.split(",") if n and n != "default")]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        p.error(f"unknown settings {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
    settings = {n: SETTINGS[n] for n in names}
    from zoo.bench import catalog, hardware
    cases, _ = catalog.suite_cases(args.suite, args.cases.split(",") if args.cases else None)
    records = []
    for case in cases:
        print(f"{case.name} ...", flush=True)
        records.append(measure(case, settings, warmup=args.warmup, steps=args.steps,
                               rounds=args.rounds, compile_rounds=args.compile_rounds))
    others = names[1:]
    rows = ["| case | " + " | ".join(f"{s} ms" for s in settings) + " | "
            + " | ".join(f"{s} speed-up" for s in others) + " | compile s ("
            + " / ".join(settings) + ") | first-step loss, rel. diff | "
            "last loss (default / " + " / ".join(others) + ") |",
            "|---|" + "---:|" * (len(settings) + len(others) + 2) + "---|"]
    for r in records:
        med, base = r["median_s"], r["median_s"]["default"]
        diff = max(abs(r["first_loss"][s] - r["first_loss"]["default"])
                   / max(abs(r["first_loss"]["default"]), 1e-12) for s in others)
        rows.append(f"| {r['case']} | " + " | ".join(f"{med[s] * 1e3:.2f}" for s in settings)
                    + " | " + " | ".join(f"{base / med[s]:.2f}x" for s in others)
                    + " | " + " / ".join(f"{r['compile_s'][s]:.2f}" for s in settings)
                    + f" | {diff:.1e} | "
                    + " / ".join(f"{r['last_loss'][s]:.5g}" for s in settings) + " |")
    table = "\n".join(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = hardware.environment()
    (out / "xla_cpu_flags.json").write_text(json.dumps(
        {"settings": settings, "env": env, "args": vars(args),
         "records": records}, indent=2, default=str))
    (out / "xla_cpu_flags.md").write_text(
        f"{args.suite} suite, {args.steps} timed steps per setting in {args.rounds} alternating "
        f"rounds, one process ({env.get('cpu_model', '')}). Speed-up: default's median step "
        "time over the setting's.\n\n" + table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
