"""Layers the families share: a transposed convolution whose gradients are strided convolutions,
and a BatchNorm and a Dense whose sums over rows are matmuls on CPU.

``nn.ConvTranspose(features, kernel, strides=s)`` (SAME padding) is ``lax.conv_transpose``: a
stride-1 convolution over the input dilated with s - 1 zeros between pixels. Its forward pass and
its input gradient (a stride-s convolution of dy, what XLA derives) are fast on XLA:CPU, but the
kernel gradient XLA derives from it is a convolution with both input and kernel dilation, which
XLA:CPU runs very slowly (277 ms against 11 ms this way for DCGAN's 128 -> 64 layer at batch 128,
``benchmarks/kernels.py``; jax#23783).

A transposed convolution is the adjoint (the input gradient) of a strided convolution whose kernel
is the same kernel flipped in space with its channel axes swapped. So its kernel gradient is that
strided convolution's kernel gradient, taken with dy as the convolution's input and x as its
output gradient, then flipped and swapped back: a convolution XLA:CPU runs as fast as the forward
one. :func:`conv_transpose` is ``lax.conv_transpose`` with that backward pass, and
:class:`ConvTranspose` is ``nn.ConvTranspose`` (the same params: names, shapes, initialisers)
computed with it, so checkpoints move between the two. Being a ``jax.custom_vjp``, it has
reverse-mode derivatives (any order) but no forward mode (``jax.jvp``), which zoo does not use.

Padding, per spatial axis: lax's SAME transposed convolution pads the dilated input by
``(p, k + s - 2 - p)``; the strided convolution it is the adjoint of pads its input by
``(k - 1 - p, k - s - (k - 1 - p))``.

Normalization: a batch norm's statistics are per-channel sums over every row of a (rows,
channels) view of its input, and so are their gradients and the gradients of the per-channel
values broadcast back over the rows (the mean, the multiplier). XLA:CPU runs such a sum over a
major axis as a scalar loop (a ``reduce-window`` over row blocks); written as
``ones(1, rows) @ x`` the same sum is a matmul, far faster (DCGAN's full step 1.02-1.06x).
:func:`row_sum` and :func:`row_broadcast` are that sum and that broadcast, each the other's
gradient, and :class:`BatchNorm` is flax's (the same params, statistics and numbers up to
float32 summation order) built on them. Off CPU they are plain sums
and broadcasts: other backends reduce well, and the layer is then computed as flax computes it.

Dense: a Dense layer's bias gradient is the same kind of sum, of dy over its rows. On CPU,
:func:`dense` takes it from the kernel gradient's own matmul, ``[x, 1]^T @ dy``: one more row of
output for the price of a ones column, where XLA:CPU would run a reduce-window loop beside the
matmul (the quick transformer's step 1.14-1.16x faster, the full one 1.06-1.13x, the LSTM's
1.08-1.10x / 1.04x). :class:`Dense` is ``nn.Dense`` computed with it; the MLP families keep
flax's, since with their 128-256 rows per bias their steps did not change. Like
:func:`conv_transpose` it is a ``jax.custom_vjp`` on CPU: reverse mode of any order, no forward
mode (``jax.jvp``, ``jax.hessian``) through a model that uses it, which zoo does not need.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

NHWC = ("NHWC", "HWIO", "NHWC")


def same_transpose_padding(k: int, s: int) -> int:
    """The left padding ``lax.conv_transpose`` gives the dilated input for ``padding="SAME"``."""
    pad_len = k + s - 2
    return k - 1 if s > k - 1 else int(np.ceil(pad_len / 2))


def adjoint_padding(k: int, s: int) -> tuple[int, int]:
    """The padding of the stride-``s`` convolution whose input gradient is the SAME transposed
    convolution with a ``k``-wide kernel."""
    left = k - 1 - same_transpose_padding(k, s)
    return left, k - s - left


def _adjoint_kernel(kernel: jax.Array) -> jax.Array:
    """HWIO kernel of the transposed convolution <-> HWIO kernel of its strided adjoint."""
    return jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_transpose(x: jax.Array, kernel: jax.Array, strides: tuple[int, ...]) -> jax.Array:
    """``lax.conv_transpose(x, kernel, strides, "SAME")`` for NHWC ``x`` and an HWIO ``kernel``,
    differentiated through strided convolutions (see the module docstring)."""
    return jax.lax.conv_transpose(x, kernel, strides, "SAME", dimension_numbers=NHWC)


def _conv_transpose_fwd(x, kernel, strides):
    return conv_transpose(x, kernel, strides), (x, kernel)


def _conv_transpose_bwd(strides, residuals, dy):
    x, kernel = residuals
    pads = [adjoint_padding(k, s) for k, s in zip(kernel.shape[:2], strides)]
    adjoint = _adjoint_kernel(kernel)
    conv = lambda u, w: jax.lax.conv_general_dilated(u, w, strides, pads, dimension_numbers=NHWC)
    dx = conv(dy, adjoint)
    d_adjoint = jax.vjp(lambda w: conv(dy, w), adjoint)[1](x)[0]
    return dx, _adjoint_kernel(d_adjoint)


conv_transpose.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)


class ConvTranspose(nn.Module):
    """``nn.ConvTranspose(features, kernel_size, strides)`` with SAME padding (its params and
    outputs), with the faster backward pass of :func:`conv_transpose`."""

    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] = (1, 1)
    use_bias: bool = True
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (*self.kernel_size, x.shape[-1], self.features), jnp.float32)
        bias = (self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
                if self.use_bias else None)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = conv_transpose(x, kernel, tuple(self.strides))
        return y if bias is None else y + bias


# ---- sums over rows as matmuls (normalization, Dense) -------------------------------------------

def _sum_as_matmul() -> bool:
    return jax.default_backend() == "cpu"


@jax.custom_vjp
def row_sum(x: jax.Array) -> jax.Array:
    """``x.sum(-2)`` for ``x`` of shape (..., rows, channels): on CPU as ``ones(1, rows) @ x``
    (batched over the leading axes); its gradient is :func:`row_broadcast`."""
    if not _sum_as_matmul():
        return x.sum(-2)
    ones = jnp.ones((*x.shape[:-2], 1, x.shape[-2]), x.dtype)
    return jnp.matmul(ones, x, precision=jax.lax.Precision.HIGHEST)[..., 0, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def row_broadcast(v: jax.Array, rows: int) -> jax.Array:
    """(..., channels) -> (..., rows, channels), each row a copy of ``v``; its gradient is
    :func:`row_sum`, so a broadcast's transpose is a matmul too."""
    return jnp.broadcast_to(v[..., None, :], (*v.shape[:-1], rows, v.shape[-1]))


row_sum.defvjp(lambda x: (row_sum(x), x.shape[-2]),
               lambda rows, g: (row_broadcast(g, rows),))
row_broadcast.defvjp(lambda v, rows: (row_broadcast(v, rows), None),
                     lambda rows, _, g: (row_sum(g),))


class BatchNorm(nn.Module):
    """``nn.BatchNorm`` over the last axis (its params, ``batch_stats``, running averages and
    ``axis_name`` averaging; float32 statistics with the fast variance, as flax's defaults), its
    sums over rows as matmuls on CPU (module docstring). The output is float32, as flax's is for
    float32 params."""

    use_running_average: bool = False
    axis_name: str | None = None
    momentum: float = 0.99
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        rows = x.astype(jnp.promote_types(x.dtype, jnp.float32)).reshape(-1, c)
        n = rows.shape[0]
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            mean, mean2 = row_sum(rows) / n, row_sum(rows * rows) / n
            if self.axis_name is not None and not self.is_initializing():
                mean, mean2 = jax.lax.pmean((mean, mean2), self.axis_name)
            var = jnp.maximum(0.0, mean2 - mean ** 2)
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        multiplier = jax.lax.rsqrt(var + self.epsilon) * scale   # flax's order of operations
        # The bias gradient stays an XLA reduction: through row_broadcast it measured no faster.
        y = (rows - row_broadcast(mean, n)) * row_broadcast(multiplier, n) + bias
        return y.reshape(x.shape)


# ---- dense --------------------------------------------------------------------------------------

def _contract_last(a: jax.Array, b: jax.Array, b_axis: int, precision) -> jax.Array:
    """``a``'s last axis contracted with ``b``'s axis ``b_axis`` (b is 2-D)."""
    return jax.lax.dot_general(a, b, (((a.ndim - 1,), (b_axis,)), ((), ())), precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def dense(x: jax.Array, kernel: jax.Array, bias: jax.Array, precision=None) -> jax.Array:
    """``x @ kernel + bias`` over ``x``'s last axis, as ``nn.Dense`` computes it; its backward
    takes the kernel and bias gradients from one matmul, ``[x, 1]^T @ dy`` (module docstring)."""
    return _contract_last(x, kernel, 0, precision) + bias


def _dense_fwd(x, kernel, bias, precision):
    return dense(x, kernel, bias, precision), (x, kernel, bias)


def _dense_bwd(precision, residuals, dy):
    x, kernel, bias = residuals
    x_rows, dy_rows = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    with_ones = jnp.concatenate([x_rows, jnp.ones((x_rows.shape[0], 1), x.dtype)], axis=1)
    d = jnp.matmul(with_ones.T, dy_rows, precision=precision,
                   preferred_element_type=jnp.promote_types(dy.dtype, jnp.float32))
    dx = _contract_last(dy, kernel, 1, precision)
    return dx.astype(x.dtype), d[:-1].astype(kernel.dtype), d[-1].astype(bias.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)


class Dense(nn.Dense):
    """``nn.Dense`` (every field, its params, initialisers and outputs) computed with
    :func:`dense` on CPU when it has a bias; otherwise flax's own. Checkpoints move between the
    two. On CPU, reverse-mode derivatives of any order, no forward mode (module docstring).
    The fallback calls flax's ``__call__`` from this one, so ``capture_intermediates`` records
    a fallback layer's output twice."""

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        if not (self.use_bias and _sum_as_matmul() and self.dot_general is None
                and self.dot_general_cls is None):
            return super().__call__(inputs)
        kernel = self.param("kernel", self.kernel_init, (jnp.shape(inputs)[-1], self.features),
                            self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        return dense(inputs, kernel, bias, self.precision)
