"""One process: each case's step time (median) and its loss after the timed steps; the
process's XLA_FLAGS decide the XLA options (zoo's are added to them)."""
import json, sys, time
from zoo.core import xla_flags; xla_flags.apply_cpu_defaults()
from zoo.core import host_memory; host_memory.keep_freed_memory()
import numpy as np
from zoo.bench import catalog
from zoo.bench.zoo_runner import ZooRunner
suite, cases, steps = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
out = {}
for case in catalog.case_table(suite):
    if case.name not in cases: continue
    r = ZooRunner(case, "single")
    for _ in range(3): r.step()
    ts = []
    for _ in range(steps):
        t = time.perf_counter(); r.step(); ts.append(time.perf_counter() - t)
    out[case.name] = {"median_ms": float(np.median(ts) * 1e3), "loss": float(r.loss())}
print("RESULT", json.dumps(out), flush=True)
