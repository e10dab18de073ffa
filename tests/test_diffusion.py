"""Diffusion: schedules against their closed forms, samplers against the exact denoisers of known
data distributions, guidance, inpainting, the EMA, strategies, resume and a short MNIST run."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs_loader import load_config
from PIL import Image

from zoo import build, cli, inpaint, sample, train
from zoo.checkpoint import Checkpointer, load_run
from zoo.config import apply_overrides
from zoo.core import diffusion as D
from zoo.core import parallel
from zoo.core.step import make_train_step
from zoo.core.train_state import TrainState
from zoo.models import diffusion, make_family

# A U-Net small enough to run many sampler steps in a test: 8x8 images, two levels.
SMALL = dict(family="diffusion", image_shape=(8, 8, 1), channels=8, channel_mult=(1, 2),
             num_res_blocks=1, attention_resolutions=(4,), groups=4, diffusion_steps=50)


def _init(config, n=4):
    family = make_family(config)
    shape = family.denoiser.image_shape
    batch = {"image": jnp.full((n, *shape), 0.5)}
    if family.denoiser.num_classes:
        batch["label"] = jnp.arange(n, dtype=jnp.int32) % family.denoiser.num_classes
    # One jit: op by op the initialisers compile a program each (build.initial_state does too).
    return family, batch, jax.jit(family.init)(jax.random.PRNGKey(0), batch)[0]


@pytest.mark.parametrize("preset,shape,params", [
    ("tiny", (28, 28, 1), 176_849), ("mnist", (28, 28, 1), 1_112_801),
    ("ddpm_cifar10", (32, 32, 3), 35_746_307)])
def test_every_preset_builds_its_shapes_and_cifar10_is_ddpms_35_7m_unet(preset, shape, params):
    # 35,746,307 is the parameter count of DDPM's CIFAR-10 model (Ho et al. 2020: "35.7 million").
    assert diffusion.param_count_of({"preset": preset}) == params
    model = diffusion.make_model({"preset": preset})
    x = jnp.zeros((2, *shape))
    out = jax.eval_shape(lambda: model.init_with_output(
        jax.random.PRNGKey(0), x, jnp.zeros((2,), jnp.int32))[0])
    assert out.shape == (2, *shape)


def test_a_tiny_preset_forward_and_bad_settings():
    family, batch, params = _init(dict(family="diffusion", preset="tiny"))
    loss, metrics, _ = jax.jit(family.objective[0].loss_fn)(params, {"model": {}}, batch,
                                                           jax.random.PRNGKey(1))
    assert np.isfinite(float(loss)) and set(metrics) == {"loss"}
    with pytest.raises(ValueError, match="unknown diffusion preset 'huge'; choose one of tiny"):
        make_family(dict(family="diffusion", preset="huge"))
    with pytest.raises(ValueError, match="groups=5 must divide"):
        make_family(dict(SMALL, groups=5))
    with pytest.raises(ValueError, match="unknown noise schedule 'sqrt'"):
        make_family(dict(SMALL, schedule="sqrt"))
    with pytest.raises(ValueError, match="unknown diffusion prediction 'x0'"):
        make_family(dict(SMALL, prediction="x0"))
    with pytest.raises(ValueError, match="must be divisible by 2"):
        make_family(dict(SMALL, image_shape=(7, 7, 1)))


def test_schedules_and_q_sample_match_their_closed_forms():
    linear = D.NoiseSchedule.make("linear", 1000)
    np.testing.assert_allclose(linear.betas[[0, -1]], [1e-4, 0.02])
    abar = 1.0
    for t in range(1000):  # the product, one factor at a time
        abar *= 1.0 - linear.betas[t]
    np.testing.assert_allclose(linear.alpha_bars[-1], abar, rtol=1e-10)
    cosine = D.NoiseSchedule.make("cosine", 1000)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    for t in (0, 10, 500, 900):  # uncapped steps: abar_t = f(t + 1) / f(0)
        np.testing.assert_allclose(cosine.alpha_bars[t], f(t + 1) / f(0), rtol=1e-9)
    # q(x_t | x_0): empirical mean and variance over many noise draws.
    x0 = jnp.full((20_000, 1), 0.6)
    t = jnp.full((20_000,), 300)
    x_t = D.q_sample(linear, x0, t, jax.random.normal(jax.random.PRNGKey(0), x0.shape))
    a = linear.alpha_bars[300]
    np.testing.assert_allclose(float(x_t.mean()), math.sqrt(a) * 0.6, atol=0.02)
    np.testing.assert_allclose(float(x_t.var()), 1 - a, rtol=0.03)


def _gaussian_denoiser(schedule, mu, s):
    """The exact E[eps | x_t] when the data are N(mu, s^2) per pixel: x_t ~ N(sqrt(a) mu,
    a s^2 + 1 - a), and E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a)."""
    def predict(x, t, labels):
        a = schedule.at(schedule.alpha_bars, t, x.ndim)
        return jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * mu) / (a * s ** 2 + 1 - a)
    return predict


# DDIM's deterministic ODE is accurate in few steps; a stochastic sampler replaces x_0 by its
# mean in each jump, which loses variance in large jumps (eta = 1 in 100 steps draws std 0.27 for
# 0.3), so eta > 0 is checked over all steps, where every eta is exact.
@pytest.mark.parametrize("sampler,steps,eta", [("ddpm", None, None), ("ddim", 100, 0.0),
                                               ("ddim", 1000, 0.5)])
def test_samplers_draw_the_data_distribution_under_its_exact_denoiser(sampler, steps, eta):
    schedule = D.NoiseSchedule.make("linear", 1000)
    mu, s = 0.2, 0.3  # well inside [-1, 1]: clipping the x_0 estimate changes nothing
    predict = _gaussian_denoiser(schedule, mu, s)
    noise = jax.random.normal(jax.random.PRNGKey(0), (4000, 2, 2, 1))
    rng = jax.random.PRNGKey(1)
    if sampler == "ddpm":
        x = jax.jit(lambda n: D.ddpm_sample(schedule, predict, n, None, rng))(noise)
    else:
        x = jax.jit(lambda n: D.ddim_sample(schedule, predict, n, None, rng, steps=steps,
                                            eta=eta))(noise)
    np.testing.assert_allclose(float(x.mean()), mu, atol=0.01)
    np.testing.assert_allclose(float(x.std()), s, rtol=0.05)


def test_ddpm_ancestral_sampling_equals_ddim_with_eta_1_over_all_steps():
    # Two formulas for one process: DDPM's posterior mean and variance (Ho et al. eq. 7) and
    # DDIM's update with sigma_t = eta * ... at eta = 1 (Song et al. eq. 16).
    schedule = D.NoiseSchedule.make("cosine", 200)
    predict = lambda x, t, y: jnp.tanh(x) * 0.5 + 0.01 * t[:, None, None, None]
    noise = jax.random.normal(jax.random.PRNGKey(0), (8, 4, 4, 1))
    rng = jax.random.PRNGKey(3)
    a = D.ddpm_sample(schedule, predict, noise, None, rng)
    b = D.ddim_sample(schedule, predict, noise, None, rng, steps=200, eta=1.0)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


def test_ddim_eta_0_is_deterministic_for_a_noise_and_eta_1_is_not():
    family, _, params = _init(SMALL)
    den = family.denoiser
    noise = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1))
    draw = jax.jit(lambda rng, eta: den.sample(params["model"], {}, noise, None, rng,
                                               steps=10, eta=eta))
    np.testing.assert_array_equal(draw(jax.random.PRNGKey(1), 0.0),
                                  draw(jax.random.PRNGKey(2), 0.0))
    assert not np.allclose(draw(jax.random.PRNGKey(1), 1.0), draw(jax.random.PRNGKey(2), 1.0))
    img = np.asarray(draw(jax.random.PRNGKey(1), 0.0))
    assert img.shape == (4, 8, 8, 1) and img.min() >= 0 and img.max() <= 1


def test_guidance_0_is_the_unconditional_model_and_1_the_conditional_one():
    schedule = D.NoiseSchedule.make("linear", 100)

    def predict(params, model_state, x, t, labels):  # data N(mu_y, 0.3^2); the null label 3: mu 0
        mu = jnp.where(labels == 3, 0.0, 0.3 * (labels - 1.0))[:, None, None, None]
        return _gaussian_denoiser(schedule, mu, 0.3)(x, t, labels)

    den = D.Denoiser(player="model", image_shape=(4, 4, 1), num_classes=3, schedule=schedule,
                     predict=predict, sampling_steps=20, guidance=1.0)
    noise = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 4, 1))
    labels = jnp.arange(3, dtype=jnp.int32)
    null = jnp.full((3,), 3, jnp.int32)
    draw = lambda y, w: np.asarray(den.sample({}, {}, noise, y, jax.random.PRNGKey(0), steps=20,
                                              guidance=w))
    np.testing.assert_allclose(draw(labels, 0.0), draw(null, 1.0), atol=1e-5)
    # The guided mix itself at w = 0 (the sampler takes the one-pass path above) is the same.
    x, t = noise, jnp.full((3,), 40)
    plain = lambda x, t, y: predict({}, {}, x, t, y)
    np.testing.assert_allclose(D.guided(plain, 3, 0.0)(x, t, labels), plain(x, t, null),
                               atol=1e-6)
    np.testing.assert_allclose(draw(labels, 1.0), draw(labels, 1.0 + 1e-9), atol=1e-5)
    # Guidance 3 pushes each class's mean out: (1 - w) * 0 + w * mu_y in x_0 terms.
    means = draw(labels, 3.0).mean(axis=(1, 2, 3)) * 2 - 1
    assert means[0] < draw(labels, 1.0)[0].mean() * 2 - 1 < 0 < means[2], means
    with pytest.raises(ValueError, match="guidance needs a class-conditional model"):
        _init(SMALL)[0].denoiser.image_sampler(guidance=2.0)


def test_inpainting_keeps_the_known_pixels_and_fills_the_rest_from_the_model():
    schedule = D.NoiseSchedule.make("linear", 100)
    images = jax.random.uniform(jax.random.PRNGKey(0), (4, 6, 6, 1), minval=-1, maxval=1)
    known = jnp.zeros((4, 6, 6, 1)).at[:, :, :3].set(1.0)
    # A data distribution of one image, target: its exact denoiser eps = (x - sqrt(a) x0) /
    # sqrt(1 - a) makes every sample that image, so the filled half must be target's half.
    target = jnp.linspace(-0.8, 0.8, 36).reshape(1, 6, 6, 1)

    def predict(x, t, y):
        a = schedule.at(schedule.alpha_bars, t, x.ndim)
        return (x - jnp.sqrt(a) * target) / jnp.sqrt(1 - a)

    for resample in (1, 3):
        out = D.inpaint(schedule, predict, images, known, None, jax.random.PRNGKey(1), steps=20,
                        resample=resample)
        np.testing.assert_array_equal(np.asarray(out[:, :, :3]), np.asarray(images[:, :, :3]))
        np.testing.assert_allclose(np.asarray(out[:, :, 3:]),
                                   np.broadcast_to(target[:, :, 3:], out[:, :, 3:].shape),
                                   atol=1e-4)


def test_v_prediction_and_eps_from_v_invert_each_other():
    schedule = D.NoiseSchedule.make("cosine", 100)
    k = jax.random.split(jax.random.PRNGKey(0), 2)
    x0, eps = jax.random.normal(k[0], (5, 3)), jax.random.normal(k[1], (5, 3))
    t = jnp.array([0, 10, 50, 90, 99])
    x_t = D.q_sample(schedule, x0, t, eps)
    v = D.v_target(schedule, x0, t, eps)
    np.testing.assert_allclose(np.asarray(D.eps_from_v(schedule, x_t, t, v)), np.asarray(eps),
                               atol=1e-5)
    family, batch, params = _init(dict(SMALL, prediction="v"))
    loss, _, _ = jax.jit(family.objective[0].loss_fn)(params, {"model": {}}, batch,
                                                      jax.random.PRNGKey(0))
    assert np.isfinite(float(loss))


def test_ema_after_k_steps_equals_the_formula():
    w0 = {"w": jnp.array([1.0, -2.0])}
    loss = lambda p, batch, rng: (jnp.sum((p["w"] - batch["x"]) ** 2), {})
    state = TrainState.create(params=w0, tx=optax.sgd(0.1), seed=0, ema=True)
    step = jax.jit(make_train_step(loss, ema_decay=0.9))
    batch = {"x": jnp.array([[0.5, 0.5]])}
    ema = np.array([1.0, -2.0])
    for s in range(6):
        state, _ = step(state, batch)
        d = min(0.9, (1 + s) / (10 + s))  # the warm-up: 0.1, 0.18, ... then 0.9
        ema = d * ema + (1 - d) * np.asarray(state.params["model"]["w"])
    np.testing.assert_allclose(np.asarray(state.ema_params["model"]["w"]), ema, rtol=1e-6)
    with pytest.raises(ValueError, match="ema=True"):
        make_train_step(loss, ema_decay=0.9)(TrainState.create(params=w0, tx=optax.sgd(0.1),
                                                               seed=0), batch)


# Pipeline runs: synthetic 28x28 images, a one-level U-Net of 8 channels without attention
# (what these tests check is the shared machinery; a second level doubled each compile, and the
# presets' full shapes are checked above).
PIPE = ["--config.data.dataset=synthetic", "--config.data.synthetic_size=256",
        "--config.data.batch_size=16", "--config.data.eval_batch_size=16",
        "--config.model.preset=tiny", "--config.model.channels=8", "--config.model.groups=4",
        "--config.model.channel_mult=(1,)",
        "--config.model.attention_resolutions=()", "--config.model.num_classes=10",
        "--config.model.sampling_steps=3", "--config.train.log_every=1",
        "--config.train.ema_decay=0.99", "--config.train.checkpoint_every=3"]


def _pipe_config(*overrides):
    return apply_overrides(load_config("diffusion_mnist_cfg"), [*PIPE, *overrides])


def test_single_and_mesh_agree_on_the_diffusion_step_and_pmap_runs_with_its_own_draws():
    # GroupNorm normalises each example by itself: no statistics cross devices. Single and mesh
    # draw t, noise and label drops over the global batch alike, so their steps agree; under
    # pmap each device draws its own (as with dropout masks, zoo.core.step), so pmap agrees
    # with them in distribution, not draw for draw; its step is checked on 8 devices to run
    # and give a loss near theirs.
    config = _pipe_config("--config.train.steps=2")
    results = {}
    for name in ("single", "mesh", "pmap"):
        run = build.build(apply_overrides(config, [f"--config.parallel.strategy={name}"]))
        state = run.strategy.place_state(run.template)
        batch = next(run.data.train)
        state, metrics = run.train_step(state, batch)
        results[name] = jax.device_get((run.strategy.to_host(state.params),
                                        run.strategy.to_host(state.ema_params), metrics))
    assert abs(np.mean(results["pmap"][2]["loss"]) - float(results["single"][2]["loss"])) < 0.2
    del results["pmap"]
    for a, b in zip(jax.tree.leaves(results["single"]), jax.tree.leaves(results["mesh"])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_resume_with_an_ema_is_bitwise_and_samples_use_it(tmp_path):
    config = _pipe_config("--config.train.steps=6")
    whole = train.train(config, tmp_path / "whole", log=lambda s: None)
    train.train(_pipe_config("--config.train.steps=3"), tmp_path / "half", log=lambda s: None)
    resumed = train.train(config, tmp_path / "half", log=lambda s: None)
    a, b = (r.strategy.to_host(r.state) for r in (whole, resumed))
    for x, y in zip(jax.tree.leaves((a.params, a.ema_params, a.opt_state)),
                    jax.tree.leaves((b.params, b.ema_params, b.opt_state))):
        np.testing.assert_array_equal(x, y)
    # The EMA trails the params (6 warm-up steps move them by ~1e-6: compare bits, not values).
    assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.params),
                                                        jax.tree.leaves(a.ema_params)))
    run = load_run(tmp_path / "whole")
    assert run.ema_params is not None and run.sampling_params is run.ema_params
    for x, y in zip(jax.tree.leaves(run.ema_params), jax.tree.leaves(a.ema_params)):
        np.testing.assert_array_equal(x, y)
    # Restored under another strategy, the EMA comes back with everything else.
    built = build.build(config)
    ckpt = Checkpointer(tmp_path / "whole" / "checkpoints")
    state, _, step = ckpt.restore(built.template, parallel.make_strategy("pmap"))
    ckpt.close()
    host = parallel.make_strategy("pmap").to_host(state)
    assert step == 6
    for x, y in zip(jax.tree.leaves(host.ema_params), jax.tree.leaves(a.ema_params)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow  # ~2 minutes: 40 U-Net steps, then two evaluations of the 10,000 test images
def test_the_loss_falls_on_mnist_in_a_short_run(tfds_dirs, tmp_path):
    config = apply_overrides(load_config("diffusion_mnist"), [
        "--config.model.preset=tiny", "--config.model.attention_resolutions=()",
        "--config.train.steps=40", "--config.train.log_every=1", "--config.data.batch_size=32",
        "--config.optimizer.learning_rate=2e-3", "--config.optimizer.warmup_steps=0",
        "--config.train.eval_every=0", "--config.data.eval_batch_size=1000",
        "--config.parallel.strategy=single",
        f"--config.data.tfds_data_dir={tfds_dirs['tfds_data_dir']}",
        f"--config.data.download_dir={tfds_dirs['download_dir']}"])
    result = train.train(config, tmp_path, log=lambda s: None)
    losses = [h["loss"] for h in result.history]
    # At init the U-Net's output is ~0, so the loss starts at E[eps^2] = 1.
    assert np.mean(losses[:5]) > 0.8
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
    # zoo eval's table of quality and speed by sampling steps, through the CLI.
    assert cli.main(["eval", str(tmp_path), "--sampling-steps", "2,4", "--num-samples",
                     "40"]) == 0
    rows = json.loads((tmp_path / "eval.json").read_text())["quality"]["sampling"]
    assert [r["sampling_steps"] for r in rows] == [2, 4]
    for r in rows:
        assert r["num_samples"] == 40 and r["samples_per_s"] > 0 and r["fid"] > r["fid_floor"]
    assert (tmp_path / "eval_sampling.png").stat().st_size > 10_000


@pytest.fixture(scope="module")
def tiny_run(built_once):
    """A class-conditional run of 3 steps on synthetic images, with an EMA (read only)."""
    return built_once("diffusion_run", lambda workdir: train.train(
        _pipe_config("--config.train.steps=3"), workdir, log=lambda s: None))


def test_zoo_sample_draws_a_row_per_class_a_denoising_strip_and_a_slerp(tiny_run, tmp_path,
                                                                         capsys):
    assert cli.main(["sample", str(tiny_run), "--out", str(tmp_path), "--sampling-steps", "3",
                     "--guidance", "2", "--eta", "0.5"]) == 0
    grid = Image.open(tmp_path / "samples.png")
    rows = round((grid.height - sample.FONT_SIZE - 10 - 2) / (28 * 3 + 2))
    assert rows == 10  # one per class
    strip = Image.open(tmp_path / "denoising.png")
    assert strip.width > 4 * 28 * 3  # the 4 states of a 3-step path: x_T, then each step
    assert "denoising: " in capsys.readouterr().out
    # Interpolation keeps the norm of a noise image (slerp), where a lerp would sag midway.
    a, b = jax.random.normal(jax.random.PRNGKey(0), (2, 1, 784))
    norms = np.linalg.norm(np.asarray(sample._slerp(a, b, 9)), axis=-1)
    np.testing.assert_allclose(norms, np.sqrt(784), rtol=0.06)
    assert np.linalg.norm(np.asarray(sample._lerp(a, b, 9))[4]) < 0.8 * np.sqrt(784)
    # Sampling options are refused where they do not apply, in one line.
    assert cli.main(["sample", str(tiny_run), "--out", str(tmp_path), "--sampler", "ddpm",
                     "--sampling-steps", "3"]) == 2
    assert "the ddpm sampler runs all 1000 steps" in capsys.readouterr().err


@pytest.mark.parametrize("mask", inpaint.MASKS)
def test_zoo_inpaint_writes_the_rows_and_arrays_and_keeps_known_pixels(tiny_run, tmp_path, mask):
    assert cli.main(["inpaint", str(tiny_run), "--out", str(tmp_path), "--mask", mask,
                     "--images", "3", "--sampling-steps", "2", "--resample", "2"]) == 0
    arrays = np.load(tmp_path / "inpainting.npz")
    known = np.broadcast_to(arrays["known"], arrays["original"].shape) > 0
    assert 0.2 < known.mean() < 0.9
    np.testing.assert_array_equal(arrays["filled"][known], arrays["original"][known])
    assert not np.allclose(arrays["filled"][~known], arrays["original"][~known])
    np.testing.assert_array_equal(arrays["masked"][~known], 0.5)
    assert (tmp_path / "inpainting.png").is_file()


def test_the_sampling_table_scores_each_step_count_and_plots_it(tiny_run, mnist, tmp_path):
    """What `zoo eval --sampling-steps 2,4` computes (through the CLI on an MNIST run in the slow
    test above), on the tiny synthetic run against real MNIST: a row per step count with its
    quality, floor and speed, each class in turn, and the plot."""
    from zoo import eval_quality
    from zoo.models.classifier import FeatureClassifier
    run = load_run(tiny_run)
    lines = []
    rows = eval_quality.sampling_table(run.family, run.sampling_params, run.model_state, mnist,
                                       40, [2, 4], [], classifier=FeatureClassifier.shipped("mnist"),
                                       log=lines.append)
    assert [r["sampling_steps"] for r in rows] == [2, 4] and len(lines) == 2
    for r in rows:
        assert r["num_samples"] == 40 and r["samples_per_s"] > 0 and r["seconds"] > 0
        # Three steps of training on noise: far from MNIST, which its own images are not
        # (measured: FID ~540 against a floor of ~107, high for 40 images).
        assert r["fid"] > 3 * r["fid_floor"] and r["recall"] < r["recall_floor"]
        # Each class in turn, at the model's own guidance (the config's).
        assert "conditional_accuracy" in r and r["guidance"] == run.family.denoiser.guidance
    # The two rows draw from one noise with other step counts: not the same images.
    assert rows[0]["fid"] != rows[1]["fid"]
    png = eval_quality.plot_sampling_table(rows, tmp_path / "table.png")
    assert png.stat().st_size > 10_000
    # Said to be Fashion-MNIST, the images are not judged by the MNIST CNN.
    with pytest.raises(ValueError, match="trained on mnist, but the images are fashion_mnist"):
        eval_quality.sampling_table(run.family, run.sampling_params, run.model_state, mnist, 40,
                                    [2], [], classifier=FeatureClassifier.shipped("mnist"),
                                    dataset="fashion_mnist")
