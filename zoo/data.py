"""Datasets: real ones through tensorflow-datasets, synthetic ones of each family's shapes.

TFDS (and the TensorFlow it prepares datasets with) never enters a training process: the first
time a real dataset is needed, :func:`ensure_prepared` runs TFDS's builder in a child process
(``python -m zoo.data``), which keeps every split as a numpy ``.npz`` (text: ``.txt``) beside the
TFDS data. Training processes read those caches with numpy alone. (TensorFlow's runtime in the same
process as JAX's multi-device CPU collectives has been seen to hang them.)

Offline: TFDS prepares from a download cache with no network, looked for in ``data.download_dir``,
the environment variable ``ZOO_TFDS_DOWNLOAD_DIR``, then ``../shared/data/tfds_downloads`` beside
the checkout (``$ZOO_SHARED_DATA/tfds_downloads``); with none and no network, zoo says so in seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping

import jax
import numpy as np

from zoo.config import make_folder

IMAGE_DATASETS = {
    # name: (image shape, number of classes)
    "mnist": ((28, 28, 1), 10),
    "fashion_mnist": ((28, 28, 1), 10),
    "cifar10": ((32, 32, 3), 10),
}
DOWNLOAD_DIR_ENV = "ZOO_TFDS_DOWNLOAD_DIR"
DATA_DIR_ENV = "ZOO_TFDS_DATA_DIR"


SHARED_DATA_ENV = "ZOO_SHARED_DATA"
# Where TFDS downloads from: checked before preparing, so an offline machine fails in seconds, not
# after TFDS's minutes of retries.
DOWNLOAD_HOST = ("storage.googleapis.com", 443)


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV, Path.home() / "tensorflow_datasets"))


def shared_data_dir() -> Path:
    """The project's offline data folder: ``$ZOO_SHARED_DATA``, or ``../shared/data`` beside the
    checkout zoo runs from."""
    shared = os.environ.get(SHARED_DATA_ENV)
    return Path(shared) if shared else Path(__file__).resolve().parents[2] / "shared" / "data"


def find_download_dir(download_dir: str | os.PathLike | None = None) -> tuple[Path | None, str]:
    """The TFDS download cache to prepare from, looked for in this order: ``download_dir``
    (``data.download_dir``), ``$ZOO_TFDS_DOWNLOAD_DIR``, then ``tfds_downloads`` in
    :func:`shared_data_dir` when it exists. Returns it (None: none, download) and the order as
    words, for messages."""
    order = (f"data.download_dir, ${DOWNLOAD_DIR_ENV}, "
             f"{shared_data_dir() / 'tfds_downloads'}")
    for candidate in (download_dir, os.environ.get(DOWNLOAD_DIR_ENV)):
        if candidate:
            if not Path(candidate).is_dir():
                raise ValueError(f"TFDS download cache {candidate} is not a folder")
            return Path(candidate), order
    shared = shared_data_dir() / "tfds_downloads"
    return (shared if shared.is_dir() else None), order


def _online(host: tuple[str, int] = DOWNLOAD_HOST, timeout: float = 5.0) -> bool:
    import socket
    try:
        socket.create_connection(host, timeout=timeout).close()
        return True
    except OSError:
        return False


def _writable_download_dir(download_dir: Path, data_dir: Path) -> Path:
    # TFDS extracts next to the downloads; a read-only cache is copied somewhere writable first.
    if os.access(download_dir, os.W_OK):
        return download_dir
    copy = data_dir / "downloads"
    if not copy.exists():
        shutil.copytree(download_dir, copy)
    return copy


TFDS_TEXT = ("tiny_shakespeare",)  # text datasets prepared through TFDS (see zoo.text_data)


def cache_path(name: str, split: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Where the prepared ``split`` of TFDS dataset ``name`` is kept (``.npz``, or ``.txt``)."""
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    if name in TFDS_TEXT:
        return data_dir / "zoo_text" / f"{name}-{split}.txt"
    return data_dir / "zoo_numpy" / f"{name}-{split}.npz"


def prepare_tfds(name: str, data_dir: str | os.PathLike,
                 download_dir: str | os.PathLike | None = None) -> None:
    """Prepares ``name`` with TFDS (imports TensorFlow) and writes every split's cache.

    Run by :func:`ensure_prepared` in a child process. Each cache is written to a temporary file
    and renamed, so a killed preparation never leaves half a cache.
    """
    import tensorflow_datasets as tfds

    data_dir = Path(data_dir)
    make_folder(data_dir, "data.tfds_data_dir")
    builder = tfds.builder(name, data_dir=str(data_dir))
    kwargs: dict[str, Any] = {}
    if download_dir:
        kwargs = dict(download_dir=str(_writable_download_dir(Path(download_dir), data_dir)),
                      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    builder.download_and_prepare(**kwargs)
    for split in builder.info.splits:
        cache = cache_path(name, split, data_dir)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")  # no two writers share one
        if name in TFDS_TEXT:
            text = "".join(ex["text"].decode("utf-8")
                           for ex in tfds.as_numpy(builder.as_dataset(split=split)))
            tmp.write_text(text, encoding="utf-8")
        else:
            arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
            with open(tmp, "wb") as f:
                np.savez(f, image=arrays["image"], label=arrays["label"])
        os.replace(tmp, cache)


def ensure_prepared(name: str, split: str, *, data_dir: str | os.PathLike | None = None,
                    download_dir: str | os.PathLike | None = None) -> Path:
    """The cache of ``split`` of TFDS dataset ``name``, prepared in a child process if missing.

    ``download_dir``: a TFDS download cache to prepare from offline (see
    :func:`find_download_dir` for where else one is looked for). With none and no network this
    fails within seconds, saying what to set.
    """
    import fcntl

    data_dir = Path(data_dir) if data_dir else default_data_dir()
    cache = cache_path(name, split, data_dir)
    if cache.exists():
        return cache
    make_folder(data_dir, "data.tfds_data_dir")
    found, order = find_download_dir(download_dir)
    if found is None and not _online():
        raise ValueError(
            f"{name!r} is not prepared in {data_dir}, no TFDS download cache was found (looked in "
            f"{order}) and {DOWNLOAD_HOST[0]} cannot be reached: set data.download_dir (or "
            f"${DOWNLOAD_DIR_ENV}) to a TFDS download cache")
    download_dir = str(found) if found else ""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    # Processes sharing a data_dir (a multi-process run, parallel jobs) prepare one at a time;
    # the others wait and then read what the first wrote.
    with open(data_dir / f".zoo_prepare_{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cache.exists():
            return cache
        child = subprocess.run([sys.executable, "-m", "zoo.data", name, str(data_dir),
                                str(download_dir)], env=env, capture_output=True, text=True)
    if child.returncode != 0:
        output = [line for line in (child.stderr or child.stdout).splitlines() if line.strip()]
        raise ValueError(
            f"TFDS could not prepare {name!r} in {data_dir}"
            + (f" from {download_dir}" if download_dir else "") + ": "
            + (output[-1].strip()[:300] if output else f"exit code {child.returncode}")
            + f". Offline, set data.download_dir (or ${DOWNLOAD_DIR_ENV}) to a TFDS download "
            "cache such as ../shared/data/tfds_downloads")
    if not cache.exists():
        raise ValueError(f"TFDS prepared {name!r} but it has no split {split!r}")
    return cache


def load_tfds(name: str, split: str, *, data_dir: str | os.PathLike | None = None,
              download_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """A whole TFDS split as numpy arrays, prepared once (:func:`ensure_prepared`).

    Images come back as float32 in [0, 1] under ``"image"``, labels as int32 under ``"label"``.
    """
    if name not in IMAGE_DATASETS:
        raise ValueError(f"unknown image dataset {name!r}; known: {', '.join(IMAGE_DATASETS)}")
    cache = ensure_prepared(name, split, data_dir=data_dir, download_dir=download_dir)
    with np.load(cache) as f:
        return {"image": f["image"].astype(np.float32) / 255.0,
                "label": f["label"].astype(np.int32)}


def synthetic_images(n: int, shape=(28, 28, 1), num_classes: int = 10,
                     seed: int = 0) -> dict[str, np.ndarray]:
    """Blurry class-dependent blobs in [0, 1]: learnable, so a loss that falls means something."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n).astype(np.int32)
    h, w, c = shape
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    centers = np.random.default_rng(1234).uniform(0.25, 0.75, (num_classes, 2))
    d2 = (yy[None] - centers[labels, 0, None, None]) ** 2 + (xx[None] - centers[labels, 1, None, None]) ** 2
    img = np.exp(-d2 / 0.02)[..., None] + 0.1 * rng.standard_normal((n, h, w, 1))
    img = np.clip(np.repeat(img, c, axis=-1), 0.0, 1.0).astype(np.float32)
    return {"image": img, "label": labels}


class BatchIterator:
    """Deterministic shuffled batches over in-memory arrays, with state that saves and restores.

    Each epoch is a fresh permutation drawn from ``(seed, epoch)``; each process takes its own
    slice of every global batch (``process_index`` of ``process_count``), so a multi-host run sees
    the same global batches as a single-process one. ``state()`` is the position
    ``{"epoch", "index"}``; ``restore(state)`` continues from it exactly.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], global_batch_size: int, *, seed: int = 0,
                 shuffle: bool = True, drop_remainder: bool = True,
                 process_index: int | None = None, process_count: int | None = None):
        self.arrays = dict(arrays)
        sizes = {k: len(v) for k, v in self.arrays.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"arrays disagree on their length: {sizes}")
        self.n = next(iter(sizes.values()))
        self.process_index = jax.process_index() if process_index is None else process_index
        self.process_count = jax.process_count() if process_count is None else process_count
        if global_batch_size % self.process_count:
            raise ValueError(f"global batch of {global_batch_size} does not divide over "
                             f"{self.process_count} processes")
        if global_batch_size > self.n:
            raise ValueError(f"global batch of {global_batch_size} exceeds the {self.n} examples")
        self.global_batch_size = global_batch_size
        self.seed, self.shuffle, self.drop_remainder = seed, shuffle, drop_remainder
        self.epoch, self.index = 0, 0
        self._cached: tuple[int | None, np.ndarray | None] = (None, None)

    def _order(self, epoch: int) -> np.ndarray:
        # Computed once per epoch: a permutation of 60,000 costs ~2 ms, a quarter of a small
        # model's step, if drawn for every batch.
        if self._cached[0] != epoch:
            order = (np.random.default_rng([self.seed, epoch]).permutation(self.n)
                     if self.shuffle else np.arange(self.n))
            self._cached = (epoch, order)
        return self._cached[1]

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def restore(self, state: Mapping[str, int]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        end = self.index + self.global_batch_size
        if end > self.n:
            self.epoch, self.index = self.epoch + 1, 0
            end = self.global_batch_size
        idx = self._order(self.epoch)[self.index:end]
        self.index = end
        local = self.global_batch_size // self.process_count
        idx = idx[self.process_index * local:(self.process_index + 1) * local]
        return {k: v[idx] for k, v in self.arrays.items()}

    def epoch_batches(self) -> Iterator[dict[str, np.ndarray]]:
        """One pass in order (for evaluation); the last partial batch is dropped."""
        local = self.global_batch_size // self.process_count
        for start in range(0, self.n - self.global_batch_size + 1, self.global_batch_size):
            lo = start + self.process_index * local
            yield {k: v[lo:lo + local] for k, v in self.arrays.items()}


if __name__ == "__main__":  # python -m zoo.data NAME DATA_DIR [DOWNLOAD_DIR]: see ensure_prepared
    prepare_tfds(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
