"""Gaussian diffusion: noise schedules, the forward process and the samplers, for any denoiser.

    q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I),   abar_t = prod_{s<=t} (1 - beta_s)

t runs 0..T-1 (t = 0 is the first noising step). A denoiser is ``predict(x_t, t, labels) -> eps``
(the noise in x_t; a v-predicting network is converted with :func:`eps_from_v`). The samplers:

* :func:`ddpm_sample`: ancestral sampling over all T steps with the posterior
  q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eq. 6-7; variance beta-tilde);
* :func:`ddim_sample`: DDIM (Song et al. 2021, eq. 12) over any ``steps`` of the T, with eta from
  0 (deterministic: the same noise gives the same image) to 1 (as stochastic as DDPM);
* :func:`inpaint`: RePaint (Lugmayr et al. 2022): each step the known pixels are replaced by the
  forward-noised original, optionally resampled ``resample`` times; the result's known pixels are
  the input's.

Each is a ``lax.scan`` over its step sequence, so under ``jax.jit`` it compiles once per step
count. Images live in [-1, 1]; the predicted x_0 is clipped to it (as DDPM's sampler does).
Classifier-free guidance (Ho & Salimans 2021) is :func:`guided`:
eps = eps(x, null) + w (eps(x, y) - eps(x, null)), so w = 0 is the unconditional model, w = 1 the
conditional one, w > 1 guided beyond it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zoo.core.family import ImageSampler

SCHEDULES = ("linear", "cosine")
Predict = Callable[[jax.Array, jax.Array, jax.Array | None], jax.Array]


@dataclasses.dataclass(frozen=True)
class NoiseSchedule:
    """beta_t and the products the samplers use, float64 numpy arrays of length T."""

    betas: np.ndarray

    @classmethod
    def make(cls, name: str, steps: int, beta_start: float = 1e-4,
             beta_end: float = 0.02) -> "NoiseSchedule":
        """``linear``: beta from 1e-4 to 0.02 (DDPM, for T = 1000; scaled by 1000/T otherwise);
        ``cosine``: abar_t = cos^2(((t/T + s) / (1 + s)) pi/2), s = 0.008, betas capped at
        0.999 (Nichol & Dhariwal 2021, eq. 17)."""
        if steps < 2:
            raise ValueError(f"a noise schedule needs at least 2 steps, got {steps}")
        if name == "linear":
            scale = 1000 / steps
            betas = np.linspace(scale * beta_start, scale * beta_end, steps, dtype=np.float64)
        elif name == "cosine":
            s = 0.008
            f = lambda t: np.cos((t / steps + s) / (1 + s) * math.pi / 2) ** 2
            t = np.arange(steps + 1, dtype=np.float64)
            betas = np.clip(1 - f(t[1:]) / f(t[:-1]), 0.0, 0.999)
        else:
            raise ValueError(f"unknown noise schedule {name!r}; choose one of "
                             f"{', '.join(SCHEDULES)}")
        return cls(betas)

    @property
    def num_steps(self) -> int:
        return len(self.betas)

    @property
    def alpha_bars(self) -> np.ndarray:
        return np.cumprod(1.0 - self.betas)

    def at(self, values: np.ndarray, t: jax.Array, ndim: int) -> jax.Array:
        """``values[t]`` as float32, shaped to broadcast over a batch of ``ndim``-d images."""
        v = jnp.asarray(values, jnp.float32)[t]
        return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def q_sample(schedule: NoiseSchedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise, for a batch of steps ``t`` (B,)."""
    abar = schedule.at(schedule.alpha_bars, t, x0.ndim)
    return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise


def v_target(schedule: NoiseSchedule, x0, t, noise):
    """v = sqrt(abar) noise - sqrt(1 - abar) x_0 (Salimans & Ho 2022), the v-prediction target."""
    abar = schedule.at(schedule.alpha_bars, t, x0.ndim)
    return jnp.sqrt(abar) * noise - jnp.sqrt(1.0 - abar) * x0


def eps_from_v(schedule: NoiseSchedule, x_t, t, v):
    """The noise a v-prediction implies: eps = sqrt(1 - abar) x_t + sqrt(abar) v."""
    abar = schedule.at(schedule.alpha_bars, t, x_t.ndim)
    return jnp.sqrt(1.0 - abar) * x_t + jnp.sqrt(abar) * v


def guided(predict: Predict, null_label: int, guidance: float) -> Predict:
    """Classifier-free guidance: eps(x, null) + w (eps(x, y) - eps(x, null)), one network call
    on the conditional and unconditional halves of a doubled batch."""
    def guided_predict(x, t, labels):
        both = predict(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                       jnp.concatenate([labels, jnp.full_like(labels, null_label)]))
        cond, uncond = jnp.split(both, 2)
        return uncond + guidance * (cond - uncond)
    return guided_predict


def _x0_and_eps(schedule, predict, x, t, labels):
    """The clipped x_0 estimate and the noise consistent with it."""
    abar = schedule.at(schedule.alpha_bars, t, x.ndim)
    eps = predict(x, t, labels).astype(jnp.float32)
    x0 = jnp.clip((x - jnp.sqrt(1 - abar) * eps) / jnp.sqrt(abar), -1.0, 1.0)
    return x0, (x - jnp.sqrt(abar) * x0) / jnp.sqrt(1 - abar)


def timesteps(schedule: NoiseSchedule, steps: int) -> np.ndarray:
    """``steps`` steps of T, evenly spaced from T - 1 down to 0 (DDIM's sub-sequence tau)."""
    if not 1 <= steps <= schedule.num_steps:
        raise ValueError(f"sampling steps must be between 1 and the schedule's "
                         f"{schedule.num_steps}; got {steps}")
    return np.unique(np.round(np.linspace(0, schedule.num_steps - 1, steps)).astype(np.int32))[::-1]


def _pairs(schedule, steps):
    """(t, t_prev) for each step, t_prev = -1 at the end (abar_{-1} = 1: the clean image)."""
    ts = timesteps(schedule, steps)
    return jnp.asarray(ts), jnp.asarray(np.append(ts[1:], -1).astype(np.int32))


def _abar(schedule, t, ndim):
    """abar_t with abar_{-1} = 1."""
    values = np.append(schedule.alpha_bars, 1.0)  # index -1 reads the appended 1
    return schedule.at(values, t, ndim)


def ddim_step(schedule, predict, x, t, t_prev, labels, eta, noise):
    """One DDIM update x_t -> x_{t_prev} (Song et al. 2021, eq. 12)."""
    b = x.shape[0]
    x0, eps = _x0_and_eps(schedule, predict, x, jnp.full((b,), t), labels)
    abar, abar_prev = _abar(schedule, t, x.ndim), _abar(schedule, t_prev, x.ndim)
    sigma = eta * jnp.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))
    direction = jnp.sqrt(jnp.maximum(1 - abar_prev - sigma ** 2, 0.0)) * eps
    return jnp.sqrt(abar_prev) * x0 + direction + sigma * noise


def ddim_sample(schedule: NoiseSchedule, predict: Predict, x_T: jax.Array, labels, rng,
                *, steps: int, eta: float = 0.0, return_path: bool = False):
    """DDIM from noise ``x_T`` over ``steps`` steps; eta = 0 uses no rng (deterministic).
    ``return_path``: also x after each step, (steps, *x_T.shape) (pictures of denoising)."""
    ts, prevs = _pairs(schedule, steps)

    def body(x, xs):
        t, t_prev, key = xs
        x = ddim_step(schedule, predict, x, t, t_prev, labels, eta,
                      jax.random.normal(key, x.shape))
        return x, x if return_path else None

    x, path = lax.scan(body, x_T, (ts, prevs, jax.random.split(rng, len(ts))))
    return (x, path) if return_path else x


def ddpm_sample(schedule: NoiseSchedule, predict: Predict, x_T: jax.Array, labels, rng
                ) -> jax.Array:
    """Ancestral sampling over all T steps: x_{t-1} ~ q(x_{t-1} | x_t, x_0 = the clipped
    estimate), mean (Ho et al. eq. 7) sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0 +
    sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t, variance beta-tilde_t; no noise at t = 0."""
    betas = schedule.betas
    abar = schedule.alpha_bars
    abar_prev = np.append(1.0, abar[:-1])
    coef_x0 = np.sqrt(abar_prev) * betas / (1 - abar)
    coef_xt = np.sqrt(1 - betas) * (1 - abar_prev) / (1 - abar)
    std = np.sqrt(betas * (1 - abar_prev) / (1 - abar))
    b = x_T.shape[0]

    def body(x, xs):
        t, key = xs
        x0, _ = _x0_and_eps(schedule, predict, x, jnp.full((b,), t), labels)
        at = lambda v: schedule.at(v, t, x.ndim)
        mean = at(coef_x0) * x0 + at(coef_xt) * x
        return mean + at(std) * jax.random.normal(key, x.shape), None

    ts = jnp.arange(schedule.num_steps - 1, -1, -1, dtype=jnp.int32)
    x, _ = lax.scan(body, x_T, (ts, jax.random.split(rng, len(ts))))
    return x


def inpaint(schedule: NoiseSchedule, predict: Predict, images: jax.Array, known: jax.Array,
            labels, rng, *, steps: int, eta: float = 1.0, resample: int = 1) -> jax.Array:
    """RePaint over ``steps`` DDIM steps: ``images`` (B, H, W, C) in [-1, 1], ``known`` (B, H, W,
    1 or C) 1 where the pixel is given. At each step t -> t_prev the unknown part is the
    sampler's update and the known part q(x_{t_prev} | x_0); with ``resample`` r > 1 the merged
    x_{t_prev} is noised back to x_t and the step redone, r times in all, so the generated part
    agrees with the known part (Lugmayr et al. 2022, jump length 1). Known pixels of the result
    equal ``images``."""
    ts, prevs = _pairs(schedule, steps)
    known = jnp.broadcast_to(known.astype(images.dtype), images.shape)
    merge = lambda generated, given: known * given + (1 - known) * generated

    def step(x, t, t_prev, key):
        k_step, k_known, k_back = jax.random.split(key, 3)
        x_prev = ddim_step(schedule, predict, x, t, t_prev, labels, eta,
                           jax.random.normal(k_step, x.shape))
        abar_prev = _abar(schedule, t_prev, x.ndim)
        given = (jnp.sqrt(abar_prev) * images
                 + jnp.sqrt(1 - abar_prev) * jax.random.normal(k_known, x.shape))
        return merge(x_prev, given), k_back

    def body(x, xs):
        t, t_prev, key = xs

        def again(i, carry):
            x, key = carry
            x_prev, k_back = step(x, t, t_prev, jax.random.fold_in(key, i))
            ratio = _abar(schedule, t, x.ndim) / _abar(schedule, t_prev, x.ndim)
            back = jnp.sqrt(ratio) * x_prev + jnp.sqrt(1 - ratio) * jax.random.normal(
                k_back, x.shape)
            return back, key

        x, _ = lax.fori_loop(0, resample - 1, again, (x, key))
        x_prev, _ = step(x, t, t_prev, jax.random.fold_in(key, resample))
        return x_prev, None

    start, loop = jax.random.split(rng)
    x_T = jax.random.normal(start, images.shape)
    x, _ = lax.scan(body, x_T, (ts, prevs, jax.random.split(loop, len(ts))))
    return merge(x, images)  # at t_prev = -1 the known part is the image itself


DEFAULT_SAMPLER = "ddim"
SAMPLERS = (DEFAULT_SAMPLER, "ddpm")


@dataclasses.dataclass(frozen=True)
class Denoiser:
    """What a diffusion family hands the samplers (its ``Family.denoiser``).

    Attributes:
      player: whose params (and model state) denoise.
      image_shape: (H, W, C) of one image.
      num_classes: classes it is conditioned on (0: unconditional); label ``num_classes`` is the
        null label classifier-free guidance uses.
      schedule: its :class:`NoiseSchedule`.
      predict: ``predict(params, model_state, x_t, t, labels) -> eps`` (the player's params).
      sampling_steps, guidance: what :meth:`image_sampler` uses when not told (the family's
        defaults: :func:`zoo.models.diffusion.make_family`).
    """

    player: str
    image_shape: tuple[int, ...]
    num_classes: int
    schedule: NoiseSchedule
    predict: Callable
    sampling_steps: int
    guidance: float

    def check(self, sampler: str, steps: int | None, guidance: float | None) -> None:
        """Refuses sampling options this denoiser cannot take, naming what it can."""
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if sampler == "ddpm" and steps not in (None, self.schedule.num_steps):
            raise ValueError(f"the ddpm sampler runs all {self.schedule.num_steps} steps; for "
                             f"{steps} steps use --sampler ddim")
        if steps is not None:
            timesteps(self.schedule, steps)
        if guidance is not None and not self.num_classes and guidance != 1.0:
            raise ValueError("guidance needs a class-conditional model; this one is "
                             "unconditional")

    def predict_fn(self, params, model_state, guidance: float | None = None) -> Predict:
        """eps(x, t, y) with ``params``, guided by ``guidance`` (conditional models)."""
        predict = lambda x, t, y: self.predict(params, model_state, x, t, y)
        w = self.guidance if guidance is None else guidance
        if self.num_classes and w == 0.0:  # the unconditional model: one pass, not two
            return lambda x, t, y: predict(x, t, jnp.full_like(y, self.num_classes))
        if self.num_classes and w != 1.0:
            return guided(predict, self.num_classes, w)
        return predict

    def sample(self, params, model_state, noise, labels, rng, *,
               sampler: str = DEFAULT_SAMPLER, steps: int | None = None, eta: float = 0.0,
               guidance: float | None = None) -> jax.Array:
        """Images in [0, 1] from ``noise`` (N, H, W, C) (and labels (N,)); jittable."""
        predict = self.predict_fn(params, model_state, guidance)
        if sampler == "ddpm":
            x = ddpm_sample(self.schedule, predict, noise, labels, rng)
        else:
            x = ddim_sample(self.schedule, predict, noise, labels, rng,
                            steps=steps or self.sampling_steps, eta=eta)
        return (jnp.clip(x, -1.0, 1.0) + 1.0) / 2.0

    def denoising_path(self, params, model_state, noise, labels, *, steps: int | None = None,
                       guidance: float | None = None) -> jax.Array:
        """DDIM (eta 0) from ``noise``: x_T, then x after each step, in [0, 1], shape
        (steps + 1, N, H, W, C) (the steps: :func:`timesteps`); jittable."""
        steps = steps or self.sampling_steps
        _, path = ddim_sample(self.schedule, self.predict_fn(params, model_state, guidance),
                              noise, labels, jax.random.PRNGKey(0), steps=steps,
                              return_path=True)
        path = jnp.concatenate([noise[None], path])
        return (jnp.clip(path, -1.0, 1.0) + 1.0) / 2.0

    def image_sampler(self, sampler: str = DEFAULT_SAMPLER, steps: int | None = None,
                      eta: float = 0.0, guidance: float | None = None) -> ImageSampler:
        """An :class:`zoo.core.family.ImageSampler` drawing with these options: its latent is the
        flattened starting noise x_T (interpolated by slerp); a stochastic sampler's own noise
        is seeded from x_T, so a latent always gives the same image."""
        self.check(sampler, steps, guidance)
        steps = self.schedule.num_steps if sampler == "ddpm" else steps or self.sampling_steps

        def decode(params, model_state, z, labels):
            noise = z.reshape(z.shape[0], *self.image_shape)
            seed = lax.bitcast_convert_type(z.reshape(-1)[:2].astype(jnp.float32), jnp.uint32)
            rng = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(0), seed[0]), seed[1])
            return self.sample(params, model_state, noise, labels, rng, sampler=sampler,
                               steps=steps, eta=eta, guidance=guidance)

        w = self.guidance if guidance is None else guidance
        title = f"diffusion ({sampler}, {steps} steps" + (
            f", guidance {w:g})" if self.num_classes else ")")
        return ImageSampler(player=self.player, latent_dim=int(np.prod(self.image_shape)),
                            num_classes=self.num_classes, decode=decode, title=title,
                            latent_name="starting noise", interpolation="slerp")
