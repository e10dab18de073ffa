"""``zoo bench --loop``: each case's real training loop beside its step alone.

The step alone is :class:`zoo.bench.zoo_runner.ZooRunner`'s: one compiled step on a batch placed
once (by the strategy, as the loop places each), each run to completion, timed in intervals of as
many steps as the loop logs after (wall time over steps, as the loop's are: a median of single
steps would leave out the hiccups the loop's intervals include). The loop is
:func:`zoo.train.train` itself on the case's config with synthetic data: the iterator, the batch
checks and placement, the NaN check and logging, all of it. Its speed is read from the times of its
logged steps (``TrainResult.log_times``), leaving out the first interval (which compiles).
``loop / step`` is the loop's throughput over the step's: 1.0 means the loop adds nothing.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

import numpy as np

from zoo.bench import timing
from zoo.bench.catalog import Case
from zoo.bench.zoo_runner import ZooRunner, zoo_config


def loop_config(case: Case, strategy: str, *, steps: int, log_every: int, seed: int = 0):
    """The config ``zoo train`` would run ``case`` with, on synthetic data of the case's shapes:
    ``steps`` steps, logged every ``log_every``, evaluated once at the end, nothing saved."""
    from zoo.core.settings import DataSettings, defaults
    config = zoo_config(case, strategy, seed)
    b = case.batch_size
    data = {**defaults(DataSettings), "dataset": "synthetic", "batch_size": b,
            "eval_batch_size": b, "synthetic_size": 4 * b}
    if case.tokens_per_example:  # a language model: a synthetic token stream of its vocabulary
        seq = case.tokens_per_example
        data.update(seq_len=seq, synthetic_vocab=int(case.model["vocab_size"]),
                    synthetic_size=8 * b * (seq + 1), batching="random")
        config.model.unit = ""  # the synthetic tokenizer's unit (char), not the case's label
    config.data = data
    config.train.update(steps=steps, log_every=log_every, eval_every=0, checkpoint_every=0,
                        sample_tokens=0, best_metric="")
    return config


def time_loop(case: Case, strategy: str = "single", *, intervals: int = 5,
              log_every: int = 10) -> dict[str, Any]:
    """Runs the training loop for ``(intervals + 1) * log_every`` steps: stats of the seconds per
    step of each of the ``intervals`` intervals between logs."""
    from zoo import train
    config = loop_config(case, strategy, steps=(intervals + 1) * log_every, log_every=log_every)
    result = train.train(config, None, log=lambda line: None)
    t = result.log_times  # the first log's time includes the compile: intervals start there
    per_step = [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(t, t[1:])]
    return {"step_s": timing.time_stats(per_step), "log_every": log_every,
            "loss_last": result.history[-1].get("loss") if result.history else None}


# With no --log-every, each timed interval of the loop, and the step alone on each side of it,
# lasts about this long: 10 steps of a 5 ms step are at the mercy of one scheduler hiccup.
INTERVAL_S = 1.0


def steps_per_interval(step_s: float, interval_s: float = INTERVAL_S) -> int:
    """The steps that take about ``interval_s`` at ``step_s`` seconds each, from 10 to 1,000."""
    return int(min(1000, max(10, round(interval_s / step_s))))


def interval_times(step: Callable[[], Any], intervals: int, steps: int) -> list[float]:
    """Seconds per step of each of ``intervals`` runs of ``steps`` calls of ``step``: wall time
    over steps, as the loop's intervals are timed (hiccups included, as in a throughput)."""
    times = []
    for _ in range(intervals):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - t0) / steps)
    return times


def loop_case(case: Case, strategy: str = "single", *, warmup: int = 3, steps: int = 20,
              intervals: int = 5, log_every: int | None = None, log=print) -> dict[str, Any]:
    """One record: the step alone (timed before and after the loop, so drift in the machine's
    speed falls on both) and the loop, with ``loop_over_step`` (throughput ratio).

    Both are timed the same way, in intervals of ``log_every`` steps (the loop's between two
    logs): seconds per step of each interval, the median interval. The step alone runs at least
    ``steps`` steps, at least one interval on each side of the loop. ``log_every`` defaults to
    :func:`steps_per_interval` of the step alone's median over ``steps // 2`` probe steps."""
    log(f"  {case.name}: compiling the step alone")
    runner = ZooRunner(case, strategy)
    for _ in range(warmup):
        runner.step()
    if log_every is None:
        probe = timing.Chrono()
        probe.time(runner.step, max(1, steps // 2))
        log_every = steps_per_interval(probe.stats()["median"])
    per_side = max(1, math.ceil(steps / 2 / log_every))
    step_times = interval_times(runner.step, per_side, log_every)
    log(f"  {case.name}: the training loop, {(intervals + 1) * log_every} steps")
    loop = time_loop(case, strategy, intervals=intervals, log_every=log_every)
    step_times += interval_times(runner.step, per_side, log_every)
    step = timing.time_stats(step_times)
    ratio = step["median"] / loop["step_s"]["median"]
    log(f"  {case.name}: step {step['median'] * 1e3:.2f} ms, loop "
        f"{loop['step_s']['median'] * 1e3:.2f} ms/step: loop/step {ratio:.3f}")
    return {"case": case.name, "family": case.family, "strategy": strategy,
            "batch_size": case.batch_size, "step_s": step, "loop_step_s": loop["step_s"],
            "loop_log_every": log_every, "loop_over_step": ratio,
            "examples_per_s_step": case.batch_size / step["median"],
            "examples_per_s_loop": case.batch_size / loop["step_s"]["median"]}


def run_loop_suite(cases: Sequence[Case], strategy: str = "single", **kwargs) -> list[dict]:
    """:func:`loop_case` for each case; a case that fails gives a record with ``error``."""
    records = []
    for case in cases:
        try:
            records.append(loop_case(case, strategy, **kwargs))
        except Exception as e:
            records.append({"case": case.name, "strategy": strategy,
                            "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"})
    return records


def loop_table(records: Sequence[dict]) -> str:
    """A markdown table: step alone and loop, ms per step and examples/s, and loop / step."""
    rows = ["| case | strategy | batch | step alone ms | loop ms/step | step ex/s | loop ex/s | "
            "loop / step |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        if "error" in r:
            rows.append(f"| {r['case']} | {r['strategy']} | | error: {r['error']} | | | | |")
            continue
        rows.append(f"| {r['case']} | {r['strategy']} | {r['batch_size']} | "
                    f"{r['step_s']['median'] * 1e3:.2f} | {r['loop_step_s']['median'] * 1e3:.2f} | "
                    f"{r['examples_per_s_step']:,.0f} | {r['examples_per_s_loop']:,.0f} | "
                    f"{r['loop_over_step']:.3f} |")
    return "\n".join(rows)


def median_ratio(records: Sequence[dict]) -> float | None:
    """The median ``loop_over_step`` over the records that ran."""
    ratios = [r["loop_over_step"] for r in records if "loop_over_step" in r]
    return float(np.median(ratios)) if ratios else None
