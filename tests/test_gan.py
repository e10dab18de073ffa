"""GAN family: shapes, losses, the two-player step, BatchNorm under single, mesh and pmap, bad input."""

import math

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


def _numpy_init(family, batch):
    """(params, model state) of family.init's shapes, drawn with numpy (weights ~ N(0, 1/fan_in),
    BatchNorm at scale 1, bias 0, statistics 0 and 1): compiling a DCGAN's init takes ~20 s on
    CPU, and a comparison of strategies needs only reasonable weights."""
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        name = path[-1].key
        if name in ("scale", "var"):
            return np.ones(leaf.shape, leaf.dtype)
        if name in ("bias", "mean"):
            return np.zeros(leaf.shape, leaf.dtype)
        fan_in = leaf.shape[-1] if name == "embedding" else np.prod(leaf.shape[:-1])
        return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)

    shapes = jax.eval_shape(family.init, jax.random.PRNGKey(0), batch)
    return jax.tree_util.tree_map_with_path(draw, shapes)


def _state(family, batch, lr=1e-3, init=None):
    params, model_state = (init or (lambda f, b: jax.jit(f.init)(jax.random.PRNGKey(0), b)))(
        family, batch)
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


_sig = lambda t: 1.0 / (1.0 + math.exp(-t))
REAL, FAKE = (2.0, -0.5), (-1.0, 0.3)  # D's logits on two real and two generated images
# (loss, D loss, G loss) by hand from the papers' formulas on REAL and FAKE. Goodfellow et al.'s D
# (both logistic losses) maximises log D(x) + log(1 - D(G(z))); the minimax G minimises
# log(1 - D(G(z))), the non-saturating G -log D(G(z)).
D_LOGISTIC = (-math.log(_sig(2.0)) - math.log(1 - _sig(-1.0))
              - math.log(_sig(-0.5)) - math.log(1 - _sig(0.3))) / 2
LOSS_VALUES = [
    ("minimax", D_LOGISTIC, (math.log(1 - _sig(-1.0)) + math.log(1 - _sig(0.3))) / 2),
    ("non_saturating", D_LOGISTIC, (-math.log(_sig(-1.0)) - math.log(_sig(0.3))) / 2),
    # D: max(0, 1 - r) + max(0, 1 + f) = (0 + 1.5) and (0 + 1.3); G: -f.
    ("hinge", (0.0 + 1.5 + 0.0 + 1.3) / 2, (1.0 - 0.3) / 2),
    # D: f - r; G: -f.
    ("wasserstein", (-1.0 + 0.3) / 2 - (2.0 - 0.5) / 2, (1.0 - 0.3) / 2),
]


@pytest.mark.parametrize("kind,d_want,g_want", LOSS_VALUES, ids=[v[0] for v in LOSS_VALUES])
def test_loss_values(kind, d_want, g_want):
    real, fake = jnp.array(REAL), jnp.array(FAKE)
    np.testing.assert_allclose(float(gan.discriminator_loss(kind, real, fake)), d_want, rtol=1e-6)
    np.testing.assert_allclose(float(gan.generator_loss(kind, fake)), g_want, rtol=1e-6)


@pytest.mark.parametrize("loss", ["wasserstein", "non_saturating"])
def test_gradient_penalty_of_a_linear_critic(loss):
    """With no hidden layer D is linear, logit = w.x + b: its input gradient is w everywhere, so
    the penalty is (|w| - 1)^2 exactly, whatever the interpolation. G's output layer is zeroed, so
    its images are tanh(its bias) whatever the noise: every logit is known from the params."""
    lam = 10.0
    family = make_family(dict(TINY_MLP, d_hidden=(), loss=loss, gradient_penalty=lam))
    batch = _batch(family)
    params, model_state = jax.jit(family.init)(jax.random.PRNGKey(0), batch)
    rng = np.random.default_rng(0)
    w = rng.normal(size=784)
    w *= 2.5 / np.linalg.norm(w)                            # |w| = 2.5: penalty 2.25
    g_bias = rng.normal(size=784) * 0.5
    params = {"discriminator": {"logit": {"kernel": jnp.asarray(w[:, None], jnp.float32),
                                          "bias": jnp.array([0.3])}},
              "generator": {**params["generator"], "out": {
                  "kernel": jnp.zeros_like(params["generator"]["out"]["kernel"]),
                  "bias": jnp.asarray(g_bias, jnp.float32)}}}
    loss_value, metrics, _ = jax.jit(family.objective[0].loss_fn)(params, model_state, batch,
                                                                  jax.random.PRNGKey(1))
    x_real = np.asarray(batch["image"], np.float64).reshape(8, -1) * 2 - 1
    real = x_real @ w + 0.3
    fake = np.full(8, np.tanh(g_bias) @ w + 0.3)
    penalty = (np.linalg.norm(w) - 1) ** 2
    if loss == "wasserstein":
        base = np.mean(fake) - np.mean(real)
    else:
        base = np.mean(np.logaddexp(0, -real) + np.logaddexp(0, fake))  # -log D(x) - log(1 - D)
    np.testing.assert_allclose(float(metrics["gradient_penalty"]), penalty, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["real_logit"]), np.mean(real), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(metrics["fake_logit"]), np.mean(fake), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(loss_value), base + lam * penalty, rtol=1e-5)


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
    """n_critic=3 is three D updates in turn, each from the params the last one left: the same as
    three hand-written Adam steps, with the step's rng for update 0, repeat r:
    fold_in(fold_in(fold_in(state.rng, step 0), update 0), r)."""
    family = make_family(dict(TINY_MLP, n_critic=3))
    batch = _batch(family)
    state = _state(family, batch)
    three, _ = jax.jit(make_train_step(family.objective[:1]))(state, batch)
    assert family.objective[0].repeats == 3
    assert int(three.opt_state["discriminator"][0].count) == 3

    d_loss, tx = family.objective[0].loss_fn, state.tx["discriminator"]

    @jax.jit
    def d_update(d_params, opt_state, r):
        rng = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(state.rng, 0), 0), r)
        grads = jax.grad(lambda d: d_loss({**state.params, "discriminator": d}, state.model_state,
                                          batch, rng)[0])(d_params)
        delta, opt_state = tx.update(grads, opt_state, d_params)
        return optax.apply_updates(d_params, delta), opt_state

    d_params, opt_state = state.params["discriminator"], state.opt_state["discriminator"]
    for r in range(3):
        d_params, opt_state = d_update(d_params, opt_state, r)
    # Tolerance: the same float32 ops compiled as two programs differ by an ulp or so (measured:
    # 7e-9 at most, one ulp of a weight ~0.1), so rtol 1e-5 / atol 1e-7 leave room for other
    # fusions; taking all three gradients at the start params moves D by up to ~4e-3.
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    jax.tree.map(close, three.params["discriminator"], d_params)
    jax.tree.map(close, three.opt_state["discriminator"], opt_state)


def test_dcgan_step_single_equals_mesh_and_pmap_with_batchnorm(monkeypatch):
    """BatchNorm sees the global batch under every strategy (pmap: synchronised over its axis).
    Under pmap each device draws G's noise from its own key (the step folds in the shard index),
    so pmap's GAN step differs from single's (g_loss by ~0.3 here); with the noise pinned (one
    fixed draw, device d taking its rows 2d, 2d+1) all three strategies give the same step."""
    noise = jnp.asarray(np.random.default_rng(1).normal(size=(16, 8)), jnp.float32)
    calls = []

    def pinned_normal(key, shape=(), dtype=jnp.float32):
        calls.append(shape)
        axis = parallel.sync_axis()  # the pmap axis while tracing under pmap, else None
        start = 0 if axis is None else jax.lax.axis_index(axis) * shape[0]
        return jax.lax.dynamic_slice_in_dim(noise, start, shape[0]).astype(dtype)

    family = make_family(dict(TINY_DCGAN, num_classes=10))
    batches = [_batch(family, 16, seed=s) for s in range(2)]
    state = _state(family, batches[0], init=_numpy_init)
    monkeypatch.setattr(jax.random, "normal", pinned_normal)
    results = {}
    for name in ("single", "mesh", "pmap"):
        strategy = parallel.make_strategy(name)
        step = compiled.compile_train_step(family.objective, strategy,
                                           batch_spec=family.batch_spec)
        s = strategy.place_state(state)
        for b in batches:
            s, metrics = step(s, b)
        results[name] = strategy.to_host((s.params, s.model_state, metrics))
    assert (16, 8) in calls and (2, 8) in calls  # single and mesh drew 16 rows, pmap's devices 2
    # DCGAN 28x28: G projects to 7x7x8 and upsamples twice; D downsamples twice to 7x7x8.
    assert results["mesh"][0]["generator"]["out"]["kernel"].shape == (4, 4, 4, 1)
    assert results["mesh"][0]["discriminator"]["logit"]["kernel"].shape == (7 * 7 * 8, 1)
    assert results["mesh"][0]["discriminator"]["projection"]["embedding"].shape == (10, 7 * 7 * 8)
    # BatchNorm statistics moved, identically under all strategies.
    assert _max_diff(results["single"][1], state.model_state) > 1e-4
    # Tolerance: the same float32 math, reduced in another order: BatchNorm's statistics, the
    # gradients and the metrics over 16 examples as one sum (single) or as 8 per-device partial
    # sums of 2 and an all-reduce (mesh, pmap). That costs a few ulps; after two Adam steps the
    # largest difference measured is 6e-8 (on a weight of 0.5; 3e-8 on weights of 1e-4), while a
    # BatchNorm normalising with one device's 2 examples moves params by ~1e-3.
    for name in ("mesh", "pmap"):
        for a, b in zip(jax.tree.leaves(results["single"]), jax.tree.leaves(results[name])):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7, err_msg=name)


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


def test_a_short_mnist_gan_run_improves_its_classifier_fid(tfds_dirs, mnist):
    """The MLP GAN of configs/gan_mnist.py on real MNIST, 3,000 steps (30-40 s on 2 cores): its samples come
    far closer to the test images, in the MNIST CNN's features, than the untrained generator's,
    and spread over the digits instead of collapsing on a few. Measured on 1,000 samples against
    2,000 test images (floor ~6): FID ~575 after one step, covering 3 classes (normalised label
    entropy 0.3); ~340 after 3,000, all 10 classes, entropy 0.88; ~280 at 5,000 steps and 254 at
    the config's 10,000 (docs/results.md)."""
    from configs_loader import load_config
    from zoo import sample, train
    from zoo.eval_quality import RealReference, image_quality_report

    real = RealReference(None, mnist["train"], mnist["test"], dataset="mnist", max_real=2000)
    reports = {}
    for steps in (1, 3000):
        config = load_config("gan_mnist")
        config.data.update(tfds_dirs)
        config.train.update(steps=steps, log_every=1000, eval_every=0, checkpoint_every=0)
        config.parallel.strategy = "single"  # a tiny MLP: 8 host devices only add overhead
        result = train.train(config, None, log=lambda s: None)
        params = result.strategy.to_host(result.state.params)
        model_state = result.strategy.to_host(result.state.model_state)
        images = sample.generate_images(result.family, params, model_state,
                                        jax.random.PRNGKey(0), 1000)
        reports[steps] = image_quality_report(None, images, reference=real)
    first, last = reports[1], reports[3000]
    assert first["fid"] > 50 * first["fid_floor"], first
    assert last["fid"] < 0.7 * first["fid"], (first["fid"], last["fid"])
    assert last["num_classes_produced"] == 10, last["label_histogram"]
    assert last["label_entropy_normalized"] > 0.75, last["label_histogram"]
