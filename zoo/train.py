"""The one training loop every family uses: data, strategy, compiled steps, checkpoints, logging.

``train(config, workdir)`` is importable and tested; ``zoo train`` is a thin wrapper over it.
Running it again on a workdir that holds checkpoints resumes from the newest readable one, with the
data iterator where it was, so an interrupted run ends bitwise identical to an uninterrupted one on
CPU. SIGTERM or SIGINT saves a checkpoint and returns cleanly.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from zoo import input_pipeline, models
from zoo.core import compiled, optim, parallel
from zoo.core import step as step_lib
from zoo.core.family import Family
from zoo.core.train_state import TrainState, param_count

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
NONFINITE_POLICIES = ("stop", "skip")
# Eval metrics that are functions of the mean loss (language models), recomputed from it.
LOSS_DERIVED_METRICS = {"perplexity": np.exp, "bits_per_char": lambda nats: nats / np.log(2.0)}


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss (with ``train.nonfinite='stop'``)."""


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


@dataclasses.dataclass
class TrainResult:
    state: TrainState           # placed for the strategy
    history: list[dict]         # one dict per logged step
    eval_metrics: dict[str, float]
    family: Family
    strategy: parallel.Strategy
    preempted: bool = False
    skipped_updates: int = 0


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


class PreemptionGuard:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step (main thread only)."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def stop_requested(self) -> bool:
        stop = self.signal_name is not None
        if jax.process_count() > 1:  # every process stops at the same step
            from jax.experimental import multihost_utils
            stop = bool(np.any(multihost_utils.process_allgather(np.array(stop))))
        return stop


class Progress:
    """One status line: step, loss, throughput, ETA (redrawn in place on a terminal).

    ``tokens_per_example`` (language models) adds tokens/s to examples/s.
    """

    def __init__(self, total: int, start: int, batch_size: int, log: Callable[[str], None],
                 tokens_per_example: int = 0):
        self.total, self.start, self.batch_size, self.log = total, start, batch_size, log
        self.tokens_per_example = tokens_per_example
        self.t0 = time.perf_counter()
        self.tty = log is print and sys.stdout.isatty()

    def line(self, step: int, metrics: dict[str, float]) -> str:
        elapsed = time.perf_counter() - self.t0
        rate = (step - self.start) / max(elapsed, 1e-9)
        eta = (self.total - step) / max(rate, 1e-9)
        shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        tokens = (f"{rate * self.batch_size * self.tokens_per_example:,.0f} tok/s  "
                  if self.tokens_per_example else "")
        return (f"step {step:>6}/{self.total}  {shown}  {rate * self.batch_size:,.0f} ex/s  "
                f"{tokens}eta {int(eta) // 60}:{int(eta) % 60:02d}")

    def update(self, step: int, metrics: dict[str, float]) -> None:
        if self.tty:
            print("\r" + self.line(step, metrics), end="", flush=True)
        else:
            self.log(self.line(step, metrics))

    def newline(self) -> None:
        if self.tty:
            print()


class MetricWriter:
    """Metrics to ``metrics.jsonl`` and TensorBoard event files (``tensorboardX``), process 0."""

    def __init__(self, workdir: Path | None):
        self.jsonl = self.tb = None
        if workdir is None or jax.process_index() != 0:
            return
        workdir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(workdir / "metrics.jsonl", "a")
        try:
            from tensorboardX import SummaryWriter
            self.tb = SummaryWriter(str(workdir / "tensorboard"))
        except ImportError:
            self.tb = None

    def write(self, step: int, metrics: dict[str, float], prefix: str = "train") -> None:
        if self.jsonl:
            self.jsonl.write(json.dumps({"step": step, prefix: metrics}) + "\n")
            self.jsonl.flush()
        if self.tb:
            for k, v in metrics.items():
                self.tb.add_scalar(f"{prefix}/{k}", v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.jsonl:
            self.jsonl.close()
        if self.tb:
            self.tb.close()


@dataclasses.dataclass
class Run:
    """Everything built from a config, before training starts."""

    config: Any                       # the config, with model.vocab_size filled in for text
    family: Family
    strategy: parallel.Strategy
    template: TrainState              # host state at step 0 (shapes, optimizers)
    train_step: compiled.CompiledStep
    eval_step: compiled.CompiledStep
    data: input_pipeline.RunData
    sample_fn: Callable | None        # writes samples at each evaluation (images or text)


def build(config, *, train: bool = True, eval_split: str | None = None,
          tokenizer: dict | None = None) -> Run:
    """Family, strategy, data, initial state and compiled steps from a config.

    ``train=False`` loads only the evaluation split (``eval_split``, default the config's). For
    text, ``tokenizer`` is a saved tokenizer's ``to_config()`` (a resumed or evaluated run uses
    the one it trained with); otherwise one is built from the training split.
    """
    tc = config.train
    seed = int(tc.get("seed", 0))
    input_pipeline.check_dataset(config.data)
    text_tokenizer = None
    if input_pipeline.is_text(config.data):
        text_tokenizer = input_pipeline.make_tokenizer(config.data, tokenizer)
        config = input_pipeline.fill_model_config(config, text_tokenizer)
    family = models.make_family(config.model)
    strategy = make_strategy(config.get("parallel", {}))
    grad_accum = int(tc.get("grad_accum_steps", 1))
    dtype = compute_dtype(tc.get("compute_dtype", "float32"))
    batch_size = int(config.data.batch_size)
    nonfinite = tc.get("nonfinite", "stop")
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"unknown train.nonfinite {nonfinite!r}; choose one of "
                         f"{', '.join(NONFINITE_POLICIES)}")
    # Fail before loading data or compiling if the batch cannot be split as asked.
    parallel.check_divisible(batch_size, strategy.num_shards, "devices", grad_accum)
    data = input_pipeline.make_run_data(config.data, family, seed=seed, train=train,
                                        eval_split=eval_split, tokenizer=text_tokenizer)
    try:  # before training: a failing evaluation at the end would cost the last checkpoint
        parallel.check_divisible(data.eval_batch_size, strategy.num_shards, "devices")
    except ValueError as e:
        raise ValueError(f"data.eval_batch_size: evaluation on {data.eval_split}: {e}") from None
    params, model_state = family.init(jax.random.PRNGKey(seed), data.example)
    optimizers = config.get("optimizers", None)  # per player, else one config for all
    # A schedule runs over a player's updates: n per step for a player updated n times a step
    # (a GAN critic's n_critic), so it ends with training, not n times too early.
    updates = step_lib.updates_per_step(family.objective)
    tx = {p: optim.make_optimizer(optimizers[p] if optimizers and p in optimizers
                                  else config.optimizer, int(tc.steps) * updates.get(p, 1))
          for p in params}
    template = TrainState.create(params=params, tx=tx, model_state=model_state,
                                 rng=jax.random.PRNGKey(seed + 1))
    _check_best_metric(tc.get("best_metric", ""), family, template, data.example)
    train_step = compiled.compile_train_step(
        family.objective, strategy, batch_spec=family.batch_spec, grad_accum_steps=grad_accum,
        compute_dtype=dtype, remat=bool(tc.get("remat", False)),
        skip_nonfinite=nonfinite == "skip")
    eval_step = compiled.compile_eval_step(family.eval_metrics, strategy,
                                           batch_spec=family.batch_spec, compute_dtype=dtype)
    sample_fn = family.sample_fn
    if text_tokenizer is not None:
        from zoo import generate
        sample_fn = generate.make_text_sampler(family.modules["model"], text_tokenizer, tc,
                                               data.eval_text)
    return Run(config, family, strategy, template, train_step, eval_step, data, sample_fn)


def _check_best_metric(name: str, family: Family, template: TrainState, example) -> None:
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


def evaluate_run(run: Run, state) -> dict[str, float]:
    """The run's evaluation metrics on its evaluation split."""
    return evaluate(run.eval_step, state, run.data.eval_batches())


TOKENIZER_FILE = "tokenizer.json"


def _saved_tokenizer(workdir: Path | None) -> dict | None:
    """The tokenizer a run in ``workdir`` trained with, if it has checkpoints to resume."""
    if workdir is None or not (workdir / TOKENIZER_FILE).is_file():
        return None
    ckpts = workdir / "checkpoints"
    if not (ckpts.is_dir() and any(d.name.isdigit() for d in ckpts.iterdir())):
        return None
    return json.loads((workdir / TOKENIZER_FILE).read_text())


def _config_dict(config) -> dict:
    return json.loads(config.to_json()) if hasattr(config, "to_json") else dict(config)


def train(config, workdir: str | Path | None = None,
          log: Callable[[str], None] = print) -> TrainResult:
    """Trains ``config.model`` on ``config.data`` for ``config.train.steps`` steps.

    With a ``workdir``: metrics go to ``metrics.jsonl`` and TensorBoard files, checkpoints to
    ``checkpoints/`` every ``train.checkpoint_every`` steps (and at the end), and an existing
    checkpoint is resumed from.
    """
    from zoo.checkpoint import Checkpointer

    tc = config.train
    steps = int(tc.steps)
    batch_size = int(config.data.batch_size)
    workdir = Path(workdir) if workdir is not None else None
    saved_tokenizer = _saved_tokenizer(workdir)
    run = build(config, tokenizer=saved_tokenizer)
    config, strategy, it = run.config, run.strategy, run.data.train
    tokenizer = run.data.tokenizer.to_config() if run.data.tokenizer is not None else None
    if tokenizer is not None and workdir is not None and jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / TOKENIZER_FILE).write_text(json.dumps(tokenizer))

    ckpt = None
    state, start, skipped = None, 0, 0
    if workdir is not None:
        ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=int(tc.get("keep_checkpoints", 3)),
                            best_metric=tc.get("best_metric", "") or None,
                            best_mode=tc.get("best_mode", "min"))
        if ckpt.latest_step() is not None:
            state, extra, start = ckpt.restore(run.template, strategy, log=log)
            it.restore(extra["data"]["iterator"])
            skipped = int(extra["data"].get("skipped_updates", 0))
            log(f"zoo: resuming from the checkpoint at step {start} in {ckpt.directory}")
    if state is None:
        state = strategy.place_state(run.template)
    log(f"zoo: {run.family.name} with {param_count(run.template.params):,} params, strategy "
        f"{strategy.name} over {strategy.num_shards} device(s) ({jax.devices()[0].platform}), "
        f"global batch {batch_size}, steps {start}->{steps}")

    writer = MetricWriter(workdir)
    spec = run.family.batch_spec
    tokens = spec["tokens"].shape[0] - 1 if isinstance(spec, dict) and "tokens" in spec else 0
    progress = Progress(steps, start, batch_size, log, tokens)
    log_every = int(tc.get("log_every", 50))
    eval_every = int(tc.get("eval_every", 0)) or steps
    save_every = int(tc.get("checkpoint_every", 0)) or steps
    history, eval_metrics, preempted = [], {}, False
    last_saved = start if start else None

    def save(step: int, metrics=None) -> None:
        nonlocal last_saved
        if ckpt is None:
            return
        ckpt.save(step, state, strategy, metrics=metrics, config=_config_dict(config),
                  data_state={"iterator": it.state(), "skipped_updates": skipped,
                              "tokenizer": tokenizer})
        last_saved = step

    stop_on_nonfinite = tc.get("nonfinite", "stop") == "stop"

    def check_finite(step: int, m: dict[str, float]) -> None:
        if stop_on_nonfinite and not all(np.isfinite(v) for k, v in m.items() if k != "skipped"):
            where = (f"the last good checkpoint is step {last_saved} in {ckpt.directory}"
                     if ckpt and last_saved is not None else "no checkpoint was saved")
            raise NonFiniteLossError(
                f"non-finite loss at step {step} ({m}); {where}. Lower the learning rate, clip "
                "gradients (optimizer.grad_clip_norm) or set train.nonfinite=skip")

    try:
        with PreemptionGuard() as guard:
            for step in range(start + 1, steps + 1):
                state, metrics = run.train_step(state, next(it))
                logged = step % log_every == 0 or step == steps
                saving = step % save_every == 0 or step == steps
                evaluating = step % eval_every == 0 or step == steps
                if logged or saving or evaluating or "skipped" in metrics:
                    m = {k: float(v) for k, v in strategy.to_host(metrics).items()}
                    skipped += int(m.get("skipped", 0))
                    check_finite(step, m)
                    if logged:
                        history.append({"step": step, **m})
                        progress.update(step, m)
                        writer.write(step, m)
                if evaluating:
                    progress.newline()
                    eval_metrics = evaluate_run(run, state)
                    log(f"eval ({run.data.eval_split}) at step {step}: "
                        + "  ".join(f"{k} {v:.4g}" for k, v in eval_metrics.items()))
                    writer.write(step, eval_metrics, prefix="eval")
                    if run.sample_fn is not None and workdir is not None:
                        # to_host is a collective: every process fetches, process 0 writes.
                        host = strategy.to_host((state.params, state.model_state))
                        if jax.process_index() == 0:
                            written = run.sample_fn(*host, jax.random.PRNGKey(step),
                                                    workdir / "samples", step)
                            if isinstance(written, str):  # text: what the model writes now
                                log(f"sample at step {step}:\n{written}")
                if saving:
                    save(step, eval_metrics if evaluating and eval_metrics else None)
                if guard.stop_requested():
                    if last_saved != step:
                        save(step)
                    if ckpt:
                        ckpt.wait()
                    progress.newline()
                    log(f"zoo: received {guard.signal_name or 'a stop request'} at step {step}; "
                        + (f"saved a checkpoint in {ckpt.directory}; run again to resume"
                           if ckpt else "no workdir, nothing saved"))
                    preempted = True
                    break
    finally:
        if ckpt:
            ckpt.close()
        writer.close()
    if skipped:
        log(f"zoo: skipped {skipped} update(s) with a non-finite loss or gradient")
    return TrainResult(state, history, eval_metrics, run.family, strategy, preempted, skipped)


def evaluate_checkpoint(path: str | Path, *, config=None, overrides: list[str] = (),
                        step: int | None = None, split: str = "test", quality: bool = True,
                        num_samples: int = 10_000, iwae_k: int = 0,
                        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluates a run directory (or its ``checkpoints/``) on ``split`` (default test).

    Uses the config (and, for text, the tokenizer) saved in the checkpoint unless a config is
    given, with ``--config.key=value`` overrides applied. A saved mesh layout that does not fit
    this machine's devices is replaced by a data-parallel mesh over all of them (the checkpoint
    restores under any layout). With ``quality``, generative families also get the quality report
    of :func:`zoo.eval_quality.run_quality_report` (``num_samples`` samples; ``iwae_k > 0`` adds a
    VAE's IWAE-k test log-likelihood). Returns the results and writes them to ``eval.json`` in the
    run directory.
    """
    import ml_collections

    from zoo import config as config_lib
    from zoo import eval_quality
    from zoo.checkpoint import Checkpointer

    path = Path(path)
    ckpt_dir = path if path.name == "checkpoints" else path / "checkpoints"
    if not ckpt_dir.is_dir():
        raise ValueError(f"{path} is not a run directory: no checkpoints/ in it")
    ckpt = Checkpointer(ckpt_dir)
    try:
        extra = ckpt.read_extra(step, log=log)
        if config is None:
            config = ml_collections.ConfigDict(extra["config"])
        config = config_lib.apply_overrides(config, overrides)
        _fit_layout_to_devices(config, log)
        run = build(config, train=False, eval_split=split,
                    tokenizer=extra.get("data", {}).get("tokenizer"))
        # Without a step, the newest readable weights; they can be of another step than the
        # config when one record of the newest checkpoint is unreadable.
        state, _, restored_step = ckpt.restore(run.template, run.strategy, step=step, log=log)
    finally:
        ckpt.close()
    if restored_step != extra["step"]:
        log(f"zoo: weights of step {restored_step}, config of step {extra['step']}")
    metrics = evaluate_run(run, state)
    result = {"step": restored_step, "family": run.family.name, "split": split,
              "metrics": metrics}
    if quality:
        report = eval_quality.run_quality_report(
            run.family, run.strategy.to_host(state.params), run.strategy.to_host(state.model_state),
            run.config, data=run.data, metrics=metrics, num_samples=num_samples, iwae_k=iwae_k,
            log=log)
        if report:
            result["quality"] = report
    out = ckpt_dir.parent / "eval.json"
    if jax.process_index() == 0:
        out.write_text(json.dumps(result, indent=2))
    log(json.dumps(result, indent=2))
    return result


def _fit_layout_to_devices(config, log: Callable[[str], None]) -> None:
    """Makes a saved parallel layout fit this machine, in place: a mesh that does not fit the
    devices becomes data-parallel over all of them, and a batch that does not divide over them
    is evaluated on one device (a checkpoint restores under any strategy)."""
    pc, n = config.parallel, jax.device_count()
    strategy = pc.get("strategy", "mesh")
    if strategy == "mesh":
        data, fsdp = int(pc.get("data", -1)), int(pc.get("fsdp", 1))
        if not ((data == -1 and n % fsdp == 0) or data * fsdp == n):
            log(f"zoo: the saved mesh data={data} x fsdp={fsdp} does not fit {n} device(s); "
                "evaluating data-parallel over all of them")
            pc.data, pc.fsdp = -1, 1
    shards = 1 if strategy == "single" else n
    sizes = {int(config.data.batch_size),
             int(config.data.get("eval_batch_size", 0) or config.data.batch_size)}
    if any(size % shards for size in sizes):
        if jax.process_count() > 1:  # one device cannot hold every process's share
            raise ValueError(f"batches of {sorted(sizes)} do not divide over the {n} devices of "
                             f"{jax.process_count()} processes; set data.batch_size and "
                             f"data.eval_batch_size to multiples of {n}")
        log(f"zoo: batches of {sorted(sizes)} do not divide over {n} devices; evaluating on one")
        pc.strategy = "single"

