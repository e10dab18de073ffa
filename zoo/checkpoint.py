"""Checkpoints with orbax-checkpoint's CheckpointManager.

A checkpoint holds the train state (in its unreplicated, global form, so it restores under any
strategy and device count), the data iterator's position and the run's config. Saves are async and
atomic (orbax writes a temporary directory and renames it when complete), so a crash or kill leaves
the last finished checkpoint whole. The manager keeps the last N checkpoints and the best by an eval
metric. If the newest checkpoint cannot be read, restore says so and falls back to the one before.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from zoo.core import parallel
from zoo.core.train_state import TrainState

_STATE_KEYS = ("step", "params", "opt_state", "model_state", "rng")


def _state_dict(state: TrainState) -> dict[str, Any]:
    return {k: getattr(state, k) for k in _STATE_KEYS}


class CheckpointError(RuntimeError):
    """No checkpoint in a directory could be restored."""


class Checkpointer:
    """Saves and restores a run's state, data position and config under ``directory``.

    Args:
      directory: where step directories go (created if missing).
      max_to_keep: how many of the latest checkpoints to keep.
      best_metric: an eval metric name; the best checkpoint by it is kept too (None: off).
      best_mode: ``"min"`` or ``"max"``: which way the metric is better.
      async_save: save in the background (orbax's async checkpointing).
    """

    def __init__(self, directory: str | Path, *, max_to_keep: int = 3,
                 best_metric: str | None = None, best_mode: str = "min", async_save: bool = True):
        if best_mode not in ("min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
        self.directory = Path(directory).absolute()
        policies = [ocp.checkpoint_managers.LatestN(n=max_to_keep)]
        if best_metric:
            sign = 1.0 if best_mode == "max" else -1.0
            # BestN keeps the n highest by get_metric_fn; checkpoints saved without metrics (on
            # preemption, say) are kept by LatestN alone.
            policies.append(ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda m: sign * float(m[best_metric]), n=1,
                keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=async_save, create=True,
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies))
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: TrainState, strategy: parallel.Strategy, *,
             data_state: dict | None = None, config: dict | None = None,
             metrics: dict[str, float] | None = None) -> None:
        """Starts saving ``state`` at ``step`` (async); :meth:`wait` blocks until it is on disk."""
        canonical = strategy.canonical_state(state)
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(_state_dict(canonical)),
            extra=ocp.args.JsonSave({"data": data_state or {}, "config": config or {}})),
            metrics=metrics, force=True)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def restore(self, template: TrainState, strategy: parallel.Strategy, step: int | None = None,
                log: Callable[[str], None] = logging.warning) -> tuple[TrainState, dict, int]:
        """Restores a checkpoint into ``strategy``'s placement.

        ``template`` is a freshly built (host) state of the same model: it gives the tree structure,
        shapes, dtypes and the static optimizers. With ``step=None`` the newest checkpoint is tried
        first, then older ones if it cannot be read (each failure is reported through ``log``).
        Returns ``(state, extra, step)`` where ``extra`` holds ``data`` and ``config``.
        """
        steps = [step] if step is not None else list(reversed(self.all_steps()))
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        shardings = strategy.restore_shardings(template)
        abstract = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(np.shape(x), np.result_type(x), sharding=s),
            _state_dict(template), _state_dict(shardings))
        errors = []
        for s in steps:
            try:
                restored = self.manager.restore(s, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), extra=ocp.args.JsonRestore()))
            except Exception as e:  # noqa: BLE001 -- any unreadable checkpoint: try the previous
                errors.append(f"step {s}: {type(e).__name__}: {str(e)[:300]}")
                log(f"checkpoint at step {s} in {self.directory} cannot be restored "
                    f"({type(e).__name__}); trying the previous one")
                continue
            state = template.replace(**restored.state)
            if int(np.asarray(jax.device_get(state.step))) != s:
                errors.append(f"step {s}: holds step {int(state.step)}")
                continue
            return strategy.place_state(state), dict(restored.extra), s
        raise CheckpointError(f"no checkpoint in {self.directory} could be restored:\n  "
                              + "\n  ".join(errors))
