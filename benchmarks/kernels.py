"""A case's heavy ops one by one: XLA:CPU (as zoo computes them) against PyTorch, forward and each
gradient apart, at the full suite's shapes, in one process with the contenders taking turns.

``zoo bench --profile`` sums the ops XLA:CPU's trace records, but a convolution runs on Eigen's
thread pool and the trace sees only the thunk that starts it: DCGAN's full case holds 93 ms of
traced op time in a 231 ms step. Timing each op alone says where such a step goes, and how each
kernel compares with PyTorch's (oneDNN's convolutions, MKL's matmuls, flash attention).

Groups:
- ``dcgan``: the four convolutions of the full DCGAN (28x28, 64 features, batch 128). For the
  discriminator's stride-2 convolutions, two other ways zoo could compute them are timed too,
  each checked equal to lax's first: space-to-depth then a 2x2 stride-1 convolution (no dilated
  convolution in its backward), and patches and one matmul (im2col). The generator's transposed
  convolutions are zoo's (``zoo.models.layers.conv_transpose``) beside ``nn.ConvTranspose``'s
  (the same forward, the backward XLA derives).
- ``transformer``: nanoGPT's char model (6 x 384, context 256, batch 16): each Dense's matmul
  (x @ W, dy @ W^T, x^T @ dy) and causal attention (zoo's query blocks and one
  ``jax.nn.dot_product_attention`` call against ``F.scaled_dot_product_attention``, forward,
  and backward to q, k and v).
- ``unet``: the full U-Net's 3x3 stride-1 convolutions (``mnist`` preset, batch 64) at 28, 14
  and 7 pixels, against ``F.conv2d``.
- ``autoencoder``: the Hinton autoencoder's eight Dense matmuls (batch 256), x @ W, dy @ W^T
  and x^T @ dy.
- ``lstm``: the Zaremba medium LSTM's parts: one LSTM layer (zoo's ``lstm_sequence``, forward
  and backward, against the fused ``torch.lstm`` that ``nn.LSTM`` calls), the 10,000-word
  softmax's matmul and its cross-entropy.

    python benchmarks/kernels.py --group dcgan --out benchmarks/results/DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from zoo.core import xla_flags

xla_flags.apply_cpu_defaults()  # the XLA:CPU options zoo's commands run with, before JAX starts

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax import lax  # noqa: E402

from zoo.bench import timing  # noqa: E402
from zoo.models.layers import NHWC, conv_transpose  # noqa: E402
from zoo.models.lstm import lstm_sequence  # noqa: E402
from zoo.models.transformer import causal_attention  # noqa: E402

CONV_GRADS = {"dx": (0,), "dk": (1,)}
GROUPS = ("dcgan", "transformer", "unet", "autoencoder", "lstm")


def conv_s2(x: jax.Array, k: jax.Array) -> jax.Array:
    """DCGAN's discriminator convolution: 4x4, stride 2, SAME (lax, as ``nn.Conv``)."""
    return lax.conv_general_dilated(x, k, (2, 2), "SAME", dimension_numbers=NHWC)


def conv_s2_space_to_depth(x: jax.Array, k: jax.Array) -> jax.Array:
    """The same convolution as a 2x2 stride-1 convolution of the 2x2 space-to-depth input."""
    b, h, w, c = x.shape
    o = k.shape[-1]
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # SAME for k 4, s 2, even sizes
    hh, ww = (h + 2) // 2, (w + 2) // 2
    x = x.reshape(b, hh, 2, ww, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, hh, ww, 4 * c)
    k = k.reshape(2, 2, 2, 2, c, o).transpose(0, 2, 1, 3, 4, 5).reshape(2, 2, 4 * c, o)
    return lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=NHWC)


def conv_s2_im2col(x: jax.Array, k: jax.Array) -> jax.Array:
    """The same convolution as 16 strided slices (patches) and one matmul."""
    b, h, w, c = x.shape
    o = k.shape[-1]
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    hh, ww = h // 2, w // 2
    patches = jnp.concatenate([x[:, i:i + 2 * hh - 1:2, j:j + 2 * ww - 1:2, :]
                               for i in range(4) for j in range(4)], axis=-1)
    return (patches.reshape(-1, 16 * c) @ k.reshape(16 * c, o)).reshape(b, hh, ww, o)


def conv_transpose_lax(x: jax.Array, k: jax.Array) -> jax.Array:
    """``nn.ConvTranspose``'s computation: lax's transposed convolution, XLA's own backward."""
    return jax.lax.conv_transpose(x, k, (2, 2), "SAME", dimension_numbers=NHWC)


CONV_ALTERNATIVES = {"space-to-depth": conv_s2_space_to_depth, "im2col": conv_s2_im2col}
DECONV_ALTERNATIVES = {"lax-derived backward": conv_transpose_lax}


def _to_torch(kind: str):
    """(torch function, how an NHWC/HWIO jax input becomes its torch layout) for an op kind."""
    import torch
    F = torch.nn.functional
    nchw = lambda a: a.transpose(0, 3, 1, 2)
    if kind == "conv":      # HWIO -> OIHW
        oihw = lambda k: k.transpose(3, 2, 0, 1)
        return lambda x, k: F.conv2d(x, k, stride=2, padding=1), (nchw, oihw)
    if kind == "conv3":     # the U-Net's 3x3 stride-1 SAME convolution
        return (lambda x, k: F.conv2d(x, k, stride=1, padding=1),
                (nchw, lambda k: k.transpose(3, 2, 0, 1)))
    if kind == "deconv":    # HWIO -> IOHW (flipped: lax's transposed kernel is not torch's)
        return (lambda x, k: F.conv_transpose2d(x, k, stride=2, padding=1),
                (nchw, lambda k: k[::-1, ::-1].transpose(2, 3, 0, 1)))
    if kind == "matmul":
        return lambda x, w: x @ w, (lambda a: a, lambda a: a)
    if kind == "attention":  # (B, T, H, D) -> (B, H, T, D)
        to = lambda a: a.transpose(0, 2, 1, 3)
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), (to, to, to)
    if kind == "lstm":  # one layer, gates i, f, g, o as zoo's; torch's kernels are (4H, in)
        def lstm(x, w_ih, w_hh, b):
            zeros = x.new_zeros(1, x.shape[1], w_hh.shape[1])  # (layers, B, H)
            return torch.lstm(x, (zeros, zeros), [w_ih, w_hh, b, torch.zeros_like(b)],
                              True, 1, 0.0, True, False, False)[0]
        same, t = (lambda a: a), (lambda a: a.T)
        return lstm, (same, t, t, same)
    if kind == "xent":  # per-row softmax cross-entropy against the labels row % classes
        def xent(logits):
            labels = torch.arange(logits.shape[0]) % logits.shape[1]
            return F.cross_entropy(logits, labels, reduction="none")
        return xent, (lambda a: a,)
    raise ValueError(kind)


def ops(group: str) -> list[dict]:
    """``name``, input shapes, zoo's function, the torch kind, gradients to time (by argnums)."""
    if group == "dcgan":
        b, f = 128, 64
        deconv = lambda x, k: conv_transpose(x, k, (2, 2))
        return [
            dict(name=f"D conv_0 (1->{f}, 28->14)", shapes=[(b, 28, 28, 1), (4, 4, 1, f)],
                 zoo=conv_s2, torch="conv", grads=CONV_GRADS, alternatives=CONV_ALTERNATIVES),
            dict(name=f"D conv_1 ({f}->{2 * f}, 14->7)", shapes=[(b, 14, 14, f), (4, 4, f, 2 * f)],
                 zoo=conv_s2, torch="conv", grads=CONV_GRADS, alternatives=CONV_ALTERNATIVES),
            dict(name=f"G deconv_0 ({2 * f}->{f}, 7->14)",
                 shapes=[(b, 7, 7, 2 * f), (4, 4, 2 * f, f)],
                 zoo=deconv, torch="deconv", grads=CONV_GRADS, alternatives=DECONV_ALTERNATIVES),
            dict(name=f"G out ({f}->1, 14->28)", shapes=[(b, 14, 14, f), (4, 4, f, 1)],
                 zoo=deconv, torch="deconv", grads=CONV_GRADS, alternatives=DECONV_ALTERNATIVES),
        ]
    if group == "transformer":
        m, c, t, h = 16 * 256, 384, 256, 6
        grads = {"dx": (0,), "dw": (1,)}
        dense = [(f"{name} ({k}x{n})", k, n) for name, k, n in
                 [("attn c_attn", c, 3 * c), ("attn c_proj", c, c), ("mlp c_fc", c, 4 * c),
                  ("mlp c_proj", 4 * c, c), ("lm head", c, 65)]]
        one_block = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True)
        return [dict(name=name, shapes=[(m, k), (k, n)], zoo=jnp.matmul, torch="matmul",
                     grads=grads) for name, k, n in dense] + [
            dict(name=f"causal attention (16 x {h} heads x {t} x {c // h})",
                 shapes=[(16, t, h, c // h)] * 3, zoo=causal_attention, torch="attention",
                 grads={"dqkv": (0, 1, 2)}, alternatives={"one block": one_block})]
    if group == "autoencoder":
        # The full suite's Hinton autoencoder (batch 256): its eight Dense layers' matmuls.
        widths = [784, 1000, 500, 250, 30]
        widths = widths + widths[-2::-1]
        return [dict(name=f"Dense {k}x{n}", shapes=[(256, k), (k, n)], zoo=jnp.matmul,
                     torch="matmul", grads={"dx": (0,), "dw": (1,)})
                for k, n in zip(widths, widths[1:])]
    if group == "lstm":
        # The full suite's Zaremba medium LSTM (2 x 650, 35 steps, batch 20, 10,000 words): one
        # layer (zoo's lstm_sequence against torch's fused LSTM), the softmax's matmul and its
        # cross-entropy.
        t, b, h, v = 35, 20, 650, 10_000
        def layer(x, w_i, w_h, bias):
            zeros = jnp.zeros((x.shape[1], w_h.shape[0]), x.dtype)
            return lstm_sequence(x, zeros, zeros, w_i, w_h, bias)[1]
        def xent(logits):
            labels = jnp.arange(logits.shape[0]) % logits.shape[1]
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return [
            dict(name=f"LSTM layer ({t} steps x {b}, {h} -> {h})",
                 shapes=[(t, b, h), (h, 4 * h), (h, 4 * h), (4 * h,)], zoo=layer, torch="lstm",
                 grads={"d(x, w_i, w_h, b)": (0, 1, 2, 3)}),
            dict(name=f"softmax Dense {h}x{v}", shapes=[(t * b, h), (h, v)], zoo=jnp.matmul,
                 torch="matmul", grads={"dx": (0,), "dw": (1,)}),
            dict(name=f"cross-entropy ({t * b} x {v})", shapes=[(t * b, v)], zoo=xent,
                 torch="xent", grads={"dlogits": (0,)}),
        ]
    if group == "unet":
        # The full suite's U-Net (`mnist` preset, batch 64): its 3x3 stride-1 convolutions at
        # 28, 14 and 7 pixels, ResBlock convolutions and the up path's, whose inputs are
        # concatenated with a skip.
        conv3 = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                                      dimension_numbers=NHWC)
        return [dict(name=f"3x3 conv {i}->{o} at {s}x{s}", shapes=[(64, s, s, i), (3, 3, i, o)],
                     zoo=conv3, torch="conv3", grads=CONV_GRADS)
                for s, i, o in [(28, 32, 32), (28, 96, 32), (14, 64, 64), (14, 128, 64),
                                (7, 64, 64), (7, 128, 64)]]
    raise ValueError(f"unknown group {group!r}; choose one of {', '.join(GROUPS)}")


def jax_parts(fn, args: list, dy: jax.Array, grads: dict) -> dict:
    """Callables that run fn's forward and each gradient of ``grads`` (each blocks).

    A gradient part runs the backward alone, from the residuals one forward saved (``jax.vjp``'s
    function, a pytree, handed to a jitted call), as ``torch.autograd.grad(..., retain_graph=True)``
    does on the other side. A jitted ``vjp`` would run again, in every gradient call, the part of
    the forward the backward needs (attention's probabilities, an LSTM's gates)."""
    forward, apply = jax.jit(fn), jax.jit(lambda vjp_fn, dy: vjp_fn(dy))
    calls = {"fwd": lambda: jax.block_until_ready(forward(*args))}
    for name, argnums in grads.items():
        def with_vjp(*inputs, argnums=argnums):
            return jax.vjp(lambda *w: fn(*[w[argnums.index(i)] if i in argnums else x
                                           for i, x in enumerate(inputs)]),
                           *[inputs[i] for i in argnums])[1]
        vjp_fn = jax.jit(with_vjp)(*args)
        calls[name] = lambda v=vjp_fn: jax.block_until_ready(apply(v, dy))
    return calls


def torch_parts(kind: str, args: list, dy: jax.Array, grads: dict) -> tuple[dict, list, np.ndarray]:
    """The torch op's callables (forward and each gradient of ``grads``), its inputs in torch's
    layout and its output, from zoo's inputs."""
    import torch
    fn, layouts = _to_torch(kind)
    ts = [torch.tensor(np.ascontiguousarray(lay(np.asarray(a))), requires_grad=True)
          for lay, a in zip(layouts, args)]
    dyt = torch.tensor(np.ascontiguousarray(layouts[0](np.asarray(dy))))
    y = fn(*ts)
    calls = {"fwd": lambda: fn(*ts)}
    for name, argnums in grads.items():
        calls[name] = lambda a=argnums: torch.autograd.grad(y, [ts[i] for i in a], dyt,
                                                            retain_graph=True)
    return calls, [t.detach().numpy() for t in ts], y.detach().numpy()


def measure(op: dict, steps: int, rounds: int, rng: np.random.Generator) -> dict:
    """ms per call of each contender's parts (zoo, torch, alternatives): the median of every
    call in ``rounds`` alternating rounds of ``steps`` calls; outputs checked equal first."""
    args = [jnp.asarray(rng.normal(size=s) * (0.1 if i else 1.0), jnp.float32)
            for i, s in enumerate(op["shapes"])]
    y = op["zoo"](*args)
    dy = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    contenders = {"xla": jax_parts(op["zoo"], args, dy, op["grads"])}
    contenders["torch"], _, y_torch = torch_parts(op["torch"], args, dy, op["grads"])
    # Same op on both sides: the outputs agree (torch's back in zoo's layout).
    same = lambda y: y
    back = {"matmul": same, "lstm": same, "xent": same,
            "attention": lambda y: y.transpose(0, 2, 1, 3)}.get(
        op["torch"], lambda y: y.transpose(0, 2, 3, 1))(y_torch)
    scale = float(jnp.abs(y).max())
    np.testing.assert_allclose(back, y, atol=1e-4 * scale, rtol=1e-4)
    for name, fn in op.get("alternatives", {}).items():
        np.testing.assert_allclose(fn(*args), y, rtol=2e-5, atol=2e-5 * scale)
        contenders[name] = jax_parts(fn, args, dy, op["grads"])
    # The bench's own alternating timer: 2 warm-up calls (compiles, first allocations), then
    # every (contender, part) takes turns for ``steps`` calls in each of ``rounds`` rounds.
    chronos = timing.run_alternating(
        {(c, p): fn for c, parts in contenders.items() for p, fn in parts.items()},
        warmup=2, steps=steps * rounds, rounds=rounds)
    return {c: {p: chronos[(c, p)].stats()["median"] * 1e3 for p in parts}
            for c, parts in contenders.items()}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--group", choices=GROUPS, default="dcgan")
    p.add_argument("--steps", type=int, default=10, help="timed calls per round and part")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", required=True)
    p.add_argument("--scale", type=float, default=1.0,
                   help="batch scale (a smoke test at small size: --scale 0.05)")
    args = p.parse_args()
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(0)
    rows, records = [], []
    for op in ops(args.group):
        if args.scale != 1.0:
            n = max(1, int(op["shapes"][0][0] * args.scale))
            op["shapes"] = [(n, *s[1:]) if i == 0 or op["torch"] == "attention" else s
                            for i, s in enumerate(op["shapes"])]
        med = measure(op, args.steps, args.rounds, rng)
        torch_sum = sum(med["torch"].values())
        records.append({"op": op["name"], "shapes": op["shapes"], "ms": med})
        for c, parts in med.items():
            cells = ", ".join(f"{p} {ms:.2f}" for p, ms in parts.items())
            rows.append(f"| {op['name']} | {c} | {cells} | {sum(parts.values()):.2f} | "
                        f"{torch_sum / sum(parts.values()):.2f}x |")
        print("\n".join(rows[-len(med):]), flush=True)
    table = ("| op | computed by | ms per call (median) | sum ms | torch sum / sum |\n"
             "|---|---|---|---:|---:|\n" + "\n".join(rows))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from zoo.bench import hardware
    env = hardware.environment()
    (out / f"kernels-{args.group}.json").write_text(json.dumps(
        {"env": env, "args": vars(args), "records": records}, indent=2, default=str))
    (out / f"kernels-{args.group}.md").write_text(
        f"{args.group}: each op alone, median of every call in {args.rounds} alternating rounds "
        f"of {args.steps} calls, one process ({env.get('cpu_model', '')}, jax {jax.__version__}, "
        f"torch {torch.__version__}).\n\n" + table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
