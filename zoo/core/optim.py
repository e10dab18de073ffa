"""Optimizers and learning-rate schedules from config, all optax."""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax

from zoo.core import settings
from zoo.core.settings import OptimizerSettings

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "lamb")
# The keys beside the learning rate that tune an optimizer, and which of them each one reads
# (make_optimizer): Adam given a weight decay would ignore it.
TUNED = ("b1", "b2", "eps", "momentum", "weight_decay")
READS = {"adam": {"b1", "b2", "eps"}, "adamw": {"b1", "b2", "eps", "weight_decay"},
         "sgd": {"momentum"}, "rmsprop": {"b2", "eps"},
         "lamb": {"b1", "b2", "eps", "weight_decay"}}
SCHEDULES = ("constant", "cosine", "warmup_cosine", "linear", "exponential", "piecewise")


def _settings(cfg) -> OptimizerSettings:
    return settings.parse(OptimizerSettings, cfg, "optimizer")


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
    """Learning-rate schedule from ``learning_rate`` and ``schedule``:

    * ``constant``, ``cosine`` / ``warmup_cosine`` (to ``end_factor * learning_rate`` at
      ``total_steps``), ``linear`` (likewise): after a linear warm-up of ``warmup_steps`` from 0.
    * ``exponential``: constant for ``decay_begin`` steps, then multiplied by ``decay_rate`` every
      ``transition_steps`` (staircase; Zaremba et al.'s per-epoch decay). The first decay is at
      ``decay_begin + transition_steps``.
    * ``piecewise``: multiplied by ``decay_rate`` at each of ``boundaries`` (increasing steps > 0;
      Burda et al.'s stages).

    The last two have no warm-up: a non-zero ``warmup_steps`` is refused there, since configs once
    used it for what is now ``decay_begin``. ``cfg``: :class:`zoo.core.settings.OptimizerSettings`
    or a mapping of its keys.
    """
    cfg = _settings(cfg)
    lr = float(cfg.learning_rate)
    name = cfg.schedule
    warmup = int(cfg.warmup_steps)
    end = lr * float(cfg.end_factor)
    steps = max(int(total_steps), 1)
    if warmup and name in ("exponential", "piecewise"):
        hint = " (the constant phase before its decay is optimizer.decay_begin)" \
            if name == "exponential" else ""
        raise ValueError(f"optimizer.warmup_steps={warmup}, but the {name} schedule has no "
                         f"warm-up; set it to 0{hint}")
    if name == "constant":
        sched = optax.constant_schedule(lr)
        return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), sched], [warmup]) \
            if warmup else sched
    if name in ("cosine", "warmup_cosine"):
        return optax.warmup_cosine_decay_schedule(0.0 if warmup else lr, lr, warmup,
                                                  max(steps, warmup + 1), end)
    if name == "linear":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), optax.linear_schedule(lr, end, steps - warmup)],
            [warmup])
    if name == "exponential":
        every = int(cfg.transition_steps or 0)
        if every <= 0:  # optax would silently keep the rate constant
            raise ValueError(f"optimizer.transition_steps={every}: the exponential schedule "
                             "multiplies the rate by optimizer.decay_rate every transition_steps "
                             "steps; set it > 0")
        return optax.exponential_decay(lr, every,
                                       float(cfg.decay_rate),
                                       transition_begin=int(cfg.decay_begin),
                                       staircase=True)
    if name == "piecewise":
        boundaries = [int(b) for b in cfg.boundaries]
        if not boundaries or boundaries != sorted(set(boundaries)) or boundaries[0] <= 0:
            raise ValueError(f"optimizer.boundaries={tuple(boundaries)} must be increasing steps "
                             "> 0 (the rate is multiplied by optimizer.decay_rate at each)")
        rate = float(cfg.decay_rate)
        return optax.piecewise_constant_schedule(lr, {b: rate for b in boundaries})
    raise ValueError(f"unknown learning-rate schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


def check_reads(cfg, where: str = "optimizer") -> None:
    """Refuses a key the chosen optimizer does not read, set away from its default (Adam given
    a weight decay would ignore it): checked when a run starts training (``zoo.build``), so a
    saved run that set one still evaluates."""
    cfg = _settings(cfg)
    for key in sorted(set(TUNED) - READS.get(cfg.name, set(TUNED))):
        if getattr(cfg, key) != getattr(OptimizerSettings, key):
            reads = ", ".join(sorted(READS[cfg.name]))
            raise ValueError(f"{where}.{key}={getattr(cfg, key)} does nothing with {cfg.name} "
                             f"(it reads {reads}); leave it unset"
                             + (", or choose adamw" if key == "weight_decay" else ""))


def make_optimizer(cfg, total_steps: int = 1, *,
                   trainable: Callable[[Any], Any] | None = None) -> optax.GradientTransformation:
    """An optax optimizer from config.

    Keys: name (adam, adamw, sgd, rmsprop, lamb), the schedule keys of :func:`make_schedule`,
    b1, b2, eps, momentum, weight_decay, grad_clip_norm (global-norm clipping; 0: off), as in
    :class:`zoo.core.settings.OptimizerSettings` (or a mapping of its keys).

    ``trainable(tree) -> a bool per leaf`` (None: all) freezes the rest: they get zero updates
    (``optax.multi_transform`` with ``set_to_zero``), and the optimizer keeps no state for them.
    """
    cfg = _settings(cfg)
    name = cfg.name
    lr = make_schedule(cfg, total_steps)
    b1, b2 = float(cfg.b1), float(cfg.b2)
    eps = float(cfg.eps)
    wd = float(cfg.weight_decay)
    if name == "adam":
        tx = optax.adam(lr, b1=b1, b2=b2, eps=eps)
    elif name == "adamw":
        tx = optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=wd)
    elif name == "sgd":
        momentum = cfg.momentum
        tx = optax.sgd(lr, momentum=float(momentum) if momentum else None)
    elif name == "rmsprop":
        tx = optax.rmsprop(lr, decay=b2, eps=eps)
    elif name == "lamb":
        tx = optax.lamb(lr, b1=b1, b2=b2, eps=eps, weight_decay=wd)
    else:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    clip = cfg.grad_clip_norm
    if clip:  # of the trained leaves' gradients only: the frozen ones' are never applied
        tx = optax.chain(optax.clip_by_global_norm(float(clip)), tx)
    if trainable is not None:
        labels = lambda tree: jax.tree.map(lambda t: "trained" if t else "frozen", trainable(tree))
        tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
    return tx
