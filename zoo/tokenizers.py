"""Tokenizers: characters, a word vocabulary (PTB), and GPT-2's byte-level BPE.

Every tokenizer has ``encode(text) -> list[int]``, ``decode(ids) -> str``, ``vocab_size`` and
``to_config() -> dict`` (JSON-able; :func:`from_config` rebuilds it), so a run directory can store
the tokenizer next to the params. Text outside a char or word vocabulary is an error that names the
offending characters or words (:class:`OutOfVocabularyError`); GPT-2's BPE covers every byte, so
it has none.

GPT-2's BPE is implemented here (about 60 lines, after openai/gpt-2's ``encoder.py``) and reads the
usual ``vocab.json`` and ``merges.txt``; zoo does not need ``transformers`` to tokenize.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from zoo.config import read_json

TOKENIZERS = ("char", "word", "gpt2")


def _quote(items: Iterable[str], limit: int = 20) -> str:
    items = sorted(set(items))
    shown = ", ".join(repr(c) for c in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


class OutOfVocabularyError(ValueError):
    """Text holds characters or words outside a tokenizer's vocabulary.

    Attributes: ``unknown``, the distinct ones, sorted; ``what``, how many of which (``"3
    word(s)"``); ``listing``, the first of them quoted, with any advice. The message holds all
    three.
    """

    def __init__(self, unknown: Iterable[str], what: str, vocab_size: int, hint: str = ""):
        self.unknown = sorted(set(unknown))
        self.what = f"{len(self.unknown)} {what}"
        self.listing = _quote(self.unknown) + hint
        super().__init__(f"text has {self.what} outside the vocabulary of {vocab_size}: "
                         f"{self.listing}")


class CharTokenizer:
    """One id per character, in sorted order of the characters seen in the training text."""

    name = "char"

    def __init__(self, chars: Sequence[str]):
        self.chars = list(chars)
        if len(set(self.chars)) != len(self.chars) or any(len(c) != 1 for c in self.chars):
            raise ValueError("a char vocabulary is a list of distinct single characters")
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        unknown = set(text) - self.index.keys()
        if unknown:
            raise OutOfVocabularyError(unknown, "character(s)", self.vocab_size)
        return [self.index[c] for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def to_config(self) -> dict:
        return {"name": self.name, "chars": "".join(self.chars)}


class WordTokenizer:
    """Whitespace-separated words, newlines as ``eos`` (Mikolov's PTB: 10k words with ``<unk>``)."""

    name = "word"

    def __init__(self, words: Sequence[str], eos: str = "<eos>"):
        self.words = list(words)
        self.eos = eos
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise ValueError("a word vocabulary is a list of distinct words")
        if eos not in self.index:
            raise ValueError(f"the end-of-line token {eos!r} is not in the vocabulary")

    @classmethod
    def from_text(cls, text: str, eos: str = "<eos>") -> "WordTokenizer":
        """Vocabulary of ``text`` in order of first appearance, end-of-line token first."""
        words = {eos: None}
        for line in text.splitlines():
            words.update(dict.fromkeys(line.split()))
        return cls(list(words), eos)

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def split(self, text: str) -> list[str]:
        lines = text.split("\n")
        out = []
        for i, line in enumerate(lines):
            out.extend(line.split())
            if i < len(lines) - 1:
                out.append(self.eos)
        return out

    def encode(self, text: str) -> list[int]:
        words = self.split(text)
        unknown = [w for w in words if w not in self.index]
        if unknown:
            hint = " (PTB writes rare words as '<unk>')" if "<unk>" in self.index else ""
            raise OutOfVocabularyError(unknown, "word(s)", self.vocab_size, hint)
        return [self.index[w] for w in words]

    def decode(self, ids: Iterable[int]) -> str:
        out: list[str] = []
        for i in ids:
            word = self.words[int(i)]
            if word == self.eos:
                out.append("\n")
            else:
                out.extend([" ", word] if out and out[-1] != "\n" else [word])
        return "".join(out)

    def to_config(self) -> dict:
        return {"name": self.name, "words": self.words, "eos": self.eos}


@functools.lru_cache()
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from the 256 bytes to printable unicode characters (openai/gpt-2 encoder.py)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


# GPT-2's pre-tokenization: contractions, letters, numbers, other symbols, whitespace.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class GPT2Tokenizer:
    """GPT-2's byte-level BPE from its ``vocab.json`` (token -> id) and ``merges.txt``."""

    name = "gpt2"

    def __init__(self, encoder: dict[str, int], merges: Sequence[tuple[str, str]],
                 vocab_file: str | None = None, merges_file: str | None = None):
        import regex  # \p{L} and \p{N} need the regex module (a dependency of zoo's text path)

        self.encoder = dict(encoder)
        self.decoder = {i: t for t, i in self.encoder.items()}
        self.ranks = {tuple(m): i for i, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.pattern = regex.compile(GPT2_PATTERN)
        # Absolute: the files are named in a run's saved tokenizer, read from any directory.
        self.files = tuple(str(Path(f).resolve()) if f else None for f in (vocab_file, merges_file))
        self._cache: dict[str, list[str]] = {}
        self.eos_id = self.encoder.get("<|endoftext|>")

    @classmethod
    def from_files(cls, vocab_file: str | os.PathLike, merges_file: str | os.PathLike):
        """Reads ``vocab.json`` and ``merges.txt``. :meth:`to_config` names them by absolute
        path, so a run that saved it resumes, evaluates and generates from any directory."""
        vocab_file, merges_file = Path(vocab_file).resolve(), Path(merges_file).resolve()
        for file in (vocab_file, merges_file):
            if not file.is_file():
                raise ValueError(f"GPT-2 tokenizer file {file} not found (the BPE needs its "
                                 "vocab.json and merges.txt)")
        encoder = read_json(vocab_file, "a GPT-2 vocab.json")
        lines = merges_file.read_text(encoding="utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines
                  if line and not line.startswith("#version") and len(line.split()) == 2]
        return cls(encoder, merges, str(vocab_file), str(merges_file))

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> "GPT2Tokenizer":
        path = Path(path)
        missing = [f for f in ("vocab.json", "merges.txt") if not (path / f).exists()]
        if missing:
            raise ValueError(f"{path} has no {' or '.join(missing)}: GPT-2's BPE needs both")
        return cls.from_files(path / "vocab.json", path / "merges.txt")

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def bpe(self, word: str) -> list[str]:
        """Merges the characters of one pre-token, lowest-ranked pair first, until none applies."""
        if word in self._cache:
            return self._cache[word]
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.ranks.get(p, float("inf")), i)
                     for i, p in enumerate(zip(parts, parts[1:]))]
            rank, best = min(pairs)
            if rank == float("inf"):
                break
            first, second = parts[best], parts[best + 1]
            merged, i = [], 0
            while i < len(parts):  # merge every occurrence of the best pair, left to right
                if i < len(parts) - 1 and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in self.pattern.findall(text):
            word = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            for token in self.bpe(word):
                if token not in self.encoder:
                    raise ValueError(f"BPE token {token!r} is not in vocab.json; the vocabulary "
                                     "and merges files do not belong together")
                ids.append(self.encoder[token])
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        text = "".join(self.decoder[int(i)] for i in ids)
        return bytes(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace")

    def to_config(self) -> dict:
        if not all(self.files):
            raise ValueError("a GPT-2 tokenizer built in memory has no files to name")
        return {"name": self.name, "vocab_file": self.files[0], "merges_file": self.files[1]}


Tokenizer = CharTokenizer | WordTokenizer | GPT2Tokenizer


def from_config(config: dict) -> Tokenizer:
    """Rebuilds a tokenizer from :meth:`to_config`'s dict; a ValueError names what a damaged or
    hand-edited one lacks."""
    if not isinstance(config, dict):
        raise ValueError(f"a saved tokenizer is a dict with its name; got {type(config).__name__}")
    name = config.get("name")
    needs = {"char": ("chars",), "word": ("words",), "gpt2": ("vocab_file", "merges_file")}
    missing = [key for key in needs.get(name, ()) if key not in config]
    if missing:
        raise ValueError(f"the saved {name} tokenizer has no {', '.join(missing)}")
    if name == "char":
        return CharTokenizer(list(config["chars"]))
    if name == "word":
        return WordTokenizer(config["words"], config.get("eos", "<eos>"))
    if name == "gpt2":
        return GPT2Tokenizer.from_files(config["vocab_file"], config["merges_file"])
    raise ValueError(f"unknown tokenizer {name!r}; choose one of {', '.join(TOKENIZERS)}")


def get_tokenizer(name: str, *, text: str | None = None, path: str | os.PathLike | None = None
                  ) -> Tokenizer:
    """A tokenizer by name: ``char`` or ``word`` built from ``text``, ``gpt2`` from ``path`` (a
    folder holding ``vocab.json`` and ``merges.txt``)."""
    if name == "char":
        if text is None:
            raise ValueError("the char tokenizer is built from a text; pass text=")
        return CharTokenizer.from_text(text)
    if name == "word":
        if text is None:
            raise ValueError("the word tokenizer is built from a text; pass text=")
        return WordTokenizer.from_text(text)
    if name == "gpt2":
        if path is None:
            raise ValueError("the gpt2 tokenizer reads vocab.json and merges.txt; pass path=")
        return GPT2Tokenizer.from_dir(path)
    raise ValueError(f"unknown tokenizer {name!r}; choose one of {', '.join(TOKENIZERS)}")
