"""Reports of a benchmark result: ``results.json``, ``results.md`` (the table, printed too) and
the plots ``throughput.png``, ``scaling.png`` and ``peer_ratio.png``; while a suite runs,
``results.partial.json`` holds the records of the cases finished so far."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np


def json_default(o):
    """numpy scalars, tuples and sets as JSON; anything else as its str."""
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (tuple, set)):
        return list(o)
    return str(o)


def _fmt(x, spec: str, scale: float = 1.0, none: str = "-") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return none
    return format(x * scale, spec)


TABLE_COLUMNS = ("case", "framework", "strategy", "dev", "batch", "compile s", "step ms p50",
                 "p10-p90 ms", "examples/s", "tokens/s", "GFLOP/step", "XLA/analytic",
                 "GFLOP/s", "MFU", "of measured peak", "peak MB", "vs torch eager",
                 "vs torch compile")


def markdown_table(records: Sequence[dict]) -> str:
    """One row per record, in run order."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['framework']} | {r.get('strategy', '-')} | "
                         f"{r.get('devices', '-')} | {r.get('batch_size', '-')} | failed: "
                         f"{r['error'][:80].replace('|', '/')} |" + " |" * (len(TABLE_COLUMNS) - 6))
            continue
        st = r["step_s"]
        cells = [r["case"], r["framework"], r["strategy"], str(r["devices"]), str(r["batch_size"]),
                 _fmt(r.get("compile_total_s", r.get("compile_s")), ".2f"),
                 _fmt(st["median"], ".2f", 1e3),
                 f"{st['p10'] * 1e3:.2f}-{st['p90'] * 1e3:.2f}",
                 _fmt(r["examples_per_s"], ",.0f"), _fmt(r.get("tokens_per_s"), ",.0f"),
                 _fmt(r.get("flops_per_step_analytic") or r.get("flops_per_step_jaxpr"), ".3f",
                      1e-9),
                 _fmt(r.get("xla_to_analytic"), ".2f"),
                 _fmt(r.get("achieved_flops_per_s"), ",.1f", 1e-9),
                 _fmt(r.get("mfu"), ".1%"), _fmt(r.get("fraction_of_measured_peak"), ".1%"),
                 _fmt(r.get("peak_bytes_estimate"), ".1f", 1e-6),
                 _fmt(r.get("speedup_vs_torch_eager"), ".2f", none="-") + (
                     "x" if r.get("speedup_vs_torch_eager") else ""),
                 _fmt(r.get("speedup_vs_torch_compile"), ".2f", none="-") + (
                     "x" if r.get("speedup_vs_torch_compile") else "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(result: dict) -> str:
    """The whole report: the run's machine, versions, peaks and timing, then the table."""
    m = result["meta"]
    peaks = ", ".join(f"{d} {v['best_flops_per_s'] / 1e9:,.1f} GFLOP/s ({v['n']}x{v['n']})"
                      for d, v in (m.get("measured_peak") or {}).items()) or "not measured"
    table = {d: v for d, v in m.get("table_peak_flops_per_s", {}).items() if v}
    out = [f"# zoo bench: {m['suite']} suite",
           "",
           f"- date (UTC): {m['date_utc']}",
           f"- command: `{m['command']}`",
           f"- device: {m['device_count']} x {m['device_kind']} ({m['platform']}); CPU "
           f"{m['cpu_model']} ({m['cpu_count']} cores, {m.get('cores_used')} used)",
           f"- versions: jax {m['jax']}, jaxlib {m['jaxlib']}, flax {m['flax']}, optax "
           f"{m['optax']}, torch {m['torch']}, numpy {m['numpy']}, python {m['python']}",
           f"- measured matmul peak: {peaks}",
           "- table peak per device: " + (", ".join(f"{d} {v / 1e12:g} TFLOP/s"
                                                    for d, v in table.items())
                                          or "none for this device kind (MFU column empty)"),
           f"- machine load (1-min load average, start/end): {m.get('load_average_1m')} / "
           f"{m.get('load_average_1m_end')} on {m['cpu_count']} cores",
           f"- timing: {m['warmup']} warm-up steps, then {m['steps']} timed steps per contender "
           f"in {m['rounds']} alternating rounds; wall time {m['wall_s']:.0f} s",
           "",
           markdown_table(result["records"]), ""]
    chosen = {r["case"]: r["implementations"] for r in result["records"]
              if r.get("implementations")}
    if chosen:
        out += ["Implementations zoo's layers chose here:", ""] + [
            f"- {case}: " + ", ".join(f"{what} {how}" for what, how in c.items())
            for case, c in chosen.items()] + [""]
    if result.get("notes"):
        out += ["Notes:", ""] + [f"- {n}" for n in result["notes"]] + [""]
    return "\n".join(out)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(result: dict, out_dir: Path) -> list[Path]:
    """throughput.png (by model and strategy), scaling.png (over devices), peer_ratio.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [r for r in result["records"] if "step_s" in r]
    paths = []
    cases = list(dict.fromkeys(r["case"] for r in recs))
    # 1. Throughput by model and strategy (one device and the largest swept count).
    series = list(dict.fromkeys(f"{r['framework']}/{r['strategy']}/{r['devices']}" for r in recs))
    if cases and series:
        fig, ax = plt.subplots(figsize=(max(7, 1.4 * len(cases) + 4), 4.2))
        colors = {s: plt.cm.tab10(i % 10) for i, s in enumerate(series)}
        labelled = set()
        for ci, c in enumerate(cases):
            present = [s for s in series if any(
                f"{r['framework']}/{r['strategy']}/{r['devices']}" == s and r["case"] == c
                for r in recs)]
            width = 0.8 / max(len(present), 1)
            for i, s in enumerate(present):
                fw, st, dev = s.split("/")
                r = next(r for r in recs if r["case"] == c and r["framework"] == fw
                         and r["strategy"] == st and str(r["devices"]) == dev)
                ax.bar(ci + (i - (len(present) - 1) / 2) * width, r["examples_per_s"], width,
                       color=colors[s], label=None if s in labelled else f"{fw} {st} x{dev}")
                labelled.add(s)
        ax.set_xticks(np.arange(len(cases)), cases)
        ax.set_ylabel("examples / s (log)")
        ax.set_yscale("log")
        ax.set_title(f"Throughput by model and strategy ({result['meta']['device_kind']})")
        ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        paths.append(_save(plt, fig, out_dir / "throughput.png"))
    # 2. Scaling over devices.
    zoo = [r for r in recs if r["framework"] == "zoo"]
    lines = {}
    for r in zoo:
        lines.setdefault((r["case"], r["strategy"]), []).append((r["devices"], r["examples_per_s"]))
    swept = {r["case"] for r in zoo if r.get("sweep")}
    lines = {k: sorted(set(v)) for k, v in lines.items()
             if len({d for d, _ in v}) > 1 or k[0] in swept}
    if lines:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for (c, s), pts in lines.items():
            ax.plot([d for d, _ in pts], [y for _, y in pts], marker="o",
                    ls="-" if len(pts) > 1 else "none", label=f"{c} {s}")
        devs = sorted({d for pts in lines.values() for d, _ in pts})
        ax.set_xticks(devs)
        ax.set_xlabel("devices")
        ax.set_ylabel("examples / s")
        ax.set_title(f"Scaling over devices ({result['meta']['device_kind']}, same global batch)")
        ax.legend(fontsize=7)
        paths.append(_save(plt, fig, out_dir / "scaling.png"))
    # 3. Ratio to the peer.
    ratio_recs = [r for r in zoo if r.get("devices") == 1 and r.get("speedup_vs_torch_eager")]
    if ratio_recs:
        labels = [f"{r['case']}\n{r['strategy']}" for r in ratio_recs]
        fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(labels) + 2), 4.2))
        x = np.arange(len(labels))
        eager = [r["speedup_vs_torch_eager"] for r in ratio_recs]
        comp = [r.get("speedup_vs_torch_compile") or 0.0 for r in ratio_recs]
        has_comp = any(comp)
        w = 0.4 if has_comp else 0.6
        ax.bar(x - (w / 2 if has_comp else 0), eager, w, label="vs torch eager")
        if has_comp:
            ax.bar(x + w / 2, comp, w, label="vs torch.compile")
        for xi, v in zip(x, eager):
            ax.text(xi - (w / 2 if has_comp else 0), v, f"{v:.2f}x", ha="center", va="bottom",
                    fontsize=8)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(1.5, color="tab:red", lw=0.8, ls="--", label="1.5x target")
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylabel("zoo speedup (peer step time / zoo step time)")
        ax.set_title(f"zoo vs PyTorch, same model and batch ({result['meta']['device_kind']})")
        ax.legend(fontsize=8)
        paths.append(_save(plt, fig, out_dir / "peer_ratio.png"))
    return paths


PARTIAL = "results.partial.json"


def write_partial(records: Sequence[dict], out_dir: str | Path) -> Path:
    """The records of the cases finished so far, to ``out_dir/results.partial.json`` (replaced
    whole each time; :func:`write_report` removes it once the full report is written)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path, tmp = out_dir / PARTIAL, out_dir / (PARTIAL + ".tmp")
    tmp.write_text(json.dumps({"records": list(records)}, indent=1, default=json_default) + "\n")
    tmp.replace(path)  # a kill mid-write leaves the previous file whole
    return path


def write_report(result: dict, out_dir: str | Path, plots: bool = True) -> dict[str, Path]:
    """Writes results.json, results.md and the plots into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "markdown": out_dir / "results.md"}
    paths["json"].write_text(json.dumps(result, indent=1, default=json_default) + "\n")
    paths["markdown"].write_text(markdown_report(result))
    paths["command"] = out_dir / "command.txt"
    paths["command"].write_text(result["meta"].get("command", "") + "\n")
    if plots:
        for p in write_plots(result, out_dir):
            paths[p.stem] = p
    (out_dir / PARTIAL).unlink(missing_ok=True)  # the whole run is in results.json now
    return paths
