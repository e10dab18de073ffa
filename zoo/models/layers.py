"""Layers the image families share: a transposed convolution computed as a sub-pixel convolution.

``nn.ConvTranspose(features, kernel, strides=s)`` (SAME padding) is ``lax.conv_transpose``, which
XLA runs as a stride-1 convolution over the input dilated with s - 1 zeros between pixels: s² times
the multiply-adds, most of them by zero, and on CPU far slower than PyTorch's ``ConvTranspose2d``
(jax#23783). The same output is a stride-1 convolution of the *undilated* input to s² times the
channels, one group per output phase (r, c), followed by a depth-to-space shuffle (Shi et al.
2016, "Real-time single image and video super-resolution ... sub-pixel convolution"). The kernel
of that convolution is gathered from the transposed convolution's own kernel, so
:class:`SubpixelConvTranspose` has ``nn.ConvTranspose``'s params (names, shapes, initialisers) and
its outputs, and checkpoints move between the two.

Derivation, per spatial axis: with padding ``(p, k + s - 2 - p)`` of the dilated input (lax's SAME
for a transposed convolution), output ``o = s*i + r`` sums kernel taps ``t`` with
``t = p - r (mod s)``, each reading input ``i + (r + t - p) / s``.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn


def same_transpose_padding(k: int, s: int) -> int:
    """The left padding ``lax.conv_transpose`` gives the dilated input for ``padding="SAME"``."""
    pad_len = k + s - 2
    return k - 1 if s > k - 1 else int(np.ceil(pad_len / 2))


def _phase_taps(k: int, s: int) -> tuple[int, list[list[tuple[int, int]]]]:
    """(lowest input offset, per phase r the (tap t, window position u) pairs) on one axis."""
    p = same_transpose_padding(k, s)
    taps = [[(t, (r + t - p) // s) for t in range(k) if (p - r - t) % s == 0] for r in range(s)]
    low = min(d for phase in taps for _, d in phase)
    return low, [[(t, d - low) for t, d in phase] for phase in taps]


def subpixel_kernel(kernel: jax.Array, strides: Sequence[int]) -> tuple[jax.Array, list]:
    """The stride-1 kernel (wh, ww, in, sh * sw * out) and the input padding that make a SAME
    ``conv_transpose(x, kernel, strides)`` a convolution followed by depth-to-space."""
    kh, kw, cin, cout = kernel.shape
    (sh, sw) = strides
    low_h, taps_h = _phase_taps(kh, sh)
    low_w, taps_w = _phase_taps(kw, sw)
    wh = 1 + max(u for phase in taps_h for _, u in phase)
    ww = 1 + max(v for phase in taps_w for _, v in phase)
    # An index map from (window position, phase) to a kernel tap; the last tap index is a zero.
    index_h = np.full((wh, sh), kh)
    for r, phase in enumerate(taps_h):
        for t, u in phase:
            index_h[u, r] = t
    index_w = np.full((ww, sw), kw)
    for c, phase in enumerate(taps_w):
        for t, v in phase:
            index_w[v, c] = t
    padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))        # the zero tap
    big = padded[index_h[:, None, :, None], index_w[None, :, None, :]]  # (wh, ww, sh, sw, in, out)
    big = jnp.transpose(big, (0, 1, 4, 2, 3, 5)).reshape(wh, ww, cin, sh * sw * cout)
    # Input positions i + low .. i + low + w - 1 for output i: pad so every window is in range.
    pads = [(-low_h, wh - 1 + low_h), (-low_w, ww - 1 + low_w)]
    return big, pads


def conv_transpose_subpixel(x: jax.Array, kernel: jax.Array, strides: Sequence[int]) -> jax.Array:
    """``lax.conv_transpose(x, kernel, strides, "SAME")`` for NHWC ``x`` and an HWIO ``kernel``,
    as one convolution and a depth-to-space shuffle."""
    big, pads = subpixel_kernel(kernel, strides)
    y = jax.lax.conv_general_dilated(x, big.astype(x.dtype), (1, 1), pads,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    b, h, w, _ = y.shape
    sh, sw = strides
    y = y.reshape(b, h, w, sh, sw, kernel.shape[-1])
    return jnp.transpose(y, (0, 1, 3, 2, 4, 5)).reshape(b, h * sh, w * sw, kernel.shape[-1])


class SubpixelConvTranspose(nn.Module):
    """``nn.ConvTranspose(features, kernel_size, strides)`` with SAME padding (its params and
    outputs), computed as a sub-pixel convolution (see the module docstring)."""

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
        y = conv_transpose_subpixel(x, kernel, tuple(self.strides))
        return y if bias is None else y + bias
