"""Variational autoencoders (Kingma & Welling 2014) and the conditional VAE (Sohn et al. 2015).

    q(z | x, y) = N(mean(x, y), diag(exp(logvar(x, y))))      encoder, MLP or convolutional
    p(x | z, y) = Bernoulli(sigmoid(logits(z, y)))              or Gaussian(sigmoid(out), sigma^2)
    p(z)        = N(0, I)

The loss is the negative ELBO, E_q[-log p(x|z)] + KL(q || p), per image, in nats; a sample of
z = mean + std * eps is drawn with the reparameterisation trick. ``y`` (one-hot labels) is given to
both networks only when ``num_classes > 0``. MNIST is dynamically binarised: each time an image is
seen its pixels are drawn as Bernoulli(intensity).

:func:`iwae_bound` is the importance-weighted bound of Burda et al. (2016),
log p(x) >= E[log (1/k) sum_i p(x, z_i) / q(z_i | x)], computed in chunks of samples so k = 5000
fits in memory; it is the usual estimate of a VAE's test log-likelihood.
"""

from __future__ import annotations

import math
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

ARCHS = ("mlp", "conv")
LIKELIHOODS = ("bernoulli", "gaussian")
PLAYER = "model"


def _one_hot(y, num_classes):
    return jax.nn.one_hot(y, num_classes) if num_classes else None


def _with_label(h, y1h):
    return h if y1h is None else jnp.concatenate([h, y1h.astype(h.dtype)], axis=-1)


def _gaussian_head(h, latent_dim):
    """(mean, logvar) of q(z | x): two linear maps of the encoder's last features."""
    return nn.Dense(latent_dim, name="mean")(h), nn.Dense(latent_dim, name="logvar")(h)


ACTIVATIONS = {"relu": nn.relu, "tanh": nn.tanh}


class MLPEncoder(nn.Module):
    """x (and y) -> Dense+activation layers -> (mean, logvar) of q(z | x, y)."""

    hidden: Sequence[int]
    latent_dim: int
    activation: str = "relu"

    @nn.compact
    def __call__(self, x, y1h=None):
        h = _with_label(x.reshape(x.shape[0], -1), y1h)
        for i, width in enumerate(self.hidden):
            h = ACTIVATIONS[self.activation](nn.Dense(width, name=f"dense_{i}")(h))
        return _gaussian_head(h, self.latent_dim)


class MLPDecoder(nn.Module):
    """z (and y) -> Dense+activation layers -> one output per pixel."""

    hidden: Sequence[int]
    image_shape: Sequence[int]
    activation: str = "relu"

    @nn.compact
    def __call__(self, z, y1h=None):
        h = _with_label(z, y1h)
        for i, width in enumerate(self.hidden):
            h = ACTIVATIONS[self.activation](nn.Dense(width, name=f"dense_{i}")(h))
        return nn.Dense(int(np.prod(self.image_shape)), name="out")(h).reshape(
            z.shape[0], *self.image_shape)


class ConvEncoder(nn.Module):
    """x -> stride-2 3x3 convolutions -> (y appended) -> Dense -> (mean, logvar)."""

    features: Sequence[int]
    latent_dim: int
    dense: int = 256

    @nn.compact
    def __call__(self, x, y1h=None):
        h = x
        for i, f in enumerate(self.features):
            h = nn.relu(nn.Conv(f, (3, 3), strides=2, name=f"conv_{i}")(h))
        h = nn.relu(nn.Dense(self.dense, name="dense")(_with_label(h.reshape(h.shape[0], -1), y1h)))
        return _gaussian_head(h, self.latent_dim)


class ConvDecoder(nn.Module):
    """z (and y) -> Dense -> small grid -> stride-2 transposed convs -> an output per pixel."""

    features: Sequence[int]
    image_shape: Sequence[int]
    dense: int = 256

    @nn.compact
    def __call__(self, z, y1h=None):
        height, width, channels = self.image_shape
        down = 2 ** len(self.features)
        grid = (height // down, width // down, self.features[-1])
        h = nn.relu(nn.Dense(self.dense, name="dense")(_with_label(z, y1h)))
        h = nn.relu(nn.Dense(int(np.prod(grid)), name="expand")(h)).reshape(z.shape[0], *grid)
        for i, f in enumerate(list(reversed(self.features))[1:]):
            h = nn.relu(ConvTranspose(f, (3, 3), strides=(2, 2), name=f"deconv_{i}")(h))
        return ConvTranspose(channels, (3, 3), strides=(2, 2), name="out")(h)


class VAE(nn.Module):
    """Encoder, decoder and (Gaussian likelihood) a learned pixel noise scale.

    ``encode(x, y) -> (mean, logvar)``; ``decode(z, y)`` -> pixel logits (Bernoulli) or pre-sigmoid
    means (Gaussian); ``__call__(x, y, rng)`` runs both with one reparameterised sample.
    ``y`` is an int label array, ignored unless ``num_classes > 0``.
    """

    image_shape: Sequence[int] = (28, 28, 1)
    arch: str = "mlp"
    hidden: Sequence[int] = (512, 256)
    features: Sequence[int] = (32, 64)
    latent_dim: int = 16
    likelihood: str = "bernoulli"
    num_classes: int = 0
    activation: str = "relu"  # of the MLP's hidden layers

    def setup(self):
        if self.arch == "mlp":
            self.encoder = MLPEncoder(tuple(self.hidden), self.latent_dim, self.activation)
            self.decoder = MLPDecoder(tuple(reversed(self.hidden)), tuple(self.image_shape),
                                      self.activation)
        else:
            self.encoder = ConvEncoder(tuple(self.features), self.latent_dim)
            self.decoder = ConvDecoder(tuple(self.features), tuple(self.image_shape))
        if self.likelihood == "gaussian":
            self.log_scale = self.param("log_scale", nn.initializers.zeros, ())

    def encode(self, x, y=None):
        chex.assert_shape(x, (None, *self.image_shape))
        mean, logvar = self.encoder(x, _one_hot(y, self.num_classes))
        return mean, logvar

    def decode(self, z, y=None):
        chex.assert_shape(z, (None, self.latent_dim))
        return self.decoder(z, _one_hot(y, self.num_classes))

    def log_likelihood(self, out, x):
        """log p(x | z) per image, from the decoder output ``out``; shape (B,)."""
        out, x = out.astype(jnp.float32), x.astype(jnp.float32)
        axes = tuple(range(1, x.ndim))
        if self.likelihood == "bernoulli":
            return -jnp.sum(optax.sigmoid_binary_cross_entropy(out, x), axis=axes)
        log_scale = self.log_scale.astype(jnp.float32)
        z = (x - nn.sigmoid(out)) * jnp.exp(-log_scale)
        return jnp.sum(-0.5 * z ** 2 - log_scale - 0.5 * math.log(2 * math.pi), axis=axes)

    def mean_image(self, out):
        """E[x | z] in [0, 1], for pictures."""
        return nn.sigmoid(out.astype(jnp.float32))

    def __call__(self, x, y=None, rng=None):
        mean, logvar = self.encode(x, y)
        z = mean if rng is None else reparameterize(rng, mean, logvar)
        return self.decode(z, y), mean, logvar


def reparameterize(rng, mean, logvar):
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)


def gaussian_kl(mean, logvar):
    """KL(N(mean, exp(logvar)) || N(0, I)) per example, summed over latent dimensions."""
    mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
    return 0.5 * jnp.sum(jnp.exp(logvar) + mean ** 2 - 1.0 - logvar, axis=-1)


def binarize(rng, x):
    """Dynamic binarisation: each pixel is 1 with probability equal to its intensity."""
    return jax.random.bernoulli(rng, x).astype(x.dtype)


def elbo_terms(model: VAE, params, x, y, rng) -> dict[str, jax.Array]:
    """Per-image ``recon`` (-log p(x|z) for one sample z ~ q), ``kl`` and ``elbo``, each (B,)."""
    out, mean, logvar = model.apply({"params": params}, x, y, rng)
    recon = -model.apply({"params": params}, out, x, method=VAE.log_likelihood)
    kl = gaussian_kl(mean, logvar)
    return {"recon": recon, "kl": kl, "elbo": -(recon + kl)}


def _normal_logpdf(z, mean, logvar):
    return jnp.sum(-0.5 * ((z - mean) ** 2 * jnp.exp(-logvar) + logvar + math.log(2 * math.pi)),
                   axis=-1)


def iwae_bound(model: VAE, params, x, y, rng, *, k: int = 5000, chunk: int = 100) -> jax.Array:
    """The importance-weighted bound on log p(x) in nats per image, shape (B,).

    log (1/k) sum_{i<=k} p(x | z_i) p(z_i) / q(z_i | x), z_i ~ q(z | x). The k samples are drawn
    ``chunk`` at a time (``lax.map``) and combined with a log-sum-exp, so memory grows with
    ``chunk`` x B, not k x B. k = 1 is a one-sample ELBO; the bound tightens as k grows.
    """
    if k < 1 or chunk < 1 or k % chunk:
        raise ValueError(f"iwae_bound needs k >= 1 samples in chunks that divide k; got k={k}, "
                         f"chunk={chunk}")
    variables = {"params": params}
    mean, logvar = model.apply(variables, x, y, method=VAE.encode)
    mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
    b = x.shape[0]
    y_rep = None if y is None else jnp.tile(y, chunk)

    def chunk_logsumexp(key):
        eps = jax.random.normal(key, (chunk, *mean.shape), jnp.float32)
        z = mean + jnp.exp(0.5 * logvar) * eps                       # (chunk, B, D)
        out = model.apply(variables, z.reshape(chunk * b, -1), y_rep, method=VAE.decode)
        x_rep = jnp.broadcast_to(x, (chunk, *x.shape)).reshape(chunk * b, *x.shape[1:])
        log_px_z = model.apply(variables, out, x_rep, method=VAE.log_likelihood).reshape(chunk, b)
        log_pz = _normal_logpdf(z, 0.0, jnp.zeros_like(logvar))
        log_qz = _normal_logpdf(z, mean, logvar)
        return jax.nn.logsumexp(log_px_z + log_pz - log_qz, axis=0)   # (B,)

    per_chunk = jax.lax.map(chunk_logsumexp, jax.random.split(rng, k // chunk))
    return jax.nn.logsumexp(per_chunk, axis=0) - math.log(k)


def make_model(config) -> VAE:
    """The VAE of a model config: its fields from the config's keys, the rest at the module's
    defaults; settings it cannot build are refused."""
    m = VAE(**settings.module_fields(VAE, config))
    if m.arch not in ARCHS:
        raise ValueError(f"unknown VAE arch {m.arch!r}; choose one of {', '.join(ARCHS)}")
    if m.likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown VAE likelihood {m.likelihood!r}; choose one of "
                         f"{', '.join(LIKELIHOODS)}")
    if m.latent_dim < 1:
        raise ValueError(f"latent_dim must be >= 1 (2 gives a plottable latent space), "
                         f"got {m.latent_dim}")
    down = 2 ** len(m.features)
    if m.arch == "conv" and (m.image_shape[0] % down or m.image_shape[1] % down):
        raise ValueError(f"the conv VAE halves the image {len(m.features)} times; image size "
                         f"{m.image_shape[0]}x{m.image_shape[1]} must be divisible by {down}")
    if m.num_classes < 0:
        raise ValueError(f"num_classes must be >= 0 (0: unconditional), got {m.num_classes}")
    if m.activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {m.activation!r}; choose one of "
                         f"{', '.join(ACTIVATIONS)}")
    return m


def binarises(config) -> bool:
    """Whether a VAE of this model config trains on dynamically binarised images (``binarize``;
    by default exactly when its likelihood is Bernoulli)."""
    return bool(config.get("binarize", make_model(config).likelihood == "bernoulli"))


def make_family(config) -> Family:
    """The VAE family. Model config keys: arch (mlp, conv), image_shape, hidden, activation (relu,
    tanh; MLP), features, latent_dim, likelihood (bernoulli, gaussian), binarize (dynamic
    binarisation, default on for Bernoulli), num_classes (> 0: conditional VAE on
    ``batch["label"]``). It draws images and estimates log p(x) (IWAE)."""
    model = make_model(config)
    binarise = binarises(config)
    conditional = model.num_classes > 0

    def loss_fn(params, model_state, batch, rng):
        bin_rng, z_rng = jax.random.split(rng)
        x = binarize(bin_rng, batch["image"]) if binarise else batch["image"]
        y = batch["label"] if conditional else None
        terms = elbo_terms(model, params[PLAYER], x, y, z_rng)
        loss = -jnp.mean(terms["elbo"])
        metrics = {"loss": loss, **{k: jnp.mean(v) for k, v in terms.items()}}
        return loss, metrics, model_state

    def init(rng, batch):
        x = jnp.asarray(batch["image"][:1])
        y = jnp.asarray(batch["label"][:1]) if conditional else None
        params = model.init(rng, x, y, rng)["params"]
        return {PLAYER: params}, {PLAYER: {}}

    spec = {"image": jax.ShapeDtypeStruct(model.image_shape, jnp.float32)}
    if conditional:
        spec["label"] = jax.ShapeDtypeStruct((), jnp.int32)
    sampler = ImageSampler(
        player=PLAYER, latent_dim=model.latent_dim, num_classes=model.num_classes,
        decode=lambda params, model_state, z, labels: decode_images(model, params, z, labels),
        encode=lambda params, x, labels: encode_means(model, params, x, labels), title="VAE")

    def log_likelihood(params, images, labels=None, *, k: int = 5000, seed: int = 0) -> float:
        # Images binarised as in training: IWAE bounds the likelihood the model was fit to.
        return test_log_likelihood(model, params[PLAYER], images, labels, k=k,
                                   chunk=math.gcd(k, 100), seed=seed, binarise=binarise)

    return Family(name="vae", modules={PLAYER: model}, init=init,
                  objective=(Update(PLAYER, loss_fn),),
                  flops_per_example=train_flops_per_example(model),
                  eval_metrics=lambda *a: loss_fn(*a)[1], batch_spec=spec,
                  num_classes=model.num_classes,
                  image_sampler=sampler, log_likelihood=log_likelihood)


# ---- generation and likelihood ----------------------------------------------------------------

def generate(model: VAE, params, rng, n: int, labels=None) -> jax.Array:
    """n images E[x | z], z ~ N(0, I), in [0, 1]."""
    z = jax.random.normal(rng, (n, model.latent_dim))
    return decode_images(model, params, z, labels)


def decode_images(model: VAE, params, z, labels=None) -> jax.Array:
    """The decoder's mean image in [0, 1] at each latent ``z`` (N, latent_dim)."""
    out = model.apply({"params": params}, z, labels, method=VAE.decode)
    return model.apply({"params": params}, out, method=VAE.mean_image)


def encode_means(model: VAE, params, x, labels=None) -> jax.Array:
    """The posterior means of q(z | x) for images ``x`` (N, H, W, C)."""
    return model.apply({"params": params}, x, labels, method=VAE.encode)[0]


def reconstruct(model: VAE, params, x, labels=None) -> jax.Array:
    """E[x | z = mean of q(z | x)] in [0, 1]."""
    return decode_images(model, params, encode_means(model, params, x, labels), labels)


def test_log_likelihood(model: VAE, params, images, labels=None, *, k: int = 5000,
                        chunk: int = 100, batch_size: int = 100, seed: int = 0,
                        binarise: bool = True) -> float:
    """Mean IWAE-k estimate of log p(x) in nats over every one of ``images`` (dynamically
    binarised once with ``binarise``), in batches of ``batch_size`` (a shorter last one)."""
    p = params
    fn = jax.jit(lambda x, y, key: iwae_bound(model, p, x, y, key, k=k, chunk=chunk))
    rng, total, n = jax.random.PRNGKey(seed), 0.0, len(images)
    if n == 0:
        raise ValueError("test_log_likelihood needs at least one image")
    for start in range(0, n, batch_size):
        rng, bin_rng, key = jax.random.split(rng, 3)
        x = jnp.asarray(images[start:start + batch_size])
        x = binarize(bin_rng, x) if binarise else x
        y = None if labels is None or not model.num_classes else jnp.asarray(
            labels[start:start + batch_size])
        total += float(jnp.sum(fn(x, y, key)))
    return total / n


# ---- FLOPs


def train_flops_per_example(model: VAE) -> float | None:
    """Forward+backward matmul FLOPs of one training example (:mod:`zoo.flops` conventions) of
    the MLP VAE: the encoder (its input is data: no input gradient), the mean and log-variance
    heads, and the decoder (its input z needs a gradient). A conditional VAE's one-hot label
    widens the first layer of each. None for the conv VAE: its transposed convolutions have no
    closed form here yet."""
    if model.arch != "mlp":
        return None
    d, k, hidden = int(np.prod(model.image_shape)), model.num_classes, list(model.hidden)
    encoder = flops.mlp_train_flops([d + k, *hidden])
    heads = 2 * flops.dense_flops(1, hidden[-1] if hidden else d + k, model.latent_dim)
    decoder = flops.mlp_forward_flops([model.latent_dim + k, *reversed(hidden), d])
    return encoder + flops.train_flops(heads, 0 if hidden else heads) + flops.train_flops(decoder)
