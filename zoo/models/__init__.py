"""Model families by name. Each family is one file with its modules and its objective."""

from __future__ import annotations

import importlib
from typing import Any, Mapping

from zoo.core import lora
from zoo.core.family import Family

FAMILIES = {
    "autoencoder": "zoo.models.autoencoder",
    "vae": "zoo.models.vae",
    "gan": "zoo.models.gan",
    "classifier": "zoo.models.classifier",
    "lstm": "zoo.models.lstm",
    "transformer": "zoo.models.transformer",
    "diffusion": "zoo.models.diffusion",
}


# Model-config keys that are sizes in every family that has them: positive whole numbers (a
# tuple of them for layer widths). An image is (height, width, channels). (latent_dim is each
# family's own check: what it means differs.)
SIZE_KEYS = ("hidden", "features", "hidden_size", "num_layers", "n_layer", "n_head", "n_embd",
             "block_size", "base_channels", "dense", "channels", "channel_mult", "groups")


def _check_shared_keys(model_config) -> None:
    """Zero, negative or malformed sizes (and a dropout rate outside [0, 1)), named before any
    model is built."""
    for key in SIZE_KEYS:
        value = model_config.get(key, None)
        if value is None or value == "":
            continue
        sizes = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes):
            raise ValueError(f"model.{key}={value!r}: sizes must be whole numbers > 0")
    dropout = model_config.get("dropout", None)
    if dropout not in (None, "") and not (isinstance(dropout, (int, float))
                                          and not isinstance(dropout, bool) and 0 <= dropout < 1):
        raise ValueError(f"model.dropout={dropout!r} must be a rate in [0, 1)")
    shape = model_config.get("image_shape", None)
    if shape is not None and not (
            isinstance(shape, (tuple, list)) and len(shape) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
        raise ValueError(f"model.image_shape={shape!r} must be (height, width, channels), "
                         "whole numbers > 0")


def make_family(model_config: Mapping[str, Any], *, adapters: bool = True) -> Family:
    """The family named by ``model_config.family``, built from the rest of the config; with
    ``model.lora_rank > 0`` trained through LoRA adapters (:mod:`zoo.core.lora`) unless
    ``adapters=False`` (the plain model a merged LoRA run is read back as)."""
    name = model_config.get("family")
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(sorted(FAMILIES))}")
    _check_shared_keys(model_config)
    lora_settings = lora.LoraSettings.from_model_config(model_config)
    family = importlib.import_module(FAMILIES[name]).make_family(model_config)
    if adapters and lora_settings.rank:
        family = lora.adapt_family(family, lora_settings)
    return family
