"""A Dense layer's three matmuls alone (x @ W, dy @ W^T, x^T @ dy) under the XLA options given,\nand torch's.  M (rows), K (in), N (out) from the environment.\n"""
import os, sys, time
flags = sys.argv[1] if len(sys.argv) > 1 else "--xla_cpu_experimental_ynn_fusion_type=INDIVIDUAL_DOT"
os.environ["XLA_FLAGS"] = flags
import jax, jax.numpy as jnp, numpy as np, torch
M, K, N = int(os.environ.get("M", 400)), int(os.environ.get("K", 200)), int(os.environ.get("N", 10000))
r = np.random.default_rng(0)
h = jnp.asarray(r.standard_normal((M, K), np.float32))
W = jnp.asarray(r.standard_normal((K, N), np.float32))
g = jnp.asarray(r.standard_normal((M, N), np.float32))
Wt = jnp.asarray(np.asarray(W).T.copy())
fns = {
 "fwd h@W": (jax.jit(lambda h, W: h @ W), (h, W)),
 "dx g@W^T (W as KxN)": (jax.jit(lambda g, W: g @ W.T), (g, W)),
 "dx g@Wt (Wt NxK stored)": (jax.jit(lambda g, Wt: g @ Wt), (g, Wt)),
 "dW h^T@g": (jax.jit(lambda h, g: h.T @ g), (h, g)),
}
th, tW, tg = (torch.from_numpy(np.asarray(a)) for a in (h, W, g))
tfns = {"torch fwd": lambda: th @ tW, "torch dx g@W^T": lambda: tg @ tW.T, "torch dW h^T@g": lambda: th.T @ tg}
def t(f, n=20):
    f(); f()
    ts = []
    for _ in range(n):
        s = time.perf_counter(); r_ = f(); 
        if hasattr(r_, "block_until_ready"): r_.block_until_ready()
        ts.append(time.perf_counter() - s)
    return np.median(ts) * 1e3
flop = 2 * M * K * N
for rnd in range(2):
    for name, (f, a) in fns.items():
        ms = t(lambda: f(*a)); print(f"{name:28s} {ms:7.2f} ms {flop/ms/1e6:6.0f} GFLOP/s")
    for name, f in tfns.items():
        ms = t(f); print(f"{name:28s} {ms:7.2f} ms {flop/ms/1e6:6.0f} GFLOP/s")
