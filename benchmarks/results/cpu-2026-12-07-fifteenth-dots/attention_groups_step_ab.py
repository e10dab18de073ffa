"""The transformer's train step with blocked attention in G batch groups against zoo's, alternating."""
import sys
from zoo.core import host_memory, xla_flags
xla_flags.apply_cpu_defaults(); host_memory.keep_freed_memory()
import jax.numpy as jnp
from zoo.bench import catalog, timing
from zoo.bench.zoo_runner import ZooRunner
from zoo.models import transformer as T
suite, steps, groups = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
case = next(c for c in catalog.case_table(suite) if c.name == "transformer")
ours = T.blocked_causal_attention
def grouped(q, k, v, query_block):
    parts = [ours(a, b, c, query_block) for a, b, c in zip(*(jnp.array_split(x, min(groups, x.shape[0])) for x in (q, k, v)))]
    return jnp.concatenate(parts)
old = ZooRunner(case, "single")
T.blocked_causal_attention = grouped
try:
    new = ZooRunner(case, "single")
finally:
    T.blocked_causal_attention = ours
for _ in range(2):
    old.step(); new.step()
print("losses", old.loss(), new.loss())
laps = timing.run_alternating({"old": old.step, "new": new.step}, warmup=1, steps=steps, rounds=int(sys.argv[4]) if len(sys.argv) > 4 else 8)
a, b = (laps[k].stats()["median"] * 1e3 for k in ("old", "new"))
print(f"{suite} transformer, attention in {groups} batch groups: old {a:.2f} ms, new {b:.2f} ms, speed-up {a / b:.3f}x", flush=True)
