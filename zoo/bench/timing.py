"""Step timers: :class:`Chrono`, :func:`time_stats`, and :func:`run_alternating` for contenders
that take turns (zoo, peer, zoo, peer, ...)."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np


class Chrono:
    """Collects step times (like big_vision's ``utils.Chrono``, reduced to what a benchmark needs).

    ``with chrono.lap(): step()`` times one step; ``chrono.stats()`` has count, mean, median, p10,
    p90, min and max in seconds.
    """

    def __init__(self):
        self.times: list[float] = []

    class _Lap:
        def __init__(self, chrono):
            self.chrono = chrono

        def __enter__(self):
            self.t0 = time.perf_counter()
            return self

        def __exit__(self, *exc):
            if exc[0] is None:  # a step that raised is not a timing
                self.chrono.times.append(time.perf_counter() - self.t0)

    def lap(self) -> "_Lap":
        return Chrono._Lap(self)

    def time(self, fn: Callable[[], Any], n: int = 1) -> None:
        """Times ``n`` calls of ``fn``, one lap each."""
        for _ in range(n):
            with self.lap():
                fn()

    def stats(self) -> dict[str, float]:
        return time_stats(self.times)


def time_stats(times: Sequence[float]) -> dict[str, float]:
    """n, mean, median, p10, p90, min and max of ``times`` (ValueError if there are none)."""
    t = np.asarray(times, np.float64)
    if t.size == 0:
        raise ValueError("no timed steps")
    return {"n": int(t.size), "mean": float(t.mean()), "median": float(np.median(t)),
            "p10": float(np.percentile(t, 10)), "p90": float(np.percentile(t, 90)),
            "min": float(t.min()), "max": float(t.max())}


def run_alternating(steppers: dict[str, Callable[[], Any]], *, warmup: int, steps: int,
                    rounds: int) -> dict[str, Chrono]:
    """Warms each stepper up, then times ``steps`` steps of each in ``rounds`` alternating rounds.

    Alternating (zoo, peer, zoo, peer, ...) spreads any drift in the machine's speed (other jobs,
    clock changes) evenly over the contenders. Each stepper must block until its step is done.
    """
    rounds = max(1, min(rounds, steps))
    for fn in steppers.values():
        for _ in range(warmup):
            fn()
    chronos = {k: Chrono() for k in steppers}
    per_round = [steps // rounds + (i < steps % rounds) for i in range(rounds)]
    for n in per_round:
        for k, fn in steppers.items():
            chronos[k].time(fn, n)
    return chronos
