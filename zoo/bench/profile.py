"""``zoo bench --profile``: where a case's step spends its time, for zoo and for its PyTorch peer.

zoo's side is a ``jax.profiler`` trace of the compiled step (the same :class:`ZooRunner` the bench
times), read back with ``jax.profiler.ProfileData``: XLA:CPU records each thunk it runs (a fusion,
a dot, a convolution, a YNNPACK fusion) on its worker threads and the calling thread, so summing
those events by name gives thread-time per HLO op, and the op's line in the compiled HLO says
what it is. The peer's side is ``torch.profiler``'s self CPU time per aten op. Shares are of each
side's own total, so a loaded machine changes them little.
"""

from __future__ import annotations

import collections
import glob
import re
import tempfile
from typing import Any, Iterable, Sequence

from zoo.bench.catalog import Case

# Events on XLA's worker threads that are bookkeeping, not an op of the program.
_NOT_OPS = re.compile(r"^(ThreadpoolListener|end: |ThunkExecutor|ParseArguments|PjitFunction|"
                      r"PythonRefManager|\$)")
# Control flow, whose event spans the ops inside it (they have events of their own).
_CONTAINS_OPS = re.compile(r"\s(while|call|conditional)\(")


def _hlo_lines(hlo_text: str) -> dict[str, str]:
    """Instruction name -> its HLO line (shape, opcode, operands), from the compiled module."""
    lines = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)", line)
        if m and m.group(1) not in lines:
            lines[m.group(1)] = m.group(2).strip()
    return lines


def _describe(name: str, hlo: dict[str, str], fused: dict[str, str]) -> str:
    """``opcode kind shape [heavy ops inside]`` for an instruction of the compiled HLO."""
    line = hlo.get(name, "")
    if not line:
        return ""
    shape = line.split(" ", 1)[0]
    kind = re.search(r"kind=(\w+)", line)
    op = re.search(r"\s([a-z][\w\-]*)\(", line)
    calls = re.search(r"calls=%?([\w.\-]+)", line)
    inner = fused.get(calls.group(1), "") if calls else ""
    parts = [op.group(1) if op else "", kind.group(1) if kind else "", shape,
             f"[{inner}]" if inner else ""]
    return " ".join(p for p in parts if p)


def _fusion_ops(hlo_text: str) -> dict[str, str]:
    """Fused computation name -> the convolution / dot / reduce ops it contains (their opcodes)."""
    out, current, ops = {}, None, []
    for line in hlo_text.splitlines():
        head = re.match(r"^%?([\w.\-]+)\s.*\{\s*$", line)
        if head and "=" not in line.split("{")[0]:
            current, ops = head.group(1), []
            continue
        if current and line.strip() == "}":
            heavy = [o for o in ops if o in ("convolution", "dot", "reduce", "reduce-window",
                                             "select-and-scatter", "scatter", "gather")]
            out[current] = ",".join(sorted(set(heavy)))
            current = None
            continue
        if current:
            m = re.search(r"=\s*\S+\s+([a-z][\w\-]*)\(", line)
            if m:
                ops.append(m.group(1))
    return out


def op_seconds(planes: Iterable[Any], hlo: dict[str, str]) -> dict[str, float]:
    """Thread-seconds per op name in a ``jax.profiler`` trace's planes: every event on XLA's
    worker threads that is not bookkeeping, and on any other thread the events named after an
    instruction of the compiled program (``hlo``). XLA:CPU runs ops on the calling thread too
    (zoo runs one CPU device's steps there, :mod:`zoo.core.host_memory`), beside Python's and
    the runtime's own events. A loop's or a call's event is left out: the ops inside it count on
    their own. An op XLA:CPU hands to Eigen's pool (its matmuls, convolutions) counts only on the
    thread that launched it: the pool's work on it carries no op name."""
    totals: dict[str, float] = collections.defaultdict(float)
    for plane in planes:
        for line in plane.lines:
            worker = line.name.startswith("tf_XLA")
            for event in line.events:
                if _CONTAINS_OPS.search(hlo.get(event.name, "")):
                    continue
                if event.name in hlo or (worker and not _NOT_OPS.match(event.name)):
                    totals[event.name] += event.duration_ns * 1e-9
    return totals


def profile_zoo(case: Case, strategy: str = "single", *, warmup: int = 3, steps: int = 10,
                top: int = 10) -> dict[str, Any]:
    """The case's compiled step under a ``jax.profiler`` trace: its ``top`` ops by thread-time
    per step, each with its share of all op time and what the HLO says it is."""
    import jax

    from zoo.bench.zoo_runner import ZooRunner
    runner = ZooRunner(case, strategy)
    for _ in range(warmup):
        runner.step()
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for _ in range(steps):
                runner.step()
        files = glob.glob(f"{d}/**/*.xplane.pb", recursive=True)
        data = jax.profiler.ProfileData.from_file(files[0])
    hlo_text = runner.executable.as_text()
    hlo, fused = _hlo_lines(hlo_text), _fusion_ops(hlo_text)
    totals = op_seconds(data.planes, hlo)
    total = sum(totals.values()) or 1.0
    ops = []
    for name, t in sorted(totals.items(), key=lambda kv: -kv[1])[:top]:
        ops.append({"op": name, "ms_per_step": t / steps * 1e3, "share": t / total,
                    "hlo": _describe(name, hlo, fused)})
    kinds: dict[str, float] = collections.defaultdict(float)
    for name, t in totals.items():
        kinds[_kind(_describe(name, hlo, fused))] += t
    by_kind = [{"kind": k, "ms_per_step": t / steps * 1e3, "share": t / total}
               for k, t in sorted(kinds.items(), key=lambda kv: -kv[1])]
    return {"case": case.name, "framework": "zoo", "op_ms_per_step": total / steps * 1e3,
            "ops": ops, "by_kind": by_kind}


def _kind(description: str) -> str:
    """An op's kind for the summary: the heavy ops a fusion holds (convolution, dot, reduce),
    else its opcode and fusion kind (``fusion kLoop``: elementwise work, ``copy``, ...)."""
    inner = re.search(r"\[([a-z][\w,\-]*)\]$", description)
    if inner:
        return inner.group(1)
    words = [w for w in description.split() if re.match(r"^[a-z][\w\-]*$|^k[A-Z]", w)]
    return " ".join(words[:2]) or "other"


def profile_peer(case: Case, *, warmup: int = 3, steps: int = 10, top: int = 10,
                 threads: int | None = None) -> dict[str, Any] | None:
    """The case's PyTorch peer (eager) under ``torch.profiler``: its ``top`` aten ops by self CPU
    time per step, with their share. None for a case without a peer."""
    if not case.peer:
        return None
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from zoo import models
    from zoo.bench.peer_runner import PeerRunner
    from zoo.bench.zoo_runner import synthetic_batch
    family = models.make_family(case.model_config())
    batch = synthetic_batch(family.batch_spec, case.batch_size, int_high=case.int_high)
    players = tuple(sorted(m for m in family.modules))
    runner = PeerRunner(case, batch, "eager", "cpu", threads, players=players)
    for _ in range(warmup):
        runner.step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            runner.step()
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    ops = [{"op": e.key, "ms_per_step": e.self_cpu_time_total / steps * 1e-3,
            "share": e.self_cpu_time_total / total, "calls_per_step": e.count / steps}
           for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]]
    return {"case": case.name, "framework": "torch-eager", "op_ms_per_step": total / steps * 1e-3,
            "ops": ops}


def profile_table(profiles: Sequence[dict]) -> str:
    """Markdown: per case and framework, the top ops with ms per step and share."""
    out = []
    for p in profiles:
        if p is None:
            continue
        if "error" in p:
            out.append(f"### {p['case']} ({p['framework']})\n\nerror: {p['error']}\n")
            continue
        out.append(f"### {p['case']} ({p['framework']}): {p['op_ms_per_step']:.1f} ms of op time "
                   "per step\n")
        out.append("| op | ms/step | share | what |")
        out.append("|---|---:|---:|---|")
        for op in p["ops"]:
            what = op.get("hlo") or (f"{op['calls_per_step']:.0f} calls/step"
                                     if "calls_per_step" in op else "")
            out.append(f"| `{op['op']}` | {op['ms_per_step']:.2f} | {op['share']:.0%} | {what} |")
        out.append("")
        if p.get("by_kind"):
            out.append("by kind: " + ", ".join(f"{k['kind']} {k['share']:.0%}"
                                                for k in p["by_kind"][:6]) + "\n")
    return "\n".join(out)
