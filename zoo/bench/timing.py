"""Step timers: :class:`Chrono`, :func:`time_stats`, and :func:`run_alternating` for contenders
that take turns (zoo, peer, zoo, peer, ...)."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

try:
    import resource
except ImportError:  # not on Windows
    resource = None


def minor_page_faults() -> int | None:
    """The process's minor page faults so far (``getrusage``; None where there is none). A fault
    per 4 KiB page a step means the step's memory is mapped afresh each time
    (zoo.core.host_memory)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else None


class Chrono:
    """Collects step times (like big_vision's ``utils.Chrono``, reduced to what a benchmark needs).

    ``with chrono.lap(): step()`` times one step; ``chrono.stats()`` has count, mean, median, p10,
    p90, min and max in seconds; ``chrono.faults_per_step()`` the mean minor page faults of a lap
    (the process's, so of this lap's work where nothing else runs beside it).
    """

    def __init__(self):
        self.times: list[float] = []
        self.faults: list[int] = []

    class _Lap:
        def __init__(self, chrono):
            self.chrono = chrono

        def __enter__(self):
            self.faults0 = minor_page_faults()
            self.t0 = time.perf_counter()
            return self

        def __exit__(self, *exc):
            if exc[0] is None:  # a step that raised is not a timing
                elapsed, faults = time.perf_counter() - self.t0, minor_page_faults()
                self.chrono.times.append(elapsed)
                if faults is not None:
                    self.chrono.faults.append(faults - self.faults0)

    def lap(self) -> "_Lap":
        return Chrono._Lap(self)

    def time(self, fn: Callable[[], Any], n: int = 1) -> None:
        """Times ``n`` calls of ``fn``, one lap each."""
        for _ in range(n):
            with self.lap():
                fn()

    def stats(self) -> dict[str, float]:
        return time_stats(self.times)

    def faults_per_step(self) -> float | None:
        return float(np.mean(self.faults)) if self.faults else None


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
