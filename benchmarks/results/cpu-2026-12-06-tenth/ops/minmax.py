import time
from zoo.core import xla_flags; xla_flags.apply_cpu_defaults()
import jax, jax.numpy as jnp, numpy as np, optax
x = jax.random.normal(jax.random.PRNGKey(0), (700, 10000)) * 3
lab = jax.random.randint(jax.random.PRNGKey(1), (700,), 0, 10000)
fns = {"max": lambda x: jnp.max(x, -1), "optax CE": lambda x: optax.softmax_cross_entropy_with_integer_labels(x, lab).sum(),
       "CE grad": jax.grad(lambda x: optax.softmax_cross_entropy_with_integer_labels(x, lab).sum())}
res = {}
for name, f in fns.items():
    low = jax.jit(f).lower(x)
    for opt in ({}, {"xla_cpu_enable_fast_min_max": True}):
        ex = low.compile(opt)
        v = ex(x); jax.block_until_ready(v)
        key = f"{name} {'fast' if opt else 'default'}"
        res[key] = (ex, v)
ts = {k: [] for k in res}
for r in range(5):
    for k, (ex, _) in res.items():
        t = time.perf_counter()
        for _ in range(10): out = ex(x)
        jax.block_until_ready(out); ts[k].append((time.perf_counter() - t) / 10 * 1e3)
for k in res:
    print(f"{k:24s} {np.median(ts[k]):6.2f} ms")
for name in fns:
    a, b = np.asarray(res[f'{name} default'][1]), np.asarray(res[f'{name} fast'][1])
    print(name, "max abs diff", np.max(np.abs(a - b)))
