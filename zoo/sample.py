"""Pictures from trained generative models: sample grids, interpolations, reconstructions, latents.

``write_samples(family, params, model_state, out_dir, rng, data=None)`` is the API: it writes PNG
files for any family that draws images (its ``image_sampler``,
:class:`zoo.core.family.ImageSampler`) and returns their paths by name:

* ``samples.png``: a grid of samples; one labelled row per class for conditional models.
* ``interpolation.png``: latent interpolation strips, one per row (between the codes of two test
  images for an unconditional family with an encoder when ``data`` is given; else between two
  random latents, each row a class of a conditional model).
* ``denoising.png`` (a diffusion model): the states of one DDIM path from noise to image.
* ``reconstructions.png`` (an encoder, with ``data``): test images in one row, their
  reconstructions below.
* ``latent_scatter.png`` and ``latent_manifold.png`` (an encoder and a 2-d latent; the scatter
  with ``data``): the test set's latent means coloured by label, and images decoded on a grid over
  the latent plane.

``sample_main(path, out_dir)`` is what ``zoo sample`` calls, on any run :func:`zoo.checkpoint.
load_run` reads. :func:`run_sampler` is what ``zoo train`` writes at each evaluation: these PNGs,
or text for a language model (:func:`zoo.generate.make_text_sampler`).
"""

from __future__ import annotations

import dataclasses
import weakref
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from zoo import checkpoint, generate, input_pipeline
from zoo import config as config_lib
from zoo import data as data_lib
from zoo.core import diffusion as diffusion_lib
from zoo.core import settings
from zoo.core.family import Family
from zoo.core.settings import DataSettings
from zoo.build import Run

# ---- image grids ---------------------------------------------------------------------------------

BACKGROUND, INK, GAP = (255, 255, 255), (0, 0, 0), (200, 200, 200)
FONT_SIZE = 14


def _font(size: int = FONT_SIZE):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizing
        return ImageFont.load_default()


def to_uint8(images) -> np.ndarray:
    """Images in [0, 1], (N, H, W, C) with C in {1, 3}, as uint8 RGB (N, H, W, 3)."""
    x = np.asarray(images, np.float32)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W, 1 or 3); got shape {x.shape}")
    x = np.clip(np.nan_to_num(x), 0.0, 1.0)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return (x * 255 + 0.5).astype(np.uint8)


def grid_size(n_rows: int, n_cols: int, image_hw: tuple[int, int], *, scale: int = 3,
              pad: int = 2, row_labels: bool = False, title: bool = False,
              label_width: int = 70) -> tuple[int, int]:
    """(width, height) in pixels of :func:`image_grid`'s output."""
    h, w = image_hw
    left = label_width if row_labels else 0
    top = FONT_SIZE + 10 if title else 0
    return (left + n_cols * (w * scale + pad) + pad, top + n_rows * (h * scale + pad) + pad)


def image_grid(images, n_cols: int, *, scale: int = 3, pad: int = 2,
               row_labels: Sequence[str] | None = None, title: str | None = None,
               label_width: int = 70) -> Image.Image:
    """Images (N, H, W, C) in [0, 1], row-major in ``n_cols`` columns, each scaled ``scale``x
    (nearest neighbour), with an optional title above and a label left of each row."""
    x = to_uint8(images)
    n, h, w, _ = x.shape
    n_rows = -(-n // n_cols)
    if row_labels is not None and len(row_labels) != n_rows:
        raise ValueError(f"{len(row_labels)} row labels for {n_rows} rows")
    size = grid_size(n_rows, n_cols, (h, w), scale=scale, pad=pad,
                     row_labels=row_labels is not None, title=title is not None,
                     label_width=label_width)
    canvas = Image.new("RGB", size, BACKGROUND)
    draw, font = ImageDraw.Draw(canvas), _font()
    left = label_width if row_labels is not None else 0
    top = FONT_SIZE + 10 if title is not None else 0
    if title is not None:
        draw.text((4, 4), title, fill=INK, font=font)
    # The cell area on a light grey ground, so black image borders stay visible.
    draw.rectangle([left, top, size[0] - 1, size[1] - 1], fill=GAP)
    for i in range(n):
        r, c = divmod(i, n_cols)
        tile = Image.fromarray(x[i]).resize((w * scale, h * scale), Image.NEAREST)
        canvas.paste(tile, (left + pad + c * (w * scale + pad), top + pad + r * (h * scale + pad)))
    for r, label in enumerate(row_labels or ()):
        y = top + pad + r * (h * scale + pad) + (h * scale - FONT_SIZE) // 2
        draw.text((4, y), str(label), fill=INK, font=font)
    return canvas


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Writes ``image`` to ``path`` as an optimised PNG (folders made as needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=True)
    return path


def latent_scatter(means, labels, path: str | Path, *, title: str = "") -> Path:
    """A scatter plot of 2-d latent means coloured by label (matplotlib, 800x700 pixels)."""
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # after choosing the backend: no display needed

    means, labels = np.asarray(means), np.asarray(labels)
    fig, ax = plt.subplots(figsize=(8, 7), dpi=100)
    cmap = plt.get_cmap("tab10")
    for c in np.unique(labels):
        sel = labels == c
        ax.scatter(means[sel, 0], means[sel, 1], s=4, alpha=0.6, color=cmap(int(c) % 10),
                   label=str(c), rasterized=True)
    ax.set_xlabel("z[0] (posterior mean)")
    ax.set_ylabel("z[1] (posterior mean)")
    ax.set_title(title)
    ax.legend(title="label", markerscale=4, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.subplots_adjust(left=0.1, right=0.85, top=0.92, bottom=0.08)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return path


# ---- what to draw ---------------------------------------------------------------------------

def _lerp(a, b, steps):
    t = jnp.linspace(0.0, 1.0, steps)[None, :, None]
    return (a[:, None, :] * (1 - t) + b[:, None, :] * t).reshape(-1, a.shape[-1])


def _slerp(a, b, steps):
    """Spherical interpolation (Shoemake 1985): every point keeps the norm a Gaussian latent of
    this size has, where a straight line would pass through low-norm latents no noise image
    has (the middle of a lerp between two noise images decodes to a blur)."""
    t = jnp.linspace(0.0, 1.0, steps)[None, :, None]
    unit = lambda v: v / jnp.linalg.norm(v, axis=-1, keepdims=True)
    omega = jnp.arccos(jnp.clip(jnp.sum(unit(a) * unit(b), -1), -1.0, 1.0))[:, None, None]
    sin = jnp.sin(omega)
    out = (jnp.sin((1 - t) * omega) * a[:, None] + jnp.sin(t * omega) * b[:, None]) / sin
    return out.reshape(-1, a.shape[-1])


INTERPOLATIONS = {"lerp": _lerp, "slerp": _slerp}


def _class_rows(num_classes, n_cols):
    return jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), n_cols)


def _names(num_classes, class_names):
    return list(class_names) if class_names else [f"class {c}" for c in range(num_classes)]


# Kept per function while its family lives: a family's decode compiles once per batch shape.
_COMPILED: "weakref.WeakKeyDictionary[Callable, Callable]" = weakref.WeakKeyDictionary()


def _jitted(fn: Callable) -> Callable:
    """``jax.jit(fn)``, made once per function."""
    if fn not in _COMPILED:
        _COMPILED[fn] = jax.jit(fn)
    return _COMPILED[fn]


def _player(family: Family, params: Mapping, model_state: Mapping):
    sampler = family.require("image_sampler", "draw images")
    return (sampler, params[sampler.player], dict(model_state.get(sampler.player, {})))


def generate_images(family: Family, params: Mapping, model_state: Mapping, rng: jax.Array, n: int,
                    labels: np.ndarray | None = None, batch_size: int = 1000) -> np.ndarray:
    """``n`` images in [0, 1] as numpy (N, H, W, C), z ~ N(0, I), from any family that draws
    images; ``labels`` (N,) for a conditional model."""
    sampler, p, s = _player(family, params, model_state)
    if sampler.num_classes and labels is None:
        raise ValueError(f"this {family.name} is conditioned on {sampler.num_classes} classes; "
                         "pass labels")
    decode = _jitted(sampler.decode)
    out = []
    for i, start in enumerate(range(0, n, batch_size)):
        m = min(batch_size, n - start)
        z = jax.random.normal(jax.random.fold_in(rng, i), (batch_size, sampler.latent_dim))
        y = None
        if sampler.num_classes:  # pad the last batch so every call has the same shape
            y = np.zeros(batch_size, np.int32)
            y[:m] = labels[start:start + m]
        out.append(np.asarray(decode(p, s, z, y))[:m])
    return np.concatenate(out)


def write_samples(family: Family, params: Mapping, model_state: Mapping, out_dir: str | Path,
                  rng: jax.Array, data: Mapping[str, np.ndarray] | None = None, *,
                  n_cols: int = 10, n_rows: int = 10, scale: int = 3, interp_rows: int = 8,
                  interp_steps: int = 10, n_recon: int = 12, scatter_points: int = 5000,
                  class_names: Sequence[str] | None = None) -> dict[str, Path]:
    """Writes the PNGs described in the module docstring for a family that draws images.

    ``params``/``model_state`` are dicts keyed by player (as in a TrainState, on host or device);
    ``data`` is an optional test split ``{"image": (N, H, W, C) in [0, 1], "label": (N,)}``.
    """
    sampler, p, s = _player(family, params, model_state)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    k, latent, name, z_name = (sampler.num_classes, sampler.latent_dim, sampler.title,
                               sampler.latent_name)
    decode = _jitted(sampler.decode)  # one compile per shape
    draw = lambda z, labels=None: decode(p, s, z, labels)
    encode = _jitted(sampler.encode) if sampler.encode else None
    sample_rng, interp_rng = jax.random.split(rng)
    written = {}
    if not sampler.generates:  # no prior to sample: pictures of real images only
        if encode is None or data is None:
            return written
    elif k:
        labels = _class_rows(k, n_cols)
        grid = image_grid(draw(jax.random.normal(sample_rng, (len(labels), latent)), labels),
                          n_cols, scale=scale, row_labels=_names(k, class_names),
                          title=f"Conditional {name} samples: one row per class")
    else:
        grid = image_grid(draw(jax.random.normal(sample_rng, (n_rows * n_cols, latent))), n_cols,
                          scale=scale, title=f"{name} samples, z ~ N(0, I) ({latent}-d {z_name})")
    if sampler.generates:
        written["samples"] = save_png(grid, out_dir / "samples.png")

    if encode is not None and data is not None and not k:
        x = jnp.asarray(data["image"][:2 * interp_rows])
        z = encode(p, x, None)
        images = draw(_lerp(z[:interp_rows], z[interp_rows:2 * interp_rows], interp_steps))
        title = (f"{name} interpolation between the latent means of two test images "
                 "(left to right)")
        ends = None  # row labels: the two images' classes, when known
        if "label" in data:
            y = np.asarray(data["label"][:2 * interp_rows])
            ends = [f"{a} -> {b}" for a, b in zip(y[:interp_rows], y[interp_rows:])]
    else:
        z0, z1 = jax.random.normal(interp_rng, (2, interp_rows, latent))
        labels, ends = None, None
        if k:
            row_labels = jnp.arange(interp_rows, dtype=jnp.int32) % k
            labels = jnp.repeat(row_labels, interp_steps)
            ends = [_names(k, class_names)[int(c)] for c in row_labels]
        images = draw(INTERPOLATIONS[sampler.interpolation](z0, z1, interp_steps), labels)
        title = (f"{name} interpolation ({sampler.interpolation}) between two random {z_name} "
                 "z ~ N(0, I) (left to right)")
    written["interpolation"] = save_png(
        image_grid(images, interp_steps, scale=scale, row_labels=ends, title=title),
        out_dir / "interpolation.png")
    if family.denoiser is not None:
        written["denoising"] = denoising_strip(family, p, s, sample_rng, out_dir / "denoising.png",
                                               scale=scale)
    if encode is None:
        return written

    if data is not None:
        x = jnp.asarray(data["image"][:n_recon * 3])
        y = jnp.asarray(data["label"][:n_recon * 3]) if k else None
        recon = draw(encode(p, x, y), y)
        rows = []
        for r in range(3):
            rows += [x[r * n_recon:(r + 1) * n_recon], recon[r * n_recon:(r + 1) * n_recon]]
        written["reconstructions"] = save_png(
            image_grid(jnp.concatenate(rows), n_recon, scale=scale,
                       row_labels=["input", "recon."] * 3,
                       title=f"Test images and their {name} reconstructions (decoded at the "
                             f"encoder's {z_name}: a VAE's posterior mean)"),
            out_dir / "reconstructions.png")

    if not sampler.generates:
        return written
    if data is not None and latent == 2 and "label" in data:
        n = min(scatter_points, len(data["image"]))
        x = jnp.asarray(data["image"][:n])
        y = jnp.asarray(data["label"][:n]) if k else None
        means = np.concatenate([np.asarray(encode(p, x[i:i + 1000],
                                                  None if y is None else y[i:i + 1000]))
                                for i in range(0, n, 1000)])
        written["latent_scatter"] = latent_scatter(
            means, np.asarray(data["label"][:n]), out_dir / "latent_scatter.png",
            title=f"Latent means of {n} test images, coloured by label")
    if latent == 2 and not k:
        side = n_cols
        ticks = np.linspace(-2.5, 2.5, side)
        zz = np.stack(np.meshgrid(ticks, -ticks), -1).reshape(-1, 2)  # rows: z[1] high to low
        images = draw(jnp.asarray(zz, jnp.float32))
        written["latent_manifold"] = save_png(
            image_grid(images, side, scale=scale, row_labels=[f"z1={t:+.1f}" for t in -ticks],
                       title="Decoded 2-d latent grid: z0 from -2.5 (left) to +2.5 (right)"),
            out_dir / "latent_manifold.png")
    return written


def denoising_strip(family: Family, params, model_state, rng: jax.Array, path: str | Path, *,
                    rows: int = 6, columns: int = 10, scale: int = 3) -> Path:
    """A diffusion model's DDIM path for ``rows`` samples: x_t from pure noise (left) to the
    image (right) at ``columns`` evenly spaced steps (``params``: the denoiser player's)."""
    den = family.denoiser
    k = den.num_classes
    noise = jax.random.normal(rng, (rows, *den.image_shape))
    labels = jnp.arange(rows, dtype=jnp.int32) % k if k else None
    path_fn = _jitted(den.denoising_path)
    full = np.asarray(path_fn(params, model_state, noise, labels))  # (steps + 1, rows, ...)
    # full[i] is x_T for i = 0, else x after the i-th step, which lands on the (0-based) step
    # after_step[i], i.e. x_t with t = after_step[i] + 1 noising steps left (x_0 at the end).
    after_step = np.append(diffusion_lib.timesteps(den.schedule, den.sampling_steps), -1)
    pick = np.unique(np.round(np.linspace(0, len(full) - 1, columns)).astype(int))
    steps_shown = [den.schedule.num_steps if i == 0 else int(after_step[i]) + 1 for i in pick]
    images = np.swapaxes(full[pick], 0, 1).reshape(-1, *den.image_shape)
    title = ("Denoising, left to right: x_t at t = " + ", ".join(map(str, steps_shown))
             + f" of {den.schedule.num_steps} (DDIM, {len(full) - 1} steps)")
    row_labels = [_names(k, None)[int(c)] for c in np.asarray(labels)] if k else None
    return save_png(image_grid(images, len(pick), scale=scale, row_labels=row_labels,
                               title=title), path)


def with_sampling(family: Family, *, sampler: str | None = None, steps: int | None = None,
                  eta: float | None = None, guidance: float | None = None) -> Family:
    """``family`` drawing with these diffusion sampling options (None: the model's own), or
    ``family`` itself when none is given; a family without a ``denoiser`` refuses them."""
    if sampler is None and steps is None and eta is None and guidance is None:
        return family
    den = family.require("denoiser", "take diffusion sampling options (sampler, sampling "
                                     "steps, eta, guidance)")
    sampler = sampler or diffusion_lib.DEFAULT_SAMPLER
    den.check(sampler, steps, guidance)
    if eta is not None and not 0.0 <= eta <= 1.0:
        raise ValueError(f"--eta={eta} must be in [0, 1] (0: deterministic DDIM, 1: DDPM's "
                         "noise)")
    if sampler == "ddpm":
        steps = den.schedule.num_steps
    den = dataclasses.replace(den, sampling_steps=steps or den.sampling_steps,
                              guidance=den.guidance if guidance is None else guidance)
    options = {} if eta is None else {"eta": eta}  # None: the sampler's own default
    return dataclasses.replace(family, denoiser=den,
                               image_sampler=den.image_sampler(sampler, **options))


# ---- at each evaluation, and from a saved run ----------------------------------------------------

SampleFn = Callable[[Mapping, Mapping, jax.Array, Path, int], Any]


def image_sample_fn(family: Family, data: Mapping[str, np.ndarray] | None = None) -> SampleFn:
    """A ``sample_fn(params, model_state, rng, out_dir, step)`` writing :func:`write_samples`
    PNGs to ``out_dir/step_<step>``; ``data``: evaluation images, for the pictures of real
    images (reconstructions, interpolations between them)."""
    def sample_fn(params, model_state, rng, out_dir, step):
        return write_samples(family, params, model_state,
                             Path(out_dir) / f"step_{int(step):07d}", rng, data)
    return sample_fn


def run_sampler(run: Run) -> SampleFn | None:
    """What ``zoo train`` writes at each evaluation of ``run``: PNGs from a family that draws
    images, text from a language model (``train.sample_tokens`` > 0), else nothing (None)."""
    if run.family.image_sampler is not None:
        # One evaluation batch, on the host (every process has the whole of it only with one).
        first = next(iter(run.data.eval_batches()), None) if jax.process_count() == 1 else None
        return image_sample_fn(run.family, first)
    if run.family.text_decoder is not None and run.data.tokenizer is not None:
        return generate.make_text_sampler(run.family, run.data.tokenizer,
                                          run.settings.train, run.data.eval_text)
    return None


def run_test_split(run: checkpoint.LoadedRun, dataset: str | None = None, *,
                   tfds_data_dir: str | None = None, download_dir: str | None = None
                   ) -> dict[str, np.ndarray] | None:
    """The test split of ``dataset`` (default: the run's ``data.dataset``) through
    ``zoo.data.load_tfds``, with the run's TFDS folders unless others are given; None for a
    synthetic run or a run that saved no data config."""
    run_data = settings.parse(DataSettings, run.config.get("data", {}), "data")
    dataset = dataset or (run_data.dataset if "data" in run.config else None)
    if not dataset or dataset == "synthetic":
        return None
    if dataset in data_lib.IMAGE_DATASETS:  # load_tfds names any other
        input_pipeline.check_images_fit(run.family, dataset, trained=True)
    return data_lib.load_tfds(dataset, "test",
                              data_dir=tfds_data_dir or run_data.tfds_data_dir or None,
                              download_dir=download_dir or run_data.download_dir or None)


def check_out_dir(out_dir: str | Path) -> None:
    """Makes the ``--out`` folder before any model is loaded or run: one that is a file, or
    cannot be made, is refused then."""
    config_lib.make_folder(out_dir, "--out")


def sample_main(path: str, out_dir: str, *, seed: int = 0, data: Mapping | None = None,
                dataset: str | None = None, tfds_data_dir: str | None = None,
                download_dir: str | None = None, sampler: str | None = None,
                sampling_steps: int | None = None, eta: float | None = None,
                guidance: float | None = None, **options: Any) -> dict[str, Path]:
    """``zoo sample``: loads the run at ``path`` (:func:`zoo.checkpoint.load_run`) and writes its
    PNGs to ``out_dir``.

    Test images (for reconstructions, data-driven interpolations and the 2-d latent scatter) come
    from ``data`` if given, else from ``dataset`` (default: the run's ``data.dataset``) through
    ``zoo.data.load_tfds``; without a dataset only the data-free pictures are written. A
    diffusion model draws with ``sampler`` (ddim, ddpm), ``sampling_steps``, ``eta`` and
    ``guidance`` (:func:`with_sampling`), from its EMA weights where it has them.
    ``options`` go to :func:`write_samples`.
    """
    check_out_dir(out_dir)
    run = checkpoint.load_run(path)
    family = with_sampling(run.family, sampler=sampler, steps=sampling_steps, eta=eta,
                           guidance=guidance)
    if run.family.image_sampler is None and run.family.text_decoder is not None:
        raise ValueError(f"{path} is a {run.family.name} language model, which writes text, not "
                         f"images: zoo generate {path} --prompt TEXT")
    family.require("image_sampler", "draw images")
    needs_data = family.image_sampler.encode is not None  # pictures of real images
    if data is None and needs_data:
        data = run_test_split(run, dataset, tfds_data_dir=tfds_data_dir,
                              download_dir=download_dir)
    return write_samples(family, run.sampling_params, run.model_state, out_dir,
                         jax.random.PRNGKey(seed), data, **options)
