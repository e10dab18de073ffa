"""Where blocked attention's time goes at the full transformer's shape: a jax.profiler trace of its\nforward (fwd) or forward + backward (bwd) alone, op time by kind (zoo.bench.profile.op_seconds).\n"""
import sys, glob, tempfile, time
from zoo.core import xla_flags, host_memory
xla_flags.apply_cpu_defaults(); host_memory.keep_freed_memory()
import jax, jax.numpy as jnp, numpy as np
from zoo.bench.profile import op_seconds, _hlo_lines
from zoo.models.transformer import blocked_causal_attention
q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (16, 256, 6, 64)) for i in range(3))
mode = sys.argv[1]
fwd = lambda q, k, v: blocked_causal_attention(q, k, v, 64)
if mode == "fwd":
    f = jax.jit(fwd)
else:
    f = jax.jit(jax.grad(lambda q, k, v: (fwd(q, k, v) * v).sum(), argnums=(0, 1, 2)))
for _ in range(3): jax.block_until_ready(f(q, k, v))
ts = []
for _ in range(10):
    s = time.perf_counter(); jax.block_until_ready(f(q, k, v)); ts.append(time.perf_counter() - s)
print(mode, "wall ms", round(np.median(ts) * 1e3, 2))
hlo = _hlo_lines(f.lower(q, k, v).compile().as_text())
with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d):
        for _ in range(10): jax.block_until_ready(f(q, k, v))
    data = jax.profiler.ProfileData.from_file(glob.glob(f"{d}/**/*.xplane.pb", recursive=True)[0])
tot = op_seconds(data.planes, hlo)
kinds = {}
for n, t in tot.items():
    line = hlo.get(n, "")
    kind = "dot" if ("ynn_fusion" in n or " dot(" in line) else ("reduce" if "reduce" in n else ("copy/slice/transpose" if any(x in n for x in ("copy", "slice", "transpose", "concatenate")) else "elementwise"))
    kinds[kind] = kinds.get(kind, 0) + t * 100
print({k: round(v, 2) for k, v in kinds.items()}, "sum", round(sum(tot.values()) * 100, 2), "ms/call thread-time")
for n, t in sorted(tot.items(), key=lambda kv: -kv[1])[:int(sys.argv[2]) if len(sys.argv) > 2 else 12]:
    print(f"  {n:34s} {t*100:6.2f} {hlo.get(n, '')[:90]}")
