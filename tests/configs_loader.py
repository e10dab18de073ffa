"""Loads a config file from configs/ by name, as `zoo train --config configs/NAME.py` does."""

from pathlib import Path

from zoo.config import load_config_file

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def load_config(name: str):
    return load_config_file(CONFIGS / f"{name}.py")
