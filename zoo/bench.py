"""``zoo bench``: throughput, MFU, compile time, memory and scaling, side by side with PyTorch.

Every benchmark is a :class:`Case` (a zoo family, its model config, a batch size) trained on a
synthetic batch that is already on the device. For each case and strategy the harness compiles the
train step ahead of time (lower and compile timed apart), then times single steps with
``block_until_ready``; the PyTorch peer of the same model (``benchmarks/peers``) runs in the same
process, its steps alternating with zoo's in rounds, so both see the same machine.

FLOPs: an analytic count per model (:mod:`zoo.flops`), XLA's ``cost_analysis`` beside it (the ratio
is reported), and a jaxpr count where no closed form exists. MFU is against a table of dense peak
FLOP/s by device kind, and beside it the fraction of a peak measured in the same run (a large
matmul on the same device).

``bench_main(argv)`` is the command line; :func:`run_suite` is the same as a function. Nothing here
imports TensorFlow, TFDS or ml_collections.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------------------
# Peaks

# Dense (not sparse) peak FLOP/s of one device, by a lower-case substring of ``device_kind``; first
# match wins, so specific names come before general ones. "float32" on NVIDIA is TF32 (what JAX and
# torch use for float32 matmuls by default there); TPUs run float32 matmuls through bf16 passes.
PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    ("h100 pcie", {"bfloat16": 756e12, "float16": 756e12, "float32": 378e12}),
    ("h100 nvl", {"bfloat16": 835e12, "float16": 835e12, "float32": 418e12}),
    ("gh200", {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12}),
    ("h200", {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12}),
    ("h100", {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12}),  # SXM
    ("h800", {"bfloat16": 989e12, "float16": 989e12, "float32": 494e12}),
    ("b200", {"bfloat16": 2250e12, "float16": 2250e12, "float32": 1100e12}),
    ("a100", {"bfloat16": 312e12, "float16": 312e12, "float32": 156e12}),
    ("a10g", {"bfloat16": 70e12, "float16": 70e12, "float32": 35e12}),
    ("l40s", {"bfloat16": 362e12, "float16": 362e12, "float32": 183e12}),
    ("l4", {"bfloat16": 121e12, "float16": 121e12, "float32": 60e12}),
    ("v100", {"float16": 125e12, "float32": 15.7e12}),
    ("tpu v6 lite", {"bfloat16": 918e12, "float32": 918e12}),  # v6e (Trillium)
    ("tpu v5 lite", {"bfloat16": 197e12, "float32": 197e12}),  # v5e
    ("tpu v5p", {"bfloat16": 459e12, "float32": 459e12}),
    ("tpu v5", {"bfloat16": 459e12, "float32": 459e12}),       # v5p reports "TPU v5"
    ("tpu v4", {"bfloat16": 275e12, "float32": 275e12}),
    ("tpu v3", {"bfloat16": 123e12, "float32": 123e12}),
    ("tpu v2", {"bfloat16": 45e12, "float32": 45e12}),
]


def table_peak_flops(device_kind: str, dtype: str = "bfloat16") -> float | None:
    """Dense peak FLOP/s of one device of ``device_kind`` in ``dtype`` from :data:`PEAK_FLOPS`."""
    kind = device_kind.lower()
    for pattern, peaks in PEAK_FLOPS:
        if pattern in kind:
            return peaks.get(dtype)
    return None


def measure_matmul_peak(n: int | Sequence[int] | None = None, dtype: str = "float32",
                        reps: int = 10, device=None) -> dict[str, Any]:
    """Best FLOP/s of square ``n x n @ n x n`` matmuls on ``device``, over sizes ``n``.

    Each size is timed ``reps`` times (each timing runs a few matmuls back to back and blocks, so
    dispatch is not what is measured); the peak is the best size's best timing. Default sizes:
    512, 1024 and 1536 on CPUs (the biggest is not always the fastest there: caches), 4096 and
    8192 elsewhere.
    """
    import jax
    import jax.numpy as jnp

    device = device or jax.devices()[0]
    if n is None:
        n = (512, 1024, 1536) if device.platform == "cpu" else (4096, 8192)
    sizes = (n,) if isinstance(n, int) else tuple(n)
    inner = 1 if device.platform == "cpu" else 10
    mm = jax.jit(lambda a, b: a @ b)
    by_size = {}
    for size in sizes:
        a = jax.device_put(jnp.ones((size, size), dtype) / size, device)
        b = jax.device_put(jnp.ones((size, size), dtype), device)
        jax.block_until_ready(mm(a, b))
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            out = [mm(a, b) for _ in range(inner)]
            jax.block_until_ready(out)
            times.append((time.perf_counter() - t0) / inner)
        flops = 2.0 * size ** 3
        by_size[size] = {"best_flops_per_s": flops / min(times),
                         "median_flops_per_s": flops / float(np.median(times))}
    best = max(by_size, key=lambda k: by_size[k]["best_flops_per_s"])
    return {"n": best, "dtype": dtype, "flops_per_matmul": 2.0 * best ** 3, "reps": reps,
            "best_flops_per_s": by_size[best]["best_flops_per_s"],
            "median_flops_per_s": by_size[best]["median_flops_per_s"],
            "by_size": {str(k): v for k, v in by_size.items()}}


# ------------------------------------------------------------------------------------------------
# Timing


class Chrono:
    """Collects step times (like big_vision's ``utils.Chrono``, reduced to what a benchmark needs).

    ``with chrono.lap(): step()`` times one step; ``chrono.stats()`` has count, mean, median, p10,
    p90, min and max in seconds.
    """

    def __init__(self):
        self.times: list[float] = []

    class _Lap:
        def __init__(self, chrono):
            self.chrono = chrono

        def __enter__(self):
            self.t0 = time.perf_counter()
            return self

        def __exit__(self, *exc):
            if exc[0] is None:
                self.chrono.times.append(time.perf_counter() - self.t0)

    def lap(self) -> "_Lap":
        return Chrono._Lap(self)

    def time(self, fn: Callable[[], Any], n: int = 1) -> None:
        for _ in range(n):
            with self.lap():
                fn()

    def stats(self) -> dict[str, float]:
        return time_stats(self.times)


def time_stats(times: Sequence[float]) -> dict[str, float]:
    t = np.asarray(times, np.float64)
    if t.size == 0:
        raise ValueError("no timed steps")
    return {"n": int(t.size), "mean": float(t.mean()), "median": float(np.median(t)),
            "p10": float(np.percentile(t, 10)), "p90": float(np.percentile(t, 90)),
            "min": float(t.min()), "max": float(t.max())}


def run_alternating(steppers: dict[str, Callable[[], Any]], *, warmup: int, steps: int,
                    rounds: int) -> dict[str, Chrono]:
    """Warms each stepper up, then times ``steps`` steps of each in ``rounds`` alternating rounds.

    Alternating (zoo, peer, zoo, peer, ...) spreads any drift in the machine's speed (other jobs,
    clock changes) evenly over the contenders. Each stepper must block until its step is done.
    """
    rounds = max(1, min(rounds, steps))
    for fn in steppers.values():
        for _ in range(warmup):
            fn()
    chronos = {k: Chrono() for k in steppers}
    per_round = [steps // rounds + (i < steps % rounds) for i in range(rounds)]
    for n in per_round:
        for k, fn in steppers.items():
            chronos[k].time(fn, n)
    return chronos


# ------------------------------------------------------------------------------------------------
# Cases


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark: a zoo family at one size.

    Attributes:
      name: the case's name in tables and plots (e.g. ``autoencoder-mlp``).
      family: the zoo family (a key of ``zoo.models.FAMILIES``).
      model: the family's model config (a plain dict; ``family`` is filled in).
      batch_size: global batch size.
      optimizer: optax optimizer config (a plain dict), the same for the peer.
      tokens_per_example: tokens in one example (sequence models), 0 for images.
      int_high: exclusive upper bound of integer batch leaves (token ids, labels), by key.
      peer: the family whose PyTorch peer mirrors this case (None: no peer).
      flops: ``flops(model_config, batch_size) -> FLOPs`` of one train step, analytic.
      compute_dtype: ``float32`` or ``bfloat16``.
    """

    name: str
    family: str
    model: dict
    batch_size: int
    optimizer: dict = dataclasses.field(default_factory=lambda: {"name": "adam",
                                                                  "learning_rate": 1e-3})
    tokens_per_example: int = 0
    int_high: dict = dataclasses.field(default_factory=dict)
    peer: str | None = None
    flops: Callable[[dict, int], float] | None = None
    compute_dtype: str = "float32"

    def model_config(self) -> dict:
        return {**self.model, "family": self.family}


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


def _mlp_autoencoder_flops(cfg: dict, batch: int) -> float:
    from zoo import flops
    d = int(np.prod(cfg.get("image_shape", (28, 28, 1))))
    hidden = list(cfg.get("hidden", (512, 256)))
    sizes = [d, *hidden, int(cfg.get("latent_dim", 32)), *reversed(hidden), d]
    return flops.mlp_train_flops(sizes, batch)


def _mlp_vae_flops(cfg: dict, batch: int) -> float:
    from zoo import flops
    d = int(np.prod(cfg.get("image_shape", (28, 28, 1))))
    hidden = list(cfg.get("hidden", (512, 256)))
    latent = int(cfg.get("latent_dim", 16))
    enc = flops.mlp_train_flops([d, *hidden], batch)
    heads = flops.train_flops(2 * flops.dense_flops(batch, hidden[-1], latent))
    dec = flops.train_flops(flops.mlp_forward_flops([latent, *reversed(hidden), d], batch))
    return enc + heads + dec


def _gan_flops(cfg: dict, batch: int) -> float:
    """One GAN step: a D update on real and fake images (n_critic times), then a G update."""
    from zoo import flops
    shape = tuple(cfg.get("image_shape", (28, 28, 1)))
    latent = int(cfg.get("latent_dim", 100))
    if cfg.get("arch", "mlp") == "dcgan":
        size, c = shape[0], shape[-1]
        base, n = size, 0
        while base % 2 == 0 and base > 7:
            base, n = base // 2, n + 1
        f = int(cfg.get("features", 64))
        width = f * 2 ** (n - 1)
        g_first = flops.dense_flops(batch, latent, base * base * width)
        g_fwd, hw = g_first, base
        for _ in range(n - 1):
            g_fwd += flops.conv_transpose2d_flops(batch, (hw, hw), (4, 4), width, width // 2)
            width, hw = width // 2, hw * 2
        g_fwd += flops.conv_transpose2d_flops(batch, (hw, hw), (4, 4), width, c)
        d_first = flops.conv2d_flops(batch, (size // 2, size // 2), (4, 4), c, f)
        d_fwd, hw, cin = d_first, size // 2, f
        for i in range(1, n):
            hw //= 2
            d_fwd += flops.conv2d_flops(batch, (hw, hw), (4, 4), cin, f * 2 ** i)
            cin = f * 2 ** i
        d_fwd += flops.dense_flops(batch, hw * hw * cin, 1)
    else:
        d_in = int(np.prod(shape))
        g_sizes = [latent, *cfg.get("g_hidden", (256,)), d_in]
        d_sizes = [d_in, *cfg.get("d_hidden", (256,)), 1]
        g_first, d_first = (flops.dense_flops(batch, *g_sizes[:2]),
                            flops.dense_flops(batch, *d_sizes[:2]))
        g_fwd, d_fwd = flops.mlp_forward_flops(g_sizes, batch), flops.mlp_forward_flops(d_sizes, batch)
    n_critic = int(cfg.get("n_critic", 1))
    # D update: G forward (no grad), D on real and fake with full backward less the input grads.
    d_update = g_fwd + 2 * flops.train_flops(d_fwd, d_first)
    # G update: G forward+backward (no grad w.r.t. z), D forward and its activation gradients.
    g_update = flops.train_flops(g_fwd, g_first) + 2 * d_fwd
    return n_critic * d_update + g_update


def _lstm_flops(cfg: dict, batch: int) -> float:
    from zoo import flops
    hidden = int(cfg.get("hidden_size", 200))
    per_token = flops.lstm_forward_flops_per_token(
        input_dim=int(cfg.get("embed_dim") or hidden), hidden_dim=hidden,
        num_layers=int(cfg.get("num_layers", 2)), vocab_size=int(cfg["vocab_size"]))
    return flops.train_flops(per_token) * batch * int(cfg.get("seq_len", 35))


def _transformer_flops(cfg: dict, batch: int) -> float:
    from zoo import flops
    from zoo.models import transformer
    kw = transformer.model_kwargs(cfg)
    seq = int(cfg.get("seq_len") or kw["block_size"])
    per_token = flops.lm_train_flops_per_token(
        hidden_dim=kw["n_embd"], intermediate_dim=4 * kw["n_embd"], num_layers=kw["n_layer"],
        num_heads=kw["n_head"], seq_len=seq, vocab_size=kw["vocab_size"])
    return per_token * batch * seq


def _lstm_case(name, batch, **model):
    model = {"vocab_size": 10_000, "hidden_size": 200, "num_layers": 2, "seq_len": 20,
             "unit": "word", "carry_state": False, "init_scale": 0.1, **model}
    return Case(name, "lstm", model, batch, tokens_per_example=model["seq_len"],
                int_high={"tokens": model["vocab_size"], "reset": 1}, peer="lstm",
                flops=_lstm_flops)


def _transformer_case(name, batch, *, optimizer=None, compute_dtype="float32", **model):
    model = {"vocab_size": 65, "dropout": 0.0, "unit": "char", **model}
    seq = int(model.get("seq_len") or model["block_size"])
    return Case(name, "transformer", model, batch,
                optimizer=optimizer or {"name": "adamw", "learning_rate": 1e-3, "b2": 0.99,
                                        "weight_decay": 0.1},
                tokens_per_example=seq, int_high={"tokens": model["vocab_size"]},
                peer="transformer", flops=_transformer_flops, compute_dtype=compute_dtype)


DCGAN_ADAM = {"name": "adam", "learning_rate": 2e-4, "b1": 0.5, "b2": 0.999}


def _case_table(suite: str) -> list[Case]:
    """Every case of ``suite``, whether or not its family exists yet (see :func:`suite_cases`)."""
    mnist = {"image_shape": (28, 28, 1)}
    if suite == "tiny":  # tests: seconds, not minutes
        return [
            Case("autoencoder-mlp", "autoencoder",
                 {**mnist, "arch": "mlp", "hidden": (64, 32), "latent_dim": 8, "loss": "bernoulli"},
                 16, peer="autoencoder", flops=_mlp_autoencoder_flops),
            Case("vae-mlp", "vae", {**mnist, "arch": "mlp", "hidden": (64, 32), "latent_dim": 4},
                 16, peer="vae", flops=_mlp_vae_flops),
            Case("gan-mlp", "gan", {**mnist, "arch": "mlp", "g_hidden": (32,), "d_hidden": (32,),
                                    "latent_dim": 8}, 16, optimizer=DCGAN_ADAM, peer="gan",
                 flops=_gan_flops),
            _lstm_case("lstm", 4, vocab_size=50, hidden_size=16, seq_len=8),
            _transformer_case("transformer", 4, block_size=16, n_layer=1, n_head=2, n_embd=32),
        ]
    if suite in ("quick", "full"):
        big = suite == "full"
        return [
            Case("autoencoder-mlp", "autoencoder",
                 {**mnist, "arch": "mlp", "hidden": (1000, 500, 250) if big else (512, 256),
                  "latent_dim": 30 if big else 32, "loss": "bernoulli"},
                 256 if big else 128, peer="autoencoder", flops=_mlp_autoencoder_flops),
            Case("vae-mlp", "vae", {**mnist, "arch": "mlp", "hidden": (512, 256), "latent_dim": 16},
                 256 if big else 128, peer="vae", flops=_mlp_vae_flops),
            Case("gan-dcgan", "gan", {**mnist, "arch": "dcgan", "features": 64 if big else 32,
                                      "latent_dim": 100},
                 128 if big else 64, optimizer=DCGAN_ADAM, peer="gan", flops=_gan_flops),
            # Zaremba et al. (2014) small (quick) and medium (full), word-level PTB shapes.
            _lstm_case("lstm", 20, **({"hidden_size": 650, "seq_len": 35} if big else {})),
            # Other families: zoo only (no PyTorch peer); FLOPs from the family's own count.
            Case("classifier-mlp", "classifier", {**mnist, "arch": "mlp", "hidden": (512, 512),
                                                  "num_classes": 10, "dropout": 0.2},
                 256 if big else 128, int_high={"label": 10}),
            # quick: 4 x 256 wide, context 128; full: nanoGPT's shakespeare_char baby GPT.
            (_transformer_case("transformer", 16, preset="char", block_size=256, n_layer=6,
                               n_head=6, n_embd=384) if big else
             _transformer_case("transformer", 4, block_size=128, n_layer=4, n_head=4,
                               n_embd=256)),
        ]
    if suite == "gpu":
        return [
            # GPT-2 small (124M), context 1024, bfloat16; vocabulary padded to 50304 (a multiple
            # of 128, as nanoGPT and llm.c do) so the head's matmul tiles evenly.
            _transformer_case("gpt2-small", 16, preset="gpt2", vocab_size=50304, block_size=1024,
                              seq_len=1024, dtype="bfloat16", unit="token",
                              optimizer={"name": "adamw", "learning_rate": 6e-4, "b2": 0.95,
                                         "weight_decay": 0.1}, compute_dtype="bfloat16"),
            Case("gan-dcgan64", "gan", {"image_shape": (64, 64, 3), "arch": "dcgan",
                                        "features": 64, "latent_dim": 100}, 128,
                 optimizer=DCGAN_ADAM, peer="gan", flops=_gan_flops),
            _lstm_case("lstm-large", 20, hidden_size=1500, seq_len=35),
            Case("vae-mlp", "vae", {**mnist, "arch": "mlp", "hidden": (512, 256), "latent_dim": 16},
                 1024, peer="vae", flops=_mlp_vae_flops),
            Case("autoencoder-mlp", "autoencoder",
                 {**mnist, "arch": "mlp", "hidden": (1000, 500, 250), "latent_dim": 30,
                  "loss": "bernoulli"}, 1024, peer="autoencoder", flops=_mlp_autoencoder_flops),
        ]
    raise ValueError(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")


SUITES = ("quick", "full", "gpu", "tiny")


def suite_cases(suite: str, names: Iterable[str] | None = None) -> tuple[list[Case], list[str]]:
    """The cases of ``suite`` whose family exists, and notes on the ones left out."""
    from zoo import models
    cases, notes = [], []
    wanted = set(names) if names else None
    for case in _case_table(suite):
        if wanted is not None and case.name not in wanted:
            continue
        if case.family not in models.FAMILIES:
            notes.append(f"{case.name}: family {case.family!r} is not in zoo.models.FAMILIES; "
                         "case left out")
            continue
        cases.append(case)
    if wanted:
        unknown = wanted - {c.name for c in _case_table(suite)}
        if unknown:
            raise ValueError(f"unknown case(s) {sorted(unknown)} in suite {suite!r}; known: "
                             f"{', '.join(c.name for c in _case_table(suite))}")
    return cases, notes


# ------------------------------------------------------------------------------------------------
# Running one case


def _dtype(name: str):
    import jax.numpy as jnp
    return {"float32": None, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


def _optimizer(config: dict):
    from zoo.core import optim
    return optim.make_optimizer(config, 1000)


def _memory_fields(compiled) -> dict[str, Any]:
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


def _device_memory_stats(device) -> dict | None:
    try:
        stats = device.memory_stats()
    except Exception:
        return None
    if not stats:
        return None
    keep = ("peak_bytes_in_use", "bytes_in_use", "bytes_limit", "largest_alloc_size")
    return {k: int(stats[k]) for k in keep if k in stats}


def make_zoo_strategy(name: str, devices: list | None = None):
    """A zoo strategy over ``devices`` (default: all); ``single`` uses the first."""
    import jax
    from zoo.core import parallel
    devices = list(devices or jax.devices())
    if name == "single":
        return parallel.Single(devices[0])
    if name == "pmap":
        return parallel.Pmap(devices)
    if name == "mesh":
        return parallel.Mesh(devices=devices)
    raise ValueError(f"unknown strategy {name!r}; choose one of single, pmap, mesh")


_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _init_state(family, optimizer_config: dict, host_batch: dict, seed: int):
    """The family's initial TrainState, built under one ``jit`` (op-by-op it compiles dozens of
    little kernels, which costs more than the train step's own compile on a small CPU)."""
    import jax
    from zoo.core.train_state import TrainState

    def init(rng, batch):
        params, model_state = family.init(rng, batch)
        tx = {p: _optimizer(optimizer_config) for p in params}
        return TrainState.create(params=params, tx=tx, model_state=model_state,
                                 rng=jax.random.PRNGKey(seed + 1))

    rng = jax.random.PRNGKey(seed)
    tracer_errors = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                     jax.errors.TracerBoolConversionError, jax.errors.TracerIntegerConversionError)
    try:
        lowered = jax.jit(init).lower(rng, host_batch)
    except tracer_errors:  # an init that needs concrete values
        return init(rng, host_batch)
    try:
        # Initialisation runs once: compile it fast rather than well (halves its compile time).
        compiled = lowered.compile(_FAST_COMPILE)
    except Exception:  # a backend without these options
        compiled = lowered.compile()
    return compiled(rng, host_batch)


class ZooRunner:
    """A case's train step compiled under a strategy, with its state and a placed batch.

    ``step()`` runs one step and blocks; construction records ``lower_s``, ``compile_s``, XLA's
    FLOPs, the jaxpr's FLOPs and memory analysis.
    """

    def __init__(self, case: Case, strategy_name: str, devices: list | None = None,
                 batch_size: int | None = None, seed: int = 0):
        import jax
        from zoo import flops as flops_lib
        from zoo import models
        from zoo.core import compiled as compiled_lib
        from zoo.core.train_state import TrainState, param_count

        self.case = case
        self.family = models.make_family(case.model_config())
        self.strategy = make_zoo_strategy(strategy_name, devices)
        self.batch_size = batch_size or case.batch_size
        self.host_batch = synthetic_batch(self.family.batch_spec, self.batch_size, seed=seed,
                                          int_high=case.int_high)
        t0 = time.perf_counter()
        state = _init_state(self.family, case.optimizer, self.host_batch, seed)
        self.init_s = time.perf_counter() - t0
        params = state.params
        self.param_count = param_count(params)
        options = dict(compute_dtype=_dtype(case.compute_dtype))
        self.step_fn = compiled_lib.compile_train_step(
            self.family.objective, self.strategy, batch_spec=self.family.batch_spec, **options)
        self.batch = self.step_fn.place_batch(self.host_batch)
        self.state = self.strategy.place_state(state)
        jax.block_until_ready((self.state, self.batch))

        t0 = time.perf_counter()
        lowered = self.step_fn.compiled.lower(self.state, self.batch)
        t1 = time.perf_counter()
        self.executable = lowered.compile()
        t2 = time.perf_counter()
        self.lower_s, self.compile_s = t1 - t0, t2 - t1
        self.memory = _memory_fields(self.executable)
        xla = flops_lib.xla_flops(self.executable)
        # cost_analysis is of one device's program: pmap's per-replica program and mesh's
        # partitioned program each do 1/n of the work (replicated optimizer math aside).
        self.xla_flops = None if xla is None else xla * self.strategy.num_shards
        from zoo.core import step as step_lib
        plain = step_lib.make_train_step(self.family.objective, **options)
        self.jaxpr_flops = flops_lib.jaxpr_flops(plain, state, self.host_batch)
        self.analytic_flops = (case.flops(case.model, self.batch_size) if case.flops else None)
        self.family_flops = (float(self.family.flops_per_example) * self.batch_size
                             if self.family.flops_per_example else None)
        if self.analytic_flops is None:
            self.analytic_flops = self.family_flops
        self.metrics = None

    def step(self) -> None:
        import jax
        self.state, self.metrics = self.executable(self.state, self.batch)
        jax.block_until_ready(self.state)

    def loss(self) -> float | None:
        if self.metrics is None:
            return None
        m = self.strategy.to_host(self.metrics)
        key = next((k for k in m if k.endswith("loss")), None)
        return None if key is None else float(np.mean(m[key]))


class PeerRunner:
    """The case's PyTorch peer on one device; ``mode`` is ``eager`` or ``compile``."""

    def __init__(self, case: Case, host_batch: dict, mode: str = "eager", device: str = "cpu",
                 threads: int | str | None = None):
        import torch
        if str(ROOT) not in sys.path:  # benchmarks/ sits beside zoo/ in a source checkout
            sys.path.insert(0, str(ROOT))
        from benchmarks import peers
        torch.manual_seed(0)
        if str(device).startswith("cuda"):
            # JAX's default float32 matmul/conv precision on NVIDIA GPUs is TF32; match it.
            torch.set_float32_matmul_precision("high")
            torch.backends.cudnn.allow_tf32 = True
        self.mode = mode
        self.peer = peers.make_peer(case.peer, case.model_config(), case.optimizer, host_batch,
                                    device)
        self.param_count = sum(self.peer.param_count().values())
        self.compile_s = None
        self.last = None
        if mode == "compile":
            self.peer.compile()
            t0 = time.perf_counter()
            self.step()  # torch.compile compiles on the first call
            self.compile_s = time.perf_counter() - t0
        self.threads = self._pick_threads(threads) if device == "cpu" else torch.get_num_threads()

    def _pick_threads(self, threads) -> int:
        """CPU threads for this peer: a number, or ``auto``: the faster of all cores and one.

        PyTorch's OpenMP parallel regions wait at a barrier for every thread; on a machine whose
        cores are busy with other work, a descheduled thread stalls each of the step's many small
        ops, and one thread can be 10x faster than two. ``auto`` times a few steps each way.
        """
        import torch
        if threads != "auto":
            n = int(threads or _cores())
            torch.set_num_threads(n)
            return n
        best = None
        for n in sorted({_cores(), 1}, reverse=True):
            torch.set_num_threads(n)
            self.peer.step()
            chrono = Chrono()
            chrono.time(self.step, 3)
            t = chrono.stats()["median"]
            if best is None or t < best[1]:
                best = (n, t)
        torch.set_num_threads(best[0])
        return best[0]

    def step(self) -> None:
        import torch
        if getattr(self, "threads", None) and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        self.last = self.peer.step()
        self.peer.sync()

    def loss(self) -> float | None:
        return None if self.last is None else float(self.last.detach().float().cpu())

    def memory(self) -> dict | None:
        import torch
        if str(self.peer.device).startswith("cuda"):
            return {"peak_bytes_in_use": int(torch.cuda.max_memory_allocated())}
        return None


def _env() -> dict[str, Any]:
    import flax
    import jax
    import jaxlib
    import optax
    env = {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
           "optax": optax.__version__, "numpy": np.__version__,
           "python": platform.python_version(), "machine": platform.machine(),
           "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(),
           "cores_used": (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                          else os.cpu_count()),
           "xla_flags": os.environ.get("XLA_FLAGS", ""),
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
           "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    try:
        import torch
        env["torch"] = torch.__version__
        env["torch_default_threads"] = torch.get_num_threads()
    except ImportError:
        env["torch"] = None
    devices = jax.devices()
    env.update(platform=devices[0].platform, device_kind=devices[0].device_kind,
               device_count=len(devices), process_count=jax.process_count())
    return env


def _cores() -> int:
    """Cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _record(case: Case, framework: str, strategy: str, devices: int, batch_size: int,
            stats: dict, **extra) -> dict[str, Any]:
    med = stats["median"]
    rec = {"case": case.name, "family": case.family, "framework": framework, "strategy": strategy,
           "devices": devices, "batch_size": batch_size, "compute_dtype": case.compute_dtype,
           "step_s": stats, "examples_per_s": batch_size / med,
           "tokens_per_s": (batch_size * case.tokens_per_example / med
                            if case.tokens_per_example else None)}
    rec.update(extra)
    return rec


def _flops_fields(analytic: float | None, xla: float | None, jaxpr: float | None, med: float,
                  peak_table: float | None, peak_measured: float | None, devices: int) -> dict:
    used = analytic if analytic is not None else jaxpr
    achieved = used / med if used else None
    return {
        "flops_per_step_analytic": analytic,
        "flops_per_step_jaxpr": jaxpr,
        "flops_per_step_xla": xla,
        "xla_to_analytic": (xla / used) if (xla and used) else None,
        "flops_source": "analytic" if analytic is not None else "jaxpr",
        "achieved_flops_per_s": achieved,
        "peak_flops_per_s_table": peak_table * devices if peak_table else None,
        "mfu": achieved / (peak_table * devices) if (achieved and peak_table) else None,
        "peak_flops_per_s_measured": peak_measured * devices if peak_measured else None,
        "fraction_of_measured_peak": (achieved / (peak_measured * devices)
                                      if (achieved and peak_measured) else None),
    }


def run_case(case: Case, *, strategies: Sequence[str] = ("single",), peers: Sequence[str] = ("eager",),
             torch_threads: int | str | None = None,
             devices: list | None = None, warmup: int = 3, steps: int = 20, rounds: int = 4,
             batch_size: int | None = None, peak_measured: float | None = None,
             log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Benchmarks one case: zoo under each strategy and the peer in each mode, alternating.

    Returns one record per (framework, strategy), each with every field the report needs; a
    contender that fails to build (e.g. ``torch.compile`` without a compiler) gives a record with
    an ``error`` field instead of timings.
    """
    import jax
    devices = list(devices or jax.devices())
    kind = devices[0].device_kind
    peak_table = table_peak_flops(kind, case.compute_dtype)
    contenders: dict[str, Any] = {}
    records: list[dict] = []
    first_zoo = None
    for s in strategies:
        log(f"  {case.name}: compiling zoo/{s} over {1 if s == 'single' else len(devices)} "
            f"device(s)")
        runner = ZooRunner(case, s, devices, batch_size)
        contenders[f"zoo/{s}"] = runner
        first_zoo = first_zoo or runner
    if case.peer and first_zoo is not None:
        torch_device = "cuda" if devices[0].platform == "gpu" else "cpu"
        for mode in peers:
            try:
                log(f"  {case.name}: building torch/{mode}")
                contenders[f"torch-{mode}/single"] = PeerRunner(case, first_zoo.host_batch, mode,
                                                                torch_device, torch_threads)
            except Exception as e:  # torch.compile may need a compiler that is not there
                msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
                log(f"  {case.name}: torch/{mode} failed: {msg}")
                records.append({"case": case.name, "family": case.family,
                                "framework": f"torch-{mode}", "strategy": "single", "devices": 1,
                                "batch_size": first_zoo.batch_size, "error": msg})
    log(f"  {case.name}: timing {', '.join(contenders)} ({warmup} warm-up + {steps} steps each, "
        f"{rounds} alternating rounds)")
    chronos = run_alternating({k: r.step for k, r in contenders.items()}, warmup=warmup,
                              steps=steps, rounds=rounds)
    # Host "devices" forced on a CPU share its cores: their peak is the host's, not n times it.
    peak_devices = lambda n: 1 if devices[0].platform == "cpu" else n
    for key, runner in contenders.items():
        framework, strategy = key.split("/")
        stats = chronos[key].stats()
        if isinstance(runner, ZooRunner):
            n = runner.strategy.num_shards
            rec = _record(case, "zoo", strategy, n, runner.batch_size, stats,
                          param_count=runner.param_count, lower_s=runner.lower_s,
                          compile_s=runner.compile_s, compile_total_s=runner.lower_s + runner.compile_s,
                          device_kind=kind, loss_last=runner.loss(), **runner.memory,
                          flops_per_step_family=runner.family_flops, init_s=runner.init_s,
                          device_memory_stats=_device_memory_stats(devices[0]),
                          **_flops_fields(runner.analytic_flops, runner.xla_flops,
                                          runner.jaxpr_flops, stats["median"], peak_table,
                                          peak_measured, peak_devices(n)))
        else:
            rec = _record(case, framework, strategy, 1, first_zoo.batch_size, stats,
                          param_count=runner.param_count, compile_s=runner.compile_s,
                          torch_threads=runner.threads, device_kind=kind, loss_last=runner.loss(),
                          device_memory_stats=runner.memory(),
                          **_flops_fields(first_zoo.analytic_flops, None, first_zoo.jaxpr_flops,
                                          stats["median"], peak_table, peak_measured, 1))
        records.append(rec)
    add_peer_ratios(records)
    for r in records:
        if "step_s" in r:
            ratio = r.get("speedup_vs_torch_eager")
            log(f"  {case.name}: {r['framework']}/{r['strategy']} x{r['devices']}: "
                f"{r['step_s']['median'] * 1e3:.1f} ms/step, {r['examples_per_s']:,.0f} examples/s"
                + (f", {ratio:.2f}x torch eager" if ratio else ""))
    return records


def add_peer_ratios(records: list[dict]) -> None:
    """Gives each one-device zoo record ``speedup_vs_<peer>``: peer median step / zoo median step."""
    peers = {(r["case"], r["framework"]): r for r in records
             if r["framework"].startswith("torch") and "step_s" in r}
    for r in records:
        if r["framework"] != "zoo" or r.get("devices") != 1 or "step_s" not in r:
            continue
        for fw in ("torch-eager", "torch-compile"):
            p = peers.get((r["case"], fw))
            r[f"speedup_vs_{fw.replace('-', '_')}"] = (
                p["step_s"]["median"] / r["step_s"]["median"] if p else None)


# ------------------------------------------------------------------------------------------------
# Suites, sweeps and subprocess workers


def run_suite(*, suite: str = "quick", cases: Iterable[str] | None = None,
              strategies: Sequence[str] = ("single",), peers: Sequence[str] = ("eager",),
              sweep: Sequence[int] = (), sweep_strategies: Sequence[str] = ("pmap", "mesh"),
              sweep_cases: Iterable[str] | None = None, warmup: int = 3, steps: int = 20,
              rounds: int = 4, peak: bool = True, peak_n: int | None = None,
              torch_threads: int | str | None = None,
              log: Callable[[str], None] = print) -> dict:
    """Runs a suite in this process (plus one subprocess per swept device count on CPU).

    Returns ``{"meta": ..., "records": [...], "notes": [...]}``.
    """
    import jax
    t_start = time.perf_counter()
    selected, notes = suite_cases(suite, cases)
    env = _env()
    log(f"zoo bench: suite {suite}, {len(selected)} case(s) on {env['device_count']} x "
        f"{env['device_kind']} ({env['platform']}); jax {env['jax']}, flax {env['flax']}, "
        f"torch {env['torch']}")
    for n in notes:
        log("  note: " + n)
    measured = None
    if peak:
        dtypes = sorted({c.compute_dtype for c in selected}) or ["float32"]
        measured = {d: measure_matmul_peak(peak_n, dtype=d) for d in dtypes}
        for d, m in measured.items():
            log(f"  measured matmul peak ({m['n']}x{m['n']} {d}): "
                f"{m['best_flops_per_s'] / 1e9:.1f} GFLOP/s")
    if peers:
        try:
            import torch  # noqa: F401
        except ImportError:
            peers = ()
            notes.append("torch is not installed: no peers")
    records: list[dict] = []
    for case in selected:
        m = measured.get(case.compute_dtype) if measured else None
        try:
            records += run_case(case, strategies=strategies, peers=peers, warmup=warmup,
                                torch_threads=torch_threads,
                                steps=steps, rounds=rounds,
                                peak_measured=m["best_flops_per_s"] if m else None, log=log)
        except Exception as e:
            msg = f"{type(e).__name__}: {e}"[:500]
            log(f"  {case.name} failed: {msg}")
            records.append({"case": case.name, "family": case.family, "framework": "zoo",
                            "strategy": ",".join(strategies), "error": msg})
    swept = [c.name for c in selected if not sweep_cases or c.name in set(sweep_cases)]
    for n in sweep:
        if not swept:
            break
        log(f"  sweep: {n} device(s), {', '.join(swept)}, strategies {', '.join(sweep_strategies)}")
        try:
            recs = sweep_devices(n, suite=suite, cases=swept, strategies=sweep_strategies,
                                 warmup=warmup, steps=steps, rounds=rounds,
                                 peak_measured=measured)
            for r in recs:
                r["sweep"] = True
            records += recs
        except Exception as e:
            notes.append(f"sweep over {n} device(s) failed: {type(e).__name__}: {e}"[:500])
            log("  " + notes[-1])
    if measured:  # again at the end: the best of both is the peak (machines drift)
        for d, m in measured.items():
            again = measure_matmul_peak(peak_n, dtype=d)
            m["best_flops_per_s_end"] = again["best_flops_per_s"]
            if again["best_flops_per_s"] > m["best_flops_per_s"]:
                log(f"  measured matmul peak at the end is higher: "
                    f"{again['best_flops_per_s'] / 1e9:.1f} GFLOP/s; fractions use it")
                for r in records:
                    if r.get("compute_dtype") == d and r.get("achieved_flops_per_s"):
                        n = 1 if env["platform"] == "cpu" else r["devices"]
                        r["peak_flops_per_s_measured"] = again["best_flops_per_s"] * n
                        r["fraction_of_measured_peak"] = (r["achieved_flops_per_s"] /
                                                          r["peak_flops_per_s_measured"])
                m["best_flops_per_s_start"] = m["best_flops_per_s"]
                m["best_flops_per_s"] = again["best_flops_per_s"]
    env["load_average_1m_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    meta = {**env, "suite": suite, "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(
                timespec="seconds"),
            "command": "zoo bench " + " ".join(sys.argv[1:]) if sys.argv else "",
            "strategies": list(strategies), "peers": list(peers), "sweep": list(sweep),
            "torch_threads": torch_threads,
            "warmup": warmup, "steps": steps, "rounds": rounds,
            "measured_peak": measured,
            "table_peak_flops_per_s": {d: table_peak_flops(env["device_kind"], d)
                                       for d in ("float32", "bfloat16")},
            "peak_table": {k: v for k, v in PEAK_FLOPS},
            "wall_s": None}
    meta["wall_s"] = time.perf_counter() - t_start
    return {"meta": meta, "records": records, "notes": notes}


def sweep_devices(n: int, *, suite: str, cases: Sequence[str], strategies: Sequence[str],
                  warmup: int, steps: int, rounds: int, peak_measured: dict | None = None,
                  timeout: float = 900) -> list[dict]:
    """zoo records for ``n`` devices: in a subprocess with ``n`` host devices on CPU, in this
    process over the first ``n`` devices elsewhere (GPUs, TPUs)."""
    import jax
    if jax.devices()[0].platform != "cpu" or n == len(jax.devices()):
        if n > len(jax.devices()):
            raise ValueError(f"sweep asks for {n} devices; {len(jax.devices())} are present")
        devs = jax.devices()[:n]
        selected, _ = suite_cases(suite, cases)
        out = []
        for case in selected:
            m = (peak_measured or {}).get(case.compute_dtype)
            out += run_case(case, strategies=strategies, peers=(), devices=devs, warmup=warmup,
                            steps=steps, rounds=rounds,
                            peak_measured=m["best_flops_per_s"] if m else None, log=lambda s: None)
        return out
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join([f"--xla_force_host_platform_device_count={n}"] + flags)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    payload = {"suite": suite, "cases": list(cases), "strategies": list(strategies),
               "warmup": warmup, "steps": steps, "rounds": rounds, "peak": peak_measured}
    proc = subprocess.run([sys.executable, "-m", "zoo.bench", "--worker", json.dumps(payload)],
                          env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"worker for {n} devices exited {proc.returncode}: "
                           f"{proc.stderr.strip().splitlines()[-1:] if proc.stderr else ''}")
    line = [l for l in proc.stdout.splitlines() if l.startswith("ZOO_BENCH_RECORDS ")][-1]
    records = json.loads(line[len("ZOO_BENCH_RECORDS "):])
    got = {r.get("devices") for r in records if r.get("strategy") != "single"}
    if got - {n}:
        raise RuntimeError(f"the worker for {n} devices ran on {sorted(got)}; check XLA_FLAGS")
    return records


def _worker(payload: str) -> int:
    p = json.loads(payload)
    import jax
    selected, _ = suite_cases(p["suite"], p["cases"])
    records = []
    for case in selected:
        m = (p.get("peak") or {}).get(case.compute_dtype)
        try:
            records += run_case(case, strategies=p["strategies"], peers=(), warmup=p["warmup"],
                                steps=p["steps"], rounds=p["rounds"],
                                peak_measured=m["best_flops_per_s"] if m else None,
                                log=lambda s: print(s, file=sys.stderr))
        except Exception as e:
            records.append({"case": case.name, "family": case.family, "framework": "zoo",
                            "strategy": ",".join(p["strategies"]), "devices": len(jax.devices()),
                            "error": f"{type(e).__name__}: {e}"[:500]})
    print("ZOO_BENCH_RECORDS " + json.dumps(records, default=_json_default))
    return 0


# ------------------------------------------------------------------------------------------------
# Reports


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (tuple, set)):
        return list(o)
    return str(o)


def _fmt(x, spec: str, scale: float = 1.0, none: str = "-") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return none
    return format(x * scale, spec)


TABLE_COLUMNS = ("case", "framework", "strategy", "dev", "batch", "compile s", "step ms p50",
                 "p10-p90 ms", "examples/s", "tokens/s", "GFLOP/step", "XLA/analytic",
                 "GFLOP/s", "MFU", "of measured peak", "peak MB", "vs torch eager",
                 "vs torch compile")


def markdown_table(records: Sequence[dict]) -> str:
    """One row per record, in run order."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['framework']} | {r.get('strategy', '-')} | "
                         f"{r.get('devices', '-')} | {r.get('batch_size', '-')} | failed: "
                         f"{r['error'][:80].replace('|', '/')} |" + " |" * (len(TABLE_COLUMNS) - 6))
            continue
        st = r["step_s"]
        cells = [r["case"], r["framework"], r["strategy"], str(r["devices"]), str(r["batch_size"]),
                 _fmt(r.get("compile_total_s", r.get("compile_s")), ".2f"),
                 _fmt(st["median"], ".2f", 1e3),
                 f"{st['p10'] * 1e3:.2f}-{st['p90'] * 1e3:.2f}",
                 _fmt(r["examples_per_s"], ",.0f"), _fmt(r.get("tokens_per_s"), ",.0f"),
                 _fmt(r.get("flops_per_step_analytic") or r.get("flops_per_step_jaxpr"), ".3f",
                      1e-9),
                 _fmt(r.get("xla_to_analytic"), ".2f"),
                 _fmt(r.get("achieved_flops_per_s"), ",.1f", 1e-9),
                 _fmt(r.get("mfu"), ".1%"), _fmt(r.get("fraction_of_measured_peak"), ".1%"),
                 _fmt(r.get("peak_bytes_estimate"), ".1f", 1e-6),
                 _fmt(r.get("speedup_vs_torch_eager"), ".2f", none="-") + (
                     "x" if r.get("speedup_vs_torch_eager") else ""),
                 _fmt(r.get("speedup_vs_torch_compile"), ".2f", none="-") + (
                     "x" if r.get("speedup_vs_torch_compile") else "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(result: dict) -> str:
    m = result["meta"]
    peaks = ", ".join(f"{d} {v['best_flops_per_s'] / 1e9:,.1f} GFLOP/s ({v['n']}x{v['n']})"
                      for d, v in (m.get("measured_peak") or {}).items()) or "not measured"
    table = {d: v for d, v in m.get("table_peak_flops_per_s", {}).items() if v}
    out = [f"# zoo bench: {m['suite']} suite",
           "",
           f"- date (UTC): {m['date_utc']}",
           f"- command: `{m['command']}`",
           f"- device: {m['device_count']} x {m['device_kind']} ({m['platform']}); CPU "
           f"{m['cpu_model']} ({m['cpu_count']} cores, {m.get('cores_used')} used)",
           f"- versions: jax {m['jax']}, jaxlib {m['jaxlib']}, flax {m['flax']}, optax "
           f"{m['optax']}, torch {m['torch']}, numpy {m['numpy']}, python {m['python']}",
           f"- measured matmul peak: {peaks}",
           f"- table peak per device: " + (", ".join(f"{d} {v / 1e12:g} TFLOP/s"
                                                     for d, v in table.items())
                                           or "none for this device kind (MFU column empty)"),
           f"- machine load (1-min load average, start/end): {m.get('load_average_1m')} / "
           f"{m.get('load_average_1m_end')} on {m['cpu_count']} cores",
           f"- timing: {m['warmup']} warm-up steps, then {m['steps']} timed steps per contender "
           f"in {m['rounds']} alternating rounds; wall time {m['wall_s']:.0f} s",
           "",
           markdown_table(result["records"]), ""]
    if result.get("notes"):
        out += ["Notes:", ""] + [f"- {n}" for n in result["notes"]] + [""]
    return "\n".join(out)


def write_plots(result: dict, out_dir: Path) -> list[Path]:
    """throughput.png (by model and strategy), scaling.png (over devices), peer_ratio.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [r for r in result["records"] if "step_s" in r]
    paths = []
    cases = list(dict.fromkeys(r["case"] for r in recs))
    # 1. Throughput by model and strategy (one device and the largest swept count).
    series = list(dict.fromkeys(f"{r['framework']}/{r['strategy']}/{r['devices']}" for r in recs))
    if cases and series:
        fig, ax = plt.subplots(figsize=(max(7, 1.4 * len(cases) + 4), 4.2))
        colors = {s: plt.cm.tab10(i % 10) for i, s in enumerate(series)}
        labelled = set()
        for ci, c in enumerate(cases):
            present = [s for s in series if any(
                f"{r['framework']}/{r['strategy']}/{r['devices']}" == s and r["case"] == c
                for r in recs)]
            width = 0.8 / max(len(present), 1)
            for i, s in enumerate(present):
                fw, st, dev = s.split("/")
                r = next(r for r in recs if r["case"] == c and r["framework"] == fw
                         and r["strategy"] == st and str(r["devices"]) == dev)
                ax.bar(ci + (i - (len(present) - 1) / 2) * width, r["examples_per_s"], width,
                       color=colors[s], label=None if s in labelled else f"{fw} {st} x{dev}")
                labelled.add(s)
        ax.set_xticks(np.arange(len(cases)), cases)
        ax.set_ylabel("examples / s (log)")
        ax.set_yscale("log")
        ax.set_title(f"Throughput by model and strategy ({result['meta']['device_kind']})")
        ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
        paths.append(out_dir / "throughput.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    # 2. Scaling over devices.
    zoo = [r for r in recs if r["framework"] == "zoo"]
    lines = {}
    for r in zoo:
        lines.setdefault((r["case"], r["strategy"]), []).append((r["devices"], r["examples_per_s"]))
    swept = {r["case"] for r in zoo if r.get("sweep")}
    lines = {k: sorted(set(v)) for k, v in lines.items()
             if len({d for d, _ in v}) > 1 or k[0] in swept}
    if lines:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for (c, s), pts in lines.items():
            ax.plot([d for d, _ in pts], [y for _, y in pts], marker="o",
                    ls="-" if len(pts) > 1 else "none", label=f"{c} {s}")
        devs = sorted({d for pts in lines.values() for d, _ in pts})
        ax.set_xticks(devs)
        ax.set_xlabel("devices")
        ax.set_ylabel("examples / s")
        ax.set_title(f"Scaling over devices ({result['meta']['device_kind']}, same global batch)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out_dir / "scaling.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    # 3. Ratio to the peer.
    ratio_recs = [r for r in zoo if r.get("devices") == 1 and r.get("speedup_vs_torch_eager")]
    if ratio_recs:
        labels = [f"{r['case']}\n{r['strategy']}" for r in ratio_recs]
        fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(labels) + 2), 4.2))
        x = np.arange(len(labels))
        eager = [r["speedup_vs_torch_eager"] for r in ratio_recs]
        comp = [r.get("speedup_vs_torch_compile") or 0.0 for r in ratio_recs]
        has_comp = any(comp)
        w = 0.4 if has_comp else 0.6
        ax.bar(x - (w / 2 if has_comp else 0), eager, w, label="vs torch eager")
        if has_comp:
            ax.bar(x + w / 2, comp, w, label="vs torch.compile")
        for xi, v in zip(x, eager):
            ax.text(xi - (w / 2 if has_comp else 0), v, f"{v:.2f}x", ha="center", va="bottom",
                    fontsize=8)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(1.5, color="tab:red", lw=0.8, ls="--", label="1.5x target")
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylabel("zoo speedup (peer step time / zoo step time)")
        ax.set_title(f"zoo vs PyTorch, same model and batch ({result['meta']['device_kind']})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(out_dir / "peer_ratio.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def write_report(result: dict, out_dir: str | Path, plots: bool = True) -> dict[str, Path]:
    """Writes results.json, results.md and the plots into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "markdown": out_dir / "results.md"}
    paths["json"].write_text(json.dumps(result, indent=1, default=_json_default) + "\n")
    paths["markdown"].write_text(markdown_report(result))
    paths["command"] = out_dir / "command.txt"
    paths["command"].write_text(result["meta"].get("command", "") + "\n")
    if plots:
        for p in write_plots(result, out_dir):
            paths[p.stem] = p
    return paths


# ------------------------------------------------------------------------------------------------
# Command line

SUITE_DEFAULTS = {
    # suite: (strategies, peers, sweep device counts, sweep cases, steps, warm-up)
    "tiny": (("single",), ("eager",), (), None, 20, 2),
    "quick": (("single",), ("eager",), (1, 2), ("autoencoder-mlp",), 20, 3),
    "full": (("single", "pmap", "mesh"), ("eager", "compile"), (1, 2, 4, 8), None, 30, 5),
    "gpu": (("single",), ("eager", "compile"), (), None, 50, 10),
}


def _csv(s: str) -> tuple[str, ...]:
    return tuple(x for x in s.split(",") if x)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="zoo bench",
        description="Benchmark zoo's model families (throughput, MFU, compile time, memory, "
                    "scaling) against PyTorch peers. With no arguments: the quick suite (~2 min "
                    "on a 2-core CPU), printing a markdown table.")
    p.add_argument("--suite", default="quick", choices=SUITES)
    p.add_argument("--cases", type=_csv, default=None, help="comma-separated case names")
    p.add_argument("--strategies", type=_csv, default=None, help="e.g. single,pmap,mesh")
    p.add_argument("--peers", type=_csv, default=None,
                   help="PyTorch modes: eager,compile ('' or none: no peers)")
    p.add_argument("--torch-compile", action="store_true", help="add torch.compile to the peers")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU cores for both zoo and the peers (the process is pinned to its first "
                        "N cores; the peers get N threads); default: all cores")
    p.add_argument("--torch-threads", default=None,
                   help="CPU threads for the peers only: a number, or auto (the faster of all "
                        "cores and 1, timed per peer); default: as --threads")
    p.add_argument("--sweep", type=lambda s: tuple(int(x) for x in _csv(s)), default=None,
                   help="device counts to sweep, e.g. 1,2,4,8 ('' : none)")
    p.add_argument("--sweep-strategies", type=_csv, default=("pmap", "mesh"))
    p.add_argument("--sweep-cases", type=_csv, default=None)
    p.add_argument("--steps", type=int, default=None, help="timed steps per contender (>= 20)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds")
    p.add_argument("--no-peak", action="store_true", help="skip the measured matmul peak")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--out", default=None,
                   help="output folder (default bench_results/<platform>-<UTC time>)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(list(argv))


def _torch_threads(args) -> int | str:
    if args.torch_threads == "auto":
        return "auto"
    if args.torch_threads:
        return int(args.torch_threads)
    return args.threads or _cores()


def _limit_cores(n: int) -> None:
    """Pins this process (and the workers it starts) to its first ``n`` cores.

    Both XLA and PyTorch then run on those cores only. (XLA_FLAGS cannot do this: measured here,
    ``--xla_cpu_multi_thread_eigen=false`` leaves XLA's matmuls on both cores.)
    """
    if not hasattr(os, "sched_setaffinity"):
        print("zoo bench: warning: --threads needs sched_setaffinity (Linux); ignored",
              file=sys.stderr)
        return
    cores = sorted(os.sched_getaffinity(0))[:n]
    os.sched_setaffinity(0, cores)


def bench_main(argv: list[str]) -> int:
    """``zoo bench [options]``; returns the exit status."""
    # On a GPU the PyTorch peers share the device: JAX must not grab 75% of its memory up front.
    # (Only works before JAX starts its backend, so `zoo bench` must not touch JAX before this.)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    # PyTorch's OpenMP threads spin for a while after each parallel region; with zoo's and the
    # peer's steps alternating, that spinning steals the cores from zoo's next steps (measured:
    # zoo's autoencoder step 14.9 ms alternating with spinning threads, 10.5 ms without). Passive
    # waiting lets each contender have the machine for its own steps. Set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = parse_args(argv)
    if args.threads:
        _limit_cores(args.threads)
    if args.worker is not None:
        return _worker(args.worker)
    strategies, peers, sweep, sweep_cases, steps, warmup = SUITE_DEFAULTS[args.suite]
    strategies = args.strategies or strategies
    peers = tuple(x for x in (args.peers if args.peers is not None else peers) if x != "none")
    if args.torch_compile and "compile" not in peers:
        peers = peers + ("compile",)
    sweep = args.sweep if args.sweep is not None else sweep
    sweep_cases = args.sweep_cases or sweep_cases
    steps = args.steps or steps
    warmup = args.warmup if args.warmup is not None else warmup
    for s in strategies + tuple(args.sweep_strategies):
        if s not in ("single", "pmap", "mesh"):
            raise SystemExit(f"zoo bench: unknown strategy {s!r}; choose single, pmap, mesh")
    for m in peers:
        if m not in ("eager", "compile"):
            raise SystemExit(f"zoo bench: unknown peer mode {m!r}; choose eager, compile")
    result = run_suite(suite=args.suite, cases=args.cases, strategies=strategies, peers=peers,
                       sweep=sweep, sweep_strategies=args.sweep_strategies,
                       sweep_cases=sweep_cases, warmup=warmup, steps=steps, rounds=args.rounds,
                       peak=not args.no_peak,
                       torch_threads=_torch_threads(args))
    result["meta"]["threads"] = args.threads or _cores()
    result["meta"]["command"] = " ".join(["zoo bench", *argv]).strip()
    out = Path(args.out) if args.out else Path("bench_results") / (
        f"{result['meta']['platform']}-{_dt.datetime.now(_dt.timezone.utc):%Y%m%d-%H%M%S}")
    paths = write_report(result, out, plots=not args.no_plots)
    print()
    print(markdown_report(result))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 1 if any("error" in r and r["framework"] == "zoo" for r in result["records"]) else 0


if __name__ == "__main__":
    sys.exit(bench_main(sys.argv[1:]))
