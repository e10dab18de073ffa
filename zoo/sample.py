"""Pictures from trained generative models: sample grids, interpolations, reconstructions, latents.

``write_samples(family, params, model_state, out_dir, rng, data=None)`` is the API: it writes PNG
files for a trained ``vae`` or ``gan`` family and returns their paths by name:

* ``samples.png``: a grid of samples; one labelled row per class for conditional models.
* ``interpolation.png``: latent interpolation strips, one per row (VAE: between the codes of two
  test images when ``data`` is given; GAN: between two noise vectors).
* ``reconstructions.png`` (VAE, with ``data``): test images in one row, their reconstructions below.
* ``latent_scatter.png`` and ``latent_manifold.png`` (VAE with a 2-d latent, with ``data``): the
  test set's latent means coloured by label, and images decoded on a grid over the latent plane.

``sample_main(path, out_dir)`` is what ``zoo sample`` calls: ``path`` is a ``zoo train`` workdir
(its newest orbax checkpoint) or a directory (or the ``variables.msgpack`` in it) written by
:func:`save_run`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from zoo.core.family import Family

VARIABLES_FILE = "variables.msgpack"
CONFIG_FILE = "model_config.json"

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=True)
    return path


def latent_scatter(means, labels, path: str | Path, *, title: str = "") -> Path:
    """A scatter plot of 2-d latent means coloured by label (matplotlib, 800x700 pixels)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

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


# ---- what to draw, per family --------------------------------------------------------------------

def _lerp(a, b, steps):
    t = jnp.linspace(0.0, 1.0, steps)[None, :, None]
    return (a[:, None, :] * (1 - t) + b[:, None, :] * t).reshape(-1, a.shape[-1])


def _class_rows(num_classes, n_cols):
    return jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), n_cols)


def with_sample_fn(family: Family) -> Family:
    """``family`` with a ``sample_fn`` writing :func:`write_samples` PNGs to ``out_dir/step_<step>``."""

    def sample_fn(params, model_state, rng, out_dir, step):
        return write_samples(family, params, model_state,
                             Path(out_dir) / f"step_{int(step):07d}", rng)

    return dataclasses.replace(family, sample_fn=sample_fn)


def write_samples(family: Family, params: Mapping, model_state: Mapping, out_dir: str | Path,
                  rng: jax.Array, data: Mapping[str, np.ndarray] | None = None, *,
                  n_cols: int = 10, n_rows: int = 10, scale: int = 3, interp_rows: int = 8,
                  interp_steps: int = 10, n_recon: int = 12, scatter_points: int = 5000,
                  class_names: Sequence[str] | None = None) -> dict[str, Path]:
    """Writes the PNGs described in the module docstring for a ``vae`` or ``gan`` family.

    ``params``/``model_state`` are dicts keyed by player (as in a TrainState, on host or device);
    ``data`` is an optional test split ``{"image": (N, H, W, C) in [0, 1], "label": (N,)}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if family.name == "vae":
        return _write_vae(family, params, out_dir, rng, data, n_cols, n_rows, scale, interp_rows,
                          interp_steps, n_recon, scatter_points, class_names)
    if family.name == "gan":
        return _write_gan(family, params, model_state, out_dir, rng, n_cols, n_rows, scale,
                          interp_rows, interp_steps, class_names)
    raise ValueError(f"zoo.sample draws the vae and gan families; got {family.name!r}")


def num_classes(family: Family) -> int:
    """How many classes a ``vae`` or ``gan`` family is conditioned on (0: unconditional)."""
    module = family.modules["model" if family.name == "vae" else "generator"]
    return int(module.num_classes)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _decode_batch(family_name: str, module, params, model_state, z, labels):
    """Images in [0, 1] from latents ``z``; compiled once per module and batch shape (the module
    is static, params are arguments)."""
    from zoo.models import gan, vae

    if family_name == "vae":
        return vae.decode_images(module, params, z, labels)
    return gan.generate(module, params, model_state, z, labels)


def generate_images(family: Family, params: Mapping, model_state: Mapping, rng: jax.Array, n: int,
                    labels: np.ndarray | None = None, batch_size: int = 1000) -> np.ndarray:
    """``n`` images in [0, 1] from a ``vae`` (z from the prior) or ``gan`` family, as numpy
    (N, H, W, C); ``labels`` (N,) for a conditional model."""
    if family.name not in ("vae", "gan"):
        raise ValueError(f"zoo generates images with the vae and gan families; got {family.name!r}")
    player = "model" if family.name == "vae" else "generator"
    module, p = family.modules[player], params[player]
    s = dict(model_state.get(player, {}))
    if module.num_classes and labels is None:
        raise ValueError(f"this {family.name} is conditioned on {module.num_classes} classes; "
                         "pass labels")
    out = []
    for i, start in enumerate(range(0, n, batch_size)):
        m = min(batch_size, n - start)
        z = jax.random.normal(jax.random.fold_in(rng, i), (batch_size, module.latent_dim))
        y = None
        if module.num_classes:  # pad the last batch so every call has the same shape
            y = np.zeros(batch_size, np.int32)
            y[:m] = labels[start:start + m]
        out.append(np.asarray(_decode_batch(family.name, module, p, s, z, y))[:m])
    return np.concatenate(out)


def _names(num_classes, class_names):
    return list(class_names) if class_names else [f"class {c}" for c in range(num_classes)]


def _write_vae(family, params, out_dir, rng, data, n_cols, n_rows, scale, interp_rows,
               interp_steps, n_recon, scatter_points, class_names):
    from zoo.models import vae

    model, p = family.modules["model"], params["model"]
    k = model.num_classes
    decode = jax.jit(functools.partial(vae.decode_images, model))  # one compile per shape
    encode = jax.jit(functools.partial(vae.encode_means, model))
    prior = lambda key, n: jax.random.normal(key, (n, model.latent_dim))
    sample_rng, interp_rng = jax.random.split(rng)
    written = {}
    if k:
        labels = _class_rows(k, n_cols)
        images = decode(p, prior(sample_rng, len(labels)), labels)
        grid = image_grid(images, n_cols, scale=scale, row_labels=_names(k, class_names),
                          title="Conditional VAE samples: one row per class, z ~ N(0, I)")
    else:
        images = decode(p, prior(sample_rng, n_rows * n_cols))
        grid = image_grid(images, n_cols, scale=scale,
                          title=f"VAE samples, z ~ N(0, I) ({model.latent_dim}-d latent)")
    written["samples"] = save_png(grid, out_dir / "samples.png")

    if data is not None and not k:
        x = jnp.asarray(data["image"][:2 * interp_rows])
        z = encode(p, x)
        z_path = _lerp(z[:interp_rows], z[interp_rows:2 * interp_rows], interp_steps)
        images = decode(p, z_path)
        title = "VAE interpolation between the latent means of two test images (left to right)"
        ends = None  # row labels: the two images' classes, when known
        if "label" in data:
            y = np.asarray(data["label"][:2 * interp_rows])
            ends = [f"{a} -> {b}" for a, b in zip(y[:interp_rows], y[interp_rows:])]
    else:
        z0, z1 = jax.random.normal(interp_rng, (2, interp_rows, model.latent_dim))
        labels, ends = None, None
        if k:
            row_labels = jnp.arange(interp_rows, dtype=jnp.int32) % k
            labels = jnp.repeat(row_labels, interp_steps)
            ends = [_names(k, class_names)[int(c)] for c in row_labels]
        images = decode(p, _lerp(z0, z1, interp_steps), labels)
        title = "VAE interpolation between two random latents z ~ N(0, I) (left to right)"
    written["interpolation"] = save_png(
        image_grid(images, interp_steps, scale=scale, row_labels=ends, title=title),
        out_dir / "interpolation.png")

    if data is not None:
        x = jnp.asarray(data["image"][:n_recon * 3])
        y = jnp.asarray(data["label"][:n_recon * 3]) if k else None
        recon = decode(p, encode(p, x, y), y)
        rows = []
        for r in range(3):
            rows += [x[r * n_recon:(r + 1) * n_recon], recon[r * n_recon:(r + 1) * n_recon]]
        written["reconstructions"] = save_png(
            image_grid(jnp.concatenate(rows), n_recon, scale=scale,
                       row_labels=["input", "recon."] * 3,
                       title="Test images and their VAE reconstructions (decoder mean at z = "
                             "posterior mean)"), out_dir / "reconstructions.png")

    if data is not None and model.latent_dim == 2 and "label" in data:
        n = min(scatter_points, len(data["image"]))
        x = jnp.asarray(data["image"][:n])
        y = jnp.asarray(data["label"][:n]) if k else None
        means = np.concatenate([np.asarray(encode(p, x[i:i + 1000],
                                                  None if y is None else y[i:i + 1000]))
                                for i in range(0, n, 1000)])
        written["latent_scatter"] = latent_scatter(
            means, np.asarray(data["label"][:n]), out_dir / "latent_scatter.png",
            title=f"Latent means of {n} test images, coloured by label")
    if model.latent_dim == 2 and not k:
        side = n_cols
        ticks = np.linspace(-2.5, 2.5, side)
        zz = np.stack(np.meshgrid(ticks, -ticks), -1).reshape(-1, 2)  # rows: z[1] high to low
        images = decode(p, jnp.asarray(zz, jnp.float32))
        written["latent_manifold"] = save_png(
            image_grid(images, side, scale=scale, row_labels=[f"z1={t:+.1f}" for t in -ticks],
                       title="Decoded 2-d latent grid: z0 from -2.5 (left) to +2.5 (right)"),
            out_dir / "latent_manifold.png")
    return written


def _write_gan(family, params, model_state, out_dir, rng, n_cols, n_rows, scale, interp_rows,
               interp_steps, class_names):
    from zoo.models import gan

    gen = family.modules["generator"]
    p, s = params["generator"], dict(model_state.get("generator", {}))
    k, latent = gen.num_classes, gen.latent_dim
    generate = jax.jit(functools.partial(gan.generate, gen))
    sample_rng, interp_rng = jax.random.split(rng)
    written = {}
    if k:
        labels = _class_rows(k, n_cols)
        z = jax.random.normal(sample_rng, (len(labels), latent))
        grid = image_grid(generate(p, s, z, labels), n_cols, scale=scale,
                          row_labels=_names(k, class_names),
                          title="Conditional GAN samples: one row per class")
    else:
        z = jax.random.normal(sample_rng, (n_rows * n_cols, latent))
        grid = image_grid(generate(p, s, z), n_cols, scale=scale,
                          title=f"GAN samples, z ~ N(0, I) ({latent}-d noise)")
    written["samples"] = save_png(grid, out_dir / "samples.png")

    z0, z1 = jax.random.normal(interp_rng, (2, interp_rows, latent))
    labels, ends = None, None
    if k:
        row_labels = jnp.arange(interp_rows, dtype=jnp.int32) % k
        labels = jnp.repeat(row_labels, interp_steps)
        ends = [_names(k, class_names)[int(c)] for c in row_labels]
    images = generate(p, s, _lerp(z0, z1, interp_steps), labels)
    written["interpolation"] = save_png(
        image_grid(images, interp_steps, scale=scale, row_labels=ends,
                   title="GAN interpolation between two noise vectors (left to right)"),
        out_dir / "interpolation.png")
    return written


# ---- runs on disk --------------------------------------------------------------------------------

def _plain(config) -> dict:
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return json.loads(json.dumps(dict(config), default=list))


def save_run(run_dir: str | Path, model_config, params, model_state, *,
             data_config: Mapping[str, Any] | None = None) -> Path:
    """Writes ``model_config.json`` and ``variables.msgpack`` (flax serialisation of params and
    model state, dicts keyed by player) so :func:`sample_main` can draw from them later."""
    from flax import serialization

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {"model": _plain(model_config)}
    if data_config is not None:
        meta["data"] = _plain(data_config)
    (run_dir / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    variables = jax.device_get({"params": params, "model_state": model_state})
    (run_dir / VARIABLES_FILE).write_bytes(serialization.to_bytes(variables))
    return run_dir


def load_run(path: str | Path) -> tuple[Family, dict, dict, dict]:
    """(family, params, model_state, meta) from a directory written by :func:`save_run`, or from
    a ``zoo train`` workdir (its newest checkpoint under ``checkpoints/``)."""
    from flax import serialization
    from zoo import checkpoint, models

    path = Path(path)
    run_dir = path.parent if path.is_file() else path
    ckpt_dir = checkpoint.find_checkpoints(path) if path.is_dir() else None
    if not (run_dir / VARIABLES_FILE).is_file() and ckpt_dir is not None:
        state, extra, _ = checkpoint.load_on_host(ckpt_dir)
        params, model_state = state["params"], state.get("model_state", {})
        config = dict(extra.get("config", {}))
        if "model" not in config:
            raise ValueError(f"the checkpoint in {path} holds no model config")
        model_state = {p: model_state.get(p, {}) for p in params}
        return models.make_family(config["model"]), params, model_state, config
    if not (run_dir / CONFIG_FILE).is_file() or not (run_dir / VARIABLES_FILE).is_file():
        raise ValueError(f"{path} is not a zoo run directory: expected {CONFIG_FILE} and "
                         f"{VARIABLES_FILE} in {run_dir}, or a zoo train workdir with checkpoints/")
    meta = json.loads((run_dir / CONFIG_FILE).read_text())
    family = models.make_family(meta["model"])
    dummy = jax.tree.map(lambda s: np.zeros((2, *s.shape), s.dtype), family.batch_spec)
    params, model_state = jax.eval_shape(family.init, jax.random.PRNGKey(0), dummy)  # shapes only
    template = {"params": params, "model_state": model_state}
    variables = serialization.from_bytes(template, (run_dir / VARIABLES_FILE).read_bytes())
    return family, variables["params"], variables["model_state"], meta


def sample_main(path: str, out_dir: str, *, seed: int = 0, data: Mapping | None = None,
                dataset: str | None = None, tfds_data_dir: str | None = None,
                download_dir: str | None = None, **options: Any) -> dict[str, Path]:
    """``zoo sample``: loads the run at ``path`` and writes its PNGs to ``out_dir``.

    Test images (for reconstructions, data-driven interpolations and the 2-d latent scatter) come
    from ``data`` if given, else from ``dataset`` (default: the run's ``data.dataset``) through
    ``zoo.data.load_tfds``; without a dataset only the data-free pictures are written.
    ``options`` go to :func:`write_samples`.
    """
    family, params, model_state, meta = load_run(path)
    run_data = meta.get("data", {})
    dataset = dataset or run_data.get("dataset")
    if data is None and dataset and dataset != "synthetic":
        from zoo import data as data_lib
        data = data_lib.load_tfds(dataset, "test",
                                  data_dir=tfds_data_dir or run_data.get("tfds_data_dir") or None,
                                  download_dir=download_dir or run_data.get("download_dir") or None)
    return write_samples(family, params, model_state, out_dir, jax.random.PRNGKey(seed), data,
                         **options)
