"""Parallel strategies: the same pure step, compiled and sharded three ways.

* ``single``: ``jax.jit`` on one device.
* ``pmap``: ``jax.pmap`` data parallelism over the local devices; gradients, metrics and model state
  (BatchNorm statistics) are averaged with ``lax.pmean``. Upstream JAX keeps pmap in maintenance
  mode; zoo keeps it because the design card asks for pmap-sharded steps.
* ``mesh`` (default): ``jax.jit`` with ``NamedSharding`` on a ``data`` x ``fsdp`` mesh. The batch is
  split over every device; with ``fsdp > 1`` params and optimizer state are sharded along their
  largest dimension that divides by ``fsdp`` (replicated where none does). Spans processes when
  ``jax.distributed`` is initialised: each process feeds its local slice of the global batch.

Per-example model state (``zoo.core.step.PER_EXAMPLE``, e.g. an LSTM's carried ``(c, h)``) is
placed like the batch: split over devices under ``pmap`` and ``mesh``, never replicated or averaged.

For the same global batch and seed all three give the same numbers up to float32 reduction order.
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
import functools
from typing import Any, Callable, Iterator

import jax
import flax.jax_utils
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from zoo.core import settings
from zoo.core import step as step_lib
from zoo.core.settings import ParallelSettings
from zoo.core.train_state import PyTree

STRATEGIES = ("single", "pmap", "mesh")
PMAP_AXIS = "batch"


def sync_axis() -> str | None:
    """The axis a model syncs batch statistics over, valid under every strategy: the pmap axis
    while tracing under ``pmap`` (each device holds a slice of the batch), else None (``single``
    and ``mesh`` see the whole global batch, which XLA reduces across devices itself). For a
    user's model as for zoo's::

        nn.BatchNorm(use_running_average=not train, axis_name=parallel.sync_axis())

    makes BatchNorm's statistics those of the global batch under single, pmap and mesh alike.
    """
    try:
        jax.lax.axis_index(PMAP_AXIS)
        return PMAP_AXIS
    except NameError:  # not inside the pmap: no axis bound
        return None


# How many devices XLA splits the step being traced over (set by Strategy.tracing).
_DEVICES_PER_PROGRAM: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "zoo_devices_per_program", default=None)


def on_cuda() -> bool:
    """Whether this process's devices are CUDA GPUs, as JAX's own checks ask (``"cuda"`` in the
    platform version; ROCm's GPUs are not)."""
    return "cuda" in jax.devices()[0].client.platform_version.lower()


def devices_per_program() -> int:
    """How many devices XLA splits the computation being traced over. 1 under ``single`` and
    ``pmap`` (each device runs the whole step on its own rows) and the mesh's size under ``mesh``;
    outside zoo's strategies, 1 inside ``pmap`` or ``shard_map`` (every mesh axis manual), else
    every device of every process (a plain ``jit`` may be partitioned by its inputs' shardings).
    JAX's trace caches do not see this: a user's own module-level ``jit`` holding such layers,
    called in the steps of two strategies, keeps the choice of its first trace.

    A layer whose kernel has no sharding rule (cuDNN's LSTM) runs it only where this is 1: XLA's
    partitioner would run such a kernel whole on every device of a mesh.
    """
    chosen = _DEVICES_PER_PROGRAM.get()
    if chosen is not None:
        return chosen
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and set(mesh.manual_axes) == set(mesh.axis_names):
        return 1
    return jax.device_count()


def _leading_dims(batch: PyTree) -> set[int]:
    dims = set()
    for path, x in jax.tree_util.tree_leaves_with_path(batch):
        if np.ndim(x) == 0:
            raise ValueError(f"batch leaf {jax.tree_util.keystr(path)} is a scalar; every batch "
                             "leaf needs a leading batch dimension")
        dims.add(int(np.shape(x)[0]))
    return dims


def batch_size(batch: PyTree) -> int:
    """The leading dimension shared by every leaf of ``batch`` (ValueError if they differ)."""
    dims = _leading_dims(batch)
    if len(dims) != 1:
        raise ValueError(f"batch leaves disagree on the batch size: {sorted(dims)}")
    return dims.pop()


def check_per_example_rows(state: PyTree, n: int) -> None:
    """Raises ValueError unless every per-example leaf of ``state`` splits over ``n`` devices."""
    for path, x in step_lib.per_example_leaves(state):
        rows = np.shape(x)[0] if np.ndim(x) else 0
        if rows == 0 or rows % n:
            raise ValueError(f"per-example state {jax.tree_util.keystr(path)} has {rows} rows, "
                             f"which do not divide over {n} devices; it needs one row per example "
                             "of the global batch")


def check_divisible(global_batch: int, n: int, what: str, grad_accum_steps: int = 1) -> None:
    """Raises ValueError unless a global batch splits evenly over ``n`` shards and k microbatches."""
    if global_batch % n:
        raise ValueError(f"global batch of {global_batch} examples does not divide over {n} "
                         f"{what}; use a multiple of {n}")
    if global_batch % (n * grad_accum_steps):
        raise ValueError(
            f"global batch of {global_batch} examples does not divide into {grad_accum_steps} "
            f"microbatches over {n} {what}; use a multiple of {n * grad_accum_steps}")


class Strategy(abc.ABC):
    """How a pure step is compiled and where its state and batches live."""

    name: str
    axis_name: str | None = None

    @property
    @abc.abstractmethod
    def num_shards(self) -> int:
        """How many pieces the global batch is split into."""

    @abc.abstractmethod
    def place_state(self, state: PyTree) -> PyTree:
        """Puts a host (or single-device) state where the compiled step wants it."""

    @abc.abstractmethod
    def place_batch(self, batch: PyTree) -> PyTree:
        """Puts this process's part of the global batch where the compiled step wants it."""

    @abc.abstractmethod
    def compile(self, fn: Callable, *, donate_state: bool = True) -> Callable:
        """Compiles ``fn(state, batch) -> outputs``; outputs other than a state come back global.
        ``fn`` is traced under :meth:`tracing`."""

    @property
    def devices_per_program(self) -> int:
        """How many devices XLA splits one compiled step over (1: each runs all of it)."""
        return 1

    @contextlib.contextmanager
    def tracing(self) -> Iterator[None]:
        """The context this strategy's steps are traced in: :func:`devices_per_program` says
        :attr:`devices_per_program` inside it. What a family's ``implementations()`` says in it
        is what the compiled step runs."""
        token = _DEVICES_PER_PROGRAM.set(self.devices_per_program)
        try:
            yield
        finally:
            _DEVICES_PER_PROGRAM.reset(token)

    def _traced(self, fn: Callable) -> Callable:
        """``fn``, traced under :meth:`tracing` (jit and pmap call it while tracing)."""
        @functools.wraps(fn)
        def traced(*args, **kwargs):
            with self.tracing():
                return fn(*args, **kwargs)
        return traced

    @abc.abstractmethod
    def to_host(self, tree: PyTree) -> PyTree:
        """Fetches a placed tree (state or metrics) as global numpy arrays on every process."""

    def canonical_state(self, state: PyTree) -> PyTree:
        """The state as one global copy (what a checkpoint holds): unreplicated under pmap."""
        return state

    @abc.abstractmethod
    def restore_shardings(self, state: PyTree) -> PyTree:
        """Shardings to restore a checkpointed state into, before :meth:`place_state`."""

    def abstract_placed(self, state: PyTree, batch: PyTree) -> tuple[PyTree, PyTree]:
        """``state`` and ``batch`` (shapes: ``jax.ShapeDtypeStruct`` s) with the shardings
        :meth:`place_state` and :meth:`place_batch` would give them: inputs to lower a step on
        without allocating (``zoo bench --compile-only``). One device's: as they are."""
        return state, batch

    def global_batch_size(self, local_batch: PyTree) -> int:
        """The global batch of which ``local_batch`` is this process's (equal) part."""
        return batch_size(local_batch) * jax.process_count()

    def global_rows(self, x) -> int:
        """The global leading (batch) dimension of a placed batch or per-example state leaf."""
        return int(np.shape(x)[0])

    def check_batch(self, local_batch: PyTree, grad_accum_steps: int = 1) -> None:
        """Raises ValueError unless the global batch divides over the shards and microbatches."""
        check_divisible(self.global_batch_size(local_batch), self.num_shards, "devices",
                        grad_accum_steps)


class Single(Strategy):
    name = "single"

    def __init__(self, device: jax.Device | None = None):
        self.device = device or jax.local_devices()[0]

    @property
    def num_shards(self) -> int:
        return 1

    def place_state(self, state):
        # A copy: the compiled step donates the state, which must not delete the caller's arrays.
        return jax.device_put(state, self.device, may_alias=False)

    def place_batch(self, batch):
        if self.device.platform == "cpu":
            # The host arrays as they are: the compiled step's C++ dispatch takes them for ~20 us
            # more a call, where device_put's Python costs ~130 us a batch, which on CPU comes
            # out of the step's own cores (the quick classifier's training loop 1.12x faster;
            # benchmarks/README.md).
            return jax.tree.map(np.asarray, batch)
        return jax.device_put(batch, self.device)

    def compile(self, fn, *, donate_state=True):
        return jax.jit(self._traced(fn), donate_argnums=(0,) if donate_state else ())

    def to_host(self, tree):
        return jax.device_get(tree)

    def restore_shardings(self, state):
        return jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(self.device), state)


class Pmap(Strategy):
    name = "pmap"
    axis_name = PMAP_AXIS

    def __init__(self, devices: list[jax.Device] | None = None):
        if jax.process_count() > 1:
            raise ValueError("the pmap strategy runs in one process; use strategy='mesh' across "
                             f"{jax.process_count()} processes")
        self.devices = list(devices or jax.local_devices())

    @property
    def num_shards(self) -> int:
        return len(self.devices)

    def place_state(self, state):
        # Per-example rows are split like the batch (device d holds its contiguous slice), the rest
        # replicated. Same mesh axis name as pmap's outputs, so step 2 sees the shardings step 1
        # compiled for.
        n = len(self.devices)
        check_per_example_rows(state, n)
        split = NamedSharding(jax.sharding.Mesh(np.array(self.devices), (PMAP_AXIS,)), P(PMAP_AXIS))
        def replicate(x):
            if hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
                return flax.jax_utils.replicate(x, self.devices, axis_name=PMAP_AXIS)
            # One copy per device, assembled: flax's replicate stacks on device, an op (and a
            # compile) per leaf shape, which took 10 s for a small U-Net's state.
            row = np.asarray(x)[None]
            return jax.make_array_from_single_device_arrays(
                (n, *row.shape[1:]), split, [jax.device_put(row, d) for d in self.devices])

        return step_lib.map_per_example(
            state,
            lambda x: jax.device_put(x.reshape(n, -1, *x.shape[1:]), split, may_alias=False),
            replicate)

    def place_batch(self, batch):
        n = len(self.devices)
        check_divisible(batch_size(batch), n, "devices")
        return jax.tree.map(lambda x: np.asarray(x).reshape(n, -1, *np.shape(x)[1:]), batch)

    def compile(self, fn, *, donate_state=True):
        return jax.pmap(self._traced(fn), axis_name=PMAP_AXIS, devices=self.devices,
                        donate_argnums=(0,) if donate_state else ())

    def global_rows(self, x):
        return int(np.shape(x)[0] * np.shape(x)[1])  # (devices, rows per device, ...)

    def to_host(self, tree):
        return jax.device_get(self.canonical_state(tree))

    def abstract_placed(self, state, batch):
        raise ValueError("pmap's steps are lowered on placed arrays only; use single or mesh")

    def canonical_state(self, state):
        # Replicated state and pmean-ed metrics are the same on every device: take device 0's.
        # Per-example rows differ per device: put the slices back together, in order. Both read
        # the devices' buffers: indexing or reshaping the device axis on device runs a program
        # over every device per leaf shape (and one such program hung a test run, 2026-12-07).
        return step_lib.map_per_example(
            state, lambda x: np.asarray(x).reshape(-1, *np.shape(x)[2:]), _first_copy)

    def restore_shardings(self, state):
        return jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(self.devices[0]), state)


def _first_copy(x):
    """Row 0 of a (devices, ...) array, from the first device's buffer (a key array stays on that
    device)."""
    if not isinstance(x, jax.Array):
        return x[0]
    first = min(x.addressable_shards, key=lambda s: s.index[0].start or 0).data
    return first[0] if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else np.asarray(first)[0]


def fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int = 2**10) -> P:
    """PartitionSpec sharding the largest dimension divisible by ``fsdp`` along ``"fsdp"``.

    Leaves smaller than ``min_size`` elements, or with no dimension divisible by ``fsdp``, are
    replicated: sharding them saves nothing and costs a collective.
    """
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    candidates = [(d, i) for i, d in enumerate(shape) if d % fsdp == 0]
    if not candidates:
        return P()
    _, axis = max(candidates)
    return P(*[("fsdp" if i == axis else None) for i in range(len(shape))])


class Mesh(Strategy):
    name = "mesh"

    def __init__(self, data: int | None = None, fsdp: int = 1,
                 devices: list[jax.Device] | None = None):
        devices = list(devices or jax.devices())
        data, fsdp = mesh_shape(len(devices), data, fsdp)
        self.mesh = jax.make_mesh((data, fsdp), ("data", "fsdp"), devices=devices,
                                  axis_types=(jax.sharding.AxisType.Auto,) * 2)
        self.data, self.fsdp = data, fsdp
        self.batch_sharding = NamedSharding(self.mesh, P(("data", "fsdp")))
        self.replicated = NamedSharding(self.mesh, P())

    @property
    def num_shards(self) -> int:
        return self.data * self.fsdp

    @property
    def devices_per_program(self) -> int:
        return self.num_shards

    def state_shardings(self, state: PyTree) -> PyTree:
        """Per-example leaves are sharded like the batch; the rest by :func:`fsdp_spec`."""
        return step_lib.map_per_example(
            state, lambda x: self.batch_sharding,
            lambda x: NamedSharding(self.mesh, fsdp_spec(np.shape(x), self.fsdp)))

    def restore_shardings(self, state):
        return self.state_shardings(state)

    def abstract_placed(self, state, batch):
        shaped = lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
        return (jax.tree.map(shaped, state, self.state_shardings(state)),
                jax.tree.map(lambda x: shaped(x, self.batch_sharding), batch))

    def place_state(self, state):
        def put(x, sharding):
            if isinstance(x, jax.Array) and x.sharding == sharding:
                return jax.device_put(x, sharding, may_alias=False)
            x = np.asarray(jax.device_get(x))
            # Works across processes: each process fills its own devices from its (identical) copy.
            return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

        check_per_example_rows(state, self.num_shards)
        return jax.tree.map(put, state, self.state_shardings(state))

    def place_batch(self, batch):
        check_divisible(self.global_batch_size(batch), self.num_shards, "devices")
        local_devices = len(self.mesh.local_devices)
        check_divisible(batch_size(batch), local_devices, "local devices of this process")
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(x)),
            batch)

    def compile(self, fn, *, donate_state=True):
        # Shardings follow the (placed) inputs; outputs other than the state are replicated, so
        # metrics are global on every process. The new state keeps the old state's shardings.
        def with_constraints(state, batch):
            out = fn(state, batch)
            shard = lambda tree: jax.tree.map(jax.lax.with_sharding_constraint, tree,
                                              self.state_shardings(tree))
            if isinstance(out, tuple) and len(out) == 2 and type(out[0]) is type(state):
                return shard(out[0]), jax.lax.with_sharding_constraint(out[1], self.replicated)
            return jax.lax.with_sharding_constraint(out, self.replicated)

        return jax.jit(self._traced(with_constraints), donate_argnums=(0,) if donate_state else ())

    def to_host(self, tree):
        if jax.process_count() == 1:
            return jax.device_get(tree)
        from jax.experimental import multihost_utils
        return multihost_utils.process_allgather(tree, tiled=True)


def mesh_shape(n: int, data: int | None = None, fsdp: int = 1) -> tuple[int, int]:
    """``(data, fsdp)`` of a mesh over ``n`` devices (``data`` None or -1: every device not in
    fsdp), or a ValueError where they do not make ``n``."""
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"fsdp={fsdp} does not divide the {n} devices")
    if data is None or data == -1:
        data = n // fsdp
    if data * fsdp != n:
        raise ValueError(f"mesh data={data} x fsdp={fsdp} = {data * fsdp} devices; "
                         f"{n} devices are available")
    return data, fsdp


def make_strategy(name: str = ParallelSettings.strategy, devices: list[jax.Device] | None = None,
                  **options: Any) -> Strategy:
    """Strategy by name: ``single``, ``pmap`` or ``mesh`` (options ``data``, ``fsdp``), over
    ``devices`` (default: all; ``single`` takes the first)."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name == "mesh":
        return Mesh(devices=devices, **options)
    if options:
        raise ValueError(f"strategy {name!r} takes no options; got {sorted(options)}")
    if name == "single":
        return Single(devices[0] if devices else None)
    return Pmap(devices)


def strategy_from_config(section: Any, devices: list[jax.Device] | None = None) -> Strategy:
    """The strategy of a config's ``parallel`` section (:class:`zoo.core.settings.
    ParallelSettings` or a mapping of its keys): the one factory ``zoo train``, ``zoo eval`` and
    ``zoo bench`` use."""
    p = settings.parse(ParallelSettings, section, "parallel")
    if p.strategy == "mesh":
        return make_strategy("mesh", devices, data=p.data, fsdp=p.fsdp)
    mesh_keys = [f"parallel.{k}={getattr(p, k)}" for k in ("data", "fsdp")
                 if getattr(p, k) != getattr(ParallelSettings, k)]
    if mesh_keys and p.strategy in STRATEGIES:  # a mesh's axes, which this strategy would ignore
        verb = "shape" if len(mesh_keys) > 1 else "shapes"
        raise ValueError(f"{' and '.join(mesh_keys)} {verb} a mesh; parallel.strategy="
                         f"{p.strategy!r} has none: set parallel.strategy=mesh, or leave "
                         f"parallel.data={ParallelSettings.data} and "
                         f"parallel.fsdp={ParallelSettings.fsdp}")
    return make_strategy(p.strategy, devices)
