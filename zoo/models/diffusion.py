"""Denoising diffusion (Ho et al. 2020) with a U-Net, DDIM sampling and classifier-free guidance.

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,   t ~ U{0..T-1},   eps ~ N(0, I)
    loss = || eps - eps_theta(x_t, t, y) ||^2          (mean over pixels: DDPM's L_simple)

or, with ``prediction="v"``, the same with v = sqrt(abar) eps - sqrt(1 - abar) x_0 as target.
Images are scaled from [0, 1] to [-1, 1]. The U-Net is DDPM's: residual blocks (GroupNorm, swish,
3x3 convolutions, the time embedding added between them), self-attention at the resolutions in
``attention_resolutions``, ``num_res_blocks`` blocks per level, skips concatenated on the way up.
With ``num_classes > 0`` a label embedding is added to the time embedding, and during training the
label is replaced by the null class (index ``num_classes``) with probability ``p_uncond``, so one
network is both p(x | y) and p(x): classifier-free guidance (Ho & Salimans 2021).

GroupNorm normalises each example on its own: the model has no state shared across the batch, so
every parallel strategy computes the same step. Schedules and samplers: :mod:`zoo.core.diffusion`.
Sample from the EMA of the weights (``train.ema_decay``), as DDPM does.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from zoo.core import diffusion as D
from zoo.core import settings
from zoo.core.family import Family
from zoo.core.step import Update

PLAYER = "model"
PREDICTIONS = ("eps", "v")

# Model sizes by name (--config.model.preset=NAME); keys the config sets win over the preset's.
PRESETS = {
    # A few seconds a step on a CPU: tests and smoke runs.
    "tiny": dict(channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(14,),
                 groups=8),
    # MNIST / Fashion-MNIST on a 2-core CPU: 28 -> 14 -> 7, attention at 7.
    "mnist": dict(channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                  attention_resolutions=(7,), groups=8),
    # DDPM's CIFAR-10 model (35.7M parameters): 32 -> 16 -> 8 -> 4, attention at 16.
    "ddpm_cifar10": dict(channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                         attention_resolutions=(16,), groups=32, dropout=0.1,
                         image_shape=(32, 32, 3)),
}


def timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
    """Sinusoidal embedding of integer steps (B,) -> (B, dim), as in the Transformer and DDPM."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10_000) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class ResBlock(nn.Module):
    """GroupNorm-swish-conv, + Dense(time embedding), GroupNorm-swish-dropout-conv, + skip."""

    features: int
    groups: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, emb, train: bool):
        h = nn.Conv(self.features, (3, 3), name="conv_0")(
            nn.swish(nn.GroupNorm(self.groups, name="norm_0")(x)))
        h = h + nn.Dense(self.features, name="time")(nn.swish(emb))[:, None, None, :]
        h = nn.swish(nn.GroupNorm(self.groups, name="norm_1")(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(self.features, (3, 3), name="conv_1",
                    kernel_init=nn.initializers.variance_scaling(1e-10, "fan_avg", "uniform"))(h)
        if x.shape[-1] != self.features:
            x = nn.Dense(self.features, name="skip")(x)  # DDPM's "nin_shortcut": a 1x1 conv
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of a feature map, with a residual."""

    groups: int

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        qkv = nn.Dense(3 * c, name="qkv")(nn.GroupNorm(self.groups, name="norm")(x))
        q, k, v = jnp.split(qkv.reshape(b, h * w, 1, 3 * c), 3, axis=-1)
        out = jax.nn.dot_product_attention(q, k, v).reshape(b, h, w, c)
        return x + nn.Dense(c, name="out",
                            kernel_init=nn.initializers.variance_scaling(1e-10, "fan_avg",
                                                                         "uniform"))(out)


class UNet(nn.Module):
    """eps_theta(x_t, t, y): images (B, H, W, C) in [-1, 1], steps (B,), labels (B,) or None."""

    image_shape: Sequence[int] = (28, 28, 1)
    channels: int = 32
    channel_mult: Sequence[int] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_resolutions: Sequence[int] = (7,)
    groups: int = 8
    dropout: float = 0.0
    num_classes: int = 0            # > 0: conditional, with a null class for guidance

    @nn.compact
    def __call__(self, x, t, labels=None, train: bool = False):
        emb = timestep_embedding(t, self.channels)
        emb = nn.Dense(4 * self.channels, name="time_0")(emb)
        emb = nn.Dense(4 * self.channels, name="time_1")(nn.swish(emb))
        if self.num_classes:
            emb = emb + nn.Embed(self.num_classes + 1, 4 * self.channels, name="label")(labels)
        res = lambda f, name: ResBlock(f, self.groups, self.dropout, name=name)
        attend = lambda h, name: (AttentionBlock(self.groups, name=name)(h)
                                  if h.shape[1] in self.attention_resolutions else h)
        h = nn.Conv(self.channels, (3, 3), name="stem")(x)
        skips = [h]
        for level, mult in enumerate(self.channel_mult):
            for i in range(self.num_res_blocks):
                h = attend(res(mult * self.channels, f"down_{level}_{i}")(h, emb, train),
                           f"down_{level}_{i}_attn")
                skips.append(h)
            if level < len(self.channel_mult) - 1:
                h = nn.Conv(h.shape[-1], (3, 3), strides=2, name=f"downsample_{level}")(h)
                skips.append(h)
        h = res(h.shape[-1], "mid_0")(h, emb, train)
        h = AttentionBlock(self.groups, name="mid_attn")(h)
        h = res(h.shape[-1], "mid_1")(h, emb, train)
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = attend(res(mult * self.channels, f"up_{level}_{i}")(h, emb, train),
                           f"up_{level}_{i}_attn")
            if level > 0:
                b, hh, ww, c = h.shape
                h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), "nearest")
                h = nn.Conv(c, (3, 3), name=f"upsample_{level}")(h)
        h = nn.swish(nn.GroupNorm(self.groups, name="out_norm")(h))
        return nn.Conv(self.image_shape[-1], (3, 3), name="out",
                       kernel_init=nn.initializers.variance_scaling(1e-10, "fan_avg",
                                                                    "uniform"))(h)


def model_settings(config) -> dict:
    """The U-Net's fields: the preset's (``preset``), then the config's own keys."""
    preset = config.get("preset", "") or ""
    if preset and preset not in PRESETS:
        raise ValueError(f"unknown diffusion preset {preset!r}; choose one of "
                         f"{', '.join(PRESETS)}")
    merged = {**PRESETS.get(preset, {}), **{k: v for k, v in config.items()
                                           if v is not None and v != ""}}
    return settings.module_fields(UNet, merged)


def make_model(config) -> UNet:
    """The U-Net of a model config; settings it cannot build are refused with what is allowed."""
    m = UNet(**model_settings(config))
    height, width, _ = m.image_shape
    down = 2 ** (len(m.channel_mult) - 1)
    if height % down or width % down:
        raise ValueError(f"the U-Net halves the image {len(m.channel_mult) - 1} times; image size "
                         f"{height}x{width} must be divisible by {down}")
    widths = [m.channels * k for k in m.channel_mult]
    if any(w % m.groups for w in widths):
        raise ValueError(f"GroupNorm groups={m.groups} must divide every level's channels "
                         f"{widths}")
    if m.num_classes < 0:
        raise ValueError(f"num_classes must be >= 0 (0: unconditional), got {m.num_classes}")
    return m


def objective_settings(config, num_classes: int) -> tuple[D.NoiseSchedule, str, float]:
    """``(noise schedule, prediction, p_uncond)`` of a model config, checked (defaults: the
    linear schedule over 1,000 steps, eps prediction, labels dropped 10% of the time in a
    conditional model)."""
    schedule = D.NoiseSchedule.make(config.get("schedule", "linear") or "linear",
                                    int(config.get("diffusion_steps", 1000) or 1000))
    prediction = config.get("prediction", "eps") or "eps"
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown diffusion prediction {prediction!r}; choose one of "
                         f"{', '.join(PREDICTIONS)}")
    p_uncond = float(config.get("p_uncond", 0.1) if num_classes else 0.0)
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond}")
    return schedule, prediction, p_uncond


def make_family(config) -> Family:
    """The diffusion family. Model config keys: preset (tiny, mnist, ddpm_cifar10), the U-Net's
    fields (image_shape, channels, channel_mult, num_res_blocks, attention_resolutions, groups,
    dropout, num_classes), schedule (linear, cosine), diffusion_steps (T, default 1000),
    prediction (eps, v), p_uncond (conditional models: how often the label is dropped, default
    0.1), and how it draws by default: sampling_steps (DDIM, 50), guidance (1: the conditional
    model). It draws images and denoises
    (``denoiser``: DDPM, DDIM, guidance, inpainting)."""
    model = make_model(config)
    schedule, prediction, p_uncond = objective_settings(config, model.num_classes)
    conditional = model.num_classes > 0
    T = schedule.num_steps

    def loss_terms(params, batch, rng, train):
        t_rng, noise_rng, drop_rng, label_rng = jax.random.split(rng, 4)
        x0 = batch["image"] * 2.0 - 1.0
        b = x0.shape[0]
        t = jax.random.randint(t_rng, (b,), 0, T)
        noise = jax.random.normal(noise_rng, x0.shape, x0.dtype)
        x_t = D.q_sample(schedule, x0, t, noise).astype(x0.dtype)
        labels = None
        if conditional:
            drop = jax.random.bernoulli(label_rng, p_uncond, (b,))
            labels = jnp.where(drop, model.num_classes, batch["label"])
        out = model.apply({"params": params[PLAYER]}, x_t, t, labels, train,
                          rngs={"dropout": drop_rng})
        target = noise if prediction == "eps" else D.v_target(schedule, x0, t, noise)
        loss = jnp.mean((out.astype(jnp.float32) - target.astype(jnp.float32)) ** 2)
        return loss, {"loss": loss}

    def loss_fn(params, model_state, batch, rng):
        loss, metrics = loss_terms(params, batch, rng, True)
        return loss, metrics, model_state

    def init(rng, batch):
        x = jnp.asarray(batch["image"][:1])
        y = jnp.zeros((1,), jnp.int32) if conditional else None
        params = model.init(rng, x, jnp.zeros((1,), jnp.int32), y)["params"]
        return {PLAYER: params}, {PLAYER: {}}

    def predict(params, model_state, x_t, t, labels):
        out = model.apply({"params": params}, x_t, t, labels if conditional else None)
        return out if prediction == "eps" else D.eps_from_v(schedule, x_t, t, out)

    spec = {"image": jax.ShapeDtypeStruct(tuple(model.image_shape), jnp.float32)}
    if conditional:
        spec["label"] = jax.ShapeDtypeStruct((), jnp.int32)
    denoiser = D.Denoiser(player=PLAYER, image_shape=tuple(model.image_shape),
                        num_classes=model.num_classes, schedule=schedule, predict=predict,
                        sampling_steps=int(config.get("sampling_steps", 50) or 50),
                        guidance=float(config.get("guidance", 1.0)))
    # Checked now, not at the first evaluation's samples after training.
    if not 1 <= denoiser.sampling_steps <= T:
        raise ValueError(f"model.sampling_steps={denoiser.sampling_steps} must be between 1 and "
                         f"model.diffusion_steps={T}")
    if denoiser.guidance != 1.0 and not conditional:
        raise ValueError(f"model.guidance={denoiser.guidance} needs a class-conditional model "
                         "(model.num_classes > 0)")
    return Family(name="diffusion", modules={PLAYER: model}, init=init,
                  objective=(Update(PLAYER, loss_fn),),
                  eval_metrics=lambda p, s, batch, rng: loss_terms(p, batch, rng, False)[1],
                  batch_spec=spec, num_classes=model.num_classes, flops_per_example=None,
                  image_sampler=denoiser.image_sampler(), denoiser=denoiser)


def param_count_of(config) -> int:
    """Parameters of the U-Net a model config builds (shapes only, nothing is computed)."""
    model = make_model(config)
    x = jnp.zeros((1, *model.image_shape))
    y = jnp.zeros((1,), jnp.int32) if model.num_classes else None
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x,
                                               jnp.zeros((1,), jnp.int32), y))
    return int(sum(np.prod(s.shape) for s in jax.tree.leaves(shapes["params"])))
