"""Text datasets and language-model batching.

Datasets:
* ``tiny_shakespeare`` (1.1M characters): through TFDS, offline from a download cache
  (``source="tfds"``: TFDS's train/validation/test splits), or from the raw ``input.txt``
  (``source="raw"``: the first 90% trains, the last 10% is both validation and test, as nanoGPT).
* ``ptb``: Mikolov's Penn Treebank, read from ``ptb.{train,valid,test}.txt`` in ``path``
  (word level, 10k words; ``ptb_char`` reads the same text one character at a time).
* ``tokens``: a folder of token files (:mod:`zoo.token_files`, nanoGPT's ``train.bin`` /
  ``val.bin`` layout) named by ``path``, memory-mapped: a corpus larger than memory trains.
  :func:`prepare_token_files` (``zoo prepare-text``) writes one from a text file or a dataset here.
* ``synthetic`` (no files): ``synthetic_size`` tokens of ``synthetic_vocab`` symbols per split
  (:func:`synthetic_tokens`), so a language model trains with no dataset at hand.

Batches hold ``tokens`` of shape (B, T+1): inputs are ``tokens[:, :-1]``, targets ``tokens[:, 1:]``.

* :class:`StreamIterator` lays the token stream out as B contiguous rows and walks them T tokens at
  a time, so row i of a batch continues row i of the previous batch: truncated backpropagation
  through time carries the LSTM's state across batches. ``reset`` is 1 on the first batch of each
  epoch (the carried state starts from zeros there).
* :class:`WindowIterator` draws B random windows per batch (nanoGPT's batching, for transformers).

Both are deterministic, give each process its slice of the global batch, and save and restore
their position with ``state()`` / ``restore()`` like :class:`zoo.data.BatchIterator`.
"""

from __future__ import annotations

import itertools
import os
import string
from pathlib import Path
from typing import Iterator, Mapping

import jax
import numpy as np

from zoo import data as data_lib
from zoo import token_files
from zoo import tokenizers as tok
from zoo.core import settings
from zoo.core.settings import DataSettings

TEXT_DATASETS = ("tiny_shakespeare", "ptb", "ptb_char", "tokens")
SPLITS = ("train", "validation", "test")
PTB_FILES = {"train": "ptb.train.txt", "validation": "ptb.valid.txt", "valid": "ptb.valid.txt",
             "test": "ptb.test.txt"}
# A token folder's evaluation text (sampling prompts, reference n-grams) is its split decoded, up
# to this many tokens: the split itself may be larger than memory.
TOKEN_TEXT_LIMIT = 1_000_000


def _data(data_config) -> DataSettings:
    return settings.parse(DataSettings, data_config, "data")


def default_raw_dir() -> Path:
    """``$ZOO_SHARED_DATA/raw`` or ``../shared/data/raw`` beside the repository."""
    return data_lib.shared_data_dir() / "raw"


def _check_split(split: str) -> str:
    split = "validation" if split == "valid" else split
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return split


def resolve_split(data_config, split: str) -> str:
    """The split ``split`` of the config's dataset reads: tiny_shakespeare's raw file has no test
    split (its last 10% is validation and test alike, as in nanoGPT), so ``test`` is
    ``validation`` there, and results say so."""
    data = _data(data_config)
    split = _check_split(split)
    if data.dataset == "tiny_shakespeare" and data.source == "raw" and split == "test":
        return "validation"
    return split


def tiny_shakespeare_raw(split: str, path: str | os.PathLike | None = None) -> str:
    """tiny_shakespeare from ``input.txt`` (``path``: the file or its folder); 90/10 split."""
    split = _check_split(split)
    path = Path(path) if path else default_raw_dir() / "tiny_shakespeare"
    if path.is_dir():
        path = path / "input.txt"
    if not path.exists():
        raise ValueError(f"tiny_shakespeare text not found at {path}")
    text = path.read_text(encoding="utf-8")
    cut = int(0.9 * len(text))
    return text[:cut] if split == "train" else text[cut:]


def tiny_shakespeare_tfds(split: str, *, data_dir: str | os.PathLike | None = None,
                          download_dir: str | os.PathLike | None = None) -> str:
    """tiny_shakespeare through TFDS (prepared once, offline from ``download_dir``, in a child
    process: :func:`zoo.data.ensure_prepared`), read from its text cache."""
    split = _check_split(split)
    cache = data_lib.ensure_prepared("tiny_shakespeare", split, data_dir=data_dir,
                                     download_dir=download_dir)
    return cache.read_text(encoding="utf-8")


def ptb_text(split: str, path: str | os.PathLike | None = None) -> str:
    """A PTB split's text (``path``: the folder holding ``ptb.{train,valid,test}.txt``)."""
    split = _check_split(split)
    path = Path(path) if path else default_raw_dir() / "ptb"
    file = path / PTB_FILES[split]
    if not file.exists():
        raise ValueError(f"PTB file {file} not found; set data.path to the folder holding "
                         "ptb.train.txt, ptb.valid.txt and ptb.test.txt")
    return file.read_text(encoding="utf-8")


def synthetic_tokens(n: int, vocab_size: int, seed: int, noise: float = 0.1) -> np.ndarray:
    """``n`` int32 ids in ``[0, vocab_size)``: each is its predecessor + 1 (mod ``vocab_size``),
    except a random one with probability ``noise``. Learnable (a loss falls from ln(vocab_size)
    towards the noise's entropy) and seeded."""
    rng = np.random.default_rng(seed)
    jumps = np.where(rng.random(n) < noise, rng.integers(0, vocab_size, n), 1)
    jumps[0] = rng.integers(vocab_size)
    return (np.cumsum(jumps) % vocab_size).astype(np.int32)


def synthetic_symbols(vocab_size: int) -> list[str]:
    """The characters synthetic ids are written with: letters, digits, punctuation, then more."""
    printable = string.ascii_letters + string.digits + string.punctuation
    return list(itertools.islice(itertools.chain(printable, map(chr, itertools.count(0x100))),
                                 vocab_size))


def _synthetic(data: DataSettings) -> tuple[int, int]:
    return data.synthetic_size, data.synthetic_vocab


def _token_folder(data: DataSettings) -> Path:
    if not data.path:
        raise ValueError("data.dataset='tokens' reads train.bin and val.bin from data.path, which "
                         "is empty; set it to a folder written by zoo prepare-text")
    return Path(data.path)


def load_text(data_config, split: str) -> str:
    """The raw text of ``split`` of ``data_config.dataset`` (of a token folder: the split decoded,
    at most :data:`TOKEN_TEXT_LIMIT` tokens of it)."""
    data = _data(data_config)
    name, path = data.dataset, data.path or None
    if name == "tokens":
        tokenizer = make_tokenizer(data)
        ids = token_files.open_split(_token_folder(data), _check_split(split), tokenizer.vocab_size)
        return tokenizer.decode(_checked(ids[:TOKEN_TEXT_LIMIT], tokenizer.vocab_size))
    if name == "synthetic":  # a fixed dataset: its splits differ by seed, not by the run's seed
        size, vocab = _synthetic(data)
        ids = synthetic_tokens(size, vocab, seed=SPLITS.index(_check_split(split)))
        return "".join(np.array(synthetic_symbols(vocab))[ids])
    if name == "tiny_shakespeare":
        if data.source == "tfds":
            return tiny_shakespeare_tfds(split, data_dir=data.tfds_data_dir or None,
                                         download_dir=data.download_dir or None)
        return tiny_shakespeare_raw(split, path)
    if name in ("ptb", "ptb_char"):
        return ptb_text(split, path)
    raise ValueError(f"unknown text dataset {name!r}; choose one of {', '.join(TEXT_DATASETS)}")


def make_tokenizer(data_config) -> tok.Tokenizer:
    """The config's tokenizer (``char``, ``word`` or ``gpt2``), built from the training text;
    for ``synthetic`` data, characters for its ``synthetic_vocab`` symbols. An empty
    ``data.tokenizer`` is the dataset's usual one: words for PTB, characters elsewhere."""
    data = _data(data_config)
    if data.dataset == "synthetic":
        return tok.CharTokenizer(synthetic_symbols(_synthetic(data)[1]))
    if data.dataset == "tokens":
        return _folder_tokenizer(data)
    name = data.tokenizer or ("word" if data.dataset == "ptb" else "char")
    if name == "gpt2":
        path = data.tokenizer_path
        if not path:
            raise ValueError("data.tokenizer='gpt2' reads vocab.json and merges.txt from "
                             "data.tokenizer_path, which is empty; set it to their folder")
        return tok.get_tokenizer("gpt2", path=path)
    if name not in tok.TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; choose one of {', '.join(tok.TOKENIZERS)}")
    return tok.get_tokenizer(name, text=load_text(data, "train"))


def _folder_tokenizer(data: DataSettings) -> tok.Tokenizer:
    """A token folder's tokenizer: its ``meta.json``'s, or (a nanoGPT folder without one) GPT-2's
    from ``data.tokenizer_path``. A ``data.tokenizer`` that names another is refused."""
    folder = _token_folder(data)
    tokenizer = token_files.folder_tokenizer(folder)
    if tokenizer is None:
        if data.tokenizer != "gpt2" or not data.tokenizer_path:
            raise ValueError(f"{folder} has no {token_files.META_FILE}; for nanoGPT's GPT-2 token "
                             "files set data.tokenizer='gpt2' and data.tokenizer_path to the "
                             "folder of vocab.json and merges.txt")
        return tok.get_tokenizer("gpt2", path=data.tokenizer_path)
    if data.tokenizer and data.tokenizer != tokenizer.name:
        raise ValueError(f"data.tokenizer={data.tokenizer!r}, but {folder} was written with the "
                         f"{tokenizer.name} tokenizer; leave data.tokenizer empty to take it")
    return tokenizer


def prepare_token_files(out: str | os.PathLike, *, text_file: str | os.PathLike | None = None,
                        val_fraction: float = 0.1, data_config=None) -> dict:
    """Writes a token folder (:mod:`zoo.token_files`) for ``data.dataset='tokens'``; returns its
    meta. From ``text_file``: the first ``1 - val_fraction`` of it trains, the rest validates
    (nanoGPT's split), tokenized by ``data.tokenizer`` (char by default; its characters are the
    whole file's, as nanoGPT's ``prepare.py``, so a character only the validation part holds is
    not an error).
    Otherwise from ``data_config``'s text dataset: its own splits and tokenizer."""
    data = _data(data_config or {})
    if text_file is not None:
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction={val_fraction} must lie strictly between 0 and 1")
        path = Path(text_file)
        if not path.is_file():
            raise ValueError(f"text file {path} not found")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text (byte {e.start} is not); prepare-text "
                             "reads a UTF-8 text file") from None
        if len(text) < 2:
            raise ValueError(f"{path} holds {len(text)} characters; prepare-text needs a text "
                             "to split into a train and a validation part")
        cut = int((1 - val_fraction) * len(text))
        splits = {"train": text[:cut], "validation": text[cut:]}
        name = data.tokenizer or "char"
        if name not in tok.TOKENIZERS:
            raise ValueError(f"unknown tokenizer {name!r}; choose one of {', '.join(tok.TOKENIZERS)}")
        if name == "gpt2" and not data.tokenizer_path:
            raise ValueError("the gpt2 tokenizer reads vocab.json and merges.txt from "
                             "data.tokenizer_path; set it")
        tokenizer = tok.get_tokenizer(name, text=text, path=data.tokenizer_path or None)
    else:
        if data.dataset not in TEXT_DATASETS or data.dataset == "tokens":
            raise ValueError(f"prepare-text reads a text file or one of the text datasets "
                             f"{', '.join(d for d in TEXT_DATASETS if d != 'tokens')}; got "
                             f"{data.dataset!r}")
        tokenizer = make_tokenizer(data)
        splits = {s: load_text(data, s) for s in SPLITS}
        if data.dataset == "tiny_shakespeare" and data.source == "raw":
            del splits["test"]  # the raw file's test split is its validation split
    for split, text in splits.items():
        encode_split(data, split, text, tokenizer)  # out-of-vocabulary text: named, nothing written
    return token_files.write_token_files(splits, tokenizer, out)


def encode_split(data_config, split: str, text: str, tokenizer: tok.Tokenizer) -> np.ndarray:
    """``text``, the ``split`` of the config's dataset, as int32 ids.

    Text outside the tokenizer's vocabulary (a word or character the train split, which the
    vocabulary is built from, lacks) is an error naming the split.
    """
    try:
        return np.asarray(tokenizer.encode(text), np.int32)
    except tok.OutOfVocabularyError as e:
        raise ValueError(f"the {split} split of {_data(data_config).dataset} has {e.what} outside the vocabulary built "
                         f"from the train split: {e.listing}") from None


def load_tokens(data_config, split: str, tokenizer: tok.Tokenizer | None = None
                ) -> tuple[np.ndarray, tok.Tokenizer]:
    """``split``'s ids, and the tokenizer (built from the train split if None): int32 ids encoded
    from the text, or a token folder's memory map (uint16 or uint32, read only where indexed)."""
    tokenizer = tokenizer or make_tokenizer(data_config)
    data = _data(data_config)
    if data.dataset == "tokens":
        folder = _token_folder(data)
        return token_files.open_split(folder, _check_split(split), tokenizer.vocab_size), tokenizer
    return encode_split(data_config, split, load_text(data_config, split), tokenizer), tokenizer


def load_tokens_and_text(data_config, split: str, tokenizer: tok.Tokenizer
                         ) -> tuple[np.ndarray, str]:
    """``split``'s ids (as :func:`load_tokens`) and its text (as :func:`load_text`), each read
    once."""
    if _data(data_config).dataset == "tokens":
        return load_tokens(data_config, split, tokenizer)[0], load_text(data_config, split)
    text = load_text(data_config, split)
    return encode_split(data_config, split, text, tokenizer), text


def _ids(tokens) -> np.ndarray:
    """Token ids as given when they are an unsigned or int32 array (a memory map stays one: rows
    are read, and widened to int32, only when a batch takes them), else as int32."""
    if isinstance(tokens, np.ndarray) and tokens.dtype in (np.uint16, np.uint32, np.int32):
        return tokens
    return np.asarray(tokens, np.int32)


def _checked(ids: np.ndarray, vocab_size: int | None) -> np.ndarray:
    """``ids`` as int32, refused if one is outside ``[0, vocab_size)`` (a damaged token file, or
    one written with another tokenizer, would otherwise embed garbage: NaN, not an error)."""
    ids = ids.astype(np.int32)
    if vocab_size is not None and ids.size and (ids.max() >= vocab_size or ids.min() < 0):
        bad = int(ids.max() if ids.max() >= vocab_size else ids.min())
        raise ValueError(f"the token data holds id {bad}, outside the tokenizer's vocabulary of "
                         f"{vocab_size} (ids 0 to {vocab_size - 1}): a damaged token file, or one "
                         "written with another tokenizer; write it again with zoo prepare-text")
    return ids


def _local_rows(global_batch_size: int, process_index: int | None, process_count: int | None):
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if global_batch_size % count:
        raise ValueError(f"global batch of {global_batch_size} does not divide over {count} "
                         "processes")
    local = global_batch_size // count
    return slice(index * local, (index + 1) * local)


class StreamIterator:
    """Contiguous batches for truncated BPTT: ``{"tokens": (B, T+1), "reset": (B,)}`` (``reset``
    left out with ``with_reset=False``, for a model that carries no state).

    The stream is cut into B rows of ``len(tokens) // B`` tokens; batch j holds columns
    ``[j*T, j*T + T]`` of every row (consecutive batches overlap by one token: the last target of
    one is the first input of the next). An epoch is ``(len // B - 1) // T`` batches.
    """

    def __init__(self, tokens: np.ndarray, global_batch_size: int, seq_len: int, *,
                 with_reset: bool = True, vocab_size: int | None = None,
                 process_index: int | None = None, process_count: int | None = None):
        tokens = _ids(tokens)
        self.with_reset, self.vocab_size = with_reset, vocab_size
        row = len(tokens) // global_batch_size
        self.batches_per_epoch = (row - 1) // seq_len
        if self.batches_per_epoch < 1:
            raise ValueError(f"{len(tokens)} tokens make no batch of {global_batch_size} rows of "
                             f"{seq_len + 1} tokens")
        self.rows = tokens[:global_batch_size * row].reshape(global_batch_size, row)
        self.rows = self.rows[_local_rows(global_batch_size, process_index, process_count)]
        self.seq_len = seq_len
        self.epoch, self.index = 0, 0

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def restore(self, state: Mapping[str, int]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])

    def _batch(self, j: int) -> dict[str, np.ndarray]:
        lo = j * self.seq_len
        batch = {"tokens": _checked(self.rows[:, lo:lo + self.seq_len + 1], self.vocab_size)}
        if self.with_reset:
            batch["reset"] = np.full((len(self.rows),), int(j == 0), np.int32)
        return batch

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.index >= self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        batch = self._batch(self.index)
        self.index += 1
        return batch

    def epoch_batches(self) -> Iterator[dict[str, np.ndarray]]:
        """One pass in order, from a reset state (for evaluation)."""
        for j in range(self.batches_per_epoch):
            yield self._batch(j)


class WindowIterator:
    """B windows of T+1 tokens at random offsets per batch: ``{"tokens": (B, T+1)}``.

    Batch s draws its offsets from ``(seed, s)``, so a restored iterator repeats exactly.
    """

    def __init__(self, tokens: np.ndarray, global_batch_size: int, seq_len: int, *, seed: int = 0,
                 vocab_size: int | None = None, process_index: int | None = None,
                 process_count: int | None = None):
        self.tokens, self.vocab_size = _ids(tokens), vocab_size
        if len(self.tokens) < seq_len + 2:
            raise ValueError(f"{len(self.tokens)} tokens are too few for windows of {seq_len + 1}")
        self.global_batch_size, self.seq_len, self.seed = global_batch_size, seq_len, seed
        self.local = _local_rows(global_batch_size, process_index, process_count)
        self.index = 0

    def state(self) -> dict[str, int]:
        return {"index": self.index}

    def restore(self, state: Mapping[str, int]) -> None:
        self.index = int(state["index"])

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.index])
        self.index += 1
        starts = rng.integers(0, len(self.tokens) - self.seq_len - 1, self.global_batch_size)
        starts = starts[self.local]
        return {"tokens": self._windows(starts)}

    def _windows(self, starts: np.ndarray) -> np.ndarray:
        return _checked(self.tokens[starts[:, None] + np.arange(self.seq_len + 1)],
                        self.vocab_size)

    def epoch_batches(self) -> Iterator[dict[str, np.ndarray]]:
        """Non-overlapping windows in order, covering the split once (for evaluation)."""
        n = (len(self.tokens) - 1) // self.seq_len
        starts = np.arange(n) * self.seq_len
        for lo in range(0, n - self.global_batch_size + 1, self.global_batch_size):
            s = starts[lo:lo + self.global_batch_size][self.local]
            yield {"tokens": self._windows(s)}


def max_eval_rows(data_config, num_tokens: int) -> int:
    """The most rows an evaluation batch of ``num_tokens`` tokens can have: an in-order pass
    (``epoch_batches``) makes a batch only if its rows are at most this many."""
    data = _data(data_config)
    seq_len = data.seq_len
    if data.batching == "stream":
        return num_tokens // (seq_len + 1)  # B rows of len // B >= seq_len + 1 tokens
    return (num_tokens - 1) // seq_len  # non-overlapping windows


def make_iterator(data_config, tokens: np.ndarray, *, seed: int = 0, batch_size: int | None = None,
                  with_reset: bool = True, vocab_size: int | None = None,
                  **process) -> StreamIterator | WindowIterator:
    """``data.batching``: ``stream`` (contiguous, TBPTT) or ``random`` windows; ``data.seq_len``.
    ``with_reset``: stream batches carry ``reset`` (for a model that carries its state).
    ``vocab_size``: every batch's ids are checked to lie below it (a ValueError if not)."""
    data = _data(data_config)
    batching, batch_size, seq_len = data.batching, int(batch_size or data.batch_size), data.seq_len
    if batching == "stream":
        return StreamIterator(tokens, batch_size, seq_len, with_reset=with_reset,
                              vocab_size=vocab_size, **process)
    if batching == "random":
        return WindowIterator(tokens, batch_size, seq_len, seed=seed, vocab_size=vocab_size,
                              **process)
    raise ValueError(f"unknown batching {batching!r}; choose stream or random")
