"""Analytic FLOP counts for MFU, in the style of levanter's ``flop_utils``.

A FLOP here is one floating-point add or multiply, so a multiply-accumulate is 2 FLOPs and an
``(m, k) @ (k, n)`` matmul is ``2 m k n``. Only matmuls and convolutions are counted (elementwise
work is a few percent for the models zoo benchmarks); MFU is ``achieved FLOP/s / peak FLOP/s`` with
these counts, the convention of the PaLM paper and of levanter.

Training counts the forward pass once and the backward pass twice (gradients with respect to the
activations and to the weights), except that the first layer needs no gradient with respect to its
input, the data. ``train_flops(forward, first_layer)`` does that arithmetic.

Two ways in:

* closed forms per model (:func:`mlp_forward_flops`, :func:`lm_forward_flops_per_token`,
  :func:`lstm_forward_flops_per_token`, :func:`conv2d_flops`, ...), which the benchmark harness uses;
* :func:`jaxpr_flops`, which walks a function's jaxpr and counts every ``dot_general`` and
  ``conv_general_dilated``, for any model, as a cross-check on both the closed forms and XLA's
  ``cost_analysis``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import numpy as np


def dense_flops(batch: float, in_features: int, out_features: int) -> float:
    """Forward FLOPs of ``x @ W`` for ``batch`` rows (bias adds not counted)."""
    return 2.0 * batch * in_features * out_features


def train_flops(forward: float, first_layer: float = 0.0) -> float:
    """Forward + backward FLOPs from the forward count.

    The backward pass costs twice the forward (activation and weight gradients), less the
    activation gradient of the first layer (``first_layer``: its forward FLOPs), which nobody needs.
    """
    return 3.0 * forward - first_layer


def mlp_forward_flops(sizes: Sequence[int], batch: float = 1) -> float:
    """Forward FLOPs of a stack of Dense layers ``sizes[0] -> sizes[1] -> ... -> sizes[-1]``."""
    return sum(dense_flops(batch, a, b) for a, b in zip(sizes[:-1], sizes[1:]))


def mlp_train_flops(sizes: Sequence[int], batch: float = 1) -> float:
    """Forward + backward FLOPs of a Dense stack whose input is data (no input gradient)."""
    if len(sizes) < 2:
        return 0.0
    return train_flops(mlp_forward_flops(sizes, batch), dense_flops(batch, sizes[0], sizes[1]))


def conv2d_flops(batch: float, out_hw: tuple[int, int], kernel: tuple[int, int], in_channels: int,
                 out_channels: int, feature_groups: int = 1) -> float:
    """Forward FLOPs of a 2-D convolution producing ``out_hw`` positions per example."""
    return (2.0 * batch * out_hw[0] * out_hw[1] * kernel[0] * kernel[1] *
            (in_channels // feature_groups) * out_channels)


def conv_transpose2d_flops(batch: float, in_hw: tuple[int, int], kernel: tuple[int, int],
                           in_channels: int, out_channels: int) -> float:
    """Useful forward FLOPs of a transposed convolution: every input position meets the kernel once.

    XLA lowers a strided transposed convolution to a convolution over an input dilated with zeros,
    and its ``cost_analysis`` counts the multiplications by those zeros too, so it reports up to
    ``stride**2`` times this.
    """
    return 2.0 * batch * in_hw[0] * in_hw[1] * kernel[0] * kernel[1] * in_channels * out_channels


def attention_forward_flops_per_token(seq_len: int, num_heads: int, head_dim: int,
                                      causal_skip: bool = False) -> float:
    """Forward FLOPs of scaled dot-product attention per token (per layer): ``QK^T`` and ``PV``.

    As in levanter, the full ``seq_len x seq_len`` score matrix is counted (XLA computes it even
    under a causal mask) unless ``causal_skip`` (a kernel that skips the masked half).
    """
    flops = 2.0 * 2.0 * seq_len * num_heads * head_dim
    return flops / 2 if causal_skip else flops


def lm_forward_flops_per_token(*, hidden_dim: int, intermediate_dim: int, num_layers: int,
                               num_heads: int, seq_len: int, vocab_size: int,
                               num_kv_heads: int | None = None, glu: bool = False,
                               head_dim: int | None = None) -> float:
    """Forward FLOPs per token of a decoder-only transformer (levanter's ``lm_flops_per_token``).

    Counts the q/k/v and output projections, attention scores and weighted values, the MLP
    (3 matmuls with a GLU, else 2) and the language-model head; embeddings are lookups (0 FLOPs).
    """
    num_kv_heads = num_kv_heads or num_heads
    head_dim = head_dim or hidden_dim // num_heads
    qkv = 2.0 * hidden_dim * (num_heads + 2 * num_kv_heads) * head_dim
    out_proj = 2.0 * num_heads * head_dim * hidden_dim
    mlp = 2.0 * (3 if glu else 2) * hidden_dim * intermediate_dim
    attn = attention_forward_flops_per_token(seq_len, num_heads, head_dim)
    lm_head = 2.0 * hidden_dim * vocab_size
    return num_layers * (qkv + out_proj + mlp + attn) + lm_head


def lm_train_flops_per_token(**kwargs: Any) -> float:
    """Forward + backward FLOPs per token of :func:`lm_forward_flops_per_token`.

    The first layer of a language model is an embedding lookup, so every matmul needs its full
    backward pass: exactly 3x the forward.
    """
    return train_flops(lm_forward_flops_per_token(**kwargs))


def lstm_forward_flops_per_token(*, input_dim: int, hidden_dim: int, num_layers: int,
                                 vocab_size: int = 0) -> float:
    """Forward FLOPs per token (time step) of a stacked LSTM and an optional vocabulary head.

    Each layer computes four gates from ``[x, h]``: ``2 * (in + hidden) * 4 * hidden``.
    """
    flops, d_in = 0.0, input_dim
    for _ in range(num_layers):
        flops += dense_flops(1, d_in + hidden_dim, 4 * hidden_dim)
        d_in = hidden_dim
    return flops + dense_flops(1, hidden_dim, vocab_size)


# ---------------------------------------------------------------------------------------------
# Counting from a jaxpr.


def _dot_general_flops(eqn) -> float:
    (lhs_contract, _), (lhs_batch, _) = eqn.params["dimension_numbers"]
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    out = eqn.outvars[0].aval.shape
    # out = batch dims x lhs free x rhs free; each output element needs prod(contract) MACs.
    return 2.0 * math.prod(out) * math.prod(lhs[d] for d in lhs_contract)


def _conv_flops(eqn) -> float:
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    out = eqn.outvars[0].aval.shape
    dn = eqn.params["dimension_numbers"]
    # rhs_spec: (out feature dim, in feature dim, spatial...) positions in the kernel's layout.
    rhs_spec = dn.rhs_spec
    kernel_in = rhs[rhs_spec[1]]
    kernel_spatial = math.prod(rhs[d] for d in rhs_spec[2:])
    # Each output element: kernel_spatial * (in features per group) MACs. batch_group_count (used
    # for weight gradients) splits the output feature dim but not the MACs per element.
    return 2.0 * math.prod(out) * kernel_spatial * kernel_in


def _sub_jaxprs(eqn):
    for name, value in eqn.params.items():
        vals = value if isinstance(value, (tuple, list)) else (value,)
        for v in vals:
            if isinstance(v, jax.extend.core.ClosedJaxpr):
                yield name, v.jaxpr
            elif isinstance(v, jax.extend.core.Jaxpr):
                yield name, v


def count_jaxpr_flops(jaxpr) -> float:
    """Matmul and convolution FLOPs of a (closed) jaxpr, recursing into sub-jaxprs.

    ``scan`` bodies count ``length`` times; ``cond`` counts its most expensive branch; a
    ``while`` body counts once (its trip count is not static).
    """
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_general_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "cond":
            total += max((count_jaxpr_flops(b) for b in eqn.params["branches"]), default=0.0)
        else:
            subs = [j for _, j in _sub_jaxprs(eqn)]
            inner = sum(count_jaxpr_flops(j) for j in subs)
            if name == "scan":
                inner *= eqn.params["length"]
            total += inner
    return total


def jaxpr_flops(fn: Callable, *args: Any, **kwargs: Any) -> float:
    """Matmul and convolution FLOPs of ``fn(*args, **kwargs)``, counted from its jaxpr.

    Shapes are all that is used, so ``args`` may be ``jax.ShapeDtypeStruct`` s. Under ``pmap`` or
    a per-device function the count is per device.
    """
    return count_jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs))


def xla_flops(compiled) -> float | None:
    """``flops`` from a compiled executable's ``cost_analysis`` (per device), or None."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    flops = float(cost["flops"])
    return flops if np.isfinite(flops) and flops > 0 else None
