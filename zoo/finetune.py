"""Starting a run from trained weights: ``train.init_from`` and ``train.init_reinit``.

The source is whatever :func:`zoo.checkpoint.load_run` reads: a zoo run directory (its newest
checkpoint), one checkpoint of it (``RUN/checkpoints/STEP``), a saved run, or a Hugging Face GPT-2
folder (``config.json``, ``model.safetensors`` or ``pytorch_model.bin``, tokenizer files). The run
starts at step 0 with a fresh optimizer from the source's params (a LoRA source's merged):

* The architecture is the source's (:func:`adopt_architecture`): its model section fills the
  config's, and a config that sets one of those keys to another value is refused, naming both,
  before anything is built (with ``train.init_reinit`` set, the config's values stand: a new head
  or vocabulary is what re-initialising is for). Keys that only say how the model runs
  (:data:`RUN_KEYS`: dropout, dtype, remat, LoRA, ...) stay the config's.
* The tokenizer is the source's, unless ``data.tokenizer_path`` names another.
* Every parameter is the source's (:func:`start_from`). One whose shape differs, one the source
  lacks, and one of the source's that this model lacks are refused with their paths and shapes,
  unless ``train.init_reinit`` (a regex of paths, :mod:`zoo.core.params`) matches them: those
  are initialised fresh (or dropped). LoRA adapters are new by nature and always start fresh.

A fine-tuning run that is resumed reads its own checkpoints, never ``init_from`` again: its
architecture comes from the config saved with them (:func:`prepare`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from zoo import checkpoint
from zoo.core import lora, settings
from zoo.core import params as params_lib
from zoo.core.settings import DataSettings, RunSettings
from zoo.core.step import is_per_example
from zoo.core.train_state import TrainState

# Model keys that say how a model runs, not what it is: the config's own, never the source's
# (``unit``, what a language model's metrics count, comes from the tokenizer of the new data).
RUN_KEYS = frozenset({"dropout", "dtype", "remat", "attention_impl", "lstm_impl", "seq_len", "unit",
                      *lora.LoraSettings.KEYS})


def _unset(key: str, value) -> bool:
    # vocab_size=0 is a text config's "take the tokenizer's" (zoo.input_pipeline.fill_model_config)
    return value is None or value == "" or (key == "vocab_size" and value == 0)


def _plain(value):
    return tuple(_plain(v) for v in value) if isinstance(value, (list, tuple)) else value


def adopt_architecture(config, source_model: Mapping, source: str, *,
                       reshaping: bool = False, log: Callable[[str], None] = print):
    """A copy of ``config`` whose model section is ``source_model``'s, with the config's
    :data:`RUN_KEYS`; a key both set, to different values, is a ValueError naming both. With
    ``reshaping`` (``train.init_reinit`` is set: some parameters will be drawn fresh) the
    config's values stand, and the parameters' shapes decide what fits."""
    config = copy.deepcopy(config)
    model = dict(config["model"].items())
    conflicts = []
    for key, theirs in source_model.items():
        if key in RUN_KEYS:
            continue
        mine = model.get(key)
        if _unset(key, mine):
            model[key] = _plain(theirs)
        elif _plain(mine) != _plain(theirs):
            conflicts.append(f"model.{key}={mine!r} here, {theirs!r} in the source")
    if conflicts and reshaping:
        log(f"zoo: train.init_reinit is set, so the config's model keys stand over the "
            f"source's: {'; '.join(conflicts)}")
    elif conflicts:
        raise ValueError(f"train.init_from={source} takes the model's architecture from the "
                         f"source, but the config sets it differently: {'; '.join(conflicts)}. "
                         "Leave those keys unset (or set them as the source has them), or set "
                         "train.init_reinit to the parameters they reshape")
    config["model"] = (ml_collections.ConfigDict(model)
                       if isinstance(config, ml_collections.ConfigDict) else model)
    return config


def source_tokenizer(config, source: checkpoint.LoadedRun) -> dict | None:
    """The source's tokenizer (its ``to_config()``) for a text run, unless
    ``data.tokenizer_path`` names another; a ``data.tokenizer`` of another kind is refused."""
    data = settings.parse(DataSettings, config["data"], "data")
    if source.tokenizer is None or data.tokenizer_path or data.dataset == "synthetic":
        return None  # synthetic text brings its own symbols
    if data.tokenizer and data.tokenizer != source.tokenizer.name:
        raise ValueError(f"data.tokenizer={data.tokenizer!r}, but the train.init_from source "
                         f"tokenizes with {source.tokenizer.name!r}; set data.tokenizer="
                         f"{source.tokenizer.name!r}, or name another's files with "
                         "data.tokenizer_path")
    return source.tokenizer.to_config()


def prepare(config, workdir: Path | None, log: Callable[[str], None] = print
            ) -> tuple[object, checkpoint.LoadedRun | None, dict | None]:
    """``(config, source, tokenizer)`` for a run with ``train.init_from``: the config with the
    source's architecture, the source run (None when ``workdir`` holds checkpoints to resume:
    then the architecture comes from them) and the source's tokenizer (or None)."""
    tc = RunSettings.parse(config).train
    init_from, reshaping = tc.init_from, bool(tc.init_reinit)
    ckpt_dir = checkpoint.find_checkpoints(workdir) if workdir is not None else None
    if ckpt_dir is not None:
        reader = checkpoint.Checkpointer(ckpt_dir)
        try:
            saved = reader.read_extra(log=log)
        finally:
            reader.close()
        return adopt_architecture(config, saved["config"]["model"],
                                  f"{init_from} (resumed from {ckpt_dir})", reshaping=reshaping,
                                  log=log), None, None
    if not (Path(init_from).exists()):
        raise ValueError(f"train.init_from={init_from!r} does not exist; give a zoo run, one of "
                         "its checkpoints, or a Hugging Face GPT-2 folder")
    source = checkpoint.load_run(init_from, log=log)
    config = adopt_architecture(config, source.config["model"], init_from,
                                reshaping=reshaping, log=log)
    return config, source, source_tokenizer(config, source)


def _shape(x) -> str:
    return "(" + ", ".join(map(str, np.shape(x))) + ")"


def start_from(template: TrainState, source: checkpoint.LoadedRun, reinit: str = "",
               log: Callable[[str], None] = print, name: str = "the source") -> TrainState:
    """``template`` (a run's state at step 0) with the source's params and model statistics in
    place of its fresh ones, and its optimizer state initialised for them."""
    fresh = params_lib.flatten(template.params)
    theirs = params_lib.flatten(source.params)
    match = (params_lib.compile_pattern(reinit, "train.init_reinit").search if reinit
             else lambda _: False)
    problems, reinitialised, adapters = [], [], 0
    for path, x in fresh.items():
        if match(path):
            reinitialised.append(path)
        elif path.rsplit("/", 1)[-1] in lora.ADAPTERS:
            adapters += 1
        elif path not in theirs:
            problems.append(f"{path} {_shape(x)} is not in the source")
        elif np.shape(theirs[path]) != np.shape(x):
            problems.append(f"{path} is {_shape(theirs[path])} in the source, {_shape(x)} here")
    dropped = [p for p in theirs if p not in fresh and match(p)]
    problems += [f"the source's {p} {_shape(theirs[p])} is not in this model" for p in theirs
                 if p not in fresh and not match(p)]
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if
                                            len(problems) > 6 else "")
        raise ValueError(f"train.init_from: the parameters do not fit: {shown}. Set "
                         "train.init_reinit to a regex of the paths to initialise fresh")
    if reinit and not reinitialised and not dropped:
        raise ValueError(f"train.init_reinit={reinit!r} matches no parameter; paths look like "
                         f"{', '.join(list(fresh)[:4])}")

    def take(keypath, x):
        path = params_lib.path_of(keypath)
        if match(path) or path not in theirs:
            return x
        return jnp.asarray(theirs[path], x.dtype)

    params = jax.tree_util.tree_map_with_path(take, template.params)
    stats = params_lib.flatten(source.model_state)

    def take_stat(keypath, x):  # BatchNorm statistics where they fit; per-example rows stay
        path = params_lib.path_of(keypath)
        y = stats.get(path)
        if is_per_example(keypath) or y is None or np.shape(y) != np.shape(x) or match(path):
            return x
        return jnp.asarray(y, x.dtype)

    model_state = jax.tree_util.tree_map_with_path(take_stat, template.model_state)
    at = f" (step {source.step})" if source.step is not None else ""
    taken = len(fresh) - len(reinitialised) - adapters
    log(f"zoo: initialised from {name}{at}: {taken} of {len(fresh)} parameter arrays taken"
        + (f", {adapters} LoRA adapters new" if adapters else "")
        + (f", {len(reinitialised)} initialised fresh ({', '.join(reinitialised[:4])}"
           f"{', ...' if len(reinitialised) > 4 else ''})" if reinitialised else ""))
    return template.replace(
        params=params, model_state=model_state,
        opt_state={p: template.tx[p].init(params[p]) for p in template.tx},
        ema_params=None if template.ema_params is None else jax.tree.map(jnp.array, params))
