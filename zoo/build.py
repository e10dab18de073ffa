"""A run built from its config: family, strategy, data, initial state and compiled steps.

``build(config)`` is what ``zoo train`` and ``zoo eval`` start from; :func:`initial_state` and
:func:`compile_steps` are the pieces ``zoo bench`` reuses, so a benchmark builds its strategy,
optimizers and steps exactly as training does.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Mapping

import jax
import ml_collections

from zoo import input_pipeline, models
from zoo.core import compiled, dtypes, optim, parallel, settings
from zoo.core import params as params_lib
from zoo.core import step as step_lib
from zoo.core.settings import RunSettings, TrainSettings
from zoo.core.family import Family
from zoo.core.train_state import TrainState

NONFINITE_POLICIES = ("stop", "skip")


@dataclasses.dataclass
class Run:
    """Everything built from a config, before training starts."""

    config: Any                       # the config, with model.vocab_size filled in for text
    settings: RunSettings             # the config parsed (what the layers below are handed)
    family: Family
    strategy: parallel.Strategy
    template: TrainState              # host state at step 0 (shapes, optimizers)
    train_step: compiled.CompiledStep
    eval_step: compiled.CompiledStep
    data: input_pipeline.RunData


def trainable_masks(config, params: dict) -> dict:
    """A bool per parameter, keyed by player: what the optimizer updates. Frozen: the paths
    ``optimizer.freeze`` (or the player's ``optimizers.<player>.freeze``) matches, and, in a
    LoRA model, everything but the adapters (:func:`zoo.core.params.trainable_mask`)."""
    run = RunSettings.parse(config)
    return {p: params_lib.trainable_mask(tree, run.optimizer_of(p).freeze, p)
            for p, tree in params.items()}


def make_optimizers(family: Family, config, params: dict) -> dict[str, Any]:
    """Each player's optax optimizer: ``optimizers.<player>`` where the config has one, else
    ``optimizer``. A schedule runs over a player's updates: n per step for a player updated n
    times a step (a GAN critic's n_critic), so it ends with training, not n times too early.
    A player with frozen parameters (:func:`trainable_masks`) gets no updates or optimizer state
    for them. ``config``: a run config or its :class:`zoo.core.settings.RunSettings`;
    ``params``: the players' params (or their shapes)."""
    run = RunSettings.parse(config)
    updates = step_lib.updates_per_step(family.objective)
    masks = trainable_masks(run, params)
    optimizers = {}
    for p in params:
        # Only a player with frozen leaves gets the masked form: others keep optax's plain state.
        trainable = None if all(jax.tree.leaves(masks[p])) else functools.partial(
            params_lib.trainable_mask, freeze=run.optimizer_of(p).freeze, prefix=p)
        optimizers[p] = optim.make_optimizer(run.optimizer_of(p),
                                             run.train.steps * updates.get(p, 1),
                                             trainable=trainable)
    return optimizers


# Initialisation runs once: compile it fast rather than well (halves its compile time).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
_TRACER_ERRORS = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                  jax.errors.TracerBoolConversionError, jax.errors.TracerIntegerConversionError)


def state_initializer(family: Family, config) -> Callable[[Any], TrainState]:
    """``example -> the run's TrainState at step 0``, a pure function (to ``jit`` or
    ``eval_shape``): params from ``train.seed``, each player's optimizer
    (:func:`make_optimizers`), the step rng from ``train.seed + 1``."""
    tc = RunSettings.parse(config).train

    def create(example):
        params, model_state = family.init(jax.random.PRNGKey(tc.seed), example)
        return TrainState.create(params=params, tx=make_optimizers(family, config, params),
                                 model_state=model_state, rng=jax.random.PRNGKey(tc.seed + 1),
                                 ema=tc.ema_decay > 0)
    return create


def initial_state(family: Family, config, example) -> TrainState:
    """The run's host TrainState at step 0 (:func:`state_initializer`), built under one ``jit``:
    op by op, a model's initialisers compile hundreds of little kernels (a small U-Net's took
    30 s on a 2-core CPU, more than its train step's compile). A family whose ``init`` needs
    concrete values is run op by op instead."""
    create = state_initializer(family, config)
    try:
        return jax.jit(create, compiler_options=FAST_COMPILE)(example)
    except _TRACER_ERRORS:
        return create(example)


def memory_capacity(device: jax.Device) -> int | None:
    """Bytes ``device`` can hold: an accelerator's allocator limit, a CPU's physical memory;
    None: unknown."""
    try:
        limit = (device.memory_stats() or {}).get("bytes_limit")
    except Exception:  # a backend without memory statistics
        limit = None
    if limit:
        return int(limit)
    if device.platform == "cpu" and hasattr(os, "sysconf"):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


def check_fits_in_memory(family: Family, config, batch_size: int) -> None:
    """Refuses, from shapes alone (before any data is loaded or memory allocated), a model whose
    state at step 0 (params, optimizer state, EMA) is larger than the device that builds it
    (:func:`initial_state` builds it whole on one device, then the strategy places it): XLA
    would otherwise fail allocating it, with a message about bytes rather than sizes."""
    example = jax.tree.map(lambda s: jax.ShapeDtypeStruct((batch_size, *s.shape), s.dtype),
                           family.batch_spec)
    try:
        shapes = jax.eval_shape(state_initializer(family, config), example)
    except _TRACER_ERRORS:  # an init that needs concrete values: initial_state runs it op by op
        return
    need = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))
    device = jax.local_devices()[0]  # where this process builds it
    have = memory_capacity(device)
    if have and need > have:
        raise ValueError(f"the {family.name} model's training state (params and optimizer "
                         f"state, built on one device) needs {need / 2**30:,.1f} GiB, more than "
                         f"the {have / 2**30:,.1f} GiB of {device.platform} memory here; choose "
                         "smaller model sizes")


def compile_steps(family: Family, strategy: parallel.Strategy, train_config
                  ) -> tuple[compiled.CompiledStep, compiled.CompiledStep]:
    """The family's train and eval steps under ``strategy``, as ``train_config`` (a ``train``
    section or :class:`zoo.core.settings.TrainSettings`) asks: ``grad_accum_steps``,
    ``compute_dtype``, ``remat``, ``nonfinite``, ``ema_decay``."""
    tc = settings.parse(TrainSettings, train_config, "train")
    if tc.nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"unknown train.nonfinite {tc.nonfinite!r}; choose one of "
                         f"{', '.join(NONFINITE_POLICIES)}")
    dtype = dtypes.compute_dtype(tc.compute_dtype)
    train_step = compiled.compile_train_step(
        family.objective, strategy, batch_spec=family.batch_spec,
        grad_accum_steps=tc.grad_accum_steps, compute_dtype=dtype, remat=tc.remat,
        skip_nonfinite=tc.nonfinite == "skip", ema_decay=tc.ema_decay)
    eval_step = compiled.compile_eval_step(step_lib.AllPlayers(family.eval_metrics),
                                           strategy, batch_spec=family.batch_spec,
                                           compute_dtype=dtype)
    return train_step, eval_step


def build(config: ml_collections.ConfigDict | Mapping[str, Any], *, train: bool = True,
          eval_split: str | None = None, tokenizer: dict | None = None) -> Run:
    """Family, strategy, data, initial state and compiled steps from a config.

    The config is parsed here, once (:class:`zoo.core.settings.RunSettings`); the layers below
    get its typed sections. ``train=False`` loads only the evaluation split (``eval_split``,
    default the config's). For text, ``tokenizer`` is a saved tokenizer's ``to_config()`` (a
    resumed or evaluated run uses the one it trained with); otherwise one is built from the
    training split.
    """
    run = RunSettings.parse(config)
    if train:
        optim.check_reads(run.optimizer)
        for player, player_optimizer in run.optimizers.items():
            optim.check_reads(player_optimizer, f"optimizers.{player}")
    input_pipeline.check_dataset(run.data)
    text_tokenizer = None
    if input_pipeline.is_text(run.data):
        text_tokenizer = input_pipeline.make_tokenizer(run.data, tokenizer)
        config = input_pipeline.fill_model_config(config, text_tokenizer)
        run = dataclasses.replace(run, model=dict(config.model.items()))
    family = models.make_family(run.model)
    if text_tokenizer is not None:
        input_pipeline.check_batching(run.data, family)
    strategy = parallel.strategy_from_config(run.parallel)
    tc = run.train
    # Fail before loading data or compiling if the batch cannot be split as asked.
    parallel.check_divisible(run.data.batch_size, strategy.num_shards, "devices",
                             tc.grad_accum_steps)
    check_fits_in_memory(family, run, run.data.batch_size)
    data = input_pipeline.make_run_data(run.data, family, seed=tc.seed, train=train,
                                        eval_split=eval_split, tokenizer=text_tokenizer)
    try:  # before training: a failing evaluation at the end would cost the last checkpoint
        parallel.check_divisible(data.eval_batch_size, strategy.num_shards, "devices")
    except ValueError as e:
        raise ValueError(f"data.eval_batch_size: evaluation on {data.eval_split}: {e}") from None
    template = initial_state(family, run, data.example)
    check_best_metric(tc.best_metric, family, template, data.example)
    train_step, eval_step = compile_steps(family, strategy, tc)
    return Run(config, run, family, strategy, template, train_step, eval_step, data)


def check_best_metric(name: str, family: Family, template: TrainState, example) -> None:
    """Refuses a ``train.best_metric`` that evaluation will not report (an abstract trace)."""
    if not name:
        return
    out = jax.eval_shape(family.eval_metrics, template.params, template.model_state, example,
                         jax.random.PRNGKey(0))
    names = (out[0] if isinstance(out, tuple) else out).keys()  # (metrics, model_state): stateful
    if name not in names:
        raise ValueError(f"train.best_metric={name!r} is not an eval metric of the "
                         f"{family.name} family; choose one of {', '.join(sorted(names))}, or '' "
                         "to keep only the latest checkpoints")


