"""zoo's layers equal flax's: ConvTranspose, BatchNorm, Dense; the same params, outputs, grads."""

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
    params = jax.jit(reference.init)(jax.random.PRNGKey(1), x)
    # The same initialisation: a checkpoint of one is a checkpoint of the other.
    for a, b in zip(jax.tree.leaves(params),
                    jax.tree.leaves(jax.jit(ours.init)(jax.random.PRNGKey(1), x))):
        np.testing.assert_array_equal(a, b)
    # Unit-scale weights and bias, so every tap and phase matters.
    params = {"params": {"kernel": jax.random.normal(jax.random.PRNGKey(2), (*k, 5, 4)),
                         "bias": jax.random.normal(jax.random.PRNGKey(3), (4,))}}
    want, got = jax.jit(reference.apply)(params, x), jax.jit(ours.apply)(params, x)
    assert got.shape == want.shape == (3, h * s[0], w * s[1], 4)
    np.testing.assert_array_equal(got, want)  # the forward pass is lax's own op
    loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))
    want_g = jax.jit(jax.grad(loss(reference), argnums=(0, 1)))(params, x)
    got_g = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(params, x)
    # The kernel gradient sums the same float32 products in another order: ~1e-6 relative.
    for a, b in zip(jax.tree.leaves(want_g), jax.tree.leaves(got_g)):
        scale = float(jnp.max(jnp.abs(a)))
        np.testing.assert_allclose(b, a, atol=1e-5 * scale)


def test_without_bias_and_in_bfloat16():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 7, 6))
    reference = nn.ConvTranspose(3, (4, 4), strides=(2, 2), use_bias=False, dtype=jnp.bfloat16)
    ours = layers.ConvTranspose(3, (4, 4), strides=(2, 2), use_bias=False, dtype=jnp.bfloat16)
    params = jax.jit(reference.init)(jax.random.PRNGKey(1), x)
    assert set(params["params"]) == {"kernel"}
    got, want = jax.jit(ours.apply)(params, x), jax.jit(reference.apply)(params, x)
    assert got.dtype == want.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
    # The backward in bfloat16: the same gradients as flax's up to bfloat16's rounding (8 bits of
    # mantissa, sums of up to 4*4*6 products), in float32 for the float32 params and input.
    loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x).astype(jnp.float32)))
    want_g = jax.jit(jax.grad(loss(reference), argnums=(0, 1)))(params, x)
    got_g = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(params, x)
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


# ---- BatchNorm ----------------------------------------------------------------------------------

BN = dict(momentum=0.9, epsilon=1e-5)


def _bn_pair(**kw):
    return nn.BatchNorm(**BN, **kw), layers.BatchNorm(**BN, **kw)


def _bn_train(module):
    """``module``'s training forward, jitted: (output, updated batch_stats)."""
    return jax.jit(lambda variables, x: module.apply(variables, x, mutable=["batch_stats"]))


def test_row_sum_and_row_broadcast_are_each_others_gradient():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 37, 5))
    np.testing.assert_allclose(layers.row_sum(x), x.sum(-2), rtol=1e-6, atol=1e-5)
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 5))
    np.testing.assert_array_equal(layers.row_broadcast(w, 37),
                                  jnp.broadcast_to(w[:, None], x.shape))
    g = jax.grad(lambda x: jnp.vdot(layers.row_sum(x), w))(x)
    np.testing.assert_array_equal(g, jnp.broadcast_to(w[:, None], x.shape))
    g = jax.grad(lambda w: jnp.vdot(layers.row_broadcast(w, 37), x))(w)
    np.testing.assert_allclose(g, x.sum(-2), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("shape", [(16, 7, 7, 6), (32, 12)])
def test_batch_norm_equals_flax_batch_norm(shape):
    # Off-centre, unequal-scale channels, so the mean, the variance and their gradients all matter.
    x = (jax.random.normal(jax.random.PRNGKey(0), shape) * jnp.arange(1, shape[-1] + 1)
         + jnp.linspace(-3, 3, shape[-1]))
    reference, ours = _bn_pair(use_running_average=False)
    variables = jax.jit(reference.init)(jax.random.PRNGKey(1), x)
    our_variables = jax.jit(ours.init)(jax.random.PRNGKey(1), x)
    assert jax.tree.structure(our_variables) == jax.tree.structure(variables)  # same names
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(our_variables)):
        np.testing.assert_array_equal(a, b)  # same initial values
    c = shape[-1]
    variables = {"params": {"scale": 1 + jax.random.normal(jax.random.PRNGKey(2), (c,)),
                            "bias": jax.random.normal(jax.random.PRNGKey(3), (c,))},
                 "batch_stats": {"mean": jnp.linspace(-1, 1, c), "var": jnp.linspace(0.5, 2, c)}}
    want, want_stats = _bn_train(reference)(variables, x)
    got, got_stats = _bn_train(ours)(variables, x)
    # The same float32 math summed in another order: ~1e-6 relative.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(want_stats), jax.tree.leaves(got_stats)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    moved = want_stats["batch_stats"]["mean"] - variables["batch_stats"]["mean"]
    assert float(jnp.abs(moved).max()) > 0.1  # the running mean did move: the check has teeth
    loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply({**variables, "params": p}, x,
                                                         mutable=["batch_stats"])[0]))
    want_g = jax.jit(jax.grad(loss(reference), argnums=(0, 1)))(variables["params"], x)
    got_g = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(variables["params"], x)
    for a, b in zip(jax.tree.leaves(want_g), jax.tree.leaves(got_g)):
        np.testing.assert_allclose(b, a, atol=1e-4 * float(jnp.max(jnp.abs(a))))
    # Evaluation: the running averages, not the batch's statistics.
    reference, ours = _bn_pair(use_running_average=True)
    np.testing.assert_allclose(jax.jit(ours.apply)(variables, x),
                               jax.jit(reference.apply)(variables, x), rtol=1e-5, atol=1e-5)


def test_batch_norm_second_derivatives_equal_flax():
    # WGAN-GP differentiates D's input gradient again, through every batch norm.
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 4, 4, 3)) * 2 + 1
    reference, ours = _bn_pair(use_running_average=False)
    variables = jax.jit(reference.init)(jax.random.PRNGKey(1), x)
    params = {"scale": jnp.array([1.5, 0.5, -1.0]), "bias": jnp.array([0.1, -0.2, 0.3])}

    def penalty(m):
        def f(p, x):
            out = lambda x: jnp.sum(jnp.tanh(m.apply({**variables, "params": p}, x,
                                                     mutable=["batch_stats"])[0]) ** 2)
            return jnp.sum(jax.grad(out)(x) ** 2)
        return jax.jit(jax.grad(f))

    for a, b in zip(jax.tree.leaves(penalty(reference)(params, x)),
                    jax.tree.leaves(penalty(ours)(params, x))):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(a))))


def test_batch_norm_in_bfloat16_computes_its_statistics_in_float32():
    x = (jax.random.normal(jax.random.PRNGKey(0), (64, 5)) * 3 + 100).astype(jnp.bfloat16)
    reference, ours = _bn_pair(use_running_average=False)
    variables = jax.jit(reference.init)(jax.random.PRNGKey(1), x)
    want, _ = _bn_train(reference)(variables, x)
    got, _ = _bn_train(ours)(variables, x)
    assert got.dtype == want.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_batch_norm_averages_statistics_over_its_axis_under_pmap():
    n = jax.local_device_count()
    x = jax.random.normal(jax.random.PRNGKey(0), (n, 4, 3)) * jnp.arange(n)[:, None, None]
    whole_batch = layers.BatchNorm(**BN)
    for model in _bn_pair(use_running_average=False, axis_name="batch"):
        variables = jax.jit(model.init)(jax.random.PRNGKey(1), x[0])
        y, stats = jax.pmap(lambda x: model.apply(variables, x, mutable=["batch_stats"]),
                            axis_name="batch")(x)
        global_y, global_stats = whole_batch.apply(variables, x.reshape(-1, 3),
                                                   mutable=["batch_stats"])
        # Each device normalises with the whole global batch's statistics.
        np.testing.assert_allclose(y.reshape(-1, 3), global_y, rtol=1e-5, atol=1e-5)
        for a, b in zip(jax.tree.leaves(global_stats), jax.tree.leaves(stats)):
            np.testing.assert_allclose(b[0], a, rtol=1e-5, atol=1e-5)


def _close(got, want, tol):
    """Tree leaves equal to ``tol`` of each leaf's largest entry (summation order differs)."""
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(np.asarray(b, np.float32), np.asarray(a, np.float32),
                                   atol=tol * float(jnp.max(jnp.abs(a.astype(jnp.float32)))))


@pytest.mark.parametrize("shape", [(6, 5), (2, 3, 5)])
def test_dense_equals_flax_dense(shape):
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    init = dict(kernel_init=nn.initializers.normal(0.5), bias_init=nn.initializers.normal(0.5))
    reference, ours = nn.Dense(4, **init), layers.Dense(4, **init)
    params = jax.jit(reference.init)(jax.random.PRNGKey(1), x)
    # The same tree and initial values: a checkpoint of one is a checkpoint of the other.
    own = jax.jit(ours.init)(jax.random.PRNGKey(1), x)
    assert jax.tree.structure(own) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(own)):
        np.testing.assert_array_equal(a, b)
    want, got = jax.jit(reference.apply)(params, x), jax.jit(ours.apply)(params, x)
    np.testing.assert_array_equal(got, want)  # the same dot and bias add
    loss = lambda m: lambda p, x: jnp.sum(jnp.sin(3 * m.apply(p, x)))
    grads = lambda m: jax.jit(jax.grad(loss(m), argnums=(0, 1)))(params, x)
    _close(grads(ours), grads(reference), 1e-6)  # the bias sum in another order


def test_dense_second_derivatives_and_bfloat16_equal_flax():
    # A gradient penalty differentiates the input gradient again, through the custom backward.
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 5))
    reference, ours = nn.Dense(3), layers.Dense(3)
    params = jax.jit(reference.init)(jax.random.PRNGKey(1), x)
    params = jax.tree.map(lambda p: p + 0.3, params)  # a non-zero bias

    def penalty(m):
        out = lambda p, x: jnp.sum(jnp.tanh(m.apply(p, x)) ** 2)
        return jax.jit(jax.grad(lambda p, x: jnp.sum(jax.grad(out, argnums=1)(p, x) ** 2)))

    _close(penalty(ours)(params, x), penalty(reference)(params, x), 1e-5)
    # bfloat16 compute on float32 params: bfloat16 outputs, float32 gradients, 8 bits of mantissa.
    reference, ours = nn.Dense(3, dtype=jnp.bfloat16), layers.Dense(3, dtype=jnp.bfloat16)
    got, want = jax.jit(ours.apply)(params, x), jax.jit(reference.apply)(params, x)
    assert got.dtype == want.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
    loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x).astype(jnp.float32)))
    grads = lambda m, p, x: jax.jit(jax.grad(loss(m), argnums=(0, 1)))(p, x)
    _close(grads(ours, params, x), grads(reference, params, x), 2e-2)  # checks dtypes too
    # bfloat16 params and input: every gradient comes back in its primal's dtype.
    reference, ours = (cls(3, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
                       for cls in (nn.Dense, layers.Dense))
    x16 = x.astype(jnp.bfloat16)
    params16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    got = grads(ours, params16, x16)
    assert {g.dtype for g in jax.tree.leaves(got)} == {jnp.dtype(jnp.bfloat16)}
    _close(got, grads(reference, params16, x16), 2e-2)


def test_dense_without_bias_or_with_its_own_dot_general_is_flaxs():
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 5))
    for kwargs in ({"use_bias": False}, {"dot_general": jax.lax.dot_general}):
        ours = layers.Dense(3, **kwargs)
        params = ours.init(jax.random.PRNGKey(1), x)
        jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(ours.apply(p, x))))(params))
        assert "custom_vjp" not in jaxpr
        np.testing.assert_array_equal(ours.apply(params, x),
                                      nn.Dense(3, **kwargs).apply(params, x))
    # With a bias, the custom backward is the one taken on CPU, and only there.
    ours = layers.Dense(3)
    params = ours.init(jax.random.PRNGKey(1), x)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(ours.apply(p, x))))(params))
    assert ("custom_vjp" in jaxpr) == (jax.default_backend() == "cpu")
