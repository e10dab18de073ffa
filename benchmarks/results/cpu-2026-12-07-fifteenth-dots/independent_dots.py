"""One batched dot against several independent dots of the same total work, in one jit: whether
XLA:CPU's executor runs independent dots on the two cores at once (it does from 9 thunks on).
"""
import os, sys, time
os.environ["XLA_FLAGS"] = os.environ.get("FLAGS", "--xla_cpu_experimental_ynn_fusion_type=INDIVIDUAL_DOT")
if os.environ.get("SYNC", "1") == "1":
    from zoo.core import host_memory; host_memory.keep_freed_memory()
import jax, jax.numpy as jnp, numpy as np
r = np.random.default_rng(0)
mk = lambda *s: jnp.asarray(r.standard_normal(s, np.float32))
p1, p2, v1, v2 = mk(8, 6, 64, 192), mk(8, 6, 64, 192), mk(8, 6, 192, 64), mk(8, 6, 192, 64)
P, V = jnp.concatenate([p1, p2]), jnp.concatenate([v1, v2])
e = lambda p, v: jnp.einsum("bhqk,bhkd->bhqd", p, v)
one = jax.jit(lambda P, V: e(P, V))
two = jax.jit(lambda p1, p2, v1, v2: (e(p1, v1), e(p2, v2)))
half = jax.jit(lambda p1, v1: e(p1, v1))
def t(f, n=40):
    jax.block_until_ready(f()); ts = []
    for _ in range(n):
        s = time.perf_counter(); jax.block_until_ready(f()); ts.append(time.perf_counter() - s)
    return np.median(ts) * 1e3
for _ in range(2):
    print("one (16x6)", round(t(lambda: one(P, V)), 3), "| two independent (8x6 each)", round(t(lambda: two(p1, p2, v1, v2)), 3), "| one half", round(t(lambda: half(p1, v1)), 3))
ps = [mk(2, 6, 64, 192) for _ in range(10)]; vs = [mk(2, 6, 192, 64) for _ in range(10)]
PP, VV = jnp.concatenate(ps), jnp.concatenate(vs)
ten = jax.jit(lambda ps, vs: [e(p, v) for p, v in zip(ps, vs)])
for _ in range(2):
    print("one (20x6)", round(t(lambda: one(PP, VV)), 3), "| ten independent (2x6 each)", round(t(lambda: ten(ps, vs)), 3))
