"""Config files and ``--config.key=value`` overrides, as in Flax's examples.

A config file is a Python file in ``configs/`` with ``get_config() -> ml_collections.ConfigDict``.
Overrides are dotted paths into it; a path that does not exist is refused with the nearest valid
keys, and a value is parsed as a Python literal and type-checked by the ConfigDict.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Iterable


def load_config_file(path: str | Path):
    """Imports ``path`` and returns its ``get_config()``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} not found")
    spec = importlib.util.spec_from_file_location(f"zoo_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    # Config files build on their neighbours (``import default``), as in Flax's examples.
    sys.path.insert(0, str(path.parent.absolute()))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent.absolute()))
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {str(path)!r} defines no get_config()")
    return module.get_config()


def dotted_keys(config, prefix: str = "") -> list[str]:
    """Every leaf path of a (nested) ConfigDict, e.g. ``train.steps``."""
    keys = []
    for k, v in config.items():
        if hasattr(v, "items"):
            keys += dotted_keys(v, f"{prefix}{k}.")
        else:
            keys.append(f"{prefix}{k}")
    return keys


def parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string, e.g. --config.model.arch=conv


def apply_override(config, key: str, text: str) -> None:
    """Sets ``config[key] = parse_value(text)`` for a dotted ``key`` that must already exist."""
    keys = dotted_keys(config)
    if key not in keys:
        near = difflib.get_close_matches(key, keys, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise ValueError(f"config has no key {key!r}{hint} (valid keys: {', '.join(keys)})")
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
        node = node[p]
    value = parse_value(text)
    old = node[leaf]
    if isinstance(old, tuple) and isinstance(value, list):
        value = tuple(value)
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(old, str) and not isinstance(value, str):
        value = text
    try:
        node[leaf] = value
    except TypeError as e:
        raise ValueError(f"--config.{key}={text}: {e}") from None


def apply_overrides(config, overrides: Iterable[str]):
    """Applies ``--config.a.b=value`` strings (the ``--config.`` prefix is optional)."""
    for item in overrides:
        body = item[len("--config."):] if item.startswith("--config.") else item
        if "=" not in body:
            raise ValueError(f"override {item!r} is not of the form --config.key=value")
        key, text = body.split("=", 1)
        apply_override(config, key, text)
    return config
