"""Model families by name. Each family is one file with its modules and its objective."""

from __future__ import annotations

import importlib

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


def make_family(model_config) -> Family:
    """The family named by ``model_config.family``, built from the rest of the config."""
    name = model_config.get("family")
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(sorted(FAMILIES))}")
    return importlib.import_module(FAMILIES[name]).make_family(model_config)
