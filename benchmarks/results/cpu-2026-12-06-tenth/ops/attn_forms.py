import functools, math, time
from zoo.core import xla_flags; xla_flags.apply_cpu_defaults()
import jax, jax.numpy as jnp, numpy as np
from zoo.models.transformer import blocked_causal_attention

def blocked_kt(q, k, v, query_block):
    """The same, with k laid out (B, H, D, T) once, so each score block is a plain (q, d) x (d, k) product."""
    T, D = q.shape[1], q.shape[-1]
    q, v = (a.transpose(0, 2, 1, 3) for a in (q, v))
    kt = k.transpose(0, 2, 3, 1)
    q = q / math.sqrt(D)
    scores = lambda q, kt: jnp.einsum("bhqd,bhdk->bhqk", q, kt)
    outs = []
    for start in range(0, T, query_block):
        end = min(start + query_block, T)
        qb = q[:, :, start:end]
        own = scores(qb, kt[..., start:end])
        own = jnp.where(jnp.tril(jnp.ones((end - start,) * 2, bool)), own, -jnp.inf)
        parts = [(own, v[:, :, start:end])] + ([(scores(qb, kt[..., :start]), v[:, :, :start])] if start else [])
        top = jax.lax.stop_gradient(functools.reduce(jnp.maximum, [s.max(-1, keepdims=True) for s, _ in parts]))
        w = [(jnp.exp(s - top), vp) for s, vp in parts]
        total = sum(x.sum(-1, keepdims=True) for x, _ in w)
        out = sum(jnp.einsum("bhqk,bhkd->bhqd", x, vp) for x, vp in w)
        outs.append(out / total)
    return jnp.concatenate(outs, axis=2).transpose(0, 2, 1, 3)

B, T, H, D = 16, 256, 6, 64
ks = jax.random.split(jax.random.PRNGKey(0), 4)
q, k, v, g = (jax.random.normal(kk, (B, T, H, D)) for kk in ks)
forms = {"zoo": lambda q, k, v: blocked_causal_attention(q, k, v, 64), "k^T once": lambda q, k, v: blocked_kt(q, k, v, 64)}
fns = {}
for name, f in forms.items():
    fwd = jax.jit(f)
    def fb(q, k, v, f=f):
        y, vjp = jax.vjp(f, q, k, v)
        return vjp(g)
    fns[name + " fwd"] = fwd; fns[name + " fwd+bwd"] = jax.jit(fb)
ref = np.asarray(fns["zoo fwd"](q, k, v)); np.testing.assert_allclose(np.asarray(fns["k^T once fwd"](q, k, v)), ref, rtol=2e-4, atol=2e-5)
for f in fns.values(): jax.block_until_ready(f(q, k, v))
res = {n: [] for n in fns}
for r in range(5):
    for n, f in fns.items():
        t = time.perf_counter()
        for _ in range(5): out = f(q, k, v)
        jax.block_until_ready(out); res[n].append((time.perf_counter() - t) / 5 * 1e3)
for n, v_ in res.items(): print(f"{n:18s} {np.median(v_):7.2f} ms")
