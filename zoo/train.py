"""The one training loop every family uses: data, strategy, compiled steps, logging.

``train(config, workdir)`` is importable and tested; ``zoo train`` is a thin wrapper over it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from zoo import data as data_lib
from zoo import models
from zoo.core import compiled, optim, parallel
from zoo.core.family import Family
from zoo.core.train_state import TrainState, param_count

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def compute_dtype(name: str | None):
    if not name or name == "float32":
        return None
    if name not in DTYPES:
        raise ValueError(f"unknown compute dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def make_strategy(parallel_config) -> parallel.Strategy:
    name = parallel_config.get("strategy", "mesh")
    if name == "mesh":
        return parallel.make_strategy("mesh", data=int(parallel_config.get("data", -1)),
                                      fsdp=int(parallel_config.get("fsdp", 1)))
    return parallel.make_strategy(name)


def load_data(data_config, family: Family, split: str, *, seed: int) -> dict[str, np.ndarray]:
    """Arrays for ``split`` holding the keys of ``family.batch_spec``."""
    name = data_config.get("dataset", "synthetic")
    if name == "synthetic":
        shape = family.batch_spec["image"].shape
        n = int(data_config.get("synthetic_size", 4096))
        arrays = data_lib.synthetic_images(n, shape, seed=seed + (split != "train"))
    else:
        arrays = data_lib.load_tfds(name, split, data_dir=data_config.get("tfds_data_dir") or None,
                                    download_dir=data_config.get("download_dir") or None)
    missing = set(family.batch_spec) - set(arrays)
    if missing:
        raise ValueError(f"dataset {name!r} has no {sorted(missing)} for family {family.name!r}")
    return {k: arrays[k] for k in family.batch_spec}


@dataclasses.dataclass
class TrainResult:
    state: TrainState           # placed for the strategy
    history: list[dict]         # one dict per logged step
    eval_metrics: dict[str, float]
    family: Family
    strategy: parallel.Strategy


def evaluate(eval_step: compiled.CompiledStep, state, batches) -> dict[str, float]:
    """Mean of the eval step's metrics over ``batches``."""
    totals, n = {}, 0
    for batch in batches:
        m = eval_step.strategy.to_host(eval_step(state, batch))
        for k, v in m.items():
            totals[k] = totals.get(k, 0.0) + float(v)
        n += 1
    return {k: v / max(n, 1) for k, v in totals.items()}


def train(config, workdir: str | Path | None = None,
          log: Callable[[str], None] = print) -> TrainResult:
    """Trains ``config.model`` on ``config.data`` for ``config.train.steps`` steps."""
    tc = config.train
    seed = int(tc.get("seed", 0))
    family = models.make_family(config.model)
    strategy = make_strategy(config.get("parallel", {}))
    steps = int(tc.steps)
    grad_accum = int(tc.get("grad_accum_steps", 1))
    dtype = compute_dtype(tc.get("compute_dtype", "float32"))
    batch_size = int(config.data.batch_size)
    # Fail before loading data or compiling if the batch cannot be split as asked.
    parallel.check_divisible(batch_size, strategy.num_shards, "devices", grad_accum)

    train_arrays = load_data(config.data, family, "train", seed=seed)
    eval_arrays = load_data(config.data, family, "test", seed=seed)
    it = data_lib.BatchIterator(train_arrays, batch_size, seed=seed)

    params, model_state = family.init(jax.random.PRNGKey(seed), next(iter(
        data_lib.BatchIterator(train_arrays, batch_size, seed=seed, shuffle=False))))
    tx = {p: optim.make_optimizer(config.optimizer, steps) for p in params}
    state = TrainState.create(params=params, tx=tx, model_state=model_state,
                              rng=jax.random.PRNGKey(seed + 1))
    state = strategy.place_state(state)
    train_step = compiled.compile_train_step(
        family.objective, strategy, batch_spec=family.batch_spec, grad_accum_steps=grad_accum,
        compute_dtype=dtype, remat=bool(tc.get("remat", False)))
    eval_step = compiled.compile_eval_step(family.eval_metrics, strategy,
                                           batch_spec=family.batch_spec, compute_dtype=dtype)
    log(f"zoo: {family.name} with {param_count(params):,} params, strategy {strategy.name} over "
        f"{strategy.num_shards} device(s) ({jax.devices()[0].platform}), global batch {batch_size}")

    metrics_file = None
    if workdir is not None and jax.process_index() == 0:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        metrics_file = open(Path(workdir) / "metrics.jsonl", "a")
    eval_batches = lambda: data_lib.BatchIterator(
        eval_arrays, min(int(config.data.get("eval_batch_size", batch_size)), len(
            next(iter(eval_arrays.values())))), shuffle=False).epoch_batches()

    history, log_every = [], int(tc.get("log_every", 50))
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        state, metrics = train_step(state, next(it))
        if step % log_every == 0 or step == steps:
            m = {k: float(v) for k, v in strategy.to_host(metrics).items()}
            if not all(np.isfinite(v) for v in m.values()):
                raise FloatingPointError(f"non-finite metrics at step {step}: {m}")
            elapsed = time.perf_counter() - t0
            record = {"step": step, **m, "examples_per_s": step * batch_size / elapsed}
            history.append(record)
            log(f"step {step:>6}/{steps}  " + "  ".join(
                f"{k} {v:.4g}" for k, v in record.items() if k != "step"))
            if metrics_file:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
    eval_metrics = evaluate(eval_step, state, eval_batches())
    log("eval  " + "  ".join(f"{k} {v:.4g}" for k, v in eval_metrics.items()))
    if metrics_file:
        metrics_file.write(json.dumps({"step": steps, "eval": eval_metrics}) + "\n")
        metrics_file.close()
    return TrainResult(state, history, eval_metrics, family, strategy)
