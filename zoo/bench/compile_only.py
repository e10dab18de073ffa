"""``zoo bench --compile-only``: every case of a suite lowered and compiled at full size, no step run.

The state and batch are abstract (``jax.eval_shape``), so nothing of the model's size is allocated:
GPT-2 small's GPU case compiles on a laptop's CPU. Each case reports its parameter count, the
family's FLOPs per step beside XLA's count, compile time and ``memory_analysis`` (arguments,
outputs, temporaries, the peak they imply), so shapes, dtypes and memory are checked before any
time is spent on an accelerator. The memory is the compiling backend's estimate: on CPU it is a
guide to a GPU's, not its measurement.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from zoo.bench.catalog import Case, suite_cases
from zoo.bench.zoo_runner import memory_fields, zoo_config

MIB = 2 ** 20
# The strategies whose steps lower on abstract inputs (pmap's need placed arrays).
STRATEGIES = ("single", "mesh")


def compile_case(case: Case, strategy: str = "single", devices: list | None = None
                 ) -> dict[str, Any]:
    """One case's train step under ``strategy`` (``single`` or ``mesh``; pmap needs placed
    arrays), lowered and compiled on abstract inputs."""
    if strategy not in STRATEGIES:
        raise ValueError(f"--compile-only compiles under {' or '.join(STRATEGIES)}, not "
                         f"{strategy!r}")
    import jax
    import numpy as np
    from zoo import build, flops, models
    from zoo.core import parallel

    config = zoo_config(case, strategy)
    family = models.make_family(config.model)
    strat = parallel.strategy_from_config(config.parallel, devices)
    # zoo train's check, before tracing: a batch that does not split is named, not an XLA error.
    parallel.check_divisible(case.batch_size, strat.num_shards, "devices",
                             int(config.train.get("grad_accum_steps", 1)))
    batch = {k: jax.ShapeDtypeStruct((case.batch_size, *s.shape), s.dtype)
             for k, s in family.batch_spec.items()}
    state = jax.eval_shape(build.state_initializer(family, config), batch)
    step, _ = build.compile_steps(family, strat, config.train)
    state, batch = strat.abstract_placed(state, batch)
    t0 = time.perf_counter()
    lowered = step.compiled.lower(state, batch)
    t1 = time.perf_counter()
    executable = lowered.compile()
    t2 = time.perf_counter()
    xla = flops.xla_flops(executable)
    per_example = family.flops_per_example
    memory = memory_fields(executable)
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    with strat.tracing():  # what the compiled layers ran here (a CPU compiles the scan, say)
        chosen = family.implementations() if family.implementations else {}
    return {"case": case.name, "family": case.family, "strategy": strategy,
            "implementations": chosen,
            "devices": strat.num_shards, "batch_size": case.batch_size,
            "compute_dtype": case.compute_dtype, "param_count": int(params),
            "lower_s": t1 - t0, "compile_s": t2 - t1,
            "flops_per_step_family": float(per_example) * case.batch_size if per_example else None,
            "flops_per_step_xla": None if xla is None else xla * strat.num_shards,
            "device_kind": (devices or jax.devices())[0].device_kind, **memory}


def run_compile_only(suite: str, names: Sequence[str] | None = None, strategy: str = "single",
                     log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """:func:`compile_case` for every case of ``suite`` (or those named); a case that fails to
    compile gives a record with ``error`` (its first line) and the others go on."""
    cases, notes = suite_cases(suite, names)
    for note in notes:
        log(note)
    records = []
    for case in cases:
        log(f"  {case.name}: lowering and compiling ({case.batch_size} examples, "
            f"{case.compute_dtype})")
        try:
            records.append(compile_case(case, strategy))
        except Exception as e:  # noqa: BLE001 -- reported per case, the rest still compile
            first = str(e).splitlines()[0] if str(e) else ""
            records.append({"case": case.name, "family": case.family, "strategy": strategy,
                            "error": f"{type(e).__name__}: {first}"[:300]})
            log(f"  {case.name}: failed: {records[-1]['error']}")
    return records


def compile_only_table(records: Sequence[dict[str, Any]]) -> str:
    """A markdown table of :func:`run_compile_only`'s records."""
    def mib(x):
        return "-" if x is None else f"{x / MIB:,.1f}"

    def gflop(x):
        return "-" if x is None else f"{x / 1e9:,.3g}"

    rows = ["| case | params | batch | dtype | lower s | compile s | GFLOP/step (family) | "
            "GFLOP/step (XLA) | arguments MiB | temporaries MiB | peak MiB |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if "error" in r:
            rows.append(f"| {r['case']} | error: {r['error']} |" + " |" * 9)
            continue
        m = r.get("memory_analysis") or {}
        rows.append(
            f"| {r['case']} | {r['param_count']:,} | {r['batch_size']} | {r['compute_dtype']} | "
            f"{r['lower_s']:.1f} | {r['compile_s']:.1f} | {gflop(r['flops_per_step_family'])} | "
            f"{gflop(r['flops_per_step_xla'])} | {mib(m.get('argument_size_in_bytes'))} | "
            f"{mib(m.get('temp_size_in_bytes'))} | {mib(r.get('peak_bytes_estimate'))} |")
    return "\n".join(rows)
