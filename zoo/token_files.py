"""Token files: a tokenized corpus as flat binary files, read through memory maps.

The layout is nanoGPT's (``data/*/prepare.py``): each split is its token ids one after another,
little-endian ``uint16`` when the vocabulary fits (GPT-2's 50,257 does) or ``uint32``, in
``train.bin``, ``val.bin`` and optionally ``test.bin``. zoo writes a ``meta.json`` beside them
(dtype, vocabulary size, token counts, the tokenizer; GPT-2's BPE files are copied in), so a folder
names its own tokenizer. A nanoGPT folder without one (its GPT-2 datasets) reads as ``uint16``
with ``data.tokenizer='gpt2'`` and ``data.tokenizer_path``.

:func:`open_split` maps a split without reading it: a batch reads only the windows it takes, so a
corpus larger than memory trains, each process reading the rows of its own slice.

    meta = write_token_files({"train": text[:n], "validation": text[n:]}, tokenizer, "data/x")
    ids = open_split("data/x", "train")   # np.memmap of uint16
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Mapping

import numpy as np

from zoo import tokenizers as tok
from zoo.config import make_folder

SPLIT_FILES = {"train": "train.bin", "validation": "val.bin", "test": "test.bin"}
META_FILE = "meta.json"
DTYPES = ("uint16", "uint32")


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned dtype nanoGPT's layout uses that holds every id."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def _portable_tokenizer(tokenizer: tok.Tokenizer, folder: Path) -> dict:
    """The tokenizer's config, with GPT-2's files copied into ``folder`` and named relative to it
    (the folder can move, or go to another machine)."""
    config = tokenizer.to_config()
    if config["name"] == "gpt2":
        for key in ("vocab_file", "merges_file"):
            source = Path(config[key])
            shutil.copyfile(source, folder / source.name)
            config[key] = source.name
    return config


def write_token_files(splits: Mapping[str, str], tokenizer: tok.Tokenizer,
                      folder: str | os.PathLike) -> dict:
    """Encodes each split's text with ``tokenizer`` into ``folder/{train,val,test}.bin`` and writes
    ``meta.json``; returns the meta. Each file is written under a temporary name and renamed, so a
    killed run leaves no half-written split that reads as whole."""
    folder = Path(folder)
    unknown = set(splits) - set(SPLIT_FILES)
    if unknown or "train" not in splits:
        raise ValueError(f"token files hold the splits {', '.join(SPLIT_FILES)} (train required); "
                         f"got {', '.join(sorted(splits))}")
    make_folder(folder, "the token folder")
    dtype = token_dtype(tokenizer.vocab_size)
    counts = {}
    for split, text in splits.items():
        ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
        path = folder / SPLIT_FILES[split]
        tmp = path.with_name(path.name + ".tmp")
        ids.astype(dtype).tofile(tmp)
        os.replace(tmp, path)
        counts[split] = int(len(ids))
    meta = {"format": "zoo token files (nanoGPT layout)", "dtype": dtype.name,
            "vocab_size": tokenizer.vocab_size, "tokens": counts,
            "tokenizer": _portable_tokenizer(tokenizer, folder)}
    (folder / META_FILE).write_text(json.dumps(meta, indent=1))
    return meta


def read_meta(folder: str | os.PathLike) -> dict | None:
    """``meta.json`` of a token folder, or None when it has none (a nanoGPT GPT-2 folder)."""
    folder = Path(folder)
    if not (folder / SPLIT_FILES["train"]).is_file():
        raise ValueError(f"{folder} holds no {SPLIT_FILES['train']}: data.dataset='tokens' reads "
                         "a folder written by zoo prepare-text (or nanoGPT's prepare.py)")
    path = folder / META_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
        if meta["dtype"] not in DTYPES:
            raise ValueError(f"dtype {meta['dtype']!r} is not one of {', '.join(DTYPES)}")
        return meta
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is damaged ({e}); write the folder again with zoo "
                         "prepare-text") from None


def folder_tokenizer(folder: str | os.PathLike) -> tok.Tokenizer | None:
    """The tokenizer ``meta.json`` names (GPT-2's files resolved inside the folder), or None."""
    folder = Path(folder)
    meta = read_meta(folder)
    if meta is None:
        return None
    config = dict(meta["tokenizer"])
    if config.get("name") == "gpt2":
        config.update({k: str(folder / config[k]) for k in ("vocab_file", "merges_file")})
    return tok.from_config(config)


def open_split(folder: str | os.PathLike, split: str, vocab_size: int | None = None
               ) -> np.memmap:
    """``split``'s ids as a read-only memory map (nothing is read until indexed).

    ``vocab_size``: the tokenizer's, checked against the folder's ``meta.json`` (ids written with
    another vocabulary would train on the wrong symbols).
    """
    folder = Path(folder)
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown split {split!r}; token files hold {', '.join(SPLIT_FILES)}")
    meta = read_meta(folder)
    path = folder / SPLIT_FILES[split]
    if not path.is_file():
        have = [s for s, f in SPLIT_FILES.items() if (folder / f).is_file()]
        raise ValueError(f"{folder} has no {path.name} for the {split} split (it has "
                         f"{', '.join(have)}); set data.eval_split to one of them")
    dtype = np.dtype("<u2") if meta is None else np.dtype(meta["dtype"]).newbyteorder("<")
    size = path.stat().st_size
    count = (meta or {}).get("tokens", {}).get(split)
    if size % dtype.itemsize or (count is not None and size != count * dtype.itemsize):
        raise ValueError(f"{path} is {size:,} bytes, not the {count if count is not None else 'whole'}"
                         f" {dtype.name} tokens meta.json records: damaged or from another "
                         "folder; write it again with zoo prepare-text")
    if meta is not None and vocab_size is not None and meta["vocab_size"] != vocab_size:
        raise ValueError(f"{folder} was written with a vocabulary of {meta['vocab_size']}, the "
                         f"tokenizer has {vocab_size}")
    if size == 0:
        raise ValueError(f"{path} holds no tokens")
    return np.memmap(path, dtype=dtype, mode="r")
