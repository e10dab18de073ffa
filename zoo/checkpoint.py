"""Checkpoints with orbax-checkpoint's CheckpointManager, and :func:`load_run`, the one way a
trained run is read back for evaluation, sampling and generation.

A checkpoint holds the train state (in its unreplicated, global form, so it restores under any
strategy and device count), the data iterator's position and the run's config. Saves are async and
atomic (orbax writes a temporary directory and renames it when complete), so a crash or kill leaves
the last finished checkpoint whole. The manager keeps the last N checkpoints and the best by an eval
metric. If the newest checkpoint cannot be read, restore says so and falls back to the one before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

from zoo import convert_gpt2, models
from zoo.config import read_json
from zoo import tokenizers as tok
from zoo.core import parallel
from zoo.core import params as params_lib
from zoo.core.family import Family
from zoo.core.train_state import TrainState, sampling_params
from zoo.save_barrier import SaveBarrier, write_failure

_STATE_KEYS = ("step", "params", "opt_state", "model_state", "rng", "ema_params")


def _state_dict(state: TrainState) -> dict[str, Any]:
    """The state's arrays by field; ``ema_params`` only when the run keeps one."""
    return {k: getattr(state, k) for k in _STATE_KEYS if getattr(state, k) is not None}


def _state_handler() -> ocp.PyTreeCheckpointHandler:
    """orbax's handler for the state, replica-parallel only across processes: that cuts each
    replicated array on device into a slice per replica (a compiled slice per shape) for hosts to
    share the writing; one process writes them all (a mesh run's first save on 8 CPU devices
    blocked the loop 3.7-5.2 s with it, 0.6 s without; later ones 1.1-1.3 s, 0.4-0.6). Without
    orbax's array metadata store a typed PRNG key would restore as raw data; zoo's are raw."""
    if jax.process_count() > 1:
        return ocp.PyTreeCheckpointHandler()  # orbax's registry, replica-parallel included
    scalars = ocp.type_handlers.ScalarHandler()
    registry = ocp.type_handlers.create_type_handler_registry(
        (int, scalars), (float, scalars), (np.number, scalars),
        (np.ndarray, ocp.type_handlers.NumpyHandler()),
        (jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False)))
    return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


class CheckpointError(ValueError):
    """No checkpoint in a directory could be restored (a ValueError: the CLI reports it cleanly)."""


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (a full disk, a folder made read-only); the checkpoints
    saved before it are whole, so the run can resume from the newest of them."""


class Checkpointer:
    """Saves and restores a run's state, data position and config under ``directory``.

    Args:
      directory: where step directories go (created if missing).
      max_to_keep: how many of the latest checkpoints to keep.
      best_metric: an eval metric name; the best checkpoint by it is kept too (None: off).
      best_mode: ``"min"`` or ``"max"``: which way the metric is better.
      async_save: save in the background (orbax's async checkpointing)."""

    def __init__(self, directory: str | Path, *, max_to_keep: int = 3,
                 best_metric: str | None = None, best_mode: str = "min", async_save: bool = True):
        if best_mode not in ("min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
        self.directory = Path(directory).absolute()
        policies = [ocp.checkpoint_managers.LatestN(n=max_to_keep)]
        if best_metric:
            sign = 1.0 if best_mode == "max" else -1.0
            # BestN keeps the n highest by get_metric_fn; checkpoints saved without metrics (on
            # preemption, say) are kept by LatestN alone.
            policies.append(ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda m: sign * float(m[best_metric]), n=1,
                keep_checkpoints_without_metrics=False))
        self._barrier = SaveBarrier() if jax.process_count() > 1 else None
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=async_save, create=True,
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            async_options=ocp.AsyncOptions(barrier_sync_fn=self._barrier))
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": _state_handler(), "extra": ocp.JsonCheckpointHandler()})
        self._in_flight: int | None = None  # the step of a save not yet known to be on disk

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: TrainState, strategy: parallel.Strategy, *,
             data_state: dict | None = None, config: dict | None = None,
             metrics: dict[str, float] | None = None) -> None:
        """Starts saving ``state`` at ``step`` (async); :meth:`wait` blocks until it is on disk.

        Raises :class:`CheckpointSaveError` if this save, or the one before it, could not be
        written."""
        self.wait()  # orbax waits for the previous save anyway; its failure is that step's
        canonical = strategy.canonical_state(state)
        self._in_flight = step
        if self._barrier is not None:
            self._barrier.begin_save()
        with self._naming_write_failures():
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.PyTreeSave(_state_dict(canonical)),
                extra=ocp.args.JsonSave({"data": data_state or {}, "config": config or {}})),
                metrics=metrics, force=True)

    def wait(self) -> None:
        """Blocks until the save in flight is on disk; :class:`CheckpointSaveError` if it failed."""
        with self._naming_write_failures():
            self.manager.wait_until_finished()
        self._in_flight = None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()

    @contextlib.contextmanager
    def _naming_write_failures(self):
        """A failed write of the save in flight becomes one sentence: which step, why, and which
        checkpoint is still whole. (orbax's own messages name a temporary file and an array.)"""
        try:
            yield
        except Exception as e:  # noqa: BLE001 -- only write failures are reworded
            step, self._in_flight = self._in_flight, None
            cause = write_failure(e)
            if step is None or cause is None:
                raise
            whole = sorted(s for s in _saved_steps(self.directory) if s != step)
            kept = (f"the checkpoint of step {whole[-1]} is whole; once the folder can be "
                    "written, running again resumes from it" if whole else
                    "no checkpoint was saved before it")
            raise CheckpointSaveError(f"could not write the checkpoint of step {step} in "
                                      f"{self.directory}: {cause}; {kept}") from e

    def _check_shapes(self, step: int, template: TrainState) -> None:
        """Refuses a readable checkpoint whose arrays are not this run's (other arrays: another
        family, layers or optimizer; other shapes: model sizes, or the batch size for
        per-example state): the config changed, which no older checkpoint of the run mends.
        Unreadable or incomplete metadata is left to the restore to report as damage."""
        try:
            metadata = self.manager.item_metadata(step)["state"]
        except Exception:  # noqa: BLE001
            return
        flat = jax.tree_util.tree_flatten_with_path(metadata, is_leaf=lambda m: m is None)[0]
        # (Saved metadata holds an optimizer state's named tuples as dicts: the same paths.)
        saved = {params_lib.path_of(p): tuple(m.shape) for p, m in flat if m is not None}
        own = params_lib.flatten(_state_dict(template))
        if not saved or {params_lib.path_of(p) for p, m in flat if m is None} & own.keys():
            return  # metadata lost, or without some arrays' entries: the restore decides
        if saved.keys() != own.keys():  # another model or optimizer: no older checkpoint mends it
            raise CheckpointError(
                f"the checkpoint at step {step} in {self.directory} holds another state than "
                f"this run's ({_tree_difference(saved, own)}): the config changed since it was "
                "saved (family, layers or optimizer). Resume with the saved config, or use a new "
                "workdir")
        for key, x in own.items():
            if saved[key] != tuple(np.shape(x)):
                raise CheckpointError(
                    f"the checkpoint at step {step} in {self.directory} holds {key} of shape "
                    f"{saved[key]}, this run's is {tuple(np.shape(x))}: the config changed since "
                    "it was saved (model sizes, or data.batch_size for per-example state such as "
                    "an LSTM's carried state). Resume with the saved config, or use a new workdir")

    def _steps_to_try(self, step: int | None) -> list[int]:
        """``[step]`` if it was saved, else newest first; a clear error when there is none."""
        saved = list(self.all_steps())
        if not saved:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        if step is None:
            return sorted(saved, reverse=True)
        if int(step) not in saved:
            raise CheckpointError(f"no checkpoint at step {step} in {self.directory}; saved steps: "
                                  f"{', '.join(map(str, sorted(saved)))}")
        return [int(step)]

    def read_extra(self, step: int | None = None,
                   log: Callable[[str], None] = logging.warning) -> dict:
        """The ``config`` and ``data`` state saved at ``step``, or with ``step=None`` at the
        newest checkpoint whose record reads (older ones are tried as :meth:`restore` does).
        The step it was read from is under ``"step"``."""
        steps = self._steps_to_try(step)
        for s in steps:
            try:
                return {**self.manager.restore(s, args=ocp.args.Composite(
                    extra=ocp.args.JsonRestore())).extra, "step": s}
            except Exception as e:  # noqa: BLE001 -- unreadable: try the previous checkpoint
                log(f"checkpoint at step {s} in {self.directory} has no readable config "
                    f"({type(e).__name__}); trying the previous one")
        raise CheckpointError(f"no checkpoint in {self.directory} has a readable config")

    def move_aside(self, step: int) -> Path:
        """Moves the checkpoint of ``step`` out of the manager's sight, never deleting it:
        to ``<directory>.damaged/<step>`` (``<step>-2``, ... if taken). A damaged newest
        checkpoint left in place would stop the resumed run when it reaches that step again."""
        source = Path(self.manager.directory) / str(step)
        aside = self.directory.with_name(self.directory.name + ".damaged")
        aside.mkdir(parents=True, exist_ok=True)
        dest, n = aside / str(step), 1
        while dest.exists():
            n += 1
            dest = aside / f"{step}-{n}"
        shutil.move(str(source), str(dest))
        self.manager.reload()
        return dest

    def restore(self, template: TrainState, strategy: parallel.Strategy, step: int | None = None,
                log: Callable[[str], None] = logging.warning, *, move_aside: bool = False
                ) -> tuple[TrainState, dict, int]:
        """Restores a checkpoint into ``strategy``'s placement.

        ``template`` is a freshly built (host) state of the same model: it gives the tree structure,
        shapes, dtypes and the static optimizers. With ``step=None`` the newest checkpoint is tried
        first, then older ones if it cannot be read (each failure is reported through ``log``).
        ``move_aside``: an unreadable checkpoint is moved out of the way (:meth:`move_aside`),
        so the run that resumes can save that step again. Returns ``(state, extra, step)`` where
        ``extra`` holds ``data`` and ``config``."""
        steps = self._steps_to_try(step)
        shardings = strategy.restore_shardings(template)
        abstract = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(np.shape(x), np.result_type(x), sharding=s),
            _state_dict(template), _state_dict(shardings))
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
        errors = []
        for s in steps:
            self._check_shapes(s, template)
            try:
                restored = self.manager.restore(s, args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(abstract, restore_args),
                    extra=ocp.args.JsonRestore()))
            except Exception as e:  # noqa: BLE001 -- any unreadable checkpoint: try the previous
                errors.append(f"step {s}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                moved = f"; moved it to {self.move_aside(s)}" if move_aside else ""
                log(f"checkpoint at step {s} in {self.directory} cannot be restored "
                    f"({type(e).__name__}){moved}; trying the previous one")
                continue
            state = template.replace(**restored.state)
            if int(np.asarray(jax.device_get(state.step))) != s:
                errors.append(f"step {s}: holds step {int(state.step)}")
                continue
            return strategy.place_state(state), dict(restored.extra), s
        raise CheckpointError(f"no checkpoint in {self.directory} could be restored:\n  "
                              + "\n  ".join(errors))


def _tree_difference(saved: Mapping, own: Mapping) -> str:
    """What two flat trees (path -> leaf) differ in, shortly: a few paths each side lacks."""
    parts = []
    for what, keys in (("saved only", saved.keys() - own.keys()),
                       ("this run's only", own.keys() - saved.keys())):
        if keys:
            more = f" and {len(keys) - 2} more" if len(keys) > 2 else ""
            parts.append(f"{what}: {', '.join(sorted(keys)[:2])}{more}")
    return "; ".join(parts)


def find_checkpoints(path: str | Path) -> Path | None:
    """The checkpoint directory of a ``zoo train`` workdir (``path/checkpoints``), or ``path``
    itself if it holds step directories; None if neither does."""
    path = Path(path)
    for d in (path / "checkpoints", path):
        if d.is_dir() and any(c.is_dir() and c.name.isdigit() for c in d.iterdir()):
            return d
    return None


def load_on_host(directory: str | Path, step: int | None = None) -> tuple[dict, dict, int]:
    """``(state, extra, step)`` of a checkpoint (default: the newest) as numpy arrays, whatever
    device count or strategy it was saved under, with no model or template needed: for
    inference (``zoo generate``, ``zoo sample``). ``state`` holds ``params`` and
    ``model_state`` (dicts keyed by player), ``extra`` the ``config`` and ``data`` state."""
    handlers = {"state": ocp.StandardCheckpointHandler(), "extra": ocp.JsonCheckpointHandler()}
    manager = ocp.CheckpointManager(Path(directory).absolute(), item_handlers=handlers)
    try:
        step = manager.latest_step() if step is None else step
        if step is None or step not in manager.all_steps():
            raise ValueError(f"no checkpoint {'' if step is None else f'at step {step} '}in "
                             f"{directory}; it has steps {sorted(manager.all_steps())}")
        # Restore onto one local device: the saved shardings may name devices this process lacks.
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
            manager.item_metadata(step)["state"])
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), extra=ocp.args.JsonRestore()))
    finally:
        manager.close()
    state = jax.tree.map(np.asarray, dict(restored.state))
    return state, dict(restored.extra), step


# ---- a trained run, read back on the host ---------------------------------------------------

TOKENIZER_FILE = "tokenizer.json"     # beside checkpoints/ in a zoo train workdir
VARIABLES_FILE = "variables.msgpack"  # a run written by save_run
CONFIG_FILE = "model_config.json"


@dataclasses.dataclass
class LoadedRun:
    """A trained run on the host: what ``zoo eval``, ``zoo sample`` and ``zoo generate`` use.

    Attributes:
      config: the run's config as a plain dict (``model``; ``data``, ``train``, ... where saved).
      family: the family its model config builds.
      params, model_state: numpy arrays, dicts keyed by player.
      tokenizer: a language model's tokenizer (None for other families).
      step: the checkpoint's step (None for a run without checkpoints).
      ema_params: the params' moving average, keyed by player, for a run trained with
        ``train.ema_decay`` (None otherwise)."""

    config: dict
    family: Family
    params: dict
    model_state: dict
    tokenizer: tok.Tokenizer | None = None
    step: int | None = None
    ema_params: dict | None = None

    @property
    def sampling_params(self) -> dict:
        """What draws samples (:func:`zoo.core.train_state.sampling_params`, the one rule)."""
        return sampling_params(self)


def load_run(path: str | Path, step: int | None = None,
             log: Callable[[str], None] = logging.warning) -> LoadedRun:
    """Reads the trained run at ``path``, on whatever device count it was trained.

    ``path`` is a ``zoo train`` workdir (its newest readable checkpoint: an unreadable newest one
    is reported through ``log`` and the one before is tried), one checkpoint of it
    (``RUN/checkpoints/STEP``), a directory written by :func:`save_run` (or the
    ``variables.msgpack`` in it), or a Hugging Face GPT-2 folder (``config.json`` and weights).
    ``step`` picks a checkpoint of a workdir. A run trained with LoRA adapters is read back as
    the plain model, adapters merged into its weights (:func:`zoo.core.lora.merge`). A GPT-2
    folder without ``vocab.json`` and ``merges.txt`` has no tokenizer (None)."""
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        model_config, params = convert_gpt2.load(path)
        has_bpe = all((path / f).is_file() for f in ("vocab.json", "merges.txt"))
        return LoadedRun({"model": model_config}, models.make_family(model_config),
                         {"model": params}, {"model": {}},
                         tok.GPT2Tokenizer.from_dir(path) if has_bpe else None)
    run_dir = path.parent if path.is_file() else path
    if (run_dir / VARIABLES_FILE).is_file() and (run_dir / CONFIG_FILE).is_file():
        return _load_saved_variables(run_dir)
    if path.name.isdigit() and find_checkpoints(path.parent) == path.parent:
        if step is not None and int(step) != int(path.name):
            raise ValueError(f"{path} is the checkpoint of step {path.name}, but step {step} was "
                             "asked for; name the run directory with --step, or one checkpoint")
        path, step = path.parent, int(path.name)
    ckpt_dir = find_checkpoints(path)
    if ckpt_dir is None:
        raise ValueError(f"{str(path)!r} is not a trained run: no checkpoints/ (a zoo train "
                         f"workdir), no {VARIABLES_FILE} and {CONFIG_FILE}, no config.json (a "
                         "Hugging Face GPT-2 folder)")
    saved_steps = sorted(_saved_steps(ckpt_dir), reverse=True)
    if step is not None and int(step) not in saved_steps:
        raise CheckpointError(f"no checkpoint at step {step} in {ckpt_dir}; saved steps: "
                              f"{', '.join(map(str, sorted(saved_steps)))}")
    steps = [int(step)] if step is not None else saved_steps
    errors = []
    for s in steps:
        try:
            state, extra, s = load_on_host(ckpt_dir, s)
            break
        except Exception as e:  # noqa: BLE001 -- an unreadable checkpoint: try the previous one
            errors.append(f"step {s}: {type(e).__name__}: {str(e)[:300]}")
            log(f"checkpoint at step {s} in {ckpt_dir} cannot be restored ({type(e).__name__}); "
                "trying the previous one")
    else:
        raise CheckpointError(f"no checkpoint in {ckpt_dir} could be restored ({len(errors)} "
                              f"tried; the newest: {errors[0][:200]})")
    config, data = extra.get("config", {}), extra.get("data", {})
    if not (isinstance(config, dict) and isinstance(config.get("model"), dict)
            and isinstance(data, dict)):
        raise CheckpointError(f"the checkpoint at step {s} in {ckpt_dir} holds no model config")
    saved = data.get("tokenizer")
    if not saved and (ckpt_dir.parent / TOKENIZER_FILE).is_file():
        saved = read_json(ckpt_dir.parent / TOKENIZER_FILE, "a zoo tokenizer file")
    params, ema = state["params"], state.get("ema_params")
    model_state = {p: state.get("model_state", {}).get(p, {}) for p in params}
    family = models.make_family(config["model"])
    _check_params_fit(family, params, f"the checkpoint at step {s} in {ckpt_dir}")
    if family.inference_params is not None:  # LoRA: read back as the plain merged model
        params = jax.tree.map(np.asarray, family.plain_params(params))
        ema = None if ema is None else jax.tree.map(np.asarray, family.plain_params(ema))
        family = models.make_family(config["model"], adapters=False)
    return LoadedRun(config, family, params, model_state,
                     tok.from_config(saved) if saved else None, s, ema)


def _saved_steps(ckpt_dir: Path) -> list[int]:
    return [int(d.name) for d in ckpt_dir.iterdir() if d.is_dir() and d.name.isdigit()]


def _plain(config) -> dict:
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(config, default=list))


def save_run(run_dir: str | Path, model_config: Mapping, params, model_state, *,
             data_config: Mapping[str, Any] | None = None) -> Path:
    """Writes ``model_config.json`` and ``variables.msgpack`` (flax serialisation of params and
    model state, dicts keyed by player): a run :func:`load_run` reads without orbax."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {"model": _plain(model_config)}
    if data_config is not None:
        meta["data"] = _plain(data_config)
    (run_dir / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    variables = jax.device_get({"params": params, "model_state": model_state})
    (run_dir / VARIABLES_FILE).write_bytes(serialization.to_bytes(variables))
    return run_dir


def _abstract_variables(family: Family) -> tuple[dict, dict]:
    """The shapes of ``family.init``'s params and model state (nothing allocated)."""
    dummy = jax.tree.map(lambda s: np.zeros((2, *s.shape), s.dtype), family.batch_spec)
    return jax.eval_shape(family.init, jax.random.PRNGKey(0), dummy)


def _check_params_fit(family: Family, params: Mapping, where: str) -> None:
    """Refuses params that are not those of the model the saved config builds (an edited or
    damaged config): with missing or extra layers a model would run on part of them."""
    flat = lambda tree: {k: tuple(np.shape(x)) for k, x in params_lib.flatten(tree).items()}
    saved, own = flat(params), flat(_abstract_variables(family)[0])
    if saved.keys() != own.keys():
        raise CheckpointError(f"{where} holds params of another model than its saved config "
                              f"builds ({_tree_difference(saved, own)}); the config was changed "
                              "or is damaged")
    for key, shape in own.items():
        if saved[key] != shape:
            raise CheckpointError(f"{where} holds {key} of shape {saved[key]}, but its saved "
                                  f"config builds {shape}; the config was changed or is damaged")


def _load_saved_variables(run_dir: Path) -> LoadedRun:
    meta = read_json(run_dir / CONFIG_FILE, "a saved run's model config")
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise ValueError(f"{run_dir / CONFIG_FILE} holds no model section, as save_run writes")
    family = models.make_family(meta["model"])
    params, model_state = _abstract_variables(family)
    try:
        variables = serialization.from_bytes({"params": params, "model_state": model_state},
                                             (run_dir / VARIABLES_FILE).read_bytes())
    except (ValueError, KeyError, TypeError) as e:  # msgpack's errors for damaged bytes
        raise ValueError(f"{run_dir / VARIABLES_FILE} is not the variables of the model its "
                         f"{CONFIG_FILE} describes ({type(e).__name__}: {e})") from None
    return LoadedRun(meta, family, variables["params"], variables["model_state"])


EXPORT_FORMATS = ("msgpack", "hf-gpt2")


def export_params(run: LoadedRun, out: str | Path, *, player: str | None = None,
                  fmt: str = "msgpack") -> Path:
    """Writes one player's params of a loaded run (float32; LoRA adapters already merged by
    :func:`load_run`). ``msgpack``: flax msgpack in the file ``out``, the format
    :func:`zoo.models.classifier.load_params` reads. ``hf-gpt2``: the folder ``out``, a Hugging
    Face GPT-2 with its tokenizer (:func:`zoo.convert_gpt2.save`), for a transformer run.
    ``player`` defaults to the only one."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of "
                         f"{', '.join(EXPORT_FORMATS)}")
    players = sorted(run.params)
    if player is None and len(players) > 1:
        raise ValueError(f"the {run.family.name} run has players {', '.join(players)}; name one "
                         "with --player")
    player = player or players[0]
    if player not in run.params:
        raise ValueError(f"no player {player!r} in the {run.family.name} run; it has "
                         f"{', '.join(players)}")
    out = Path(out)
    host = jax.tree.map(lambda x: np.asarray(x, np.float32), run.params[player])
    if fmt == "hf-gpt2":
        return convert_gpt2.save(out, run.family.modules[player], host, run.tokenizer)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(serialization.msgpack_serialize(host))
    return out
