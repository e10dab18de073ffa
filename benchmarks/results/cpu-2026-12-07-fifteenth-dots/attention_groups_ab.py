"""Attention forms, forward + d(q, k, v) alone at the full transformer's shape, alternating in one
process: zoo's blocked attention against the same applied to batch or head groups.

    python attention_groups_ab.py batch2,zoo,batch4,heads2,heads3 8
"""
import sys, time, functools, math
from zoo.core import xla_flags, host_memory
xla_flags.apply_cpu_defaults(); host_memory.keep_freed_memory()
import jax, jax.numpy as jnp, numpy as np
from zoo.models import transformer as T

def blocked(q, k, v, query_block, layout_barrier=False):
    Tn, D = q.shape[1], q.shape[-1]
    q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
    q = (q.astype(jnp.float32) / math.sqrt(D)).astype(q.dtype)
    if layout_barrier:
        q, k, v = jax.lax.optimization_barrier((q, k, v))
    scores = lambda q, k: jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
    outs = []
    for start in range(0, Tn, query_block):
        end = min(start + query_block, Tn)
        q_block = q[:, :, start:end]
        own = scores(q_block, k[:, :, start:end])
        own = jnp.where(jnp.tril(jnp.ones((end - start,) * 2, bool)), own, -jnp.inf)
        parts = [(own, v[:, :, start:end])] + ([(scores(q_block, k[:, :, :start]), v[:, :, :start])] if start else [])
        top = jax.lax.stop_gradient(functools.reduce(jnp.maximum, [s.max(-1, keepdims=True) for s, _ in parts]))
        weights = [(jnp.exp(s - top), v_part) for s, v_part in parts]
        total = sum(w.sum(-1, keepdims=True) for w, _ in weights)
        out = sum(jnp.einsum("bhqk,bhkd->bhqd", w.astype(v_part.dtype), v_part, preferred_element_type=jnp.float32) for w, v_part in weights)
        outs.append((out / total).astype(q.dtype))
    return jnp.concatenate(outs, axis=2).transpose(0, 2, 1, 3)

def grouped(q, k, v, groups, axis=0):
    parts = [T.blocked_causal_attention(a, b, c, 64) for a, b, c in
             zip(*(jnp.split(x, groups, axis=axis) for x in (q, k, v)))]
    return jnp.concatenate(parts, axis=axis)

FORMS = {
    "batch2": lambda q, k, v: grouped(q, k, v, 2),
    "batch4": lambda q, k, v: grouped(q, k, v, 4),
    "heads2": lambda q, k, v: grouped(q, k, v, 2, axis=2),
    "heads3": lambda q, k, v: grouped(q, k, v, 3, axis=2),
    "zoo": lambda q, k, v: T.blocked_causal_attention(q, k, v, 64),
    "barrier": lambda q, k, v: blocked(q, k, v, 64, layout_barrier=True),
}
shape = (16, 256, 6, 64)
q, k, v, w = (jax.random.normal(jax.random.PRNGKey(i), shape) for i in range(4))
def step_of(f):
    g = jax.value_and_grad(lambda q, k, v: (f(q, k, v) * w).sum(), argnums=(0, 1, 2))
    return jax.jit(g)
steps = {n: step_of(f) for n, f in FORMS.items() if n in sys.argv[1].split(",")}
ref = None
for n, s in steps.items():
    val, grads = s(q, k, v)
    if ref is None: ref = (val, grads)
    else:
        for a, b in zip(grads, ref[1]):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4)
times = {n: [] for n in steps}
for r in range(int(sys.argv[2])):
    for n, s in steps.items():
        jax.block_until_ready(s(q, k, v))
        t = time.perf_counter()
        for _ in range(5): jax.block_until_ready(s(q, k, v))
        times[n].append((time.perf_counter() - t) / 5 * 1e3)
base = np.median(times[next(iter(steps))])
for n, ts in times.items():
    print(f"{n:12s} {np.median(ts):7.2f} ms fwd+bwd  speed-up {base / np.median(ts):.3f}x")
