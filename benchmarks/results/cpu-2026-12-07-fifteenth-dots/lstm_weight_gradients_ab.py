"""The LSTM layer's backward with its two weight gradients and the bias gradient in one matmul,
[h_prev, x, 1]^T @ dz, against zoo's (two matmuls and a row sum): the layer alone, then the step.

    python lstm_weight_gradients_ab.py quick:20 full:4      # SUITE:STEPS per step A/B
"""
import sys, time
from zoo.core import host_memory, xla_flags
xla_flags.apply_cpu_defaults(); host_memory.keep_freed_memory()
import jax, jax.numpy as jnp, numpy as np
from zoo.models import lstm as L

def bwd_one_matmul(res, cotangents):
    x, c0, h0, w_i, w_h, b, cs, hs, gates = res
    (dc, dh), dhs = cotangents
    c_prev = jnp.concatenate([c0[None], cs[:-1]])
    w_h_t = w_h.T
    def step(carry, inputs):
        dc, dh = carry
        dh_out, c, cp, gate = inputs
        i, f, g, o = jnp.split(gate.astype(jnp.float32), 4, axis=-1)
        dh = dh + dh_out
        tanh_c = jnp.tanh(c)
        dc = dc + dh * o * (1 - tanh_c ** 2)
        dz = jnp.concatenate([dc * g * i * (1 - i), dc * cp * f * (1 - f), dc * i * (1 - g ** 2),
                              dh * tanh_c * o * (1 - o)], axis=-1).astype(w_h.dtype)
        return (dc * f, (dz @ w_h_t).astype(dh.dtype)), dz
    (dc0, dh0), dz = jax.lax.scan(step, (dc, dh), (dhs, cs, c_prev, gates), reverse=True)
    h_prev = jnp.concatenate([h0[None], hs[:-1]]).astype(w_h.dtype)
    flat = lambda a: a.reshape(-1, a.shape[-1])
    H, D = w_h.shape[0], w_i.shape[0]
    inputs = jnp.concatenate([flat(h_prev), flat(x).astype(w_h.dtype),
                              jnp.ones((flat(x).shape[0], 1), w_h.dtype)], axis=1)
    d = jnp.matmul(inputs.T, flat(dz), preferred_element_type=jnp.float32)
    dx = dz @ w_i.T
    return (dx.astype(x.dtype), dc0.astype(c0.dtype), dh0.astype(h0.dtype),
            d[H:H + D].astype(w_i.dtype), d[:H].astype(w_h.dtype), d[-1].astype(b.dtype))

@jax.custom_vjp
def lstm_sequence_new(x, c0, h0, w_i, w_h, b):
    (c, h), _, hs, _ = L._lstm_scan(x, c0, h0, w_i, w_h, b)
    return (c, h), hs
lstm_sequence_new.defvjp(L._lstm_sequence_fwd, bwd_one_matmul)

T_, B, H = 35, 20, 650
r = np.random.default_rng(0)
mk = lambda *s, sc=0.1: jnp.asarray(r.standard_normal(s, np.float32) * sc)
x, w_i, w_h, b = mk(T_, B, H, sc=1), mk(H, 4 * H), mk(H, 4 * H), mk(4 * H)
z = jnp.zeros((B, H)); w = mk(T_, B, H, sc=1)
def loss(seq):
    return lambda x, w_i, w_h, b: ((seq(x, z, z, w_i, w_h, b)[1]) * w).sum()
g_old = jax.jit(jax.grad(loss(L.lstm_sequence), argnums=(0, 1, 2, 3)))
g_new = jax.jit(jax.grad(loss(lstm_sequence_new), argnums=(0, 1, 2, 3)))
for a, c in zip(g_old(x, w_i, w_h, b), g_new(x, w_i, w_h, b)):
    np.testing.assert_allclose(c, a, rtol=1e-4, atol=1e-4)
# backward alone: the vjp from saved residuals
def bwd_only(seq):
    out, vjp = jax.vjp(lambda *a: seq(x, z, z, *a)[1], w_i, w_h, b)
    return jax.jit(lambda ct: vjp(ct)), out
b_old, o = bwd_only(L.lstm_sequence); b_new, _ = bwd_only(lstm_sequence_new)
ts = {"old": [], "new": []}
for _ in range(8):
    for n, f in (("old", b_old), ("new", b_new)):
        jax.block_until_ready(f(w)); s = time.perf_counter()
        for _ in range(5): jax.block_until_ready(f(w))
        ts[n].append((time.perf_counter() - s) / 5 * 1e3)
a_, b_ = np.median(ts["old"]), np.median(ts["new"])
print(f"layer backward (grads of w_i, w_h, b): zoo {a_:.2f} ms, one matmul {b_:.2f} ms, {a_ / b_:.3f}x")
# the step
from zoo.bench import catalog, timing
from zoo.bench.zoo_runner import ZooRunner
for suite, steps in [s.split(":") for s in sys.argv[1:]]:
    case = next(c for c in catalog.case_table(suite) if c.name == "lstm")
    old = ZooRunner(case, "single")
    ours = L.lstm_sequence; L.lstm_sequence = lstm_sequence_new
    try:
        new = ZooRunner(case, "single")
    finally:
        L.lstm_sequence = ours
    for _ in range(2):
        old.step(); new.step()
    print("losses", old.loss(), new.loss())
    laps = timing.run_alternating({"old": old.step, "new": new.step}, warmup=1, steps=int(steps), rounds=8)
    a_, b_ = (laps[k].stats()["median"] * 1e3 for k in ("old", "new"))
    print(f"{suite} lstm step: zoo {a_:.2f} ms, one matmul {b_:.2f} ms, {a_ / b_:.3f}x", flush=True)
