"""zoo.sample: valid PNGs of the expected pixel size, from the API and from a saved run."""

import jax
import numpy as np
import pytest
from PIL import Image

from zoo import checkpoint, sample
from zoo.data import synthetic_images
from zoo.models import make_family


def _png(path):
    with Image.open(path) as im:
        im.load()
        return im.format, im.size, np.asarray(im.convert("RGB"))


def test_image_grid_layout():
    images = np.zeros((6, 28, 28, 1), np.float32)
    images[1] = 1.0  # second tile white
    grid = sample.image_grid(images, 3, scale=2, pad=2, row_labels=["a", "b"], title="t")
    assert grid.size == sample.grid_size(2, 3, (28, 28), scale=2, pad=2, row_labels=True,
                                         title=True)
    left, top = 70, sample.FONT_SIZE + 10
    pixels = np.asarray(grid)
    first = pixels[top + 2 + 28, left + 2 + 28]               # inside tile 0 (black)
    second = pixels[top + 2 + 28, left + 2 + 56 + 2 + 28]     # inside tile 1 (white)
    assert tuple(first) == (0, 0, 0) and tuple(second) == (255, 255, 255)
    with pytest.raises(ValueError, match="images must be"):
        sample.image_grid(np.zeros((2, 28, 28)), 2)


def test_vae_2d_pictures(tmp_path):
    family = make_family(dict(family="vae", hidden=(32,), latent_dim=2))
    data = synthetic_images(64)
    params, state = jax.jit(family.init)(jax.random.PRNGKey(0), data)
    written = sample.write_samples(family, params, state, tmp_path, jax.random.PRNGKey(1), data,
                                   n_cols=4, n_rows=3, scale=2, interp_rows=2, interp_steps=5,
                                   n_recon=4, scatter_points=50)
    assert set(written) == {"samples", "interpolation", "reconstructions", "latent_scatter",
                            "latent_manifold"}
    expected = {
        "samples": sample.grid_size(3, 4, (28, 28), scale=2, title=True),
        "interpolation": sample.grid_size(2, 5, (28, 28), scale=2, row_labels=True, title=True),
        "reconstructions": sample.grid_size(6, 4, (28, 28), scale=2, row_labels=True, title=True),
        "latent_manifold": sample.grid_size(4, 4, (28, 28), scale=2, row_labels=True, title=True),
        "latent_scatter": (800, 700),
    }
    for name, path in written.items():
        fmt, size, pixels = _png(path)
        assert fmt == "PNG" and size == expected[name], (name, size)
        assert pixels.std() > 1.0  # not blank
    # The reconstruction picture shows the inputs themselves in its first row.
    _, _, pixels = _png(written["reconstructions"])
    top, left = sample.FONT_SIZE + 10 + 2, 70 + 2
    tile = pixels[top:top + 56:2, left:left + 56:2, 0]
    np.testing.assert_allclose(tile / 255.0, data["image"][0, :, :, 0], atol=1 / 255 + 1e-6)


def test_saved_conditional_gan_round_trip(tmp_path):
    config = dict(family="gan", arch="mlp", latent_dim=8, g_hidden=(16,), d_hidden=(16,),
                  num_classes=10)
    family = make_family(config)
    data = synthetic_images(8)
    params, state = jax.jit(family.init)(jax.random.PRNGKey(3), data)
    run = checkpoint.save_run(tmp_path / "run", config, params, state)
    written = sample.sample_main(str(run / checkpoint.VARIABLES_FILE), str(tmp_path / "png"),
                                 n_cols=6, scale=1, interp_rows=3, interp_steps=4)
    assert set(written) == {"samples", "interpolation"}
    fmt, size, _ = _png(written["samples"])
    # One labelled row per class: 10 rows of 6 samples.
    assert fmt == "PNG" and size == sample.grid_size(10, 6, (28, 28), scale=1, row_labels=True,
                                                     title=True)
    fmt, size, _ = _png(written["interpolation"])
    assert size == sample.grid_size(3, 4, (28, 28), scale=1, row_labels=True, title=True)
    loaded_run = checkpoint.load_run(run)
    loaded_family, loaded = loaded_run.family, loaded_run.params
    assert loaded_family.name == "gan" and loaded_family.image_sampler.num_classes == 10
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(a, b)
    # The sample_fn zoo train calls at each evaluation writes the same pictures.
    by_step = sample.image_sample_fn(loaded_family)(loaded, state, jax.random.PRNGKey(0),
                                                    tmp_path / "s", 7)
    assert by_step["samples"] == tmp_path / "s" / "step_0000007" / "samples.png"
    assert _png(by_step["samples"])[0] == "PNG"
    with pytest.raises(ValueError, match="is not a trained run"):
        sample.sample_main(str(tmp_path), str(tmp_path / "png2"))



def test_sample_from_a_train_checkpoint(tmp_path):
    """``zoo sample <workdir>`` reads the newest orbax checkpoint that zoo.train wrote."""
    import optax
    from zoo.checkpoint import Checkpointer
    from zoo.core import parallel
    from zoo.core.train_state import TrainState

    config = {"model": dict(family="vae", hidden=(16,), latent_dim=3, num_classes=10),
              "data": {"dataset": "synthetic"}}
    family = make_family(config["model"])
    params, model_state = jax.jit(family.init)(jax.random.PRNGKey(0), synthetic_images(4))
    state = TrainState.create(params=params, tx={"model": optax.adam(1e-3)},
                              model_state=model_state, seed=0)
    strategy = parallel.make_strategy("single")
    checkpointer = Checkpointer(tmp_path / "wd" / "checkpoints", async_save=False)
    checkpointer.save(5, strategy.place_state(state), strategy, config=config)
    checkpointer.close()
    written = sample.sample_main(str(tmp_path / "wd"), str(tmp_path / "png"), n_cols=5,
                                 interp_rows=2, interp_steps=3)
    fmt, size, _ = _png(written["samples"])
    assert fmt == "PNG" and size == sample.grid_size(10, 5, (28, 28), scale=3, row_labels=True,
                                                     title=True)
    loaded = checkpoint.load_run(tmp_path / "wd").params
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(a, b)


def test_an_autoencoder_run_writes_reconstructions_beside_their_inputs(tmp_path):
    """An autoencoder has no prior to sample, so its pictures are of real images: zoo train
    writes its evaluation images beside their reconstructions, and interpolations between them."""
    from configs_loader import load_config
    from zoo import train
    from zoo.config import apply_overrides
    config = apply_overrides(load_config("autoencoder_mnist"), [
        "--config.data.dataset=synthetic", "--config.data.synthetic_size=256",
        "--config.data.batch_size=32", "--config.model.hidden=(32,)", "--config.train.steps=4",
        "--config.train.eval_every=4"])
    train.train(config, tmp_path, log=lambda s: None, make_sampler=sample.run_sampler)
    written = sorted(p.name for p in (tmp_path / "samples" / "step_0000004").iterdir())
    assert written == ["interpolation.png", "reconstructions.png"]  # no samples from N(0, I)
    fmt, size, pixels = _png(tmp_path / "samples" / "step_0000004" / "reconstructions.png")
    assert fmt == "PNG" and size == sample.grid_size(6, 12, (28, 28), scale=3, row_labels=True,
                                                     title=True)
    # The first row is the evaluation split's first images themselves.
    first = synthetic_images(256, seed=1)["image"][0, :, :, 0]  # the test split's seed
    top, left = sample.FONT_SIZE + 10 + 2, 70 + 2
    tile = pixels[top:top + 84:3, left:left + 84:3, 0]
    np.testing.assert_allclose(tile / 255.0, first, atol=1 / 255 + 1e-6)
