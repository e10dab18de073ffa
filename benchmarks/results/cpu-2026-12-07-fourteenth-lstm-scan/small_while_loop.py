# XLA:CPU's small-while-loop pass (whole loops as one kernel) on an LSTM layer's scan; run once per
# XLA_FLAGS, with and without --xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=N.
import sys, time, jax, jax.numpy as jnp
B, H, T = 20, int(sys.argv[1]), 35
k = jax.random.split(jax.random.PRNGKey(0), 3)
W = jax.random.normal(k[0], (H, 4 * H)) * 0.03
xs = jax.random.normal(k[1], (T, B, 4 * H))
def cell(z, c):
    i, f, g, o = jnp.split(z, 4, -1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return c, jax.nn.sigmoid(o) * jnp.tanh(c)
def layer(xs, W):
    def body(carry, x):
        c, h = carry
        c, h = cell(x + h @ W, c)
        return (c, h), h
    z = jnp.zeros((B, H))
    return jax.lax.scan(body, (z, z), xs)[1]
fwd = jax.jit(layer)
grad = jax.jit(jax.grad(lambda xs, W: jnp.sum(jnp.sin(layer(xs, W))), argnums=(0, 1)))
txt = fwd.lower(xs, W).compile().as_text()
print("small_call in fwd HLO:", "small_call" in txt, txt.count("while("))
def bench(f, *a, n=20):
    jax.block_until_ready(f(*a))
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            r = f(*a)
        jax.block_until_ready(r)
        ts.append((time.perf_counter() - t) / n * 1e3)
    return sorted(ts)[2]
print(f"H={H} fwd {bench(fwd, xs, W):.2f} ms, fwd+bwd {bench(grad, xs, W):.2f} ms")
