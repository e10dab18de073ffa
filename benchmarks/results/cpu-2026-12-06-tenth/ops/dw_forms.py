"""x^T @ dy (a weight gradient) on this CPU: XLA's form (Eigen) against x^T laid out first (YNNPACK), and torch."""
import time, sys
from zoo.core import xla_flags; xla_flags.apply_cpu_defaults()
import jax, jax.numpy as jnp, numpy as np, torch
torch.set_num_threads(2)
shapes = [(700, 650, 2600), (700, 650, 10000), (4096, 384, 1536), (4096, 1536, 384), (256, 784, 1000)]
def t_it(f, *a, n=10, r=5):
    out = []
    for _ in range(r):
        t = time.perf_counter()
        for _ in range(n): y = f(*a)
        if hasattr(y, "block_until_ready"): y.block_until_ready()
        out.append((time.perf_counter() - t) / n * 1e3)
    return np.median(out)
for m, k, n in shapes:
    x = jax.random.normal(jax.random.PRNGKey(0), (m, k)); dy = jax.random.normal(jax.random.PRNGKey(1), (m, n))
    a = jax.jit(lambda x, dy: x.T @ dy)
    b = jax.jit(lambda x, dy: jax.lax.optimization_barrier(x.T) @ dy)
    c = jax.jit(lambda x, dy: (dy.T @ x).T)
    d = jax.jit(lambda x, dy: jax.lax.optimization_barrier(dy.T) @ x)  # (n, k): the transposed gradient
    xt, dyt = torch.from_numpy(np.asarray(x)), torch.from_numpy(np.asarray(dy))
    for f in (a, b, c, d): f(x, dy).block_until_ready()
    np.testing.assert_allclose(np.asarray(a(x, dy)), np.asarray(b(x, dy)), rtol=1e-4, atol=1e-2)
    res = {}
    for rnd in range(2):
        for name, f in (("x.T@dy", a), ("barrier(x.T)@dy", b), ("(dy.T@x).T", c), ("barrier(dy.T)@x", d)):
            res.setdefault(name, []).append(t_it(f, x, dy))
        res.setdefault("torch x.t()@dy", []).append(t_it(lambda: xt.t() @ dyt))
    print(f"({m}x{k})^T @ ({m}x{n}): " + "  ".join(f"{k2} {min(v):.2f}" for k2, v in res.items()), flush=True)
