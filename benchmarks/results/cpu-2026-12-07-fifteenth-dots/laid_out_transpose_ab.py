"""(With laid_out_transpose.diff applied.) A/B of the laid-out transpose in one place only: the
LSTM layer's weight gradients (lstm) or zoo's Dense's [x, 1]^T @ dy (dense).

    python laid_out_transpose_ab.py lstm quick 20 lstm|dense
"""
import os, sys
from zoo.core import host_memory, xla_flags
xla_flags.apply_cpu_defaults(); host_memory.keep_freed_memory()
from zoo.bench import catalog, timing
from zoo.bench.zoo_runner import ZooRunner
from zoo.models import layers
import zoo.models.lstm as lstm_mod
name, suite, steps, part = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
case = next(c for c in catalog.case_table(suite) if c.name == name)
new_form, plain = layers.laid_out_transpose, (lambda a: a.T)
def build(lstm_form, dense_form):
    lstm_mod.laid_out_transpose, layers.laid_out_transpose = lstm_form, dense_form
    try:
        return ZooRunner(case, "single")
    finally:
        lstm_mod.laid_out_transpose = layers.laid_out_transpose = new_form
old = build(plain, plain)
new = build(new_form, plain) if part == "lstm" else build(plain, new_form)
laps = timing.run_alternating({"old": old.step, "new": new.step}, warmup=2, steps=steps, rounds=8)
a, b = (laps[k].stats()["median"] * 1e3 for k in ("old", "new"))
print(f"{suite} {name} ({part} only): old {a:.2f} ms, new {b:.2f} ms, speed-up {a / b:.3f}x", flush=True)
