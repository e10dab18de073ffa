"""What a model family hands the shared training machinery."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

from zoo.core.step import Update
from zoo.core.train_state import PyTree


@dataclasses.dataclass(frozen=True)
class Family:
    """A model family's objective and everything the shared loop needs to train it.

    Attributes:
      name: the family's registry name (``autoencoder``, ``vae``, ...).
      modules: the linen modules by player; ``apply`` them for encode/decode/sample.
      init: ``init(rng, batch) -> (params, model_state)``, each a dict keyed by player.
      objective: the :class:`zoo.core.step.Update` s one train step applies, in order.
      eval_metrics: ``(params, model_state, batch, rng) -> metrics`` (dicts keyed by player), or
        ``-> (metrics, new_model_state)`` for an evaluation that carries per-example state.
      batch_spec: the batch the family trains on, without the batch dimension.
      flops_per_example: forward+backward FLOPs of one training example (for MFU); None: unknown.
      sample_fn: ``sample_fn(params, model_state, rng, out_dir, step)`` writes samples (images or
        text) at each evaluation; None: the family writes none.
    """

    name: str
    modules: dict[str, Any]
    init: Callable[[jax.Array, PyTree], tuple[dict, dict]]
    objective: tuple[Update, ...]
    eval_metrics: Callable
    batch_spec: PyTree
    flops_per_example: float | None = None
    sample_fn: Callable | None = None
