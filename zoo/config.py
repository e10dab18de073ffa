"""Config files and ``--config.key=value`` overrides, as in Flax's examples.

A config file is a Python file in ``configs/`` with ``get_config() -> ml_collections.ConfigDict``.
Overrides are dotted paths into it; a path that does not exist is refused with the nearest valid
keys, and a value is parsed as a Python literal and type-checked by the ConfigDict.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, Iterable

import ml_collections

from zoo.core import settings


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors are one line (``zoo eval: error: ...``, exit 2), without
    the usage block argparse prints first; ``--help`` shows the usage. Its subcommands' parsers
    are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help shows the options)\n")


def read_json(path: str | Path, what: str) -> Any:
    """The content of the JSON file ``path``, or a ValueError naming the file and ``what`` it
    should hold (a damaged or foreign file says where it is)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not {what} ({type(e).__name__}: {e})") from None


def make_folder(path: str | Path, what: str) -> Path:
    """``path`` made a folder (parents too), or a one-line ValueError naming ``what`` (the option
    or key that gave it: ``--out``): it is a file, or cannot be made."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file; give a folder (it is created if missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{what} {path} cannot be made a folder: {e.strerror}") from None
    return path


def default_config() -> ml_collections.ConfigDict:
    """Every run section at its defaults (:mod:`zoo.core.settings`, their one home), and an
    empty ``model`` section for a config to fill: what ``configs/default.py`` starts from."""
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict()
    for name, cls in (("data", settings.DataSettings), ("optimizer", settings.OptimizerSettings),
                      ("parallel", settings.ParallelSettings), ("train", settings.TrainSettings)):
        config[name] = ml_collections.ConfigDict(settings.defaults(cls))
    return config


def _load_module(path: Path, loading: dict[str, Any]):
    """Executes a config file as a module. The neighbours it imports (``import default``, as in
    Flax's examples) are loaded from its folder first and shown to it under their names for the
    length of the load: no search path changes, nothing left behind."""
    tree = ast.parse(path.read_text(), str(path))
    names = {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    names |= {node.module for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    neighbours = {n: path.parent / f"{n}.py" for n in names if (path.parent / f"{n}.py").is_file()}
    for name, file in neighbours.items():
        if name not in loading:
            loading[name] = _load_module(file, loading)
    spec = importlib.util.spec_from_file_location(f"zoo_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    saved = {n: sys.modules.get(n) for n in neighbours}
    sys.modules.update({n: loading[n] for n in neighbours})
    try:
        spec.loader.exec_module(module)
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
    return module


def load_config_file(path: str | Path):
    """Imports ``path`` and returns its ``get_config()``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} not found")
    try:
        module = _load_module(path.absolute(), {})
    except Exception as e:  # noqa: BLE001 -- a user's file: say which and why, in one line
        raise ValueError(f"config file {str(path)!r} could not be run as Python "
                         f"({type(e).__name__}: {e})") from None
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {str(path)!r} defines no get_config()")
    try:
        config = module.get_config()
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"get_config() in {str(path)!r} failed "
                         f"({type(e).__name__}: {e})") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(f"get_config() in {str(path)!r} returned {type(config).__name__}; it "
                         "must return an ml_collections.ConfigDict (as configs/*.py do)")
    return config


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
        near = difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        section = key.rpartition(".")[0]
        siblings = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == section]
        if section and siblings:  # the keys of the section it names, not all of them
            listing = f"{section} has {', '.join(siblings[:12])}" + (", ..." if
                                                                    len(siblings) > 12 else "")
        else:
            listing = "sections: " + ", ".join(sorted({k.split(".")[0] for k in keys}))
        raise ValueError(f"config has no key {key!r}{hint} ({listing})")
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
