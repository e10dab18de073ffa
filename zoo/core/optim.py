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
    """Learning-rate schedule from ``learning_rate`` and ``schedule``:

    * ``constant``, ``cosine`` / ``warmup_cosine`` (to ``end_factor * learning_rate`` at
      ``total_steps``), ``linear`` (likewise): after a linear warm-up of ``warmup_steps`` from 0.
    * ``exponential``: constant for ``decay_begin`` steps, then multiplied by ``decay_rate`` every
      ``transition_steps`` (staircase; Zaremba et al.'s per-epoch decay). The first decay is at
      ``decay_begin + transition_steps``.
    * ``piecewise``: multiplied by ``decay_rate`` at each of ``boundaries`` (increasing steps > 0;
      Burda et al.'s stages).

    The last two have no warm-up: a non-zero ``warmup_steps`` is refused there, since configs once
    used it for what is now ``decay_begin``.
    """
    lr = float(_get(cfg, "learning_rate", 1e-3))
    name = _get(cfg, "schedule", "constant")
    warmup = int(_get(cfg, "warmup_steps", 0))
    end = lr * float(_get(cfg, "end_factor", 0.0))
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
        every = int(_get(cfg, "transition_steps", 0) or 0)
        if every <= 0:  # optax would silently keep the rate constant
            raise ValueError(f"optimizer.transition_steps={every}: the exponential schedule "
                             "multiplies the rate by optimizer.decay_rate every transition_steps "
                             "steps; set it > 0")
        return optax.exponential_decay(lr, every,
                                       float(_get(cfg, "decay_rate", 0.5)),
                                       transition_begin=int(_get(cfg, "decay_begin", 0)),
                                       staircase=True)
    if name == "piecewise":
        boundaries = [int(b) for b in _get(cfg, "boundaries", ())]
        if not boundaries or boundaries != sorted(set(boundaries)) or boundaries[0] <= 0:
            raise ValueError(f"optimizer.boundaries={tuple(boundaries)} must be increasing steps "
                             "> 0 (the rate is multiplied by optimizer.decay_rate at each)")
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
