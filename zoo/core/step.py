"""The shared train and eval steps.

Every family states its objective once: a loss and metrics computed from params, model state, a
batch and an rng. ``make_train_step`` turns that into ``step(state, batch) -> (state, metrics)``,
a pure function that a parallel strategy (``zoo.core.parallel``) compiles once.

An objective is a sequence of :class:`Update` s, applied in order inside one step. A single model has
one update; a GAN has two (discriminator ``n_critic`` times, then generator), each moving one
player's params with that player's optimizer.

Per-example model state (:data:`PER_EXAMPLE`): most model state describes the model (BatchNorm
statistics) and is averaged over data shards. A recurrent model trained with truncated BPTT also
carries state *per batch row* from one batch to the next (an LSTM's ``(c, h)``): row i of the state
belongs to row i of the batch. Such leaves go under ``model_state[player][PER_EXAMPLE]``; their
leading dimension is the global batch. The step and the strategies then treat them like the batch:

* with gradient accumulation they are split into microbatches exactly as the batch is (strided,
  see :func:`split_microbatches`); each microbatch's loss sees and returns its own rows, and the
  new rows are put back in the original order;
* under ``pmap`` they are neither replicated nor averaged: device d holds (and updates) its
  contiguous slice of rows, the one its slice of the batch has;
* under ``mesh`` they are sharded like the batch: ``("data", "fsdp")`` on the leading dimension;
* checkpoints (``Strategy.canonical_state``) and ``Strategy.to_host`` hold them as global arrays.

So per-example state comes out the same under every strategy and any ``grad_accum_steps``
(other model state, like BatchNorm statistics, is averaged over shards and, with accumulation,
is the last microbatch's). An evaluation can carry per-example state of its own through a split
(:func:`make_eval_step`). Any leaf under a ``PER_EXAMPLE`` dict key counts, so the key is reserved:
do not use it as a param or module name.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from jax import lax

from zoo.core.train_state import DEFAULT_PLAYER, PyTree, TrainState

Metrics = dict[str, jax.Array]
# loss_fn(params, model_state, batch, rng) -> (loss, metrics, new_model_state), where params and
# model_state are dicts keyed by player; the gradient is taken with respect to one player's params.
PlayerLossFn = Callable[[dict, dict, PyTree, jax.Array], tuple[jax.Array, Metrics, dict]]

# The model-state key for state with one row per batch example (see the module docstring).
PER_EXAMPLE = "per_example"


def is_per_example(path) -> bool:
    """Whether the leaf at key ``path`` (a jax key path) is per-example: under a PER_EXAMPLE key."""
    return any(isinstance(k, jax.tree_util.DictKey) and k.key == PER_EXAMPLE for k in path)


def per_example_leaves(tree: PyTree) -> list[tuple[Any, jax.Array]]:
    """``(path, leaf)`` for every per-example leaf of ``tree``."""
    return [(p, x) for p, x in jax.tree_util.tree_leaves_with_path(tree) if is_per_example(p)]


def map_per_example(tree: PyTree, per_example_fn: Callable, other_fn: Callable) -> PyTree:
    """``per_example_fn`` on the per-example leaves of ``tree``, ``other_fn`` on the others."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: per_example_fn(x) if is_per_example(path) else other_fn(x), tree)


@dataclasses.dataclass(frozen=True)
class Update:
    """One optimizer update of ``player`` on ``loss_fn``, applied ``repeats`` times per step.

    ``loss_fn(params, model_state, batch, rng)`` gets every player's params and model state (dicts
    keyed by player) and returns ``(loss, metrics, new_model_state)``. Metrics must be batch means
    (they are averaged over microbatches and data shards). ``prefix`` is put before metric names.
    Per-example model state (:data:`PER_EXAMPLE`) comes with the rows of the batch the loss sees,
    and the loss returns it for those rows.
    """

    player: str
    loss_fn: PlayerLossFn
    repeats: int = 1
    prefix: str = ""

    def __post_init__(self):
        if self.repeats < 1:
            raise ValueError(f"Update.repeats must be >= 1, got {self.repeats}")


Objective = Sequence[Update]


def single_player_objective(loss_fn: Callable, player: str = DEFAULT_PLAYER) -> tuple[Update]:
    """Wraps a user's loss function for a one-player state.

    ``loss_fn`` is either ``loss_fn(params, batch, rng) -> (loss, metrics)`` for models without
    mutable state, or ``loss_fn(params, batch, rng, model_state) -> (loss, metrics, model_state)``
    for models with BatchNorm statistics and the like.
    """
    n_args = len(inspect.signature(loss_fn).parameters)
    if n_args not in (3, 4):
        raise ValueError(
            "a loss function takes (params, batch, rng) or (params, batch, rng, model_state); "
            f"{getattr(loss_fn, '__name__', loss_fn)} takes {n_args} arguments"
        )

    name = getattr(loss_fn, "__name__", "the loss function")
    contract = ("(params, batch, rng) -> (loss, metrics)" if n_args == 3 else
                "(params, batch, rng, model_state) -> (loss, metrics, new_model_state)")

    def checked(out):
        want = 2 if n_args == 3 else 3
        if not isinstance(out, (tuple, list)) or len(out) != want:
            got = f"{len(out)} values" if isinstance(out, (tuple, list)) else type(out).__name__
            raise ValueError(f"{name} takes {n_args} arguments, so it must be {contract}; it "
                             f"returned {got}")
        return out

    def player_loss(params, model_state, batch, rng):
        if n_args == 3:
            loss, metrics = checked(loss_fn(params[player], batch, rng))
            return loss, metrics, model_state
        loss, metrics, new_state = checked(loss_fn(params[player], batch, rng,
                                                   model_state[player]))
        return loss, metrics, {**model_state, player: new_state}

    return (Update(player, player_loss),)


def as_objective(objective: Objective | Callable) -> tuple[Update, ...]:
    if callable(objective) and not isinstance(objective, (list, tuple)):
        return single_player_objective(objective)
    updates = tuple(objective)
    if not updates or not all(isinstance(u, Update) for u in updates):
        raise ValueError("an objective is a non-empty sequence of zoo.Update, or a loss function")
    return updates


def updates_per_step(objective: Objective | Callable) -> dict[str, int]:
    """How many optimizer updates each player gets in one train step (``Update.repeats``
    summed): what its learning-rate schedule counts."""
    counts: dict[str, int] = {}
    for u in as_objective(objective):
        counts[u.player] = counts.get(u.player, 0) + u.repeats
    return counts


def cast_floating(tree: PyTree, dtype) -> PyTree:
    """Casts the floating-point leaves of ``tree`` to ``dtype``; integer leaves are kept."""
    if dtype is None:
        return tree
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x,
        tree,
    )


def split_microbatches(batch: PyTree, k: int) -> PyTree:
    """Reshapes a batch of B examples into k microbatches of B/k, strided.

    Microbatch j holds examples j, j+k, j+2k, ...: a batch sharded contiguously over devices stays
    evenly spread over all of them in every microbatch, so no data moves between devices.
    """

    def split(x):
        if x.shape[0] % k:
            raise ValueError(
                f"a batch of {x.shape[0]} examples does not divide into {k} microbatches"
            )
        x = x.reshape(x.shape[0] // k, k, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree.map(split, batch)


def merge_microbatches(micro: PyTree) -> PyTree:
    """The inverse of :func:`split_microbatches`: (k, B/k, ...) back to (B, ...) in batch order."""
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:]), micro)


def _partition(tree):
    """``(per-example leaves, other leaves, merge)``; ``merge(rows, others)`` rebuilds the tree."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    mask = [is_per_example(path) for path, _ in leaves]
    rows = [x for (_, x), m in zip(leaves, mask) if m]
    others = [x for (_, x), m in zip(leaves, mask) if not m]

    def merge(rows, others):
        rows, others = iter(rows), iter(others)
        return treedef.unflatten([next(rows) if m else next(others) for m in mask])

    return rows, others, merge


def _pmean(tree, axis_name):
    """Averages floating leaves over ``axis_name``; per-example leaves are each shard's own rows."""
    if axis_name is None:
        return tree
    mean = lambda x: (lax.pmean(x, axis_name) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
                      else x)
    return map_per_example(tree, lambda x: x, mean)


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _grads_and_metrics(update, params, model_state, batch, rng, *, grad_accum_steps, compute_dtype,
                       remat):
    """Gradient of ``update``'s loss w.r.t. its player's params, with metrics and new model state."""
    player = update.player

    def loss_of_player(player_params, model_state, batch, rng):
        all_params = {**params, player: player_params}
        loss, metrics, model_state = update.loss_fn(
            cast_floating(all_params, compute_dtype), model_state,
            cast_floating(batch, compute_dtype), rng)
        metrics = jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), metrics)
        return jnp.asarray(loss, jnp.float32), (metrics, model_state)

    if remat:
        loss_of_player = jax.checkpoint(loss_of_player)
    grad_fn = jax.grad(loss_of_player, has_aux=True)
    if grad_accum_steps == 1:
        return grad_fn(params[player], model_state, batch, rng)

    k = grad_accum_steps
    # Per-example state is split into microbatches with the batch and scanned over beside it; the
    # rest of the model state (BatchNorm statistics) is carried from microbatch to microbatch.
    rows, others, merge = _partition(model_state)
    micro, micro_rows = split_microbatches((batch, rows), k)
    first, first_rows = jax.tree.map(lambda x: x[0], (micro, micro_rows))
    grad_shape, (metric_shape, _) = jax.eval_shape(
        grad_fn, params[player], merge(first_rows, others), first, rng)
    zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)

    def body(carry, xs):
        grad_sum, metric_sum, others = carry
        mb, mb_rows, i = xs
        g, (m, new_state) = grad_fn(params[player], merge(mb_rows, others), mb,
                                    jax.random.fold_in(rng, i))
        new_rows, others, _ = _partition(new_state)
        return (jax.tree.map(jnp.add, grad_sum, g), jax.tree.map(jnp.add, metric_sum, m),
                others), new_rows

    (grad_sum, metric_sum, others), new_rows = lax.scan(
        body, (zeros(grad_shape), zeros(metric_shape), others), (micro, micro_rows, jnp.arange(k)))
    mean = lambda tree: jax.tree.map(lambda x: x / k, tree)
    return mean(grad_sum), (mean(metric_sum), merge(merge_microbatches(new_rows), others))


def _check_same_structure(old: PyTree, new: PyTree) -> None:
    """A step's model state must keep its structure: a state that grows (BatchNorm statistics
    returned into a state created without them) would recompile the next step, silently."""
    if jax.tree.structure(old) != jax.tree.structure(new):
        paths = lambda t: {jax.tree_util.keystr(p) for p, _ in
                           jax.tree_util.tree_flatten_with_path(t)[0]}
        added, lost = sorted(paths(new) - paths(old)), sorted(paths(old) - paths(new))
        raise ValueError(
            "the loss returned a model_state of another structure than the state's"
            + (f" (new: {', '.join(added[:4])})" if added else "")
            + (f" (missing: {', '.join(lost[:4])})" if lost else "")
            + ": give TrainState.create the initial model_state, e.g. "
            "model_state=variables['batch_stats']")


def make_train_step(
    objective: Objective | Callable,
    *,
    grad_accum_steps: int = 1,
    compute_dtype: Any = None,
    remat: bool = False,
    skip_nonfinite: bool = False,
    axis_name: str | None = None,
    ema_decay: float = 0.0,
) -> Callable[[TrainState, PyTree], tuple[TrainState, Metrics]]:
    """Builds the pure train step ``step(state, batch) -> (new_state, metrics)``.

    Args:
      objective: a loss function (see :func:`single_player_objective`) or a sequence of
        :class:`Update` s, applied in order.
      grad_accum_steps: k > 1 splits the batch into k microbatches and averages their gradients
        under ``lax.scan``; with a mean loss this equals one step on the whole batch. Per-example
        model state (:data:`PER_EXAMPLE`) is split with the batch; other model state passes
        through the microbatches in order.
      compute_dtype: e.g. ``jnp.bfloat16`` for mixed precision: params stay float32, the loss is
        computed on params and floating inputs cast to this dtype, gradients come back float32.
        Losses should upcast model outputs to float32 before reducing.
      remat: recompute the loss's forward pass during the backward pass (``jax.checkpoint``).
        Models also take a ``remat`` option that rematerialises per layer, which saves more memory.
      skip_nonfinite: if a loss or gradient is NaN or infinite, keep the old params, optimizer and
        model state for that step (the step counter still advances) and report ``skipped = 1``.
      axis_name: the mapped axis to average gradients, metrics and model state over (all but its
        per-example leaves, which hold each shard's own rows); set by the ``pmap`` strategy,
        ``None`` otherwise (under ``jit`` with shardings the batch is global).
      ema_decay: > 0 keeps ``state.ema_params`` (the state must be created with ``ema=True``):
        after the updates of step s, ``ema = d ema + (1 - d) params`` with
        ``d = min(ema_decay, (1 + s) / (10 + s))``, the warm-up that keeps early averages from
        being dominated by the random initial params (TensorFlow's ExponentialMovingAverage
        with ``num_updates``).

    The step's rng is ``fold_in(fold_in(state.rng, step), shard)`` (shard only under ``pmap``; under
    ``jit`` random draws over the global batch already differ across shards), then folded in per
    update, repeat and microbatch, so a run is deterministic for a seed.
    """
    updates = as_objective(objective)
    if grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1) (0: no EMA), got {ema_decay}")

    def step(state: TrainState, batch: PyTree) -> tuple[TrainState, Metrics]:
        rng = jax.random.fold_in(state.rng, state.step)
        if axis_name is not None:
            rng = jax.random.fold_in(rng, lax.axis_index(axis_name))
        params, opt_state = dict(state.params), dict(state.opt_state)
        model_state = state.model_state
        metrics: Metrics = {}
        finite = jnp.array(True)
        for u, update in enumerate(updates):
            if update.player not in state.tx:
                raise ValueError(f"objective updates player {update.player!r}; the state has "
                                 f"players {list(state.tx)}")
            for r in range(update.repeats):
                update_rng = jax.random.fold_in(jax.random.fold_in(rng, u), r)
                grads, (m, new_model_state) = _grads_and_metrics(
                    update, params, model_state, batch, update_rng,
                    grad_accum_steps=grad_accum_steps, compute_dtype=compute_dtype, remat=remat)
                _check_same_structure(model_state, new_model_state)
                model_state = new_model_state
                grads, m, model_state = _pmean((grads, m, model_state), axis_name)
                finite &= _all_finite((grads, m))
                p = update.player
                delta, opt_state[p] = state.tx[p].update(grads, opt_state[p], params[p])
                params[p] = optax.apply_updates(params[p], delta)
            metrics.update({update.prefix + k: v for k, v in m.items()})
            metrics[update.prefix + "grad_norm"] = optax.tree.norm(grads)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  model_state=model_state)
        if ema_decay:
            new_state = new_state.replace(ema_params=ema_update(state, params, ema_decay))
        if skip_nonfinite:
            keep_old = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
            new_state = new_state.replace(
                params=keep_old(new_state.params, state.params),
                opt_state=keep_old(new_state.opt_state, state.opt_state),
                model_state=keep_old(new_state.model_state, state.model_state),
                ema_params=keep_old(new_state.ema_params, state.ema_params))
            metrics["skipped"] = 1.0 - finite.astype(jnp.float32)
        return new_state, metrics

    return step


def ema_update(state: TrainState, params: dict, decay: float) -> dict:
    """``state.ema_params`` moved toward ``params`` (the step's new params), with the warm-up
    of :func:`make_train_step`'s ``ema_decay``."""
    if state.ema_params is None:
        raise ValueError("ema_decay > 0 needs a state that keeps an EMA: "
                         "TrainState.create(..., ema=True)")
    step = state.step.astype(jnp.float32)
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state.ema_params, params)


@dataclasses.dataclass(frozen=True)
class AllPlayers:
    """An evaluation that sees every player, as a family's ``eval_metrics`` does:
    ``fn(params, model_state, batch, rng) -> metrics`` (or ``(metrics, new_model_state)``), with
    ``params`` and ``model_state`` dicts keyed by player (for :func:`make_eval_step`)."""

    fn: Callable


def make_eval_step(
    metrics_fn: Callable | AllPlayers,
    *,
    compute_dtype: Any = None,
    axis_name: str | None = None,
) -> Callable[[TrainState, PyTree], Metrics | tuple[TrainState, Metrics]]:
    """Builds ``eval_step(state, batch) -> metrics``.

    ``metrics_fn`` has the form :func:`make_train_step`'s loss function has, with the one
    player's params: ``(params, batch, rng) -> (loss, metrics)`` or ``(params, batch, rng,
    model_state) -> (loss, metrics, new_model_state)``; its batch-mean ``metrics`` are the
    evaluation (a new model state is not kept: evaluating changes nothing). Write it in eval mode
    (``use_running_average=True``, deterministic dropout). Several players, or a family:
    :class:`AllPlayers`. The rng is fixed per step so evaluation is repeatable.

    A model whose evaluation carries per-example state through a split (an LSTM reading a test
    stream batch after batch) returns ``(metrics, new_model_state)``; the step then returns
    ``(state with the new model state, metrics)``, like a train step, and the caller threads the
    state from batch to batch (see :func:`with_fresh_per_example_state`).
    """

    if isinstance(metrics_fn, AllPlayers):
        metrics_fn = metrics_fn.fn
    else:  # the user's single-player form, as for training
        (update,) = single_player_objective(metrics_fn)
        metrics_fn = metrics_only(update.loss_fn)

    def eval_step(state: TrainState, batch: PyTree):
        rng = jax.random.fold_in(jax.random.fold_in(state.rng, -1 & 0x7FFFFFFF), state.step)
        if axis_name is not None:
            rng = jax.random.fold_in(rng, lax.axis_index(axis_name))
        out = metrics_fn(cast_floating(state.params, compute_dtype), state.model_state,
                         cast_floating(batch, compute_dtype), rng)
        metrics, model_state = out if isinstance(out, tuple) else (out, None)
        metrics = _pmean(jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), metrics), axis_name)
        if model_state is None:
            return metrics
        return state.replace(model_state=_pmean(model_state, axis_name)), metrics

    return eval_step


def with_fresh_per_example_state(state: TrainState, rows: int) -> TrainState:
    """``state`` (on the host) with every per-example leaf replaced by zeros for ``rows`` rows:
    where an evaluation that carries per-example state starts a split."""
    fresh = lambda x: jnp.zeros((rows, *x.shape[1:]), x.dtype)
    return state.replace(model_state=map_per_example(state.model_state, fresh, lambda x: x))


def metrics_only(loss_fn: PlayerLossFn) -> Callable:
    """Turns a :data:`PlayerLossFn` into a metrics function for :func:`make_eval_step`."""
    return lambda params, model_state, batch, rng: loss_fn(params, model_state, batch, rng)[1]
