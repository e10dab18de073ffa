from zoo.core import xla_flags; xla_flags.apply_cpu_defaults()
import jax, jax.numpy as jnp, numpy as np, optax, sys
from jax import lax
from zoo.bench import timing
N, V = int(sys.argv[1]), 10000
r = np.random.default_rng(0)
x = jnp.asarray(r.normal(size=(N, V)) * 3, jnp.float32); y = jnp.asarray(r.integers(0, V, N))
def ce_optax(x): return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(x, y))
def lse_split(x, parts=400):
    m = lax.stop_gradient(x.reshape(N, parts, V // parts).max(-1).max(-1, keepdims=True))
    return jnp.log(jnp.sum(jnp.exp(x - m), -1)) + m[:, 0]
def ce_split(x): return jnp.mean(lse_split(x) - jnp.take_along_axis(x, y[:, None], 1)[:, 0])
def lse_split2(x, parts=400):
    m = lax.stop_gradient(x.reshape(N, parts, V // parts).max(-1).max(-1, keepdims=True))
    s = jnp.exp(x - m).reshape(N, parts, V // parts).sum(-1).sum(-1)
    return jnp.log(s) + m[:, 0]
def ce_split2(x): return jnp.mean(lse_split2(x) - jnp.take_along_axis(x, y[:, None], 1)[:, 0])
def lse_t(x, parts=25):  # reduce over a leading axis first: (N, parts, V/parts) max over axis 1 is elementwise across lanes
    xr = x.reshape(N, parts, V // parts)
    m = lax.stop_gradient(xr.max(1).max(-1, keepdims=True))
    s = jnp.exp(x - m).reshape(N, parts, V // parts).sum(1).sum(-1)
    return jnp.log(s) + m[:, 0]
def ce_t(x): return jnp.mean(lse_t(x) - jnp.take_along_axis(x, y[:, None], 1)[:, 0])
fns = dict(optax=ce_optax, split=ce_split, split2=ce_split2, t=ce_t)
ref = jax.jit(jax.value_and_grad(ce_optax))(x)
steps = {}
for n, f in fns.items():
    vg = jax.jit(jax.value_and_grad(f)); fw = jax.jit(f)
    v, g = vg(x); np.testing.assert_allclose(v, ref[0], rtol=1e-6); np.testing.assert_allclose(g, ref[1], rtol=1e-5, atol=1e-9)
    steps[n + " fwd"] = (lambda fw=fw: fw(x).block_until_ready())
    steps[n + " f+b"] = (lambda vg=vg: jax.block_until_ready(vg(x)))
ch = timing.run_alternating(steps, warmup=3, steps=40, rounds=8)
for n, c in ch.items(): print(f"{n:12s} {c.stats()['median']*1e3:7.3f} ms")
