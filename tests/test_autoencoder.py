"""The autoencoder family end to end, on synthetic data and on real MNIST through TFDS."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zoo import build, train
from zoo.models import autoencoder


@pytest.mark.parametrize("arch,shape", [("mlp", (28, 28, 1)), ("conv", (28, 28, 1)),
                                        ("conv", (32, 32, 3))])
def test_encode_decode_shapes(arch, shape):
    model = autoencoder.make_model({"arch": arch, "image_shape": shape, "latent_dim": 7})
    x = jnp.zeros((3, *shape))
    variables = model.init(jax.random.PRNGKey(0), x)
    z = model.apply(variables, x, method=model.encode)
    assert z.shape == (3, 7)
    assert model.apply(variables, z, method=model.decode).shape == (3, *shape)


def test_conv_autoencoder_rejects_image_it_cannot_halve():
    model = autoencoder.make_model({"arch": "conv", "image_shape": (30, 30, 1)})
    with pytest.raises(ValueError, match="image size 30x30 must be divisible by 4"):
        model.init(jax.random.PRNGKey(0), jnp.zeros((1, 30, 30, 1)))


def test_reconstruction_losses_on_known_values():
    x = jnp.array([[[[0.0]], [[1.0]]]])  # one image of two pixels
    logits = jnp.array([[[[0.0]], [[0.0]]]])  # sigmoid 0.5 everywhere
    np.testing.assert_allclose(autoencoder.reconstruction_loss(logits, x, "mse"), [0.5])
    np.testing.assert_allclose(autoencoder.reconstruction_loss(logits, x, "bernoulli"),
                               [2 * np.log(2)], rtol=1e-6)


def _config(**data):
    from configs_loader import load_config
    config = load_config("autoencoder_mnist")
    config.data.update(data)
    config.train.update(steps=150, log_every=1)
    config.data.batch_size = 64
    return config


@pytest.mark.slow  # ~60 s; real MNIST trains by default in test_gan, test_vae, test_classifier
def test_loss_falls_on_real_mnist(tfds_dirs, tmp_path):
    config = _config(**tfds_dirs)
    result = train.train(config, tmp_path, log=lambda s: None)
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 150
    # Bernoulli NLL per image: ~543 nats at init (784 ln 2); 150 Adam steps of 64 reach ~110.
    assert losses[0] > 400, losses[0]
    assert np.mean(losses[-10:]) < 0.3 * losses[0], losses[-10:]
    assert result.eval_metrics["loss"] < 150, result.eval_metrics
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 151


def test_trains_on_synthetic_data_with_conv_and_bf16(tmp_path):
    config = _config(dataset="synthetic", synthetic_size=512)
    config.model.arch = "conv"
    config.train.update(steps=50, compute_dtype="bfloat16")
    result = train.train(config, None, log=lambda s: None)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert np.isfinite(result.eval_metrics["loss"])
    # The convolutions ran in bfloat16 (the params stay float32).
    run = build.build(config)
    hlo = run.train_step.compiled.lower(run.strategy.place_state(run.template),
                                        next(run.data.train)).as_text()
    convolutions = [line for line in hlo.splitlines() if "stablehlo.convolution" in line]
    assert convolutions and all("bf16" in line for line in convolutions)
