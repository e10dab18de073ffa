"""A run's data from its config: the training iterator, evaluation passes and, for text, the tokenizer.

Image datasets (``mnist``, ``fashion_mnist``, ``cifar10``, ``synthetic``) come from
:mod:`zoo.data`; text datasets (``tiny_shakespeare``, ``ptb``, ``ptb_char``, ``tokens`` folders
of memory-mapped token files, and ``synthetic`` token streams for a language model) from
:mod:`zoo.text_data`. Either way the training iterator
is deterministic for a seed, gives each process its slice of the global batch, and saves and
restores its position (``state()`` / ``restore()``), which the checkpoint holds.

Text runs build their tokenizer from the training split (``char``, ``word``) or from GPT-2's files
(``gpt2``), or take a saved one (a resumed or evaluated run uses the tokenizer it trained with).
:func:`fill_model_config` fills the model's vocabulary, sequence length and unit from the tokenizer
and the data, and refuses a model that does not match them.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
from typing import Any, Callable, Iterator

import numpy as np

from zoo import data as data_lib
from zoo import text_data
from zoo import tokenizers as tok
from zoo.core import settings
from zoo.core.family import Family
from zoo.core.settings import DataSettings

Batch = dict[str, np.ndarray]


@dataclasses.dataclass
class RunData:
    """What the training loop reads.

    Attributes:
      train: ``next(train)`` is this process's part of the next global batch; ``train.state()``
        and ``train.restore(state)`` save and restore its position. None when only evaluating.
      eval_batches: ``eval_batches()`` is one in-order pass over the evaluation split.
      eval_split: the split ``eval_batches`` reads.
      example: one batch of training shapes (to initialise the model).
      tokenizer: the text tokenizer (None for images).
      eval_text: the evaluation split's text (None for images): prompts and reference n-grams.
      eval_batch_size: the global size of each evaluation batch (``data.eval_batch_size``, or the
        whole split when that is smaller).
    """

    train: Any | None
    eval_batches: Callable[[], Iterator[Batch]]
    eval_split: str
    example: Batch
    tokenizer: tok.Tokenizer | None = None
    eval_text: str | None = None
    eval_batch_size: int = 0


class DevicePrefetch:
    """Batches placed ``depth`` steps ahead, as ``flax.jax_utils.prefetch_to_device`` (on CPU the
    single strategy's placed batch is the checked host arrays).

    ``next()`` gives the oldest placed batch and places one more, so a batch's transfer is issued
    while earlier steps still run (the steps are dispatched asynchronously). ``state()`` is the
    wrapped iterator's position *before* the next batch this gives, so a checkpoint resumes
    exactly at the batch the loop would have trained on next, not after the prefetched ones.

    Args:
      it: an iterator with ``state()`` (e.g. :class:`zoo.data.BatchIterator`).
      place: a host batch to a placed one (``CompiledStep.place_batch``).
      depth: batches in flight (2: double buffering).
    """

    def __init__(self, it, place: Callable[[Batch], Any], depth: int = 2):
        self.it, self.place, self.depth = it, place, depth
        self.queue: collections.deque = collections.deque()
        self._fill()

    def _fill(self) -> None:
        while len(self.queue) < self.depth:
            position = self.it.state()
            self.queue.append((position, self.place(next(self.it))))

    def state(self) -> dict:
        return self.queue[0][0]

    def __iter__(self) -> "DevicePrefetch":
        return self

    def __next__(self):
        _, batch = self.queue.popleft()
        self._fill()
        return batch


def known_datasets() -> tuple[str, ...]:
    """The names ``data.dataset`` takes: ``synthetic``, the image datasets, the text datasets."""
    return ("synthetic", *data_lib.IMAGE_DATASETS, *text_data.TEXT_DATASETS)


def _data(data_config) -> DataSettings:
    return settings.parse(DataSettings, data_config, "data")


def is_text(data_config) -> bool:
    """Whether ``data_config`` gives a language model's data (a tokenizer, token batches): a text
    dataset, or ``synthetic`` in a text data section (one with ``seq_len``, as
    ``configs/default.text_data`` makes)."""
    data = _data(data_config)
    return data.dataset in text_data.TEXT_DATASETS or (data.dataset == "synthetic" and
                                                       data.seq_len > 0)


# The data keys only text reads; set on image data they would do nothing (seq_len > 0 makes
# synthetic data text).
TEXT_ONLY_KEYS = ("source", "path", "tokenizer", "tokenizer_path", "batching", "seq_len",
                  "synthetic_vocab")


def check_dataset(data_config) -> None:
    """Refuses a ``data.dataset`` that is not one of :func:`known_datasets`, or text keys on image
    data (before any loading)."""
    data = _data(data_config)
    if data.dataset not in known_datasets():
        raise ValueError(f"unknown dataset {data.dataset!r}; known: "
                         f"{', '.join(known_datasets())}")
    text_keys = [f"data.{k}={getattr(data, k)!r}" for k in TEXT_ONLY_KEYS
                 if getattr(data, k) != getattr(DataSettings, k)]
    if text_keys and not is_text(data):
        what = "a key" if len(text_keys) == 1 else "keys"
        raise ValueError(f"data.dataset={data.dataset!r} holds images, but "
                         f"{', '.join(text_keys)} {'is' if len(text_keys) == 1 else 'are'} "
                         f"{what} of text data (text datasets: "
                         f"{', '.join(text_data.TEXT_DATASETS)}, or synthetic with data.seq_len "
                         "> 0)")


def make_tokenizer(data_config, saved: dict | None = None) -> tok.Tokenizer:
    """The saved tokenizer (a ``to_config()`` dict) if given, else one built from the config."""
    return tok.from_config(saved) if saved else text_data.make_tokenizer(data_config)


# What a language model's metrics count per tokenizer: bits per character, or perplexity.
UNIT_OF_TOKENIZER = {"char": "char", "word": "word", "gpt2": "token"}


def fill_model_config(config, tokenizer: tok.Tokenizer):
    """A copy of ``config`` whose language model agrees with its data, filled where unset.

    * ``model.vocab_size``: the tokenizer's when unset (0). A larger one is allowed (GPT-2 is often
      padded to a multiple of 64); a smaller one cannot embed every token and is refused.
    * ``model.seq_len``: ``data.seq_len`` when unset (0); another is refused.
    * ``model.unit``: the tokenizer's (``char``, ``word``, or ``token`` for GPT-2's BPE) when
      unset; another is refused.
    """
    config = copy.deepcopy(config)
    model, data = config.model, config.data
    vocab = model.get("vocab_size", 0) or 0
    if not vocab:
        model.vocab_size = tokenizer.vocab_size
    elif vocab < tokenizer.vocab_size:
        raise ValueError(f"model.vocab_size={vocab} is smaller than the {tokenizer.vocab_size} "
                         f"tokens of the {type(tokenizer).__name__}; set model.vocab_size=0 to "
                         "take the tokenizer's")

    seq_len = _data(data).seq_len
    if seq_len < 1:
        raise ValueError(f"data.seq_len={seq_len}: a language model's data needs the "
                         "number of tokens per row (>= 1)")
    if not model.get("seq_len", 0):
        model.seq_len = seq_len
    elif int(model.seq_len) != seq_len:
        raise ValueError(f"model.seq_len={model.seq_len} differs from data.seq_len={seq_len}; set "
                         "only data.seq_len (model.seq_len=0 takes it)")

    unit = UNIT_OF_TOKENIZER[tokenizer.name]
    if not model.get("unit", ""):
        model.unit = unit
    elif model.unit != unit:
        raise ValueError(f"model.unit={model.unit!r} does not match the {tokenizer.name} tokenizer "
                         f"of data.tokenizer, whose unit is {unit!r}; leave model.unit unset to "
                         "take it")

    return config


def check_batching(data_config, family: Family) -> None:
    """Refuses a ``data.batching`` the family cannot train on (its ``text_batching``: an LSTM
    carrying its state across batches needs ``stream`` rows)."""
    if family.text_batching is None:
        return
    needed, why = family.text_batching
    batching = _data(data_config).batching
    if batching != needed:
        raise ValueError(f"data.batching={batching!r}, but {why}. Set data.batching={needed!r}")


def load_images(data_config, family: Family, split: str, *, seed: int) -> Batch:
    """Arrays of ``split`` holding the keys of ``family.batch_spec``."""
    data = _data(data_config)
    name = data.dataset
    if name == "synthetic":
        if "image" not in family.batch_spec:
            raise ValueError(f"synthetic data for the {family.name} family needs a text data "
                             "section (data.seq_len, data.batching: configs/default.text_data)")
        if split not in text_data.SPLITS:  # one eval set stands in for every split but train
            raise ValueError(f"unknown split {split!r}; synthetic data has "
                             f"{', '.join(text_data.SPLITS)}")
        shape = family.batch_spec["image"].shape
        n = data.synthetic_size
        arrays = data_lib.synthetic_images(n, shape, num_classes=family.num_classes or 10,
                                           seed=seed + (split != "train"))
    else:
        check_images_fit(family, name)
        arrays = data_lib.load_tfds(name, split, data_dir=data.tfds_data_dir or None,
                                    download_dir=data.download_dir or None)
    missing = set(family.batch_spec) - set(arrays)
    if missing:
        raise ValueError(f"dataset {name!r} has no {sorted(missing)} for family {family.name!r}")
    return {k: arrays[k] for k in family.batch_spec}


def check_images_fit(family: Family, dataset: str, *, trained: bool = False) -> None:
    """Refuses, from the dataset's known shape and classes (before TFDS is asked for it), images
    of another shape than the model's or labels beyond its classes: either would otherwise fail
    inside a trace or run on garbage (one-hot rows of zeros, a cross-entropy of NaN, clamped
    embedding rows). ``trained``: the model is a saved run's, so the dataset is what to change."""
    shape, classes = data_lib.IMAGE_DATASETS[dataset]
    takes = family.batch_spec.get("image")
    if takes is not None and tuple(takes.shape) != shape:
        fix = "give a dataset of that shape" if trained else f"set model.image_shape={shape}"
        raise ValueError(f"{dataset} images are {shape}; the {family.name} model takes "
                         f"{tuple(takes.shape)}: {fix}")
    if 0 < family.num_classes < classes:
        fix = (f"give a dataset of at most {family.num_classes} classes" if trained else
               f"set model.num_classes={classes}")
        raise ValueError(f"{dataset} has {classes} classes (labels 0 .. {classes - 1}); the "
                         f"{family.name} model has {family.num_classes}: {fix}")


def _check_eval_rows(data_config, split: str, num_tokens: int, eval_size: int) -> None:
    """Refuses an evaluation split too short for one batch (it would evaluate nothing)."""
    rows = text_data.max_eval_rows(data_config, num_tokens)
    if rows < eval_size:
        fix = f"set data.eval_batch_size to at most {rows}" if rows else "lower data.seq_len"
        raise ValueError(
            f"the {split} split of {_data(data_config).dataset} ({num_tokens:,} tokens) makes no "
            f"evaluation batch of data.eval_batch_size={eval_size} rows of data.seq_len + 1 = "
            f"{_data(data_config).seq_len + 1} tokens; {fix}")


def make_run_data(data_config, family: Family, *, seed: int, train: bool = True,
                  eval_split: str | None = None, tokenizer: tok.Tokenizer | None = None
                  ) -> RunData:
    """The run's data (see :class:`RunData`).

    ``eval_split`` defaults to ``data.eval_split`` (``validation`` for text, ``test`` for images,
    MNIST having no validation split).
    """
    data_config = _data(data_config)
    check_dataset(data_config)
    batch_size = data_config.batch_size
    eval_size = data_config.eval_batch_size or batch_size
    text = is_text(data_config)
    eval_split = eval_split or data_config.eval_split or (
        "validation" if text else "test")

    if not text:
        train_arrays = load_images(data_config, family, "train", seed=seed) if train else None
        eval_arrays = load_images(data_config, family, eval_split, seed=seed)
        n_eval = len(next(iter(eval_arrays.values())))
        if not n_eval:
            raise ValueError(f"the {eval_split} split of {data_config.dataset} has no examples")
        eval_size = min(eval_size, n_eval)  # a batch larger than the split: the whole split
        eval_iter = lambda: data_lib.BatchIterator(
            eval_arrays, eval_size, shuffle=False).epoch_batches()
        source = train_arrays or eval_arrays
        example = {k: v[:batch_size] for k, v in source.items()}
        it = data_lib.BatchIterator(train_arrays, batch_size, seed=seed) if train else None
        return RunData(it, eval_iter, eval_split, example, eval_batch_size=eval_size)

    if tokenizer is None:
        raise ValueError("a text dataset needs its tokenizer (input_pipeline.make_tokenizer)")
    eval_split = text_data.resolve_split(data_config, eval_split)
    eval_tokens, eval_text = text_data.load_tokens_and_text(data_config, eval_split, tokenizer)
    _check_eval_rows(data_config, eval_split, len(eval_tokens), eval_size)
    with_reset = "reset" in family.batch_spec  # a model that carries its state across batches
    options = dict(with_reset=with_reset, vocab_size=tokenizer.vocab_size)
    eval_iter = lambda: text_data.make_iterator(
        data_config, eval_tokens, batch_size=eval_size, **options).epoch_batches()
    it = None
    if train:
        train_tokens, _ = text_data.load_tokens(data_config, "train", tokenizer)
        it = text_data.make_iterator(data_config, train_tokens, seed=seed, **options)
        source = train_tokens
    else:
        source = eval_tokens
    # A whole global batch (every process's rows): per-example state is sized from it.
    example = next(text_data.make_iterator(data_config, source, seed=seed, process_index=0,
                                           process_count=1, **options))
    return RunData(it, eval_iter, eval_split, example, tokenizer, eval_text,
                   eval_batch_size=eval_size)
