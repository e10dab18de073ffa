"""The run config's sections as typed values, parsed once: the one home of every default.

A config (``configs/*.py``) is an ``ml_collections.ConfigDict`` with ``model``, ``data``,
``optimizer`` (or per-player ``optimizers``), ``parallel`` and ``train`` sections. The top of a run
(:func:`zoo.build.build`) parses each run section into the frozen dataclass below and hands the
layers beneath it these values; ``configs/default.py`` is filled from these dataclasses'
defaults, so a default is written once, here, and a config written in Python with keys left out
gets the same defaults as a config file. (A family's model section is its own: the family file
reads it, with its defaults on the model's modules, :func:`module_fields`.)

``parse(DataSettings, section)`` accepts a ConfigDict, a dict or an instance; a key the section does
not have is refused with the keys it has.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """``data``: which dataset and how it is batched.

    Images: ``dataset`` (mnist, fashion_mnist, cifar10, synthetic), TFDS folders. Text (a text
    dataset, or ``synthetic`` with ``seq_len > 0``): ``source`` (raw files or tfds), ``path``,
    ``tokenizer`` (char, word, gpt2; empty: the dataset's usual one) and ``tokenizer_path``,
    ``batching`` (``stream`` rows for an LSTM's carried state, ``random`` windows), ``seq_len``
    tokens per row, ``synthetic_vocab``.
    """

    dataset: str = "mnist"
    batch_size: int = 128
    eval_batch_size: int = 1000     # 0: batch_size; larger than the split: the whole split
    eval_split: str = ""            # "": validation for text, test for images
    synthetic_size: int = 4096      # examples (images) or tokens (text) per synthetic split
    tfds_data_dir: str = ""
    download_dir: str = ""
    source: str = "raw"
    path: str = ""
    tokenizer: str = ""
    tokenizer_path: str = ""
    batching: str = "random"
    seq_len: int = 0
    synthetic_vocab: int = 64


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """``optimizer`` (and each of ``optimizers.<player>``): an optax optimizer and its schedule
    (:func:`zoo.core.optim.make_optimizer`)."""

    name: str = "adam"
    learning_rate: float = 1e-3
    schedule: str = "constant"
    warmup_steps: int = 0
    grad_clip_norm: float = 0.0     # global-norm clipping; 0: off
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.0           # sgd; 0: none
    end_factor: float = 0.0
    decay_rate: float = 0.5
    transition_steps: int = 0
    decay_begin: int = 0
    boundaries: tuple[int, ...] = ()
    freeze: str = ""                # regex of parameter paths that get no updates (zoo.core.params)


@dataclasses.dataclass(frozen=True)
class ParallelSettings:
    """``parallel``: ``strategy`` (single, pmap, mesh) and, for mesh, ``data`` x ``fsdp``
    (``data=-1``: every device not in fsdp)."""

    strategy: str = "mesh"
    data: int = -1
    fsdp: int = 1


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """``train``: the loop, its checkpoints and the compiled step's options."""

    steps: int = 1000
    log_every: int = 50
    eval_every: int = 0             # 0: at the end only
    checkpoint_every: int = 500     # 0: at the end only
    keep_checkpoints: int = 3
    best_metric: str = "loss"       # "": keep only the latest checkpoints
    best_mode: str = "min"
    nonfinite: str = "stop"         # stop, or skip the update in-graph
    seed: int = 0
    grad_accum_steps: int = 1
    compute_dtype: str = "float32"
    remat: bool = False
    ema_decay: float = 0.0          # > 0: keep an EMA of the params (sampled from); 0: none
    sample_prompt: str = ""         # language models: "" = the start of the evaluation split
    sample_tokens: int = 200        # language models: tokens written at each evaluation; 0: none
    init_from: str = ""             # start from a zoo run, one checkpoint or a GPT-2 folder
    init_reinit: str = ""           # regex of parameter paths initialised fresh, not taken


def _coerce(value: Any, default: Any, where: str) -> Any:
    if value is None:  # unset
        return default
    if isinstance(default, bool):
        if not isinstance(value, (bool, numbers.Integral)):
            raise ValueError(f"{where}={value!r} must be true or false")
        return bool(value)
    if isinstance(default, int):
        if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) \
                and float(value).is_integer():
            value = int(value)
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise ValueError(f"{where}={value!r} must be an integer")
        return int(value)
    if isinstance(default, float):
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise ValueError(f"{where}={value!r} must be a number")
        return float(value)
    if isinstance(default, tuple):
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise ValueError(f"{where}={value!r} must be a list")
        return tuple(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ValueError(f"{where}={value!r} must be a string")
    return value


# The smallest value each counted setting may take: below it a run would do nothing (steps=0) or
# divide by zero (batch_size=0), so it is refused with its name before anything is built.
MINIMUMS = {
    "DataSettings": {"batch_size": 1, "eval_batch_size": 0, "synthetic_size": 1,
                     "synthetic_vocab": 2, "seq_len": 0},
    "ParallelSettings": {"fsdp": 1},
    # Negative rates, momentum, decay, clipping norms or warm-up mean nothing an optimizer does.
    "OptimizerSettings": {"learning_rate": 0.0, "momentum": 0.0, "weight_decay": 0.0,
                          "grad_clip_norm": 0.0, "warmup_steps": 0, "eps": 0.0, "b1": 0.0,
                          "b2": 0.0},
    "TrainSettings": {"steps": 1, "log_every": 1, "eval_every": 0, "checkpoint_every": 0,
                      "keep_checkpoints": 1, "grad_accum_steps": 1, "sample_tokens": 0,
                      "seed": 0},
}
# Values a key must stay below: Adam's decay rates are fractions (1 would never forget), and a
# seed is a 32-bit number.
BELOW = {
    "OptimizerSettings": {"b1": 1.0, "b2": 1.0},
    "TrainSettings": {"seed": 2 ** 32},
}


def parse(cls: type[T], section: Any, name: str = "") -> T:
    """``section`` (a mapping, or already a ``cls``) as a ``cls``; missing keys take the
    defaults, unknown keys are refused. ``name`` (``"train"``) is what errors call it."""
    if isinstance(section, cls):
        return section
    if section is None:
        section = {}
    if not hasattr(section, "items"):
        raise ValueError(f"{name or cls.__name__} must be a section of keys (a dict or "
                         f"ConfigDict); got {type(section).__name__}")
    items: Mapping = dict(section.items())
    fields = {f.name: f for f in dataclasses.fields(cls)}
    name = name or cls.__name__
    unknown = sorted(set(items) - set(fields))
    if unknown:
        raise ValueError(f"{name} has no key(s) {', '.join(unknown)}; its keys: "
                         f"{', '.join(fields)}")
    values = {k: _coerce(v, fields[k].default, f"{name}.{k}") for k, v in items.items()}
    for key, low in MINIMUMS.get(cls.__name__, {}).items():
        if key in values and values[key] < low:
            raise ValueError(f"{name}.{key}={values[key]} must be >= {low}")
    for key, high in BELOW.get(cls.__name__, {}).items():
        if key in values and not values[key] < high:
            raise ValueError(f"{name}.{key}={values[key]} must be < {high}")
    return cls(**values)


def defaults(cls: type) -> dict[str, Any]:
    """A section's defaults as a plain dict (what ``configs/default.py`` starts from)."""
    return dataclasses.asdict(cls())


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """A whole run config, parsed: the family's own ``model`` section (a plain dict, which the
    family file reads), and the typed run sections. ``optimizers`` holds per-player optimizer
    sections (a GAN's generator and discriminator); a player without one takes ``optimizer``."""

    model: dict
    data: DataSettings
    optimizer: OptimizerSettings
    optimizers: dict
    parallel: ParallelSettings
    train: TrainSettings

    SECTIONS = ("model", "data", "optimizer", "optimizers", "parallel", "train")

    @classmethod
    def parse(cls, config: Any) -> "RunSettings":
        """A config (ConfigDict or dict, or already RunSettings) parsed section by section."""
        if isinstance(config, cls):
            return config
        unknown = sorted(set(config.keys()) - set(cls.SECTIONS))
        if unknown:
            raise ValueError(f"the config has no section(s) {', '.join(unknown)}; its sections: "
                             f"{', '.join(cls.SECTIONS)}")
        get = lambda key: (config[key] if key in config else None) or {}
        model = get("model")
        return cls(model=dict(model.items()) if hasattr(model, "items") else dict(model),
                   data=parse(DataSettings, get("data"), "data"),
                   optimizer=parse(OptimizerSettings, get("optimizer"), "optimizer"),
                   optimizers={p: parse(OptimizerSettings, o, f"optimizers.{p}")
                               for p, o in get("optimizers").items()},
                   parallel=parse(ParallelSettings, get("parallel"), "parallel"),
                   train=parse(TrainSettings, get("train"), "train"))

    def optimizer_of(self, player: str) -> OptimizerSettings:
        return self.optimizers.get(player, self.optimizer)


def module_fields(cls: type, config: Any, rename: Mapping[str, str] | None = None,
                  exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Keyword arguments for a linen module (a dataclass) from the keys of a model section that
    name its fields (``rename``: config key -> field name). A field the section leaves out, or
    sets to None or "", keeps the module's own default: a model's defaults live once, on its
    module. Lists (from JSON) become tuples."""
    rename = dict(rename or {})
    names = {f.name for f in dataclasses.fields(cls) if f.init} - {"parent", "name", *exclude}
    kwargs = {}
    for key, value in (config.items() if hasattr(config, "items") else ()):
        if key in rename.values() and key not in rename:
            continue  # a renamed field is set only under its config name (g_hidden, not hidden)
        field = rename.get(key, key)
        if field in names and value is not None and value != "":
            kwargs[field] = tuple(value) if isinstance(value, list) else value
    return kwargs
