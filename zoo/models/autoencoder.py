"""Autoencoders: an MLP (Hinton & Salakhutdinov 2006 style) and a convolutional one.

``encode`` maps images to a code, ``decode`` maps a code to pixel logits; the reconstruction loss
is the per-image sum of squared error (on sigmoid outputs) or of Bernoulli cross-entropy.
"""

from __future__ import annotations

from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from zoo import flops
from zoo.core import settings
from zoo.core.family import Family, ImageSampler
from zoo.core.step import Update
from zoo.models.layers import ConvTranspose

LOSSES = ("mse", "bernoulli")


def _block(module_cls, remat: bool):
    return nn.remat(module_cls) if remat else module_cls


class MLPAutoencoder(nn.Module):
    """784-1000-500-250-30 and the like: Dense+ReLU layers, a linear code, a mirrored decoder."""

    image_shape: Sequence[int] = (28, 28, 1)
    hidden: Sequence[int] = (512, 256)
    latent_dim: int = 32
    remat: bool = False

    def setup(self):
        dense = _block(nn.Dense, self.remat)
        self.enc = [dense(h, name=f"enc_{i}") for i, h in enumerate(self.hidden)]
        self.code = nn.Dense(self.latent_dim, name="code")
        self.dec = [dense(h, name=f"dec_{i}") for i, h in enumerate(reversed(self.hidden))]
        self.out = nn.Dense(int(np.prod(self.image_shape)), name="out")

    def encode(self, x: jax.Array) -> jax.Array:
        chex.assert_shape(x, (None, *self.image_shape))
        h = x.reshape(x.shape[0], -1)
        for layer in self.enc:
            h = nn.relu(layer(h))
        return self.code(h)

    def decode(self, z: jax.Array) -> jax.Array:
        h = z
        for layer in self.dec:
            h = nn.relu(layer(h))
        return self.out(h).reshape(z.shape[0], *self.image_shape)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.decode(self.encode(x))


class ConvAutoencoder(nn.Module):
    """Two stride-2 convolutions down, a dense code, two stride-2 transposed convolutions up."""

    image_shape: Sequence[int] = (28, 28, 1)
    features: Sequence[int] = (32, 64)
    latent_dim: int = 32
    remat: bool = False

    def setup(self):
        h, w, c = self.image_shape
        down = 2 ** len(self.features)
        if h % down or w % down:
            raise ValueError(f"ConvAutoencoder halves the image {len(self.features)} times; image "
                             f"size {h}x{w} must be divisible by {down}")
        conv = _block(nn.Conv, self.remat)
        self.enc = [conv(f, (3, 3), strides=2, name=f"enc_{i}") for i, f in enumerate(self.features)]
        self.code = nn.Dense(self.latent_dim, name="code")
        self.grid = (h // down, w // down, self.features[-1])
        self.expand = nn.Dense(int(np.prod(self.grid)), name="expand")
        self.dec = [ConvTranspose(f, (3, 3), strides=(2, 2), name=f"dec_{i}")
                    for i, f in enumerate(list(reversed(self.features))[1:])]
        self.out = ConvTranspose(c, (3, 3), strides=(2, 2), name="out")

    def encode(self, x: jax.Array) -> jax.Array:
        chex.assert_shape(x, (None, *self.image_shape))
        h = x
        for layer in self.enc:
            h = nn.relu(layer(h))
        return self.code(h.reshape(h.shape[0], -1))

    def decode(self, z: jax.Array) -> jax.Array:
        h = nn.relu(self.expand(z)).reshape(z.shape[0], *self.grid)
        for layer in self.dec:
            h = nn.relu(layer(h))
        return self.out(h)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.decode(self.encode(x))


def reconstruction_loss(logits: jax.Array, x: jax.Array, kind: str) -> jax.Array:
    """Per-image reconstruction loss (summed over pixels), shape (B,). x is in [0, 1]."""
    logits, x = logits.astype(jnp.float32), x.astype(jnp.float32)
    axes = tuple(range(1, x.ndim))
    if kind == "mse":
        return jnp.sum((nn.sigmoid(logits) - x) ** 2, axis=axes)
    if kind == "bernoulli":
        return jnp.sum(optax.sigmoid_binary_cross_entropy(logits, x), axis=axes)
    raise ValueError(f"unknown reconstruction loss {kind!r}; choose one of {', '.join(LOSSES)}")


ARCHS = {"mlp": MLPAutoencoder, "conv": ConvAutoencoder}


def make_model(config) -> nn.Module:
    """The module of ``model.arch`` (default mlp), its fields from the config's keys (the rest at
    the module's defaults)."""
    arch = config.get("arch", "mlp")
    if arch not in ARCHS:
        raise ValueError(f"unknown autoencoder arch {arch!r}; choose one of {', '.join(ARCHS)}")
    model = ARCHS[arch](**settings.module_fields(ARCHS[arch], config))
    if model.latent_dim < 1:
        raise ValueError(f"latent_dim must be >= 1, got {model.latent_dim}")
    return model


def loss_kind(config) -> str:
    """The reconstruction loss a model config names (default mse), checked."""
    kind = config.get("loss", "mse")
    if kind not in LOSSES:
        raise ValueError(f"unknown reconstruction loss {kind!r}; choose one of {', '.join(LOSSES)}")
    return kind


def make_family(config) -> Family:
    """The autoencoder family from a model config (keys: arch, image_shape, hidden or features,
    latent_dim, loss, remat)."""
    model, kind = make_model(config), loss_kind(config)

    def loss_fn(params, model_state, batch, rng):
        x = batch["image"]
        logits = model.apply({"params": params["model"]}, x)
        loss = jnp.mean(reconstruction_loss(logits, x, kind))
        x32, p = x.astype(jnp.float32), nn.sigmoid(logits.astype(jnp.float32))
        metrics = {"loss": loss,
                   "mse_per_image": jnp.mean(jnp.sum((p - x32) ** 2, axis=(1, 2, 3)))}
        return loss, metrics, model_state

    def init(rng, batch):
        params = model.init(rng, jnp.asarray(batch["image"][:1]))["params"]
        return {"model": params}, {"model": {}}

    shape = tuple(model.image_shape)
    return Family(
        name="autoencoder",
        modules={"model": model},
        init=init,
        objective=(Update("model", loss_fn),),
        eval_metrics=lambda *a: loss_fn(*a)[1],
        batch_spec={"image": jax.ShapeDtypeStruct(shape, jnp.float32)},
        flops_per_example=train_flops_per_example(model),
        # Pictures of what it learnt: test images beside their reconstructions.
        image_sampler=ImageSampler(
            player="model", latent_dim=model.latent_dim, num_classes=0,
            decode=lambda params, model_state, z, labels: jax.nn.sigmoid(
                model.apply({"params": params}, z, method="decode")),
            encode=lambda params, x, labels: model.apply({"params": params}, x, method="encode"),
            title="autoencoder", latent_name="code", generates=False),
    )


# ---- FLOPs


def train_flops_per_example(model: nn.Module) -> float | None:
    """Forward+backward matmul FLOPs of one training example (:mod:`zoo.flops` conventions): the
    MLP's Dense stack, whose input is data (no input gradient). None for the conv autoencoder:
    its transposed convolutions have no closed form here yet."""
    if not isinstance(model, MLPAutoencoder):
        return None
    d, hidden = int(np.prod(model.image_shape)), list(model.hidden)
    return flops.mlp_train_flops([d, *hidden, model.latent_dim, *reversed(hidden), d])
