import os, time, sys
from zoo.core import xla_flags; xla_flags.apply_cpu_defaults()
import jax, jax.numpy as jnp, numpy as np, optax
x = jax.random.normal(jax.random.PRNGKey(0), (700, 10000)) * 3
lab = jax.random.randint(jax.random.PRNGKey(1), (700,), 0, 10000)
m0 = jnp.max(x, -1)
fns = {
  "max": jax.jit(lambda x: jnp.max(x, -1)),
  "sum": jax.jit(lambda x: jnp.sum(x, -1)),
  "exp-sum given m": jax.jit(lambda x, m=m0: jnp.sum(jnp.exp(x - m[:, None]), -1)),
  "exp alone (write)": jax.jit(lambda x: jnp.exp(x)),
  "logsumexp": jax.jit(lambda x: jax.nn.logsumexp(x, -1)),
  "optax CE": jax.jit(lambda x: optax.softmax_cross_entropy_with_integer_labels(x, lab)),
  "max via (700,40,250)": jax.jit(lambda x: jnp.max(jnp.max(x.reshape(700, 40, 250), -1), -1)),
  "max via (700,250,40) axis1": jax.jit(lambda x: jnp.max(jnp.max(x.reshape(700, 250, 40), 1), -1)),
}
for k, f in fns.items(): jax.block_until_ready(f(x))
res = {k: [] for k in fns}
for r in range(5):
    for k, f in fns.items():
        t = time.perf_counter()
        for _ in range(10): out = f(x)
        jax.block_until_ready(out)
        res[k].append((time.perf_counter() - t) / 10 * 1e3)
for k, v in res.items(): print(f"{k:28s} {np.median(v):7.2f} ms  (min {min(v):.2f})")
