"""The one table of floating-point types zoo's configs name (``float32``, ``bfloat16``, ...)."""

from __future__ import annotations

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype(name: str, what: str = "dtype") -> type[jnp.generic]:
    """The jnp dtype called ``name``; ``what`` names the setting in the error (``model.dtype``)."""
    if name not in DTYPES:
        raise ValueError(f"unknown {what} {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def compute_dtype(name: str | None) -> type[jnp.generic] | None:
    """A train step's compute dtype: None for float32 (no casting), else the dtype."""
    if not name or name == "float32":
        return None
    return dtype(name, "compute dtype")
