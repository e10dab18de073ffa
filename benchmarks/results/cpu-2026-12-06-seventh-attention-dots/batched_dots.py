from zoo.core import xla_flags; xla_flags.apply_cpu_defaults()
import jax, jax.numpy as jnp, numpy as np, time
from jax import lax
from zoo.bench import timing
B,H,T,D = 16,6,256,64
rng = np.random.default_rng(0)
q = jnp.asarray(rng.standard_normal((B*H,T,D),np.float32)); k = jnp.asarray(rng.standard_normal((B*H,T,D),np.float32))
def batched(q,k): return jnp.einsum('bqd,bkd->bqk', q, k)
def mapped(q,k): return lax.map(lambda a: a[0] @ a[1].T, (q,k))
def mapped_nn(q,k):
    kt = jnp.swapaxes(k,1,2)
    return lax.map(lambda a: a[0] @ a[1], (q,kt))
def batched_nn(q,k):
    kt = jnp.swapaxes(k,1,2)
    return jnp.einsum('bqd,bdk->bqk', q, kt)
def one_big(q,k):  # not equal: all pairs, just to see a 2-D dot's rate at these rows
    return (q.reshape(-1,D) @ k[0].T)
fns = {n: jax.jit(f) for n,f in dict(batched=batched, mapped=mapped, mapped_nn=mapped_nn, batched_nn=batched_nn, one_big=one_big).items()}
ref = fns['batched'](q,k)
for n,f in fns.items():
    if n!='one_big': np.testing.assert_allclose(f(q,k), ref, rtol=1e-4, atol=1e-3)
ch = timing.run_alternating({n:(lambda f=f: f(q,k).block_until_ready()) for n,f in fns.items()}, warmup=2, steps=10, rounds=5)
fl = 2*B*H*T*T*D
for n,c in ch.items():
    m = c.stats()['median']; print(f"{n:12s} {m*1e3:7.2f} ms  {fl/m/1e9:6.1f} GFLOP/s")
