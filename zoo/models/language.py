"""What zoo's language-model families share: the next-token loss and the units it is counted in."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

UNITS = ("char", "word", "token")


def lm_metrics(logits: jax.Array, targets: jax.Array, unit: str) -> tuple[jax.Array, dict]:
    """Mean next-token cross-entropy (nats), with perplexity (words) or bits per character."""
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), targets))
    metrics = {"loss": loss}
    if unit == "char":
        metrics["bits_per_char"] = loss / jnp.log(2.0)
    else:
        metrics["perplexity"] = jnp.exp(loss)
    return loss, metrics


def check_unit(unit: str) -> str:
    if unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r}; choose one of {', '.join(UNITS)}")
    return unit
