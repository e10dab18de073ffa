"""Optimizers and learning-rate schedules from config, all optax."""

from __future__ import annotations

from typing import Any, Mapping

import optax

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "lamb")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "linear", "exponential", "piecewise")


def _get(cfg: Mapping[str, Any] | Any, key: str, default: Any) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default) if hasattr(cfg, key) else default


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
    """Learning-rate schedule. Keys: learning_rate, schedule, warmup_steps, end_factor, decay_rate,
    transition_steps, boundaries (``piecewise``: the rate is multiplied by decay_rate at each)."""
    lr = float(_get(cfg, "learning_rate", 1e-3))
    name = _get(cfg, "schedule", "constant")
    warmup = int(_get(cfg, "warmup_steps", 0))
    end = lr * float(_get(cfg, "end_factor", 0.0))
    steps = max(int(total_steps), 1)
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
        # Zaremba-style: constant, then decays by decay_rate every transition_steps.
        return optax.exponential_decay(lr, int(_get(cfg, "transition_steps", steps)),
                                       float(_get(cfg, "decay_rate", 0.5)),
                                       transition_begin=warmup, staircase=True)
    if name == "piecewise":
        # Burda et al. (2016)-style: multiplied by decay_rate at each boundary step.
        boundaries = [int(b) for b in _get(cfg, "boundaries", ())]
        rate = float(_get(cfg, "decay_rate", 0.5))
        return optax.piecewise_constant_schedule(lr, {b: rate for b in boundaries})
    raise ValueError(f"unknown learning-rate schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


def make_optimizer(cfg, total_steps: int = 1) -> optax.GradientTransformation:
    """An optax optimizer from config.

    Keys: name (adam, adamw, sgd, rmsprop, lamb), the schedule keys of :func:`make_schedule`,
    b1, b2, eps, momentum, weight_decay, grad_clip_norm (global-norm clipping; 0 or None: off).
    """
    name = _get(cfg, "name", "adam")
    lr = make_schedule(cfg, total_steps)
    b1, b2 = float(_get(cfg, "b1", 0.9)), float(_get(cfg, "b2", 0.999))
    eps = float(_get(cfg, "eps", 1e-8))
    wd = float(_get(cfg, "weight_decay", 0.0))
    if name == "adam":
        tx = optax.adam(lr, b1=b1, b2=b2, eps=eps)
    elif name == "adamw":
        tx = optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=wd)
    elif name == "sgd":
        momentum = _get(cfg, "momentum", None)
        tx = optax.sgd(lr, momentum=float(momentum) if momentum else None)
    elif name == "rmsprop":
        tx = optax.rmsprop(lr, decay=b2, eps=eps)
    elif name == "lamb":
        tx = optax.lamb(lr, b1=b1, b2=b2, eps=eps, weight_decay=wd)
    else:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    clip = _get(cfg, "grad_clip_norm", None)
    if clip:
        tx = optax.chain(optax.clip_by_global_norm(float(clip)), tx)
    return tx
