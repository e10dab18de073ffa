"""What zoo's language-model families share: the next-token loss and the units it is counted in."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

UNITS = ("char", "word", "token")

# The metrics that are functions of a mean loss in nats. A split's value is the function of the
# split's mean loss, not the mean of its batches' values (zoo.evaluate recomputes them). On the
# host (a float) they compute in float64, in a step in its arrays' dtype.
LOSS_DERIVED_METRICS = {
    "perplexity": lambda nats: jnp.exp(nats) if isinstance(nats, jax.Array) else np.exp(nats),
    "bits_per_char": lambda nats: nats / math.log(2.0)}


def loss_derived_metric(unit: str) -> str:
    """The metric a mean loss over ``unit`` s is reported as: bits per character for characters,
    perplexity for words and tokens."""
    return "bits_per_char" if unit == "char" else "perplexity"


def lm_metrics(logits: jax.Array, targets: jax.Array, unit: str) -> tuple[jax.Array, dict]:
    """Mean next-token cross-entropy (nats), with perplexity (words) or bits per character."""
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), targets))
    name = loss_derived_metric(unit)
    return loss, {"loss": loss, name: LOSS_DERIVED_METRICS[name](loss)}


def check_unit(unit: str) -> str:
    """``unit`` if it is one of :data:`UNITS`, else a ValueError naming them."""
    if unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r}; choose one of {', '.join(UNITS)}")
    return unit
