"""Attention's batched dots alone: (B, H) products of Q x K by K x D, XLA against torch.

    python batched_dots.py XLA_FLAGS [torch]      # SHAPE="B H Q K D" (default 16 6 64 192 64)
"""
import os, sys, time
os.environ["XLA_FLAGS"] = sys.argv[1]
import jax, jax.numpy as jnp, numpy as np, torch
torch.set_num_threads(2)
B, H, Q, K, D = (int(x) for x in os.environ.get("SHAPE", "16 6 64 192 64").split())
r = np.random.default_rng(0)
q = jnp.asarray(r.standard_normal((B, H, Q, D), np.float32)); k = jnp.asarray(r.standard_normal((B, H, K, D), np.float32))
p = jnp.asarray(r.standard_normal((B, H, Q, K), np.float32)); v = k
fns = {"qk^T (NT)": (jax.jit(lambda q, k: jnp.einsum("bhqd,bhkd->bhqk", q, k)), (q, k)),
       "pv (NN)": (jax.jit(lambda p, v: jnp.einsum("bhqk,bhkd->bhqd", p, v)), (p, v)),
       "p^T dO (TN)": (jax.jit(lambda p, o: jnp.einsum("bhqk,bhqd->bhkd", p, o)), (p, q))}
tq, tk, tp = (torch.from_numpy(np.asarray(a).copy()) for a in (q, k, p))
tf = {"torch qk^T": lambda: tq @ tk.transpose(-1, -2), "torch pv": lambda: tp @ tk, "torch p^T dO": lambda: tp.transpose(-1, -2) @ tq}
def t(f, n=30):
    f(); f(); ts = []
    for _ in range(n):
        s = time.perf_counter(); x = f()
        if hasattr(x, "block_until_ready"): x.block_until_ready()
        ts.append(time.perf_counter() - s)
    return np.median(ts) * 1e3
flop = 2 * B * H * Q * K * D
for name, (f, a) in fns.items():
    ms = t(lambda: f(*a)); print(f"{name:14s} {ms:6.3f} ms {flop / ms / 1e6:5.0f} GFLOP/s")
if "torch" in sys.argv[2:]:
    for name, f in tf.items():
        ms = t(f); print(f"{name:14s} {ms:6.3f} ms {flop / ms / 1e6:5.0f} GFLOP/s")
