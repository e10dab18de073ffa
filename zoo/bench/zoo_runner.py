"""zoo's side of a case: the case's config built into a compiled train step the way ``zoo train``
builds it (:func:`zoo.build.initial_state`, :func:`zoo.build.compile_steps`,
:func:`zoo.core.parallel.strategy_from_config`), on a synthetic batch placed once by the strategy
(on the device; on CPU the single strategy's is host arrays, which each call hands over)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from zoo.bench.catalog import Case

# A schedule's length for the bench's optimizers (warm-up and decay need one; ``zoo train`` uses
# ``train.steps``). The bench times far fewer steps, so schedules stay near their start.
SCHEDULE_STEPS = 1000


def synthetic_batch(spec, batch_size: int, *, seed: int = 0, int_high: dict | None = None) -> dict:
    """A host batch of ``batch_size`` examples matching a family's ``batch_spec``.

    Floating leaves are uniform in [0, 1) (images), integer leaves uniform in
    ``[0, int_high[key])`` (token ids, labels; 2 if not given).
    """
    rng = np.random.default_rng(seed)
    int_high = int_high or {}
    out = {}
    for key, s in spec.items():
        shape = (batch_size, *s.shape)
        dtype = np.dtype(s.dtype)
        if np.issubdtype(dtype, np.floating):
            out[key] = rng.random(shape, np.float32).astype(dtype)
        elif np.issubdtype(dtype, np.integer):
            out[key] = rng.integers(0, int(int_high.get(key, 2)), shape).astype(dtype)
        elif dtype == np.bool_:
            out[key] = rng.random(shape) < 0.5
        else:
            raise ValueError(f"synthetic_batch: cannot make leaf {key!r} of dtype {dtype}")
    return out


def zoo_config(case: Case, strategy: str, seed: int = 0):
    """The ``ml_collections.ConfigDict`` ``zoo train`` would run ``case`` with under ``strategy``:
    ``model``, ``optimizer`` / ``optimizers``, ``train`` (steps, seed and the case's options) and
    ``parallel`` (the strategy, and the case's mesh options under mesh)."""
    import ml_collections
    config = {"model": case.model_config(), "optimizer": dict(case.optimizer),
              "train": {"steps": SCHEDULE_STEPS, "seed": seed, **case.train},
              "parallel": {**(case.parallel if strategy == "mesh" else {}), "strategy": strategy}}
    if case.optimizers:
        config["optimizers"] = {p: dict(c) for p, c in case.optimizers.items()}
    return ml_collections.ConfigDict(config)


def memory_fields(compiled) -> dict[str, Any]:
    """``memory_analysis`` of a compiled step and the peak it implies (arguments + outputs -
    aliased + temporaries), or Nones where the backend has none."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend has it
        m = None
    if m is None:
        return {"memory_analysis": None, "peak_bytes_estimate": None}
    if isinstance(m, (list, tuple)):
        m = m[0]
    fields = {k: int(getattr(m, k)) for k in dir(m)
              if k.endswith("_in_bytes") and isinstance(getattr(m, k, None), (int, np.integer))}
    peak = (fields.get("argument_size_in_bytes", 0) + fields.get("output_size_in_bytes", 0)
            - fields.get("alias_size_in_bytes", 0) + fields.get("temp_size_in_bytes", 0))
    return {"memory_analysis": fields, "peak_bytes_estimate": int(peak)}


class ZooRunner:
    """A case's train step compiled under a strategy, with its state and a placed batch.

    ``step()`` runs one step and blocks; construction records ``init_s``, ``lower_s``,
    ``compile_s``, XLA's FLOPs, the jaxpr's FLOPs, the family's FLOPs and memory analysis.
    """

    def __init__(self, case: Case, strategy_name: str, devices: list | None = None,
                 batch_size: int | None = None, seed: int = 0):
        import jax
        from zoo import flops as flops_lib
        from zoo import build, models
        from zoo.core import parallel
        from zoo.core.train_state import param_count

        self.case = case
        self.config = zoo_config(case, strategy_name, seed)
        self.family = models.make_family(self.config.model)
        self.strategy = parallel.strategy_from_config(self.config.parallel, devices)
        # What the family's layers run under the strategy (cuDNN's LSTM or the scan, say).
        with self.strategy.tracing():
            self.implementations = self.family.implementations() \
                if self.family.implementations else {}
        self.batch_size = batch_size or case.batch_size
        self.host_batch = synthetic_batch(self.family.batch_spec, self.batch_size, seed=seed,
                                          int_high=case.int_high)
        t0 = time.perf_counter()
        state = build.initial_state(self.family, self.config, self.host_batch)
        self.init_s = time.perf_counter() - t0
        self.players = tuple(state.params)
        self.param_count = param_count(state.params)
        self.step_fn, _ = build.compile_steps(self.family, self.strategy, self.config.train)
        # Each process places its own rows of the global batch (all of them in one process).
        local = self.batch_size // jax.process_count()
        rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
        self.batch = self.step_fn.place_batch({k: v[rows] for k, v in self.host_batch.items()})
        self.state = self.strategy.place_state(state)
        jax.block_until_ready((self.state, self.batch))

        t0 = time.perf_counter()
        lowered = self.step_fn.compiled.lower(self.state, self.batch)
        t1 = time.perf_counter()
        self.executable = lowered.compile()
        t2 = time.perf_counter()
        self.lower_s, self.compile_s = t1 - t0, t2 - t1
        self.memory = memory_fields(self.executable)
        xla = flops_lib.xla_flops(self.executable)
        # cost_analysis is of one device's program: pmap's per-replica program and mesh's
        # partitioned program each do 1/n of the work (replicated optimizer math aside).
        self.xla_flops = None if xla is None else xla * self.strategy.num_shards
        # The jaxpr of the same step on one device over the whole batch (the global count),
        # traced with the layers' choices under this case's strategy.
        one = parallel.strategy_from_config({"strategy": "single"}, devices)
        plain, _ = build.compile_steps(self.family, one, self.config.train)
        with self.strategy.tracing():
            self.jaxpr_flops = flops_lib.jaxpr_flops(plain.fn, state, self.host_batch)
        per_example = self.family.flops_per_example
        self.family_flops = float(per_example) * self.batch_size if per_example else None
        self.metrics = None

    def step(self) -> None:
        import jax
        self.state, self.metrics = self.executable(self.state, self.batch)
        jax.block_until_ready(self.state)

    def loss(self) -> float | None:
        """The last step's loss (the first metric named ``*loss``), or None before a step."""
        if self.metrics is None:
            return None
        m = self.strategy.to_host(self.metrics)
        key = next((k for k in m if k.endswith("loss")), None)
        return None if key is None else float(np.mean(m[key]))
