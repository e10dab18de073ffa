"""VAE family: shapes, ELBO/IWAE, conditioning, bad input, and a short real MNIST run."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zoo.core import compiled, parallel
from zoo.core.train_state import TrainState
from zoo.data import BatchIterator, synthetic_images
from zoo.models import make_family, vae

SMALL = dict(family="vae", hidden=(64,), features=(8, 16), latent_dim=4)


def _batch(family, n=8):
    d = synthetic_images(n)
    return {k: d[k] for k in family.batch_spec}


# Every architecture, likelihood and conditioning appears at least once.
@pytest.mark.parametrize("arch,likelihood,num_classes", [
    ("mlp", "bernoulli", 0), ("conv", "gaussian", 10)])
def test_shapes_and_finite_loss(arch, likelihood, num_classes):
    family = make_family(dict(SMALL, arch=arch, likelihood=likelihood, num_classes=num_classes))
    batch = _batch(family)
    params, state = jax.jit(family.init)(jax.random.PRNGKey(0), batch)
    model, p = family.modules["model"], params["model"]
    y = jnp.asarray(batch["label"]) if num_classes else None

    @jax.jit
    def run(params, batch, y, rng):
        mean, logvar = model.apply({"params": params["model"]}, batch["image"], y,
                                   method=vae.VAE.encode)
        images = vae.generate(model, params["model"], rng, 5, None if y is None else y[:5])
        return mean, logvar, images, family.objective[0].loss_fn(params, state, batch, rng)

    mean, logvar, images, (loss, metrics, _) = run(params, batch, y, jax.random.PRNGKey(2))
    assert mean.shape == logvar.shape == (8, 4)
    assert images.shape == (5, 28, 28, 1)
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    assert np.isfinite(float(loss)) and float(loss) > 0
    assert set(metrics) == {"loss", "elbo", "recon", "kl"}
    np.testing.assert_allclose(float(metrics["elbo"]), -float(metrics["recon"] + metrics["kl"]),
                               rtol=1e-5)
    assert float(metrics["kl"]) >= 0


def test_latent_size_two_and_bad_input():
    family = make_family(dict(SMALL, latent_dim=2))
    params, _ = jax.jit(family.init)(jax.random.PRNGKey(0), _batch(family))
    assert params["model"]["encoder"]["mean"]["kernel"].shape[-1] == 2
    with pytest.raises(ValueError, match="latent_dim must be >= 1.*got 0"):
        make_family(dict(SMALL, latent_dim=0))
    with pytest.raises(ValueError, match="unknown VAE likelihood 'poisson'; choose one of bernoulli"):
        make_family(dict(SMALL, likelihood="poisson"))
    with pytest.raises(ValueError, match="unknown VAE arch 'rnn'"):
        make_family(dict(SMALL, arch="rnn"))
    with pytest.raises(ValueError, match="divisible by 4"):
        make_family(dict(SMALL, arch="conv", image_shape=(30, 30, 1)))
    with pytest.raises(ValueError, match="unknown activation 'gelu'; choose one of relu, tanh"):
        make_family(dict(SMALL, activation="gelu"))
    # Burda et al.'s tanh units: same params, other hidden features, so another code.
    tanh = make_family(dict(SMALL, latent_dim=2, activation="tanh")).modules["model"]
    x = jnp.asarray(_batch(family)["image"])
    variables = {"params": params["model"]}
    relu_code = family.modules["model"].apply(variables, x, method=vae.VAE.encode)[0]
    tanh_code = tanh.apply(variables, x, method=vae.VAE.encode)[0]
    assert float(jnp.abs(relu_code - tanh_code).max()) > 1e-3
    model = family.modules["model"]
    with pytest.raises(ValueError, match="k >= 1 samples in chunks that divide k"):
        vae.iwae_bound(model, params["model"], jnp.zeros((2, 28, 28, 1)), None,
                       jax.random.PRNGKey(0), k=10, chunk=3)


def test_conditional_vae_label_changes_output():
    family = make_family(dict(SMALL, num_classes=10))
    params, _ = jax.jit(family.init)(jax.random.PRNGKey(0), _batch(family))
    model, p = family.modules["model"], params["model"]
    z = jax.random.normal(jax.random.PRNGKey(1), (4, 4))
    x = jnp.asarray(_batch(family, 4)["image"])

    @jax.jit
    def decode_and_encode(label):
        y = jnp.full((4,), label, jnp.int32)
        return vae.decode_images(model, p, z, y), vae.encode_means(model, p, x, y)

    (three, q3), (seven, q7) = decode_and_encode(3), decode_and_encode(7)
    assert float(jnp.max(jnp.abs(three - seven))) > 1e-3
    assert float(jnp.max(jnp.abs(q3 - q7))) > 1e-4


def _test_elbo(family, params, x, seed=0):
    """Mean test ELBO (nats) over x, dynamically binarised, with one z sample per image."""
    model = family.modules["model"]
    fn = jax.jit(lambda p, x, key: vae.elbo_terms(model, p, x, None, key)["elbo"])
    rng = jax.random.PRNGKey(seed)
    xb = vae.binarize(jax.random.fold_in(rng, 1), jnp.asarray(x))
    return float(jnp.mean(fn(params["model"], xb, rng)))


# A small MLP VAE (784-256-16), batch 128, Adam 1e-3, 300 steps on real MNIST: the test ELBO must
# rise by at least MARGIN nats from the untrained model (about -610 nats) and exceed FLOOR. Measured
# on this machine: -611.5 -> -136.4 nats; IWAE-500 -134.2 vs ELBO -140.0 on 100 images.
MARGIN, FLOOR = 250.0, -200.0


def test_vae_trained_on_mnist_beats_untrained(mnist):
    t0 = time.perf_counter()
    family = make_family(dict(family="vae", arch="mlp", hidden=(256,), latent_dim=16))
    train, test_x = mnist["train"], mnist["test"]["image"][:1000]
    it = BatchIterator(train, 128, seed=0)
    params, model_state = family.init(jax.random.PRNGKey(0), next(it))
    state = TrainState.create(params=params, tx={"model": optax.adam(1e-3)},
                              model_state=model_state, seed=0)
    before = _test_elbo(family, params, test_x)
    strategy = parallel.make_strategy("single")
    step = compiled.compile_train_step(family.objective, strategy, batch_spec=family.batch_spec)
    state = strategy.place_state(state)
    for _ in range(300):
        state, metrics = step(state, {"image": next(it)["image"]})
    params = strategy.to_host(state.params)
    after = _test_elbo(family, params, test_x)
    print(f"test ELBO before {before:.1f} after {after:.1f} nats "
          f"({time.perf_counter() - t0:.1f} s)")
    assert after > before + MARGIN and after > FLOOR, (before, after)

    # The importance-weighted bound (k = 500, in chunks of 50) is a tighter lower bound on
    # log p(x) than the ELBO on the same binarised images.
    model = family.modules["model"]
    x = vae.binarize(jax.random.PRNGKey(5), jnp.asarray(test_x[:100]))
    elbo = jnp.mean(vae.elbo_terms(model, params["model"], x, None, jax.random.PRNGKey(6))["elbo"])
    iwae = jnp.mean(jax.jit(lambda x: vae.iwae_bound(model, params["model"], x, None,
                                                     jax.random.PRNGKey(7), k=500, chunk=50))(x))
    print(f"same 100 images: ELBO {float(elbo):.2f}, IWAE-500 {float(iwae):.2f} nats")
    assert float(iwae) >= float(elbo), (float(iwae), float(elbo))
    assert float(iwae) < 0


def _train_and_zoo_eval(name, tfds_dirs, workdir, *overrides, num_samples):
    """A short real-MNIST run of configs/NAME.py (batch 96), then zoo eval with IWAE-10."""
    from configs_loader import load_config
    from zoo import eval_quality, train
    from zoo.config import apply_overrides

    config = apply_overrides(load_config(name), [
        f"--config.data.tfds_data_dir={tfds_dirs['tfds_data_dir']}",
        f"--config.data.download_dir={tfds_dirs['download_dir']}",
        "--config.data.batch_size=96", *overrides])
    train.train(config, workdir, log=lambda s: None)
    return eval_quality.evaluate_checkpoint(workdir, num_samples=num_samples, iwae_k=10,
                                     log=lambda s: None)


def test_zoo_eval_reports_quality_and_iwae_for_a_vae_run(tfds_dirs, tmp_path):
    """zoo eval on a (short) real MNIST run: eval metrics, classifier-FID beside its floor,
    precision/recall, mode coverage, generation speed and the IWAE test NLL, in eval.json."""
    import json

    result = _train_and_zoo_eval("vae_mnist", tfds_dirs, tmp_path, "--config.train.steps=200",
                                 "--config.model.hidden=(128,)", num_samples=500)
    assert json.loads((tmp_path / "eval.json").read_text()) == result
    q, elbo_nll = result["quality"], result["metrics"]["loss"]
    assert q["num_samples"] == 500 and q["samples_per_s"] > 0
    # 200 steps draw blurry digits: far from real data, but every class appears.
    assert q["fid"] > 3 * q["fid_floor"] > 0
    assert 0 <= q["precision"] <= 1 and 0 <= q["recall"] <= 1 and q["classes_covered"] >= 0.9
    # IWAE-10 is a tighter bound than the one-sample ELBO: a lower NLL, by a few nats at most.
    assert elbo_nll - 20 < q["test_nll_iwae"] < elbo_nll, (q["test_nll_iwae"], elbo_nll)
    assert q["iwae_k"] == 10 and q["iwae_images"] == 10_000


def test_zoo_eval_scores_a_gaussian_vae_on_the_images_it_was_trained_on(tfds_dirs, tmp_path):
    """A VAE trained without binarisation (Gaussian likelihood, continuous pixels) gets its IWAE
    test NLL on continuous pixels too: then IWAE-10 is a slightly tighter bound than its ELBO."""
    from configs_loader import load_config

    assert not vae.binarises(load_config("vae_gaussian_mnist").model)
    assert vae.binarises(load_config("vae_mnist").model)
    result = _train_and_zoo_eval("vae_gaussian_mnist", tfds_dirs, tmp_path,
                                 "--config.train.steps=100", "--config.model.hidden=(64,)",
                                 num_samples=200)
    elbo_nll = result["metrics"]["loss"]
    assert elbo_nll - 20 < result["quality"]["test_nll_iwae"] < elbo_nll, (
        result["quality"]["test_nll_iwae"], elbo_nll)
