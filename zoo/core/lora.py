"""LoRA (Hu et al. 2021) for any linen ``Dense``, as a reparametrisation of a params tree.

A targeted Dense kernel ``W`` (in, out) gets two adapters beside it in its own params dict,
``lora_a`` (in, r) and ``lora_b`` (r, out), and the layer computes with
``W + (alpha / r) * lora_a @ lora_b``. ``lora_a`` starts random (uniform in +-1/sqrt(in), as
peft does), ``lora_b`` at zero, so at step 0 the model is exactly the base model. Only the
adapters train (:func:`zoo.core.params.trainable_mask`); the base kernel is held by
``stop_gradient`` inside the merge, so its gradient is not even computed.

Nothing in a model changes: :func:`adapt_family` wraps a family so its losses see merged params,
and :func:`merge` turns a tree with adapters into plain weights (for export, sampling and every
reader of a trained run).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp

ADAPTERS = ("lora_a", "lora_b")
PyTree = Any


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    """``model.lora_rank`` (0: no LoRA), ``model.lora_alpha`` (0: the rank, a scale of 1) and
    ``model.lora_targets`` (a regex of Dense kernel paths, e.g. ``attn/c_attn``; "": every
    Dense kernel)."""

    rank: int = 0
    alpha: float = 0.0
    targets: str = ""

    KEYS = ("lora_rank", "lora_alpha", "lora_targets")

    @classmethod
    def from_model_config(cls, model_config: Mapping) -> "LoraSettings":
        get = lambda key, default: model_config.get(key, None) or default
        rank, alpha = get("lora_rank", 0), get("lora_alpha", 0.0)
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
            raise ValueError(f"model.lora_rank={rank!r} must be an integer >= 0 (0: no LoRA)")
        if not isinstance(alpha, (int, float)) or alpha < 0:
            raise ValueError(f"model.lora_alpha={alpha!r} must be a number >= 0 (0: the rank)")
        targets = str(get("lora_targets", ""))
        try:
            re.compile(targets)
        except re.error as e:
            raise ValueError(f"model.lora_targets={targets!r} is not a valid regular expression "
                             f"({e})") from None
        return cls(rank, float(alpha or rank), targets)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def is_adapter(keypath) -> bool:
    """Whether a params key path (``jax.tree_util`` 's) ends in a LoRA adapter matrix."""
    last = keypath[-1] if keypath else None
    return getattr(last, "key", None) in ADAPTERS


def has_adapters(tree: PyTree) -> bool:
    """Whether ``tree`` (params) holds any LoRA adapter."""
    return any(is_adapter(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0])


def _is_dense(node) -> bool:
    return (isinstance(node, Mapping) and "kernel" in node
            and getattr(node["kernel"], "ndim", 0) == 2)


def add_adapters(params: Mapping, settings: LoraSettings, rng: jax.Array) -> dict:
    """``params`` (keyed by player) with adapters beside every Dense kernel whose path
    (``player/.../kernel``) matches ``settings.targets``; a pattern matching none is an error
    listing the Dense kernels there are."""
    pattern = re.compile(settings.targets)
    found, dense = [], []

    def walk(node, path):
        if _is_dense(node):
            name = "/".join(path + ["kernel"])
            dense.append(name)
            if pattern.search(name):
                fan_in, fan_out = node["kernel"].shape
                key = jax.random.fold_in(rng, len(found))
                found.append(name)
                bound = 1.0 / math.sqrt(fan_in)
                return {**node,
                        "lora_a": jax.random.uniform(key, (fan_in, settings.rank),
                                                     node["kernel"].dtype, -bound, bound),
                        "lora_b": jnp.zeros((settings.rank, fan_out), node["kernel"].dtype)}
            return dict(node)
        if isinstance(node, Mapping):
            return {k: walk(v, path + [str(k)]) for k, v in node.items()}
        return node

    adapted = walk(params, [])
    if not found:
        shown = ", ".join(dense[:8]) + (", ..." if len(dense) > 8 else "")
        raise ValueError(f"model.lora_targets={settings.targets!r} matches no Dense kernel; "
                         f"the model has {shown or 'none'}")
    return adapted


def merge(params: PyTree, scale: float) -> PyTree:
    """Plain params: each adapted kernel ``W + scale * lora_a @ lora_b``, the adapters gone.
    The base kernel is under ``stop_gradient``: it is frozen while adapters exist."""
    if isinstance(params, Mapping):
        if "lora_a" in params:
            rest = {k: v for k, v in params.items() if k not in ADAPTERS}
            delta = scale * params["lora_a"] @ params["lora_b"]
            rest["kernel"] = jax.lax.stop_gradient(params["kernel"]) + delta.astype(
                params["kernel"].dtype)
            return rest
        return {k: merge(v, scale) for k, v in params.items()}
    return params


def adapt_family(family, settings: LoraSettings):
    """``family`` trained through LoRA adapters: its ``init`` adds them, its losses and
    evaluation see the merged params, and ``inference_params`` merges a trained state's params
    for its capabilities (sampling, generation, likelihoods), which take plain params."""
    scale = settings.scale

    def init(rng, batch):
        params, model_state = family.init(rng, batch)
        return add_adapters(params, settings, jax.random.fold_in(rng, 0x10BA)), model_state

    def merged(fn):
        return lambda params, *args, **kwargs: fn(merge(params, scale), *args, **kwargs)

    objective = tuple(dataclasses.replace(u, loss_fn=merged(u.loss_fn)) for u in family.objective)
    return dataclasses.replace(
        family, init=init, objective=objective, eval_metrics=merged(family.eval_metrics),
        inference_params=lambda params: merge(params, scale))
