"""(With laid_out_transpose.diff applied.) A/B: weight-gradient matmuls with the transpose folded
into the dot (old, Eigen) against laid out first (new, YNNPACK), in a bench case's compiled step,
alternating in one process.

    python laid_out_transpose_ab_all.py lstm|transformer quick 20
"""
import os, sys
from zoo.core import host_memory, xla_flags
xla_flags.apply_cpu_defaults(); host_memory.keep_freed_memory()
import numpy as np
from zoo.bench import catalog, timing
from zoo.bench.zoo_runner import ZooRunner
from zoo.models import layers
name, suite, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
case = next(c for c in catalog.case_table(suite) if c.name == name)
new_form = layers.laid_out_transpose
layers.laid_out_transpose = lambda a: a.T
import zoo.models.lstm as lstm_mod
lstm_mod.laid_out_transpose = layers.laid_out_transpose
try:
    old = ZooRunner(case, "single")
finally:
    layers.laid_out_transpose = lstm_mod.laid_out_transpose = new_form
new = ZooRunner(case, "single")
losses = []
for _ in range(3):
    old.step(); new.step()
    losses.append((old.loss(), new.loss()))
print("losses old/new:", losses)
laps = timing.run_alternating({"old": old.step, "new": new.step}, warmup=2, steps=steps, rounds=8)
a, b = (laps[k].stats()["median"] * 1e3 for k in ("old", "new"))
print(f"{suite} {name}: old {a:.2f} ms, new {b:.2f} ms, speed-up {a / b:.3f}x", flush=True)
