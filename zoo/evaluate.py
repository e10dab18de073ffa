"""Evaluation: the mean eval metrics over a split, during training and of a saved run.

:func:`evaluate` is the loop's evaluation pass; :func:`evaluate_checkpoint` is ``zoo eval``'s
metrics part (:func:`checkpoint_metrics`): it restores a run's checkpoint placed for a layout that
fits this machine's devices and evaluates it on a split. The quality report is added above this
layer (:func:`zoo.eval_quality.evaluate_checkpoint`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import jax
import ml_collections

from zoo import build as build_lib
from zoo import checkpoint
from zoo import config as config_lib
from zoo.core import compiled, parallel, settings
from zoo.core import step as step_lib
from zoo.core.train_state import TrainState
from zoo.models.language import LOSS_DERIVED_METRICS


def evaluate(eval_step: compiled.CompiledStep, state, batches) -> dict[str, float]:
    """Mean of the eval step's metrics over ``batches``.

    A state with per-example model state (an LSTM's carried ``(c, h)``) is evaluated carrying a
    copy of its own through the batches in order, from zeros sized for the evaluation batch.
    """
    strategy = eval_step.strategy
    eval_state = state
    if step_lib.per_example_leaves(state.model_state):
        eval_state = None  # made from the first batch's size
    totals, n = {}, 0
    for batch in batches:
        if eval_state is None:
            rows = parallel.batch_size(batch) * jax.process_count()
            eval_state = strategy.place_state(step_lib.with_fresh_per_example_state(
                strategy.canonical_state(state), rows))
        out = eval_step(eval_state, batch)
        if isinstance(out, tuple):
            eval_state, out = out
        for k, v in strategy.to_host(out).items():
            totals[k] = totals.get(k, 0.0) + float(v)
        n += 1
    if not n:
        raise ValueError("the evaluation split makes no batch; lower data.eval_batch_size")
    means = {k: v / n for k, v in totals.items()}
    # A split's perplexity is exp of its mean loss, not the mean of per-batch perplexities.
    for name, of_loss in LOSS_DERIVED_METRICS.items():
        if name in means and "loss" in means:
            means[name] = float(of_loss(means["loss"]))
    return means


def evaluate_run(run: build_lib.Run, state) -> dict[str, float]:
    """The run's evaluation metrics on its evaluation split."""
    return evaluate(run.eval_step, state, run.data.eval_batches())


def checkpoint_metrics(path: str | Path, *, config=None, overrides: list[str] = (),
                       step: int | None = None, split: str = "test",
                       log: Callable[[str], None] = print
                       ) -> tuple[dict[str, Any], build_lib.Run, TrainState]:
    """Evaluates a run directory (or its ``checkpoints/``) on ``split`` (default test).

    Uses the config (and, for text, the tokenizer) saved in the checkpoint unless a config is
    given, with ``--config.key=value`` overrides applied. A saved mesh layout that does not fit
    this machine's devices is replaced by a data-parallel mesh over all of them (the checkpoint
    restores under any layout). Without ``step``, the newest readable checkpoint. Returns
    ``({"step", "family", "split", "metrics"}, run, state)``, the state placed for the run's
    strategy.
    """
    ckpt = checkpoint.Checkpointer(_checkpoints_dir(path))
    try:
        extra = ckpt.read_extra(step, log=log)
        if config is None:
            config = ml_collections.ConfigDict(extra["config"])
        config = config_lib.apply_overrides(config, overrides)
        _fit_layout_to_devices(config, log)
        run = build_lib.build(config, train=False, eval_split=split,
                              tokenizer=extra.get("data", {}).get("tokenizer"))
        # Without a step, the newest readable weights; they can be of another step than the
        # config when one record of the newest checkpoint is unreadable.
        state, _, restored_step = ckpt.restore(run.template, run.strategy, step=step, log=log)
    finally:
        ckpt.close()
    if restored_step != extra["step"]:
        log(f"zoo: weights of step {restored_step}, config of step {extra['step']}")
    metrics = evaluate_run(run, state)
    return ({"step": restored_step, "family": run.family.name, "split": run.data.eval_split,
             "metrics": metrics}, run, state)


def _checkpoints_dir(path: str | Path) -> Path:
    path = Path(path)
    ckpt_dir = path if path.name == "checkpoints" else path / "checkpoints"
    if not ckpt_dir.is_dir():
        raise ValueError(f"{path} is not a run directory: no checkpoints/ in it")
    return ckpt_dir


def saved_config(path: str | Path, step: int | None = None,
                 log: Callable[[str], None] = print) -> ml_collections.ConfigDict:
    """The config a run directory's checkpoint (``step``, or the newest readable) was saved
    with, read without building anything."""
    ckpt = checkpoint.Checkpointer(_checkpoints_dir(path))
    try:
        return ml_collections.ConfigDict(ckpt.read_extra(step, log=log)["config"])
    finally:
        ckpt.close()


def _fit_layout_to_devices(config, log: Callable[[str], None]) -> None:
    """Makes a saved parallel layout fit this machine, in place: a mesh that does not fit the
    devices becomes data-parallel over all of them, and a batch that does not divide over them
    is evaluated on one device (a checkpoint restores under any strategy)."""
    run, n = settings.RunSettings.parse(config), jax.device_count()
    p, data = run.parallel, run.data
    if p.strategy == "mesh":
        try:
            parallel.mesh_shape(n, p.data, p.fsdp)
        except ValueError:
            log(f"zoo: the saved mesh data={p.data} x fsdp={p.fsdp} does not fit {n} device(s); "
                "evaluating data-parallel over all of them")
            config.parallel.data = settings.ParallelSettings.data
            config.parallel.fsdp = settings.ParallelSettings.fsdp
    shards = 1 if p.strategy == "single" else n  # pmap and a data-parallel mesh: every device
    sizes = {data.batch_size, data.eval_batch_size or data.batch_size}
    if any(size % shards for size in sizes):
        if jax.process_count() > 1:  # one device cannot hold every process's share
            raise ValueError(f"batches of {sorted(sizes)} do not divide over the {n} devices of "
                             f"{jax.process_count()} processes; set data.batch_size and "
                             f"data.eval_batch_size to multiples of {n}")
        log(f"zoo: batches of {sorted(sizes)} do not divide over {n} devices; evaluating on one")
        config.parallel.strategy = "single"
    if config.parallel.strategy != "mesh":  # a saved mesh's axes mean nothing to another layout
        config.parallel.data = settings.ParallelSettings.data
        config.parallel.fsdp = settings.ParallelSettings.fsdp
