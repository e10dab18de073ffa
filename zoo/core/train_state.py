"""The one train state every zoo model trains with.

A state holds one or several *players*, each with its own parameters, optax optimizer and
non-trainable model state (BatchNorm statistics and the like). An autoencoder has one player,
``"model"``; a GAN has two, ``"generator"`` and ``"discriminator"``. There is no second code path:
a single-model state is a state with one player.

Model state comes in two kinds. Most of it describes the model (BatchNorm statistics) and is the
same on every device. State kept per batch row, such as the ``(c, h)`` a recurrent model carries
from one batch to the next in truncated BPTT, goes under ``model_state[player][PER_EXAMPLE]``
(``zoo.core.step.PER_EXAMPLE``, ``"per_example"``): every leaf there has the global batch as its
leading dimension, row i belonging to batch row i, and is split over devices and microbatches
like the batch (see ``zoo.core.step``).

``ema_params`` (None unless asked for) is an exponential moving average of every player's params,
updated by the train step after each optimizer update (``make_train_step(ema_decay=...)``): what
a diffusion model samples from, and a GAN's generator can too. It is placed, checkpointed and
restored like the params.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import struct

PyTree = Any

DEFAULT_PLAYER = "model"


class TrainState(struct.PyTreeNode):
    """Step, params, optimizer state, model state and rng for every player.

    ``params``, ``opt_state`` and ``model_state`` are dicts keyed by player name; ``tx`` holds each
    player's optax optimizer and is static (not a pytree leaf), so a state passes through
    ``jax.jit`` and ``jax.pmap`` as data. ``model_state[player]["per_example"]`` holds state with a
    row per example of the global batch (see the module docstring).

    Example::

        import jax, jax.numpy as jnp, optax
        from flax import linen as nn
        from zoo.core.train_state import TrainState

        model = nn.Dense(3)
        params = model.init(jax.random.PRNGKey(0), jnp.ones((1, 4)))["params"]
        state = TrainState.create(params=params, tx=optax.adam(1e-3), seed=0)
        assert set(state.params) == {"model"} and int(state.step) == 0
    """

    step: jax.Array
    params: dict[str, PyTree]
    opt_state: dict[str, PyTree]
    model_state: dict[str, PyTree]
    rng: jax.Array
    tx: dict[str, optax.GradientTransformation] = struct.field(pytree_node=False)
    ema_params: dict[str, PyTree] | None = None

    @classmethod
    def create(
        cls,
        *,
        params: PyTree,
        tx: optax.GradientTransformation | Mapping[str, optax.GradientTransformation],
        model_state: PyTree | None = None,
        seed: int | None = None,
        rng: jax.Array | None = None,
        ema: bool = False,
    ) -> "TrainState":
        """Builds a state at step 0; ``ema=True`` starts ``ema_params`` at the params.

        With a single ``optax.GradientTransformation`` the state has one player, ``"model"``, and
        ``params``/``model_state`` are that player's. With a dict of optimizers, ``params`` (and
        ``model_state`` if given) must be dicts with the same player names.
        """
        if (seed is None) == (rng is None):
            raise ValueError("TrainState.create needs exactly one of seed= or rng=")
        if rng is None:
            rng = jax.random.PRNGKey(seed)
        if isinstance(tx, optax.GradientTransformation):
            tx = {DEFAULT_PLAYER: tx}
            params = {DEFAULT_PLAYER: params}
            model_state = {DEFAULT_PLAYER: {} if model_state is None else model_state}
        else:
            tx = dict(tx)
            if not isinstance(params, Mapping) or set(params) != set(tx):
                got = sorted(params) if isinstance(params, Mapping) else type(params).__name__
                raise ValueError(
                    f"params must be a dict with one entry per player {sorted(tx)}; got {got}"
                )
            params = dict(params)
            model_state = dict(model_state or {})
            model_state = {p: model_state.get(p, {}) for p in tx}
        opt_state = {p: tx[p].init(params[p]) for p in tx}
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=opt_state,
            model_state=model_state,
            rng=rng,
            tx=tx,
            ema_params=jax.tree.map(jnp.array, params) if ema else None,
        )

    @property
    def players(self) -> tuple[str, ...]:
        return tuple(self.tx)


def param_count(params: PyTree) -> int:
    """Number of scalar parameters in a pytree."""
    return sum(int(x.size) for x in jax.tree.leaves(params))


def sampling_params(state: TrainState) -> dict[str, PyTree]:
    """What draws samples from a state: its EMA of the params where it keeps one, else params.
    The one rule for it: a loaded run (``zoo.checkpoint.LoadedRun``, with the same two fields)
    asks here too."""
    return state.params if state.ema_params is None else state.ema_params
