"""The JSON records of a benchmark: one per (case, framework, strategy, devices).

The field names are what ``benchmarks/results/*/results.json`` hold and its readers expect; keep
them stable.
"""

from __future__ import annotations

from typing import Any

from zoo.bench.catalog import Case


def record(case: Case, framework: str, strategy: str, devices: int, batch_size: int,
           stats: dict, **extra: Any) -> dict[str, Any]:
    """A timed contender's record: identity, step-time stats, throughput and ``extra`` fields."""
    med = stats["median"]
    rec = {"case": case.name, "family": case.family, "framework": framework, "strategy": strategy,
           "devices": devices, "batch_size": batch_size, "compute_dtype": case.compute_dtype,
           "step_s": stats, "examples_per_s": batch_size / med,
           "tokens_per_s": (batch_size * case.tokens_per_example / med
                            if case.tokens_per_example else None)}
    rec.update(extra)
    return rec


def error_record(case: Case, framework: str, strategy: str, error: BaseException | str,
                 limit: int = 500, **extra: Any) -> dict[str, Any]:
    """The record of a contender that failed to build or run: its identity and ``error``."""
    msg = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return {"case": case.name, "family": case.family, "framework": framework,
            "strategy": strategy, **extra, "error": msg[:limit]}


def flops_fields(analytic: float | None, xla: float | None, jaxpr: float | None, med: float,
                 peak_table: float | None, peak_measured: float | None, devices: int) -> dict:
    """FLOPs per step (the family's count, else the jaxpr's), achieved FLOP/s, MFU against the
    table peak and the fraction of the measured peak, over ``devices`` devices. XLA's count over
    the family's (``xla_to_analytic``) only where the family has one."""
    used = analytic if analytic is not None else jaxpr
    achieved = used / med if used else None
    return {
        "flops_per_step_analytic": analytic,
        "flops_per_step_jaxpr": jaxpr,
        "flops_per_step_xla": xla,
        "xla_to_analytic": (xla / analytic) if (xla and analytic) else None,
        "flops_source": "analytic" if analytic is not None else "jaxpr",
        "achieved_flops_per_s": achieved,
        "peak_flops_per_s_table": peak_table * devices if peak_table else None,
        "mfu": achieved / (peak_table * devices) if (achieved and peak_table) else None,
        "peak_flops_per_s_measured": peak_measured * devices if peak_measured else None,
        "fraction_of_measured_peak": (achieved / (peak_measured * devices)
                                      if (achieved and peak_measured) else None),
    }


def add_peer_ratios(records: list[dict]) -> None:
    """Gives each one-device zoo record ``speedup_vs_<peer>``: the peer's median step over zoo's."""
    peers = {(r["case"], r["framework"]): r for r in records
             if r["framework"].startswith("torch") and "step_s" in r}
    for r in records:
        if r["framework"] != "zoo" or r.get("devices") != 1 or "step_s" not in r:
            continue
        for fw in ("torch-eager", "torch-compile"):
            p = peers.get((r["case"], fw))
            r[f"speedup_vs_{fw.replace('-', '_')}"] = (
                p["step_s"]["median"] / r["step_s"]["median"] if p else None)


def refit_measured_peak(records: list[dict], dtype: str, peak: float, platform: str) -> None:
    """Recomputes ``fraction_of_measured_peak`` of the ``dtype`` records against ``peak``."""
    for r in records:
        if r.get("compute_dtype") == dtype and r.get("achieved_flops_per_s"):
            # Host "devices" forced on a CPU share its cores: their peak is the host's.
            n = 1 if platform == "cpu" else r["devices"]
            r["peak_flops_per_s_measured"] = peak * n
            r["fraction_of_measured_peak"] = r["achieved_flops_per_s"] / (peak * n)
