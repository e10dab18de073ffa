"""VAE family: shapes, ELBO/IWAE, conditioning, bad input, and a short real MNIST run."""

import itertools
import math
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
def test_shapes_and_loss_terms_match_torch(arch, likelihood, num_classes):
    import torch
    from torch.distributions import Normal, kl_divergence

    family = make_family(dict(SMALL, arch=arch, likelihood=likelihood, num_classes=num_classes))
    batch = _batch(family)
    # Binary pixels: dynamic binarisation (each pixel ~ Bernoulli(intensity)) leaves them as they are.
    batch["image"] = (batch["image"] > 0.5).astype(np.float32)
    params, state = jax.jit(family.init)(jax.random.PRNGKey(0), batch)
    # q's std is e^-20: the sampled z is the encoder mean (to ~1e-8), so recon needs no rng.
    # A pixel scale e^-1 (not the init's 1) so a missing log_scale term would show.
    m = dict(params["model"])
    m["encoder"] = dict(m["encoder"], logvar={"kernel": jnp.zeros_like(m["encoder"]["logvar"]["kernel"]),
                                              "bias": jnp.full((4,), -40.0)})
    if likelihood == "gaussian":
        m["log_scale"] = jnp.array(-1.0)
    params = {"model": m}
    model = family.modules["model"]
    y = jnp.asarray(batch["label"]) if num_classes else None

    @jax.jit
    def run(params, batch, y, rng):
        mean, logvar = model.apply({"params": params["model"]}, batch["image"], y,
                                   method=vae.VAE.encode)
        out = model.apply({"params": params["model"]}, mean, y, method=vae.VAE.decode)
        images = vae.generate(model, params["model"], rng, 5, None if y is None else y[:5])
        return mean, logvar, out, images, family.objective[0].loss_fn(params, state, batch, rng)

    mean, logvar, out, images, (loss, metrics, _) = run(params, batch, y, jax.random.PRNGKey(2))
    assert mean.shape == logvar.shape == (8, 4)
    assert images.shape == (5, 28, 28, 1)
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    assert set(metrics) == {"loss", "elbo", "recon", "kl"}

    t = lambda a: torch.from_numpy(np.asarray(a, np.float64))
    x, out = t(batch["image"]), t(out)
    if likelihood == "bernoulli":
        recon = torch.nn.functional.binary_cross_entropy_with_logits(out, x, reduction="none")
    else:
        recon = -Normal(torch.sigmoid(out), math.exp(-1.0)).log_prob(x)
    recon = recon.sum((1, 2, 3)).mean().item()
    kl = kl_divergence(Normal(t(mean), torch.exp(0.5 * t(logvar))), Normal(0.0, 1.0))
    kl = kl.sum(-1).mean().item()
    np.testing.assert_allclose(float(metrics["recon"]), recon, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["kl"]), kl, rtol=1e-5)
    np.testing.assert_allclose(float(loss), recon + kl, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["elbo"]), -(recon + kl), rtol=1e-5)


def test_gaussian_kl_matches_torch():
    from torch.distributions import Normal, kl_divergence
    import torch

    # Rows: the prior itself (KL 0), a shifted and a narrow/wide posterior, a mix.
    mean = np.array([[0.0, 0.0], [1.5, -2.0], [0.0, 0.0], [0.3, 0.7]], np.float32)
    logvar = np.array([[0.0, 0.0], [0.0, 0.0], [-3.0, 2.0], [0.5, -1.0]], np.float32)
    want = kl_divergence(Normal(torch.from_numpy(mean).double(),
                                torch.exp(0.5 * torch.from_numpy(logvar).double())),
                         Normal(0.0, 1.0)).sum(-1).numpy()
    got = np.asarray(vae.gaussian_kl(jnp.asarray(mean), jnp.asarray(logvar)))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


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


def _logsumexp(a, axis):
    top = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.sum(np.exp(a - top), axis=axis))


def test_elbo_and_iwae_against_the_exact_log_likelihood_of_a_one_latent_vae():
    """A VAE with one latent and 4 binary pixels has log p(x) = log int p(x|z) N(z; 0, 1) dz,
    here by quadrature on a dense grid. The one-sample ELBO of training and IWAE-1 are on average
    the ELBO (quadrature of E_q log p(x|z) minus the closed-form KL), IWAE grows with k, and
    IWAE-5000 is log p(x) to Monte-Carlo error."""
    model = vae.VAE(image_shape=(4, 1, 1), hidden=(8,), latent_dim=1)
    x = np.array(list(itertools.product([0.0, 1.0], repeat=4)), np.float32).reshape(16, 4, 1, 1)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), x, None, jax.random.PRNGKey(1))["params"]
    # Decoder weights x4: p(x|z) changes sharply with z, so the posterior is far from the prior
    # (ELBO gaps of 6 to 38 nats); the encoder stays at its init (q's std 0.7 to 1).
    params = {**params, "decoder": jax.tree.map(lambda w: 4.0 * w, params["decoder"])}
    z = np.linspace(-10.0, 10.0, 20001)
    dz = z[1] - z[0]

    @jax.jit
    def decode_and_encode(z, x):
        return (model.apply({"params": params}, z, method=vae.VAE.decode),
                model.apply({"params": params}, x, method=vae.VAE.encode))

    logits, (mean, logvar) = decode_and_encode(jnp.asarray(z[:, None], jnp.float32), x)
    logits = np.asarray(logits, np.float64).reshape(len(z), 4)
    pixels = x.reshape(16, 1, 4).astype(np.float64)
    log_px_z = -np.sum(pixels * np.logaddexp(0, -logits) + (1 - pixels) * np.logaddexp(0, logits),
                       axis=-1)                                                       # (16, grid)
    log_prior = -0.5 * z ** 2 - 0.5 * math.log(2 * math.pi)
    log_px = _logsumexp(log_px_z + log_prior, axis=1) + math.log(dz)
    # The reference checks itself: the 16 images are all there are, so their p(x) sum to 1.
    np.testing.assert_allclose(np.exp(log_px).sum(), 1.0, rtol=1e-6)

    m, lv = np.asarray(mean, np.float64), np.asarray(logvar, np.float64)
    log_q = -0.5 * ((z - m) ** 2 / np.exp(lv) + lv + math.log(2 * math.pi))           # (16, grid)
    elbo = np.sum(np.exp(log_q) * log_px_z, axis=1) * dz - 0.5 * (np.exp(lv) + m ** 2 - 1 - lv)[:, 0]
    # chi^2(posterior || q) = E_q[w^2] / p(x)^2 - 1 with w = p(x, z) / q(z): IWAE-k's standard
    # deviation is sqrt(chi^2 / k) nats (delta method) and its bias chi^2 / (2k).
    log_w = log_px_z + log_prior - log_q
    chi2 = np.exp(_logsumexp(2 * log_w + log_q, axis=1) + math.log(dz) - 2 * log_px) - 1
    assert chi2.max() < 20 and np.all(log_px - elbo > 5)

    iwae = jax.jit(lambda x, key, k, chunk: vae.iwae_bound(model, params, x, None, key, k=k,
                                                           chunk=chunk), static_argnums=(2, 3))
    # k = 1, and the training loss's one-sample ELBO (elbo_terms), 2000 draws per image: each
    # mean is the ELBO within 4 standard errors.
    many = jnp.tile(x, (2000, 1, 1, 1))
    one = np.asarray(iwae(many, jax.random.PRNGKey(2), 1, 1)).reshape(-1, 16)
    terms = jax.jit(lambda x, key: vae.elbo_terms(model, params, x, None, key)["elbo"])
    for draws in (one, np.asarray(terms(many, jax.random.PRNGKey(5))).reshape(-1, 16)):
        se = draws.std(0) / math.sqrt(len(draws))
        assert np.all(np.abs(draws.mean(0) - elbo) < 4 * se), (draws.mean(0) - elbo, se)
    ten = np.asarray(iwae(jnp.tile(x, (100, 1, 1, 1)), jax.random.PRNGKey(3), 10, 10))
    big = np.asarray(iwae(jnp.asarray(x), jax.random.PRNGKey(4), 5000, 500))
    assert one.mean() < ten.mean() < big.mean()
    # k = 5000: within 5 standard deviations of log p(x) per image (<= 0.27 nats here; a missing
    # -log k would add log 5000 = 8.5), and on the mean over the 16 images not above log p(x) by
    # more than 4 standard deviations of that mean (bias chi^2/(2k) < 0.002 nats is below either).
    sd = np.sqrt(chi2 / 5000)
    assert np.all(np.abs(big - log_px) < 5 * sd), (big - log_px, sd)
    assert np.mean(big - log_px) < 4 * np.sqrt(np.sum(sd ** 2)) / 16
    # What zoo eval reports: the mean over every image, here in batches of 10 and a last of 6.
    mean = vae.test_log_likelihood(model, params, x, k=5000, chunk=500, batch_size=10,
                                   binarise=False)
    assert abs(mean - np.mean(log_px)) < 5 * np.sqrt(np.sum(sd ** 2)) / 16, (mean, log_px)


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


@pytest.mark.slow  # ~25 s of MNIST training; test_zoo_eval_reports_quality_and_iwae_for_a_vae_run
# trains a VAE on MNIST and scores it in the default run
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
    # 200 steps draw blurry digits: far from real data, but (below) 9 of the 10 classes appear.
    assert q["fid"] > 3 * q["fid_floor"] > 0
    # precision/recall are checked on known inputs in test_metrics; here that they are reported.
    assert {"precision", "recall"} <= set(q) and q["classes_covered"] >= 0.9
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
