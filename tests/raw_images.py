"""MNIST and Fashion-MNIST read straight from the IDX files in ``../shared/data/raw`` (no TFDS)."""

import gzip
from pathlib import Path

import numpy as np


def read_idx_images(shared_data: Path, name: str, split: str) -> dict[str, np.ndarray]:
    """A split of ``mnist`` or ``fashion_mnist`` from its IDX files, as zoo.data.load_tfds gives
    it (TFDS prepares from the same bytes): float32 images in [0, 1], int32 labels."""
    prefix = {"train": "train", "test": "t10k"}[split]
    folder = Path(shared_data) / "raw" / name

    def read(kind: str, header: int) -> np.ndarray:
        dims = 3 if kind == "images" else 1
        with gzip.open(folder / f"{prefix}-{kind}-idx{dims}-ubyte.gz") as f:
            return np.frombuffer(f.read(), np.uint8, offset=header)

    images = read("images", 16).reshape(-1, 28, 28, 1).astype(np.float32) / 255.0
    return {"image": images, "label": read("labels", 8).astype(np.int32)}
