"""A step compiled by a strategy, with its input checks.

``CompiledStep`` is what training loops call. Before anything reaches XLA it checks that the batch
has the declared (or first-seen) shapes and dtypes and divides over the devices, and that a train
state's per-example model state has one row per example of the global batch, so bad input gets a
``ValueError`` that names the problem instead of a retrace or a deep XLA traceback. It also counts
traces, so "compiled once" is a number a test can read.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import numpy as np

from zoo.core import parallel
from zoo.core import step as step_lib
from zoo.core.train_state import PyTree, TrainState

# A batch spec: a pytree like the batch whose leaves are jax.ShapeDtypeStruct with the batch
# dimension left out, e.g. {"image": ShapeDtypeStruct((28, 28, 1), float32)}.
BatchSpec = PyTree


def spec_of(batch: PyTree) -> BatchSpec:
    """The spec of a batch: shapes without the leading batch dimension, and dtypes."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x)[1:], np.result_type(x)), batch)


def _fmt(shape) -> str:
    return "(B" + "".join(f", {d}" for d in shape) + ")"


def check_batch(batch: PyTree, spec: BatchSpec) -> None:
    """Raises ValueError naming the first leaf whose structure, shape or dtype differs from spec."""
    if not isinstance(batch, Mapping) and isinstance(spec, Mapping):
        raise ValueError(f"a batch is a dict with keys {sorted(spec)}; got {type(batch).__name__}")
    if isinstance(spec, Mapping) and isinstance(batch, Mapping) and set(batch) != set(spec):
        raise ValueError(f"batch has keys {sorted(batch)}; expected keys {sorted(spec)}")
    got_leaves, got_tree = jax.tree_util.tree_flatten_with_path(batch)
    want_leaves, want_tree = jax.tree_util.tree_flatten(spec)
    if got_tree != want_tree:
        raise ValueError(f"batch structure {got_tree} does not match the expected {want_tree}")
    parallel.batch_size(batch)  # leaves must share a leading dimension
    for (path, x), want in zip(got_leaves, want_leaves):
        name = "batch" + jax.tree_util.keystr(path)
        if tuple(np.shape(x)[1:]) != tuple(want.shape):
            raise ValueError(f"{name} has shape {_fmt(np.shape(x)[1:])} with B={np.shape(x)[0]}; "
                             f"expected {_fmt(want.shape)}")
        got_dtype = np.result_type(x)
        if got_dtype != want.dtype:
            raise ValueError(f"{name} has dtype {got_dtype}; expected {want.dtype}")


def check_per_example_state(state: TrainState, placed_batch: PyTree,
                            strategy: parallel.Strategy) -> None:
    """Raises ValueError naming the first per-example model-state leaf whose rows are not the
    global batch size (see ``zoo.core.step.PER_EXAMPLE``)."""
    batch_rows = strategy.global_rows(jax.tree.leaves(placed_batch)[0])
    for path, x in step_lib.per_example_leaves(state.model_state):
        rows = strategy.global_rows(x)
        if rows != batch_rows:
            raise ValueError(
                f"per-example state model_state{jax.tree_util.keystr(path)} has {rows} rows but "
                f"the global batch has {batch_rows} examples; it needs one row per example")


class CompiledStep:
    """A pure step compiled by a strategy: ``outputs = compiled(state, batch)``.

    Args:
      fn: ``fn(state, batch)``; under ``pmap`` it is built with the strategy's ``axis_name``.
      strategy: where and how to compile.
      batch_spec: the expected batch (see :data:`BatchSpec`); if ``None`` the first batch sets it.
      grad_accum_steps: checked against the batch size before compiling.
      donate_state: donate the input state's buffers to the output (train steps do).
      check_per_example: check that the state's per-example model state has a row per example of
        the global batch (train steps; an eval batch may have another size).
    """

    def __init__(self, fn: Callable, strategy: parallel.Strategy, *,
                 batch_spec: BatchSpec | None = None, grad_accum_steps: int = 1,
                 donate_state: bool = True, check_per_example: bool = False):
        self.strategy = strategy
        self.fn = fn  # the pure step, uncompiled
        self.check_per_example = check_per_example
        self.batch_spec = batch_spec
        self.grad_accum_steps = grad_accum_steps
        self.num_traces = 0

        def counted(state, batch):
            self.num_traces += 1  # runs only while tracing
            return fn(state, batch)

        self.compiled = strategy.compile(counted, donate_state=donate_state)
        # XLA:CPU deadlocks in a multi-device collective once ~64 steps are queued (seen with
        # jax 0.10.2 on 8 host devices): there, a call waits for the one before it to finish.
        devices = getattr(strategy, "devices", None) or jax.devices()
        self.bound_in_flight = strategy.num_shards > 1 and devices[0].platform == "cpu"
        self._previous = None

    def place_batch(self, batch: PyTree) -> PyTree:
        """Checks a host batch (this process's part) and places it for the compiled step."""
        if self.batch_spec is None:
            parallel.batch_size(batch)
            self.batch_spec = spec_of(batch)
        check_batch(batch, self.batch_spec)
        self.strategy.check_batch(batch, self.grad_accum_steps)
        return self.strategy.place_batch(batch)

    def __call__(self, state: TrainState, batch: PyTree, *, placed: bool = False):
        if not placed:
            batch = self.place_batch(batch)
        if self.check_per_example:
            check_per_example_state(state, batch, self.strategy)
        if self.bound_in_flight and self._previous is not None:
            jax.block_until_ready(self._previous)
        out = self.compiled(state, batch)
        if self.bound_in_flight:  # the metrics: small, and ready when the step is done
            self._previous = out[1] if isinstance(out, tuple) else out
        return out


def compile_train_step(objective, strategy: parallel.Strategy, *, batch_spec: BatchSpec = None,
                       **step_options: Any) -> CompiledStep:
    """``make_train_step(objective, **step_options)`` compiled under ``strategy``."""
    fn = step_lib.make_train_step(objective, axis_name=strategy.axis_name, **step_options)
    return CompiledStep(fn, strategy, batch_spec=batch_spec,
                        grad_accum_steps=step_options.get("grad_accum_steps", 1),
                        check_per_example=True)


def compile_eval_step(metrics_fn: Callable, strategy: parallel.Strategy, *,
                      batch_spec: BatchSpec = None, compute_dtype=None) -> CompiledStep:
    """``make_eval_step(metrics_fn)`` compiled under ``strategy`` (state not donated):
    ``metrics_fn`` in the form ``compile_train_step``'s loss function takes, or
    :class:`zoo.AllPlayers`."""
    fn = step_lib.make_eval_step(metrics_fn, compute_dtype=compute_dtype,
                                 axis_name=strategy.axis_name)
    return CompiledStep(fn, strategy, batch_spec=batch_spec, donate_state=False)


class CompileCounter:
    """Counts XLA backend compilations while active (``with CompileCounter() as c: ...; c.count``),
    executables fetched from JAX's persistent compilation cache included (JAX times both as one
    event): a program obtained again is a recompile even when a cache makes it cheap.

    Trace counts alone can mislead (pmap traces twice on its first call); a compile that happens
    on step 10 is the thing "compiled once" rules out.
    """

    _EVENT = "/jax/core/compile/backend_compile_duration"
    _active: list["CompileCounter"] = []
    _registered = False

    def __init__(self):
        self.count = 0

    @classmethod
    def _listener(cls, event: str, duration: float, **kwargs) -> None:
        if event == cls._EVENT:
            for counter in cls._active:
                counter.count += 1

    def __enter__(self) -> "CompileCounter":
        if not CompileCounter._registered:
            jax.monitoring.register_event_duration_secs_listener(CompileCounter._listener)
            CompileCounter._registered = True
        CompileCounter._active.append(self)
        return self

    def __exit__(self, *exc) -> None:
        CompileCounter._active.remove(self)
