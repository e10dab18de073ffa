"""Model families by name. Each family is one file with its modules and its objective."""

from __future__ import annotations

import importlib

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


def make_family(model_config, *, adapters: bool = True) -> Family:
    """The family named by ``model_config.family``, built from the rest of the config; with
    ``model.lora_rank > 0`` trained through LoRA adapters (:mod:`zoo.core.lora`) unless
    ``adapters=False`` (the plain model a merged LoRA run is read back as)."""
    name = model_config.get("family")
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(sorted(FAMILIES))}")
    lora_settings = lora.LoraSettings.from_model_config(model_config)
    family = importlib.import_module(FAMILIES[name]).make_family(model_config)
    if adapters and lora_settings.rank:
        family = lora.adapt_family(family, lora_settings)
    return family
