"""Parameters by path: what ``train.init_reinit``, ``optimizer.freeze`` and ``model.lora_targets``
match.

A parameter's path is its player and its keys joined by ``/``, as in
``model/h_0/attn/c_attn/kernel`` or ``generator/Dense_0/bias``; a pattern (a Python regex) selects
the paths where ``re.search`` finds it, so ``attn/c_attn`` picks that projection in every block and
``^model/wte/`` only the token embedding.
"""

from __future__ import annotations

import re
from typing import Any

import jax

from zoo.core import lora

PyTree = Any


def key_name(key) -> str:
    """One step of a jax key path as it appears in a parameter path."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_of(keypath, prefix: str = "") -> str:
    """``prefix/k1/k2/...`` for a jax key path."""
    return "/".join([prefix] * bool(prefix) + [key_name(k) for k in keypath])


def flatten(tree: PyTree, prefix: str = "") -> dict[str, Any]:
    """``{path: leaf}`` of a params tree (``prefix``: the player, or "" for a tree keyed by
    player)."""
    return {path_of(p, prefix): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def compile_pattern(pattern: str, where: str) -> re.Pattern:
    """``re.compile(pattern)``, or a ValueError naming the setting (``where``) it came from."""
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{where}={pattern!r} is not a valid regular expression ({e}); it is "
                         "searched for in parameter paths such as model/h_0/attn/c_attn/kernel"
                         ) from None


def trainable_mask(params: PyTree, freeze: str = "", prefix: str = "") -> PyTree:
    """A bool per leaf of one player's ``params``: False where ``freeze`` (a pattern, "" for none)
    matches the path, and, in a tree holding LoRA adapters (:mod:`zoo.core.lora`), everywhere
    but the adapters: LoRA trains only them."""
    frozen = compile_pattern(freeze, "optimizer.freeze").search if freeze else (lambda _: False)
    adapters_only = lora.has_adapters(params)

    def trainable(keypath, _):
        if frozen(path_of(keypath, prefix)):
            return False
        return lora.is_adapter(keypath) or not adapters_only

    return jax.tree_util.tree_map_with_path(trainable, params)


def count(params: PyTree, mask: PyTree | None = None) -> int:
    """Scalars in ``params``; with ``mask`` (a bool per leaf), in the leaves it marks."""
    leaves = jax.tree.leaves(params)
    keep = jax.tree.leaves(mask) if mask is not None else [True] * len(leaves)
    return sum(int(x.size) for x, k in zip(leaves, keep) if k)
