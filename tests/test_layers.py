"""zoo's transposed convolution equals flax's ConvTranspose: same params, outputs, grads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from zoo.models import layers, make_family

# (kernel, stride, input height, width): DCGAN's 4x4/2, the conv autoencoder's and VAE's 3x3/2,
# odd sizes, kernels equal to the stride (2x2/2, 3x3/3), stride 1, kernels narrower than the
# stride (the adjoint convolution's padding goes negative) and unequal axes.
CASES = [(4, 2, 7, 7), (3, 2, 7, 8), (4, 2, 4, 5), (3, 2, 14, 14), (5, 2, 6, 3), (2, 2, 5, 5),
         (3, 3, 4, 4), (4, 1, 5, 6), ((2, 3), (1, 2), 5, 4), ((2, 2), (3, 3), 4, 3),
         ((1, 3), (3, 2), 4, 5), ((4, 3), (2, 3), 3, 4)]


def _pair(v):
    return tuple(v) if isinstance(v, tuple) else (v, v)


@pytest.mark.parametrize("k, s, h, w", CASES)
def test_conv_transpose_equals_flax_conv_transpose(k, s, h, w):
    k, s = _pair(k), _pair(s)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, h, w, 5))
    reference = nn.ConvTranspose(4, k, strides=s)
    ours = layers.ConvTranspose(4, k, strides=s)
    params = reference.init(jax.random.PRNGKey(1), x)
    # The same initialisation: a checkpoint of one is a checkpoint of the other.
    for a, b in zip(jax.tree.leaves(params),
                    jax.tree.leaves(ours.init(jax.random.PRNGKey(1), x))):
        np.testing.assert_array_equal(a, b)
    # Unit-scale weights and bias, so every tap and phase matters.
    params = {"params": {"kernel": jax.random.normal(jax.random.PRNGKey(2), (*k, 5, 4)),
                         "bias": jax.random.normal(jax.random.PRNGKey(3), (4,))}}
    want, got = reference.apply(params, x), ours.apply(params, x)
    assert got.shape == want.shape == (3, h * s[0], w * s[1], 4)
    np.testing.assert_array_equal(got, want)  # the forward pass is lax's own op
    loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))
    want_g = jax.grad(loss(reference), argnums=(0, 1))(params, x)
    got_g = jax.grad(loss(ours), argnums=(0, 1))(params, x)
    # The kernel gradient sums the same float32 products in another order: ~1e-6 relative.
    for a, b in zip(jax.tree.leaves(want_g), jax.tree.leaves(got_g)):
        scale = float(jnp.max(jnp.abs(a)))
        np.testing.assert_allclose(b, a, atol=1e-5 * scale)


def test_without_bias_and_in_bfloat16():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 7, 6))
    reference = nn.ConvTranspose(3, (4, 4), strides=(2, 2), use_bias=False, dtype=jnp.bfloat16)
    ours = layers.ConvTranspose(3, (4, 4), strides=(2, 2), use_bias=False, dtype=jnp.bfloat16)
    params = reference.init(jax.random.PRNGKey(1), x)
    assert set(params["params"]) == {"kernel"}
    got, want = ours.apply(params, x), reference.apply(params, x)
    assert got.dtype == want.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
    # The backward in bfloat16: the same gradients as flax's up to bfloat16's rounding (8 bits of
    # mantissa, sums of up to 4*4*6 products), in float32 for the float32 params and input.
    loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x).astype(jnp.float32)))
    want_g = jax.grad(loss(reference), argnums=(0, 1))(params, x)
    got_g = jax.grad(loss(ours), argnums=(0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(want_g), jax.tree.leaves(got_g)):
        assert a.dtype == b.dtype == jnp.float32
        np.testing.assert_allclose(b, a, atol=3e-2 * float(jnp.max(jnp.abs(a))))


def test_dcgan_generator_keeps_its_parameter_tree():
    # Param names and shapes of the DCGAN generator are those of flax's ConvTranspose layers, so
    # earlier checkpoints restore.
    family = make_family(dict(family="gan", arch="dcgan", features=8, latent_dim=4))
    params, _ = jax.eval_shape(family.init, jax.random.PRNGKey(0),
                               {"image": jnp.zeros((2, 28, 28, 1))})
    gen = jax.tree.map(lambda x: x.shape, params["generator"])
    assert gen["deconv_0"] == {"kernel": (4, 4, 16, 8)}
    assert gen["out"] == {"kernel": (4, 4, 8, 1), "bias": (1,)}
