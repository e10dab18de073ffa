"""Inpainting with a diffusion model: fill the masked part of test images (``zoo inpaint``).

``inpaint_images(family, params, model_state, images, known, ...)`` is the API: RePaint
(:func:`zoo.core.diffusion.inpaint`) with the family's denoiser, images and results in [0, 1].
``inpaint_main`` is the command: it masks test images of the run's dataset with one of
:data:`MASKS` and writes ``inpainting.png`` (rows: original, masked, filled) and
``inpainting.npz`` (``original``, ``masked``, ``filled``, ``known``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from zoo import checkpoint
from zoo import data as data_lib
from zoo import sample
from zoo.core import diffusion as diffusion_lib
from zoo.core import settings
from zoo.core.settings import DataSettings
from zoo.core.family import Family

# The region each mask leaves for the model to fill.
MASKS = ("center", "left", "top", "random")


def make_mask(name: str, n: int, shape, seed: int = 0) -> np.ndarray:
    """``known`` (n, H, W, 1): 1 where a pixel is given, 0 where the model fills it: the
    ``center`` half-size square, the ``left`` or ``top`` half, or a ``random`` half of the
    pixels (a new draw per image)."""
    h, w = shape[0], shape[1]
    known = np.ones((n, h, w, 1), np.float32)
    if name == "center":
        known[:, h // 4:h - h // 4, w // 4:w - w // 4] = 0
    elif name == "left":
        known[:, :, :w // 2] = 0
    elif name == "top":
        known[:, :h // 2] = 0
    elif name == "random":
        known = (np.random.default_rng(seed).random((n, h, w, 1)) < 0.5).astype(np.float32)
    else:
        raise ValueError(f"unknown mask {name!r}; choose one of {', '.join(MASKS)}")
    return known


def inpaint_images(family: Family, params: Mapping, model_state: Mapping, images, known,
                   labels=None, *, seed: int = 0, steps: int | None = None,
                   resample: int = 5, guidance: float | None = None) -> np.ndarray:
    """``images`` (N, H, W, C) in [0, 1] with their unknown pixels filled by the diffusion model
    (RePaint over ``steps`` DDIM steps with eta 1, each resampled ``resample`` times);
    ``params``/``model_state`` keyed by player. Conditional models fill toward ``labels`` at
    ``guidance`` (0: the unconditional model)."""
    den = family.require("denoiser", "inpaint (it is not a diffusion model)")
    den.check("ddim", steps, guidance)
    if resample < 1:
        raise ValueError(f"resample must be >= 1, got {resample}")
    if den.num_classes and labels is None:
        labels, guidance = np.zeros(len(images), np.int32), 0.0  # unconditional
    p, s = params[den.player], dict(model_state.get(den.player, {}))
    steps = steps or den.sampling_steps

    @jax.jit
    def fill(x, known, labels, rng):
        predict = den.predict_fn(p, s, guidance)
        out = diffusion_lib.inpaint(den.schedule, predict, x * 2 - 1, known, labels, rng,
                                    steps=steps, resample=resample)
        return (jnp.clip(out, -1.0, 1.0) + 1) / 2

    y = None if not den.num_classes else jnp.asarray(labels, jnp.int32)
    out = fill(jnp.asarray(images, jnp.float32), jnp.asarray(known, jnp.float32), y,
               jax.random.PRNGKey(seed))
    # The known pixels are the input's exactly (not through the [-1, 1] round trip).
    known = np.broadcast_to(np.asarray(known), np.shape(images))
    return np.where(known > 0, np.asarray(images, np.float32), np.asarray(out))


def inpaint_main(path: str, out_dir: str, *, mask: str = "center", num_images: int = 8,
                 seed: int = 0, sampling_steps: int | None = None, resample: int = 5,
                 guidance: float | None = None, dataset: str | None = None,
                 tfds_data_dir: str | None = None, download_dir: str | None = None
                 ) -> dict[str, Path]:
    """``zoo inpaint``: masks ``num_images`` test images of the run's dataset (or ``dataset``),
    fills them and writes the PNG and ``.npz`` described in the module docstring."""
    if mask not in MASKS:
        raise ValueError(f"unknown mask {mask!r}; choose one of {', '.join(MASKS)}")
    if num_images < 1:
        raise ValueError(f"--images must be >= 1, got {num_images}")
    sample.check_out_dir(out_dir)
    run = checkpoint.load_run(path)
    den = run.family.require("denoiser", "inpaint (it is not a diffusion model)")
    den.check("ddim", sampling_steps, guidance)
    # The run's dataset; a run that saved no data section has the data default's (MNIST).
    dataset = dataset or settings.parse(DataSettings, run.config.get("data", {}), "data").dataset
    test = sample.run_test_split(run, dataset, tfds_data_dir=tfds_data_dir,
                                 download_dir=download_dir)
    if test is None:  # a synthetic run: images like the ones it trained on
        test = data_lib.synthetic_images(num_images, tuple(den.image_shape),
                                         num_classes=den.num_classes or 10, seed=seed + 1)
    images, labels = test["image"][:num_images], test["label"][:num_images]
    known = make_mask(mask, len(images), images.shape[1:], seed)
    filled = inpaint_images(run.family, run.sampling_params, run.model_state, images, known,
                            labels if den.num_classes else None, seed=seed,
                            steps=sampling_steps, resample=resample, guidance=guidance)
    masked = images * known + 0.5 * (1 - known)  # the missing part grey
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = (f"Inpainting ({mask} mask, RePaint, {sampling_steps or den.sampling_steps} steps x "
             f"{resample}): original, masked, filled")
    png = sample.save_png(sample.image_grid(np.concatenate([images, masked, filled]),
                                            len(images), row_labels=["original", "masked",
                                                                     "filled"], title=title),
                          out / "inpainting.png")
    npz = out / "inpainting.npz"
    np.savez_compressed(npz, original=images, masked=masked, filled=filled, known=known)
    return {"inpainting": png, "arrays": npz}
