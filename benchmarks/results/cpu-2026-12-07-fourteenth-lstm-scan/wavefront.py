# Does XLA:CPU run two independent recurrent matmuls per scan step on the two cores side by side?
# Run: XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=INDIVIDUAL_DOT python wavefront.py (zoo's default).
import time, jax, jax.numpy as jnp

B, H, T = 20, 650, 35
k = jax.random.split(jax.random.PRNGKey(0), 6)
W1 = jax.random.normal(k[0], (H, 4 * H)) * 0.03
W2 = jax.random.normal(k[1], (H, 4 * H)) * 0.03
xs1 = jax.random.normal(k[2], (T, B, 4 * H))
xs2 = jax.random.normal(k[3], (T, B, 4 * H))
def cell(z, c):
    i, f, g, o = jnp.split(z, 4, -1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return c, jax.nn.sigmoid(o) * jnp.tanh(c)
@jax.jit
def one(xs, W):
    def body(carry, x):
        c, h = carry
        c, h = cell(x + h @ W, c)
        return (c, h), h
    z = jnp.zeros((B, H))
    return jax.lax.scan(body, (z, z), xs)[1]
@jax.jit
def two(xs1, xs2, W1, W2):
    def body(carry, x):
        (c1, h1), (c2, h2) = carry
        x1, x2 = x
        c1n, h1n = cell(x1 + h1 @ W1, c1)
        c2n, h2n = cell(x2 + h2 @ W2, c2)   # independent of layer 1's this step
        return ((c1n, h1n), (c2n, h2n)), (h1n, h2n)
    z = jnp.zeros((B, H))
    return jax.lax.scan(body, ((z, z), (z, z)), (xs1, xs2))[1]
def bench(f, *a, n=30):
    jax.block_until_ready(f(*a))
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            r = f(*a)
        jax.block_until_ready(r)
        ts.append((time.perf_counter() - t) / n * 1e3)
    return sorted(ts)[2]
for r in range(3):
    a = bench(one, xs1, W1); b = bench(two, xs1, xs2, W1, W2)
    print(f"one layer's scan {a:.2f} ms; two independent layers in one scan {b:.2f} ms; two one after another {2*a:.2f} ms; ratio {2*a/b:.2f}x")
