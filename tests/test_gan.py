"""GAN family: shapes, losses, the two-player step, BatchNorm under single vs mesh, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zoo.core import compiled, parallel
from zoo.core.step import make_train_step
from zoo.core.train_state import TrainState
from zoo.data import synthetic_images
from zoo.models import gan, make_family

TINY_MLP = dict(family="gan", arch="mlp", latent_dim=8, g_hidden=(32,), d_hidden=(32,))
TINY_DCGAN = dict(family="gan", arch="dcgan", latent_dim=8, features=4)


def _batch(family, n=8, seed=0):
    d = synthetic_images(n, family.batch_spec["image"].shape, seed=seed)
    return {k: d[k] for k in family.batch_spec}


def _state(family, batch, lr=1e-3):
    params, model_state = jax.jit(family.init)(jax.random.PRNGKey(0), batch)
    tx = {p: optax.adam(lr, b1=0.5) for p in params}
    return TrainState.create(params=params, tx=tx, model_state=model_state, seed=0)


def _max_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a),
                                                              jax.tree.leaves(b)))


@pytest.mark.parametrize("config,image_shape", [
    (dict(arch="mlp", latent_dim=100), (28, 28, 1)),            # 100-256-784 vs 784-256-1
    (dict(arch="mlp", g_hidden=(256, 512, 1024), d_hidden=(512, 256), num_classes=10,
          conditioning="concat"), (28, 28, 1)),                 # the deeper MLP GAN, conditional
    (dict(TINY_DCGAN, image_shape=(32, 32, 3), conditioning="concat", num_classes=10),
     (32, 32, 3)),                                              # DCGAN 32x32 RGB
])
def test_player_shapes(config, image_shape):
    family = make_family(dict(config, family="gan", image_shape=image_shape))
    batch = _batch(family, 4)
    params, model_state = jax.jit(family.init)(jax.random.PRNGKey(0), batch)
    gen, disc = family.modules["generator"], family.modules["discriminator"]
    y = jnp.asarray(batch["label"]) if gen.num_classes else None

    @jax.jit
    def run(params, model_state, x, y):
        z = jnp.ones((4, gen.latent_dim))
        fake = gen.apply({"params": params["generator"], **model_state["generator"]}, z, y,
                         train=False)
        logits = disc.apply({"params": params["discriminator"], **model_state["discriminator"]},
                            x, y, train=False)
        return fake, logits

    fake, logits = run(params, model_state, jnp.asarray(batch["image"]), y)
    assert fake.shape == (4, *image_shape)
    assert float(jnp.max(jnp.abs(fake))) <= 1.0  # tanh output
    assert logits.shape == (4,)
    if config.get("g_hidden") == (256, 512, 1024):
        widths = [params["generator"][f"dense_{i}"]["kernel"].shape[1] for i in range(3)]
        assert widths == [256, 512, 1024]
        assert params["discriminator"]["dense_0"]["kernel"].shape == (784 + 10, 512)


def test_mlp_gan_is_the_classic_one():
    family = make_family(dict(family="gan", arch="mlp"))
    params, _ = jax.eval_shape(family.init, jax.random.PRNGKey(0), _batch(family, 2))
    shapes = jax.tree.map(lambda x: x.shape, params)
    assert shapes["generator"]["dense_0"]["kernel"] == (100, 256)
    assert shapes["generator"]["out"]["kernel"] == (256, 784)
    assert shapes["discriminator"]["dense_0"]["kernel"] == (784, 256)
    assert shapes["discriminator"]["logit"]["kernel"] == (256, 1)


@pytest.mark.parametrize("loss,gp", [("minimax", 0.0), ("non_saturating", 0.0), ("hinge", 0.0),
                                     ("wasserstein", 10.0)])
def test_losses_are_finite(loss, gp):
    family = make_family(dict(TINY_MLP, loss=loss, gradient_penalty=gp))
    batch = _batch(family)
    state = _state(family, batch)
    d_update, g_update = family.objective
    d, dm, _ = jax.jit(d_update.loss_fn)(state.params, state.model_state, batch,
                                         jax.random.PRNGKey(1))
    g, gm, _ = jax.jit(g_update.loss_fn)(state.params, state.model_state, batch,
                                         jax.random.PRNGKey(2))
    assert np.isfinite(float(d)) and np.isfinite(float(g))
    if gp:
        assert float(dm["gradient_penalty"]) > 0
        np.testing.assert_allclose(
            float(d), float(dm["fake_logit"] - dm["real_logit"] + gp * dm["gradient_penalty"]),
            rtol=1e-4, atol=1e-5)
    if loss == "minimax":  # log(1 - D(G(z))) is negative
        assert float(g) < 0


def test_loss_values():
    real, fake = jnp.array([2.0, 0.5]), jnp.array([-1.0, 0.0])
    np.testing.assert_allclose(gan.discriminator_loss("hinge", real, fake), (0 + 0.5 + 0 + 1) / 2)
    np.testing.assert_allclose(gan.discriminator_loss("wasserstein", real, fake), -1.75)
    np.testing.assert_allclose(gan.generator_loss("non_saturating", fake),
                               np.mean(-np.log(jax.nn.sigmoid(np.array([-1.0, 0.0])))), rtol=1e-6)
    np.testing.assert_allclose(gan.generator_loss("minimax", fake),
                               np.mean(np.log(1 - jax.nn.sigmoid(np.array([-1.0, 0.0])))),
                               rtol=1e-6)


def test_step_updates_discriminator_first_then_generator():
    family = make_family(TINY_MLP)
    batch = _batch(family)
    state = _state(family, batch)
    step = jax.jit(make_train_step(family.objective))
    new, metrics = step(state, batch)
    assert _max_diff(new.params["generator"], state.params["generator"]) > 0
    assert _max_diff(new.params["discriminator"], state.params["discriminator"]) > 0

    # The discriminator moved first: the same step with only the D update gives the same D.
    d_only, _ = jax.jit(make_train_step(family.objective[:1]))(state, batch)
    assert _max_diff(d_only.params["discriminator"], new.params["discriminator"]) < 1e-6

    # The generator's loss was computed against the *updated* discriminator (same rng as the step:
    # fold_in(fold_in(fold_in(rng, step), update index 1), repeat 0)).
    g_rng = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(state.rng, 0), 1), 0)
    g_loss = jax.jit(family.objective[1].loss_fn)
    with_new_d = g_loss({**state.params, "discriminator": new.params["discriminator"]},
                        state.model_state, batch, g_rng)[0]
    with_old_d = g_loss(state.params, state.model_state, batch, g_rng)[0]
    np.testing.assert_allclose(float(metrics["g_loss"]), float(with_new_d), rtol=1e-5)
    assert abs(float(with_new_d) - float(with_old_d)) > 1e-5


def test_n_critic_repeats_discriminator_updates():
    family1, family3 = make_family(TINY_MLP), make_family(dict(TINY_MLP, n_critic=3))
    batch = _batch(family1)
    state = _state(family1, batch)
    one, _ = jax.jit(make_train_step(family1.objective[:1]))(state, batch)
    three, _ = jax.jit(make_train_step(family3.objective[:1]))(state, batch)
    assert family3.objective[0].repeats == 3
    assert int(three.opt_state["discriminator"][0].count) == 3
    assert _max_diff(one.params["discriminator"], three.params["discriminator"]) > 1e-6


def test_dcgan_step_single_equals_mesh_with_batchnorm():
    family = make_family(dict(TINY_DCGAN, num_classes=10))
    batches = [_batch(family, 16, seed=s) for s in range(2)]
    state = _state(family, batches[0])
    results = {}
    for name in ("single", "mesh"):
        strategy = parallel.make_strategy(name)
        step = compiled.compile_train_step(family.objective, strategy,
                                           batch_spec=family.batch_spec)
        s = strategy.place_state(state)
        for b in batches:
            s, metrics = step(s, b)
        results[name] = strategy.to_host((s.params, s.model_state, metrics))
    # DCGAN 28x28: G projects to 7x7x8 and upsamples twice; D downsamples twice to 7x7x8.
    assert results["mesh"][0]["generator"]["out"]["kernel"].shape == (4, 4, 4, 1)
    assert results["mesh"][0]["discriminator"]["logit"]["kernel"].shape == (7 * 7 * 8, 1)
    assert results["mesh"][0]["discriminator"]["projection"]["embedding"].shape == (10, 7 * 7 * 8)
    # BatchNorm statistics moved, identically under both strategies.
    assert _max_diff(results["single"][1], state.model_state) > 1e-4
    for a, b in zip(jax.tree.leaves(results["single"]), jax.tree.leaves(results["mesh"])):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("conditioning", ["projection", "concat"])
def test_conditional_label_changes_both_players(conditioning):
    family = make_family(dict(TINY_MLP, num_classes=10, conditioning=conditioning))
    batch = _batch(family, 4)
    params, model_state = jax.jit(family.init)(jax.random.PRNGKey(0), batch)
    gen, disc = family.modules["generator"], family.modules["discriminator"]
    z = jax.random.normal(jax.random.PRNGKey(1), (4, 8))

    @jax.jit
    def both(label):
        y = jnp.full((4,), label, jnp.int32)
        images = gan.generate(gen, params["generator"], model_state["generator"], z, y)
        logits = disc.apply({"params": params["discriminator"], **model_state["discriminator"]},
                            jnp.asarray(batch["image"]), y, train=False)
        return images, logits

    (twos, d2), (nines, d9) = both(2), both(9)
    assert twos.shape == (4, 28, 28, 1)
    assert float(jnp.max(jnp.abs(twos - nines))) > 1e-3
    assert float(jnp.max(jnp.abs(d2 - d9))) > 1e-4


def test_bad_input_gives_clear_errors():
    with pytest.raises(ValueError, match="unknown GAN loss 'lsgan'; choose one of minimax, "
                                         "non_saturating, hinge, wasserstein"):
        make_family(dict(TINY_MLP, loss="lsgan"))
    with pytest.raises(ValueError, match="latent_dim must be >= 1, got 0"):
        make_family(dict(TINY_MLP, latent_dim=0))
    with pytest.raises(ValueError, match="DCGAN cannot build a 30x30 image.*base \\* 2\\^n"):
        make_family(dict(TINY_DCGAN, image_shape=(30, 30, 1)))
    with pytest.raises(ValueError, match="DCGAN cannot build a 14x14"):
        make_family(dict(TINY_DCGAN, image_shape=(14, 14, 1)))
    with pytest.raises(ValueError, match="square"):
        make_family(dict(TINY_DCGAN, image_shape=(28, 32, 1)))
    with pytest.raises(ValueError, match="unknown conditioning 'film'"):
        make_family(dict(TINY_MLP, num_classes=10, conditioning="film"))
    with pytest.raises(ValueError, match="unknown GAN arch"):
        make_family(dict(TINY_MLP, arch="stylegan"))
    with pytest.raises(ValueError, match="n_critic must be >= 1"):
        make_family(dict(TINY_MLP, n_critic=0))
    assert gan.dcgan_base(28) == (7, 2) and gan.dcgan_base(32) == (4, 3)



def test_a_critics_schedule_runs_over_its_n_critic_updates_per_step():
    """With n_critic=3 and a linear decay to 0 over 4 steps, the critic's rate reaches 0 at its
    12th update (the end of step 4), not at its 4th: its params still move in the last step."""
    from configs_loader import load_config
    from zoo import build
    from zoo.config import apply_overrides
    from zoo.core import step as step_lib

    assert step_lib.updates_per_step(make_family(dict(TINY_MLP, n_critic=3)).objective) == {
        "discriminator": 3, "generator": 1}

    def critic_after(steps):
        config = apply_overrides(load_config("gan_mnist"), [
            "--config.data.dataset=synthetic", "--config.data.synthetic_size=256",
            "--config.data.batch_size=32", "--config.data.eval_batch_size=32",
            "--config.model.g_hidden=(16,)", "--config.model.d_hidden=(16,)",
            "--config.model.n_critic=3", "--config.optimizer.schedule=linear",
            "--config.optimizer.end_factor=0.0", "--config.train.steps=4",
            f"--config.train.eval_every={steps}"])
        run = build.build(config)
        state = run.strategy.place_state(run.template)
        it = run.data.train
        for _ in range(steps):
            state, _ = run.train_step(state, next(it))
        return run.strategy.to_host(state.params["discriminator"])

    assert _max_diff(critic_after(3), critic_after(4)) > 1e-7
