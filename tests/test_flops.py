"""zoo.flops: closed forms, the jaxpr counter, and agreement with XLA's cost_analysis."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zoo import flops, models
from zoo.core import step as step_lib
from zoo.core.train_state import TrainState


def test_closed_forms_by_hand():
    assert flops.dense_flops(5, 4, 3) == 2 * 5 * 4 * 3
    # 4 -> 3 -> 2 over 5 rows: forward 120 + 60; backward twice that, less the input grad (120).
    assert flops.mlp_forward_flops([4, 3, 2], 5) == 180
    assert flops.mlp_train_flops([4, 3, 2], 5) == 3 * 180 - 120
    assert flops.conv2d_flops(2, (8, 8), (3, 3), 4, 16) == 2 * 2 * 64 * 9 * 4 * 16
    assert flops.conv_transpose2d_flops(1, (4, 4), (3, 3), 8, 2) == 2 * 16 * 9 * 8 * 2
    # GPT-2 small: ~6 * 124M params per token for training plus attention (levanter's numbers).
    per_token = flops.lm_train_flops_per_token(
        hidden_dim=768, intermediate_dim=3072, num_layers=12, num_heads=12, seq_len=1024,
        vocab_size=50257)
    non_embedding = 12 * 12 * 768 ** 2
    attention = 3 * 12 * 4 * 1024 * 768
    head = 3 * 2 * 768 * 50257
    assert per_token == pytest.approx(6 * non_embedding + attention + head)
    assert flops.lstm_forward_flops_per_token(input_dim=10, hidden_dim=20, num_layers=2,
                                              vocab_size=7) == (
        2 * 30 * 80 + 2 * 40 * 80 + 2 * 20 * 7)


def test_jaxpr_counter_counts_matmuls_convs_and_scans():
    a, b = jnp.ones((8, 16)), jnp.ones((16, 4))
    assert flops.jaxpr_flops(lambda a, b: a @ b, a, b) == 2 * 8 * 16 * 4
    # batched matmul: batch dims count once per batch element
    x, y = jnp.ones((3, 8, 16)), jnp.ones((3, 16, 4))
    assert flops.jaxpr_flops(jnp.matmul, x, y) == 3 * 2 * 8 * 16 * 4
    # scan over 5 steps of the same matmul, inside a jit
    f = jax.jit(lambda a, b: jax.lax.scan(lambda c, _: (c, a @ b), 0.0, None, length=5)[1])
    assert flops.jaxpr_flops(f, a, b) == 5 * 2 * 8 * 16 * 4
    img, ker = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 16))
    conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert flops.jaxpr_flops(conv, img, ker) == flops.conv2d_flops(2, (8, 8), (3, 3), 4, 16)


def _train_step_flops(model_config, batch):
    """(XLA cost_analysis FLOPs, jaxpr FLOPs) of the family's train step under ``jit``.

    Shapes only: the state comes from ``eval_shape`` and the step is lowered on shapes, so nothing
    is initialised or run. The fast compile options change LLVM's work, not the HLO XLA counts.
    """
    from zoo.bench import _FAST_COMPILE
    family = models.make_family(model_config)

    def init(rng, batch):
        params, model_state = family.init(rng, batch)
        return TrainState.create(params=params, tx={p: optax.adam(1e-3) for p in params},
                                 model_state=model_state, rng=rng)

    state = jax.eval_shape(init, jax.random.PRNGKey(0), batch)
    spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
    step = step_lib.make_train_step(family.objective)
    xla = flops.xla_flops(jax.jit(step).lower(state, spec).compile(_FAST_COMPILE))
    return xla, flops.jaxpr_flops(step, state, spec)


def test_mlp_autoencoder_analytic_matches_jaxpr_and_cost_analysis():
    from zoo import bench
    case = next(c for c in bench._case_table("quick") if c.name == "autoencoder-mlp")
    batch = {"image": np.random.default_rng(0).random((case.batch_size, 28, 28, 1), np.float32)}
    analytic = case.flops(case.model, case.batch_size)
    xla, counted = _train_step_flops(case.model_config(), batch)
    assert counted == pytest.approx(analytic, rel=1e-6)
    assert xla == pytest.approx(analytic, rel=0.25)


def test_mlp_vae_analytic_matches_cost_analysis():
    if "vae" not in models.FAMILIES:
        pytest.skip("the vae family is not registered yet")
    from zoo import bench
    case = next(c for c in bench._case_table("quick") if c.name == "vae-mlp")
    batch = {"image": np.random.default_rng(0).random((case.batch_size, 28, 28, 1), np.float32)}
    analytic = case.flops(case.model, case.batch_size)
    xla, counted = _train_step_flops(case.model_config(), batch)
    assert counted == pytest.approx(analytic, rel=1e-6)
    assert xla == pytest.approx(analytic, rel=0.25)


def test_transformer_analytic_matches_jaxpr_and_cost_analysis():
    if "transformer" not in models.FAMILIES:
        pytest.skip("the transformer family is not registered yet")
    from zoo import bench
    case = bench._transformer_case("transformer", 4, block_size=64, n_layer=2, n_head=4,
                                   n_embd=128)
    family = models.make_family(case.model_config())
    batch = bench.synthetic_batch(family.batch_spec, case.batch_size, int_high=case.int_high)
    analytic = case.flops(case.model, case.batch_size)
    xla, counted = _train_step_flops(case.model_config(), batch)
    # The jaxpr also counts the embedding's one-hot-free gather as 0 and every matmul exactly.
    assert counted == pytest.approx(analytic, rel=0.05)
    assert xla == pytest.approx(analytic, rel=0.25)
