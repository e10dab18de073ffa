"""A weight gradient's matmul x^T @ dy: as XLA folds the transpose into the dot (Eigen), laid
out first through an optimization barrier (YNNPACK), with the ones column of zoo's Dense, and
torch.  M (rows), K (in), N (out) from the environment.
"""
import os, sys, time
os.environ["XLA_FLAGS"] = "--xla_cpu_experimental_ynn_fusion_type=INDIVIDUAL_DOT"
import jax, jax.numpy as jnp, numpy as np, torch
M, K, N = int(os.environ.get("M", 400)), int(os.environ.get("K", 200)), int(os.environ.get("N", 10000))
r = np.random.default_rng(0)
h = jnp.asarray(r.standard_normal((M, K), np.float32))
g = jnp.asarray(r.standard_normal((M, N), np.float32))
def barrier_t(h, g):
    return jax.lax.optimization_barrier(h.T) @ g
def concat1(h, g):
    h1 = jnp.concatenate([h, jnp.ones((M, 1), h.dtype)], 1)
    return h1.T @ g
def concat1_barrier(h, g):
    h1 = jnp.concatenate([h, jnp.ones((M, 1), h.dtype)], 1)
    return jax.lax.optimization_barrier(h1.T) @ g
def gT_h(h, g):  # (N, K) = g^T h
    return g.T @ h
fns = {"h.T@g": lambda h, g: h.T @ g, "barrier(h.T)@g": barrier_t, "[h,1].T@g": concat1,
       "barrier([h,1].T)@g": concat1_barrier, "g.T@h": gT_h}
th, tg = torch.from_numpy(np.asarray(h)), torch.from_numpy(np.asarray(g))
ref = np.asarray(h).T @ np.asarray(g)
jf = {}
for n, f in fns.items():
    jf[n] = jax.jit(f)
    hlo = jf[n].lower(h, g).compile().as_text()
    print(n, "ynn" if "__ynn_fusion" in hlo else "eigen", [l.strip()[:120] for l in hlo.splitlines() if " dot(" in l][:1])
def t(f, n=20):
    f(); f(); ts = []
    for _ in range(n):
        s = time.perf_counter(); x = f()
        if hasattr(x, "block_until_ready"): x.block_until_ready()
        ts.append(time.perf_counter() - s)
    return np.median(ts) * 1e3
flop = 2 * M * K * N
for rnd in range(2):
    for n, f in jf.items():
        ms = t(lambda: f(h, g)); print(f"{n:22s} {ms:7.2f} ms {flop/ms/1e6:6.0f} GFLOP/s")
    ms = t(lambda: th.T @ tg); print(f"{'torch h.T@g':22s} {ms:7.2f} ms {flop/ms/1e6:6.0f} GFLOP/s")
