"""Generative adversarial networks: MLP GANs, DCGAN, and class-conditional GANs.

Two players, ``"generator"`` G(z, y) -> image in [-1, 1] and ``"discriminator"`` D(x, y) -> logit.
One train step is the objective

    (Update("discriminator", d_loss, repeats=n_critic, prefix="d_"),
     Update("generator",     g_loss,                    prefix="g_"))

so the discriminator moves first (n_critic times), then the generator against the updated
discriminator, each with its own optimizer. Architectures:

* ``mlp``: Goodfellow et al. (2014) style, 100-d noise -> 256 -> 784 tanh, against 784 -> 256 -> 1.
* ``mlp`` with ``g_hidden=(256, 512, 1024)``, ``d_hidden=(512, 256)``: the deeper MLP GAN.
* ``dcgan``: Radford et al. (2016): transposed 4x4 stride-2 convolutions (with strided
  convolutions as their gradients, :mod:`zoo.models.layers`) with BatchNorm (flax's, its sums as
  matmuls on CPU: :mod:`zoo.models.layers`) and ReLU in G, strided convolutions with BatchNorm
  and LeakyReLU(0.2) in D; 28x28 (7 -> 14 -> 28) and
  32x32 (4 -> 8 -> 16 -> 32) images, or any base * 2^n with base <= 7 and n >= 2.
* ``num_classes > 0``: a class-conditional GAN (Mirza & Osindero 2014): a label embedding is
  concatenated to G's noise; D uses a projection (Miyato & Koyama 2018) or concatenation.

Losses (on D's logits): ``minimax`` (the original log(1 - D(G(z))) generator loss),
``non_saturating`` (-log D(G(z))), ``hinge`` (Lim & Ye 2017; Miyato et al. 2018) and ``wasserstein``
(Arjovsky et al. 2017); ``gradient_penalty > 0`` adds WGAN-GP's lambda * (|grad D(x_hat)| - 1)^2
(Gulrajani et al. 2017) to any of them.

BatchNorm statistics: under ``jit`` (``single``, ``mesh``) a batch norm sees the whole global batch;
under ``pmap`` the batch norms average their statistics across the ``batch`` axis (synchronised
BatchNorm), so all three strategies compute the same numbers. Running averages live in each player's
model state; each update keeps only its own player's new statistics.
"""

from __future__ import annotations

from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from zoo import flops
from zoo.core import settings
from zoo.core.family import Family, ImageSampler
from zoo.core.parallel import sync_axis
from zoo.core.step import Update
from zoo.models.layers import BatchNorm, ConvTranspose

LOSSES = ("minimax", "non_saturating", "hinge", "wasserstein")
CONDITIONINGS = ("projection", "concat")
PLAYERS = ("generator", "discriminator")
BN = dict(momentum=0.9, epsilon=1e-5)  # PyTorch's BatchNorm defaults, as in the DCGAN reference


def dcgan_base(image_size: int) -> tuple[int, int]:
    """(base, n): image_size = base * 2**n with base <= 7 and n >= 2, as DCGAN builds it."""
    base, n = int(image_size), 0
    while base % 2 == 0 and base > 7:
        base, n = base // 2, n + 1
    if n < 2 or base < 3:
        raise ValueError(f"DCGAN cannot build a {image_size}x{image_size} image: it upsamples a "
                         "base x base grid 2x at least twice, so the size must be base * 2^n with "
                         "3 <= base <= 7 and n >= 2 (e.g. 28 = 7*4, 32 = 4*8, 64 = 4*16)")
    return base, n


# ---- the players ---------------------------------------------------------------------------------

class MLPGenerator(nn.Module):
    """z (+ label embedding) -> Dense+LeakyReLU(0.2) layers -> Dense(pixels), tanh."""

    image_shape: Sequence[int] = (28, 28, 1)
    hidden: Sequence[int] = (256,)
    num_classes: int = 0
    embed_dim: int = 10
    latent_dim: int = 100

    @nn.compact
    def __call__(self, z, y=None, train: bool = True):
        chex.assert_shape(z, (None, self.latent_dim))
        h = z
        if self.num_classes:
            h = jnp.concatenate([h, _embed(self.num_classes, self.embed_dim, y)], -1)
        for i, width in enumerate(self.hidden):
            h = nn.leaky_relu(nn.Dense(width, name=f"dense_{i}")(h), 0.2)
        x = jnp.tanh(nn.Dense(int(np.prod(self.image_shape)), name="out")(h))
        return x.reshape(z.shape[0], *self.image_shape)


class MLPDiscriminator(nn.Module):
    """x (+ label) -> Dense+LeakyReLU(0.2) layers -> one logit."""

    image_shape: Sequence[int] = (28, 28, 1)
    hidden: Sequence[int] = (256,)
    num_classes: int = 0
    conditioning: str = "projection"
    embed_dim: int = 10

    @nn.compact
    def __call__(self, x, y=None, train: bool = True):
        chex.assert_shape(x, (None, *self.image_shape))
        h = x.reshape(x.shape[0], -1)
        if self.num_classes and self.conditioning == "concat":
            h = jnp.concatenate([h, _embed(self.num_classes, self.embed_dim, y)], -1)
        for i, width in enumerate(self.hidden):
            h = nn.leaky_relu(nn.Dense(width, name=f"dense_{i}")(h), 0.2)
        return _output(h, y, self.num_classes, self.conditioning)


def _embed(num_classes, embed_dim, y):
    return nn.Embed(num_classes, embed_dim, name="embed")(y)


def _output(h, y, num_classes, conditioning):
    """D's logit: linear(h), plus <embed(y), h> for a projection discriminator."""
    logit = nn.Dense(1, name="logit")(h)[:, 0]
    if num_classes and conditioning == "projection":
        logit += jnp.sum(nn.Embed(num_classes, h.shape[-1], name="projection")(y) * h, axis=-1)
    return logit


class DCGANGenerator(nn.Module):
    """z -> Dense -> base x base x (features * 2^(n-1)) -> n transposed convs, BN+ReLU, tanh out."""

    image_shape: Sequence[int] = (28, 28, 1)
    features: int = 64
    num_classes: int = 0
    embed_dim: int = 10
    latent_dim: int = 100

    @nn.compact
    def __call__(self, z, y=None, train: bool = True):
        chex.assert_shape(z, (None, self.latent_dim))
        base, n = dcgan_base(self.image_shape[0])
        axis = sync_axis()
        bn = lambda name: BatchNorm(use_running_average=not train, axis_name=axis, name=name,
                                    **BN)
        h = z
        if self.num_classes:
            h = jnp.concatenate([h, _embed(self.num_classes, self.embed_dim, y)], -1)
        width = self.features * 2 ** (n - 1)
        h = nn.Dense(base * base * width, use_bias=False, name="project")(h)
        h = nn.relu(bn("bn_project")(h.reshape(z.shape[0], base, base, width)))
        for i in range(n - 1):
            width //= 2
            h = ConvTranspose(width, (4, 4), strides=(2, 2), use_bias=False,
                              name=f"deconv_{i}")(h)
            h = nn.relu(bn(f"bn_{i}")(h))
        h = ConvTranspose(self.image_shape[-1], (4, 4), strides=(2, 2), name="out")(h)
        return jnp.tanh(h)


class DCGANDiscriminator(nn.Module):
    """x -> n stride-2 4x4 convs (BN after all but the first), LeakyReLU(0.2) -> one logit."""

    image_shape: Sequence[int] = (28, 28, 1)
    features: int = 64
    num_classes: int = 0
    conditioning: str = "projection"
    embed_dim: int = 10

    @nn.compact
    def __call__(self, x, y=None, train: bool = True):
        chex.assert_shape(x, (None, *self.image_shape))
        _, n = dcgan_base(self.image_shape[0])
        axis = sync_axis()
        h = x
        if self.num_classes and self.conditioning == "concat":
            e = _embed(self.num_classes, self.embed_dim, y)[:, None, None, :]
            e = jnp.broadcast_to(e, (*h.shape[:3], e.shape[-1])).astype(h.dtype)
            h = jnp.concatenate([h, e], -1)  # the label as constant feature maps
        for i in range(n):
            h = nn.Conv(self.features * 2 ** i, (4, 4), strides=2, use_bias=i == 0,
                        name=f"conv_{i}")(h)
            if i > 0:
                h = BatchNorm(use_running_average=not train, axis_name=axis, name=f"bn_{i}",
                              **BN)(h)
            h = nn.leaky_relu(h, 0.2)
        return _output(h.reshape(h.shape[0], -1), y, self.num_classes, self.conditioning)


# ---- losses ------------------------------------------------------------------------------------

def discriminator_loss(kind: str, real: jax.Array, fake: jax.Array) -> jax.Array:
    """Mean D loss from logits on real and generated images."""
    real, fake = real.astype(jnp.float32), fake.astype(jnp.float32)
    if kind in ("minimax", "non_saturating"):  # -log D(x) - log(1 - D(G(z)))
        return jnp.mean(jax.nn.softplus(-real) + jax.nn.softplus(fake))
    if kind == "hinge":
        return jnp.mean(jax.nn.relu(1.0 - real) + jax.nn.relu(1.0 + fake))
    if kind == "wasserstein":
        return jnp.mean(fake - real)
    raise ValueError(f"unknown GAN loss {kind!r}; choose one of {', '.join(LOSSES)}")


def generator_loss(kind: str, fake: jax.Array) -> jax.Array:
    """Mean G loss from D's logits on generated images."""
    fake = fake.astype(jnp.float32)
    if kind == "minimax":         # minimise log(1 - D(G(z))) = -softplus(logit)
        return -jnp.mean(jax.nn.softplus(fake))
    if kind == "non_saturating":  # minimise -log D(G(z))
        return jnp.mean(jax.nn.softplus(-fake))
    if kind in ("hinge", "wasserstein"):
        return -jnp.mean(fake)
    raise ValueError(f"unknown GAN loss {kind!r}; choose one of {', '.join(LOSSES)}")


# ---- the family ----------------------------------------------------------------------------------

ARCHS = {"mlp": (MLPGenerator, MLPDiscriminator), "dcgan": (DCGANGenerator, DCGANDiscriminator)}


def make_players(config) -> tuple[nn.Module, nn.Module]:
    """(generator, discriminator) of ``model.arch`` (default mlp), their fields from the config's
    keys (``g_hidden`` / ``d_hidden``: each MLP player's ``hidden``), the rest at the modules'
    defaults; settings they cannot build are refused."""
    arch = config.get("arch", "mlp")
    if arch not in ARCHS:
        raise ValueError(f"unknown GAN arch {arch!r}; choose one of {', '.join(ARCHS)}")
    gen_cls, disc_cls = ARCHS[arch]
    gen = gen_cls(**settings.module_fields(gen_cls, config, rename={"g_hidden": "hidden"}))
    disc = disc_cls(**settings.module_fields(disc_cls, config, rename={"d_hidden": "hidden"}))
    shape = tuple(gen.image_shape)
    if gen.num_classes < 0:
        raise ValueError(f"num_classes must be >= 0 (0: unconditional), got {gen.num_classes}")
    if disc.conditioning not in CONDITIONINGS:
        raise ValueError(f"unknown conditioning {disc.conditioning!r}; choose one of "
                         f"{', '.join(CONDITIONINGS)}")
    if gen.latent_dim < 1:
        raise ValueError(f"latent_dim must be >= 1, got {gen.latent_dim}")
    if arch == "dcgan":
        if len(shape) != 3 or shape[0] != shape[1]:
            raise ValueError(f"DCGAN builds square images (H, W, C) with H == W; got {shape}")
        dcgan_base(shape[0])
    return gen, disc


def _apply(module, params, state, *args, train: bool):
    """module(*args) with its BatchNorm statistics; returns (output, new state)."""
    variables = {"params": params, **state}
    if not train:
        return module.apply(variables, *args, train=False), state
    out, updates = module.apply(variables, *args, train=True, mutable=["batch_stats"])
    return out, {**state, **updates}


def objective_settings(config) -> tuple[str, int, float]:
    """``(loss, n_critic, gradient_penalty)`` of a model config, checked (defaults: the
    non-saturating loss, one critic step, no penalty)."""
    kind = config.get("loss", "non_saturating")
    if kind not in LOSSES:
        raise ValueError(f"unknown GAN loss {kind!r}; choose one of {', '.join(LOSSES)}")
    n_critic = int(config.get("n_critic", 1))
    if n_critic < 1:
        raise ValueError(f"n_critic must be >= 1, got {n_critic}")
    gp = float(config.get("gradient_penalty", 0.0))
    if gp < 0:
        raise ValueError(f"gradient_penalty must be >= 0 (0: off), got {gp}")
    return kind, n_critic, gp


def make_family(config) -> Family:
    """The GAN family. Model config keys: arch (mlp, dcgan), image_shape, latent_dim, g_hidden and
    d_hidden (mlp), features (dcgan), num_classes (> 0: conditional on ``batch["label"]``),
    conditioning (projection, concat), embed_dim, loss (minimax, non_saturating, hinge,
    wasserstein),
    gradient_penalty (WGAN-GP lambda; 0: off), n_critic. Each player has its own optimizer: in a
    zoo.train config, ``optimizers.generator`` / ``optimizers.discriminator`` (else ``optimizer``).
    Generated images are conditioned on the batch's labels, so fakes follow the data's classes."""
    kind, n_critic, gp = objective_settings(config)
    gen, disc = make_players(config)
    conditional, latent = gen.num_classes > 0, gen.latent_dim

    def fake_images(params, model_state, batch, rng, train):
        b = batch["image"].shape[0]
        z = jax.random.normal(rng, (b, latent), batch["image"].dtype)
        y = batch["label"] if conditional else None
        x, g_state = _apply(gen, params["generator"], model_state["generator"], z, y, train=train)
        return x, y, g_state

    def d_terms(params, model_state, batch, rng, train):
        z_rng, gp_rng = jax.random.split(rng)
        x_real = batch["image"] * 2.0 - 1.0  # data in [0, 1] -> G's tanh range
        x_fake, y, _ = fake_images(params, model_state, batch, z_rng, train)
        x_fake = jax.lax.stop_gradient(x_fake)
        d_params, d_state = params["discriminator"], model_state["discriminator"]
        real, d_state = _apply(disc, d_params, d_state, x_real, y, train=train)
        fake, d_state = _apply(disc, d_params, d_state, x_fake, y, train=train)
        loss = discriminator_loss(kind, real, fake)
        metrics = {"loss": loss, "real_logit": jnp.mean(real), "fake_logit": jnp.mean(fake)}
        if gp:
            eps = jax.random.uniform(gp_rng, (x_real.shape[0],) + (1,) * (x_real.ndim - 1),
                                     x_real.dtype)
            x_hat = eps * x_real + (1 - eps) * x_fake
            critic = lambda xh: jnp.sum(_apply(disc, d_params, d_state, xh, y, train=train)[0])
            g = jax.grad(critic)(x_hat).reshape(x_hat.shape[0], -1).astype(jnp.float32)
            penalty = jnp.mean((jnp.sqrt(jnp.sum(g ** 2, axis=-1) + 1e-12) - 1.0) ** 2)
            loss = loss + gp * penalty
            metrics.update(loss=loss, gradient_penalty=penalty)
        return loss, metrics, {**model_state, "discriminator": d_state}

    def g_terms(params, model_state, batch, rng, train):
        x_fake, y, g_state = fake_images(params, model_state, batch, rng, train)
        fake, _ = _apply(disc, params["discriminator"], model_state["discriminator"], x_fake, y,
                         train=train)
        loss = generator_loss(kind, fake)
        return loss, {"loss": loss, "fake_logit": jnp.mean(fake)}, {**model_state,
                                                                     "generator": g_state}

    def d_loss(params, model_state, batch, rng):
        return d_terms(params, model_state, batch, rng, train=True)

    def g_loss(params, model_state, batch, rng):
        return g_terms(params, model_state, batch, rng, train=True)

    def eval_metrics(params, model_state, batch, rng):
        d_rng, g_rng = jax.random.split(rng)
        _, dm, _ = d_terms(params, model_state, batch, d_rng, train=False)
        _, gm, _ = g_terms(params, model_state, batch, g_rng, train=False)
        return {**{"d_" + k: v for k, v in dm.items()}, **{"g_" + k: v for k, v in gm.items()}}

    def init(rng, batch):
        g_rng, d_rng = jax.random.split(rng)
        x = jnp.asarray(batch["image"][:2])
        y = jnp.asarray(batch["label"][:2]) if conditional else None
        z = jnp.zeros((x.shape[0], latent), x.dtype)
        params, states = {}, {}
        for name, module, key, inp in (("generator", gen, g_rng, z),
                                       ("discriminator", disc, d_rng, x)):
            variables = dict(module.init(key, inp, y, train=False))
            params[name] = variables.pop("params")
            states[name] = variables  # {"batch_stats": ...} for DCGAN, {} for MLPs
        return params, states

    spec = {"image": jax.ShapeDtypeStruct(tuple(gen.image_shape), jnp.float32)}
    if conditional:
        spec["label"] = jax.ShapeDtypeStruct((), jnp.int32)
    return Family(
        name="gan",
        modules={"generator": gen, "discriminator": disc},
        init=init,
        objective=(Update("discriminator", d_loss, repeats=n_critic, prefix="d_"),
                   Update("generator", g_loss, prefix="g_")),
        eval_metrics=eval_metrics,
        batch_spec=spec, num_classes=gen.num_classes,
        flops_per_example=train_flops_per_example(gen, disc, n_critic, gp),
        image_sampler=ImageSampler(player="generator", latent_dim=latent,
                                   num_classes=gen.num_classes, title="GAN",
                                   latent_name="noise",
                                   decode=lambda params, state, z, labels: generate(
                                       gen, params, state, z, labels)),
    )


# ---- generation ----------------------------------------------------------------

def generate(generator: nn.Module, params, model_state, z, labels=None) -> jax.Array:
    """Images in [0, 1] from noise z (eval-mode BatchNorm)."""
    x, _ = _apply(generator, params, model_state, z, labels, train=False)
    return (x.astype(jnp.float32) + 1.0) / 2.0


# ---- FLOPs


def train_flops_per_example(gen: nn.Module, disc: nn.Module, n_critic: int = 1,
                            gradient_penalty: float = 0.0) -> float | None:
    """Matmul and convolution FLOPs of one train step per example (:mod:`zoo.flops`
    conventions; a transposed convolution's useful FLOPs). A D update, ``n_critic`` times: G
    forward (no gradient), D on real and on fake images, forward and backward, with no gradient
    into its input; then a G update: G forward and backward, D forward and its activation
    gradients (D's weights are not differentiated). None with a gradient penalty, whose double
    backward is not counted here."""
    if gradient_penalty:
        return None
    g_fwd, g_free = _player_flops(gen)
    d_fwd, d_free = _player_flops(disc)
    d_update = g_fwd + 2 * flops.train_flops(d_fwd, d_free)
    g_update = flops.train_flops(g_fwd, g_free) + 2 * d_fwd
    return n_critic * d_update + g_update


def _player_flops(player: nn.Module) -> tuple[float, float]:
    """(forward FLOPs, FLOPs of the first layer's input gradient that nobody needs) of one
    example through a player. That gradient is needed after all when a trained label embedding
    is concatenated to the input (a conditional G; a D with ``conditioning="concat"``)."""
    shape, classes = tuple(player.image_shape), player.num_classes
    generator = isinstance(player, (MLPGenerator, DCGANGenerator))
    embedded = bool(classes) and (generator or player.conditioning == "concat")
    extra = player.embed_dim if embedded else 0
    if isinstance(player, (MLPGenerator, MLPDiscriminator)):
        pixels = int(np.prod(shape))
        sizes = ([player.latent_dim + extra, *player.hidden, pixels] if generator
                 else [pixels + extra, *player.hidden, 1])
        first = flops.dense_flops(1, sizes[0], sizes[1])
        return flops.mlp_forward_flops(sizes), 0.0 if embedded else first
    size, c, f = shape[0], shape[-1], player.features
    base, n = dcgan_base(size)
    if generator:  # project to base x base, then n transposed convolutions double it
        width = f * 2 ** (n - 1)
        first = flops.dense_flops(1, player.latent_dim + extra, base * base * width)
        forward, hw = first, base
        for _ in range(n - 1):
            forward += flops.conv_transpose2d_flops(1, (hw, hw), (4, 4), width, width // 2)
            width, hw = width // 2, hw * 2
        forward += flops.conv_transpose2d_flops(1, (hw, hw), (4, 4), width, c)
    else:  # n stride-2 convolutions halve it, then one logit
        first = flops.conv2d_flops(1, (size // 2, size // 2), (4, 4), c + extra, f)
        forward, hw, cin = first, size // 2, f
        for i in range(1, n):
            hw //= 2
            forward += flops.conv2d_flops(1, (hw, hw), (4, 4), cin, f * 2 ** i)
            cin = f * 2 ** i
        forward += flops.dense_flops(1, hw * hw * cin, 1)
    return forward, 0.0 if embedded else first
