"""The one training loop every family uses: data, strategy, compiled steps, checkpoints, logging.

``train(config, workdir)`` is importable and tested; ``zoo train`` is a thin wrapper over it that
also hands it ``make_sampler`` (:func:`zoo.sample.run_sampler`): what to write at each evaluation
is decided above this layer, by the family's capabilities.
Running it again on a workdir that holds checkpoints resumes from the newest readable one, with the
data iterator where it was, so an interrupted run ends bitwise identical to an uninterrupted one on
CPU. SIGTERM or SIGINT saves a checkpoint and returns cleanly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from zoo import build as build_lib
from zoo import config as config_lib
from zoo import evaluate as evaluate_lib
from zoo import finetune, input_pipeline
from zoo import tokenizers as tok
from zoo.checkpoint import TOKENIZER_FILE, CheckpointError, Checkpointer
from zoo.core import parallel
from zoo.core import params as params_lib
from zoo.core.family import Family
from zoo.core.settings import RunSettings
from zoo.core.train_state import TrainState, param_count, sampling_params


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss (with ``train.nonfinite='stop'``)."""


@dataclasses.dataclass
class TrainResult:
    state: TrainState           # placed for the strategy
    history: list[dict]         # one dict per logged step
    eval_metrics: dict[str, float]
    family: Family
    strategy: parallel.Strategy
    preempted: bool = False
    skipped_updates: int = 0
    # (step, time.perf_counter()) at each logged step, once its metrics reached the host: the
    # loop's own throughput between logs (``zoo bench --loop``).
    log_times: list[tuple[int, float]] = dataclasses.field(default_factory=list)


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
            stop = bool(np.any(multihost_utils.process_allgather(np.array(stop))))
        return stop


class Progress:
    """One status line: step, loss, throughput, ETA (redrawn in place on a terminal).

    Throughput is over the steps since the previous line (the first line's includes compiling),
    so it is the loop's speed now, not an average diluted by compile and evaluation time.
    ``tokens_per_example`` (language models) adds tokens/s to examples/s.
    """

    def __init__(self, total: int, start: int, batch_size: int, log: Callable[[str], None],
                 tokens_per_example: int = 0):
        self.total, self.start, self.batch_size, self.log = total, start, batch_size, log
        self.tokens_per_example = tokens_per_example
        self.last = (start, time.perf_counter())
        self.tty = log is print and sys.stdout.isatty()

    def line(self, step: int, metrics: dict[str, float], now: float | None = None) -> str:
        now = time.perf_counter() if now is None else now
        rate = (step - self.last[0]) / max(now - self.last[1], 1e-9)
        self.last = (step, now)
        eta = (self.total - step) / max(rate, 1e-9)
        shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        tokens = (f"{rate * self.batch_size * self.tokens_per_example:,.0f} tok/s  "
                  if self.tokens_per_example else "")
        return (f"step {step:>6}/{self.total}  {shown}  {rate * self.batch_size:,.0f} ex/s  "
                f"{tokens}eta {int(eta) // 60}:{int(eta) % 60:02d}")

    def update(self, step: int, metrics: dict[str, float], now: float | None = None) -> None:
        if self.tty:
            print("\r" + self.line(step, metrics, now), end="", flush=True)
        else:
            self.log(self.line(step, metrics, now))

    def restart(self, step: int) -> None:
        """Counts throughput from now (after an evaluation or checkpoint, not part of it)."""
        self.last = (step, time.perf_counter())

    def newline(self) -> None:
        if self.tty:
            print()


class MetricWriter:
    """Metrics to ``metrics.jsonl`` and TensorBoard event files (``tensorboardX``), process 0.

    A run resumed from step ``resumed_from`` trains the steps after it again: their rows from
    before the interruption are dropped (TensorBoard's ``purge_step``), so each step has one row.
    """

    def __init__(self, workdir: Path | None, resumed_from: int = 0):
        self.jsonl = self.tb = None
        if workdir is None or jax.process_index() != 0:
            return
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "metrics.jsonl"
        if resumed_from and path.exists():
            _drop_rows_after(path, resumed_from)
        self.jsonl = open(path, "a")
        try:
            from tensorboardX import SummaryWriter
            self.tb = SummaryWriter(str(workdir / "tensorboard"),
                                    purge_step=resumed_from + 1 if resumed_from else None)
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


class WorkdirBusyError(ValueError):
    """Another ``zoo train`` process holds the workdir."""


# The folders zoo train writes in its workdir (and moves damaged checkpoints to).
WORKDIR_FOLDERS = ("checkpoints", "checkpoints.damaged", "samples", "tensorboard")


class WorkdirLock:
    """``workdir/train.lock`` (this process's PID and host) for as long as it trains.

    A second trainer on the same workdir would overwrite the first one's checkpoints: it is
    refused, naming the holder. A lock left by a process that is gone (killed, crashed) is taken
    over; one from another host cannot be checked and is refused with how to clear it. Taking it is
    also the first write to the workdir, so a workdir that is a file or is read-only is reported
    here, before anything is built. Process 0 holds it for a multi-process run.
    """

    NAME = "train.lock"

    def __init__(self, workdir: Path | None):
        self.workdir, self.held = workdir, False
        self.path = workdir / self.NAME if workdir is not None else None

    def _holder(self) -> dict:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}  # not a lock zoo wrote: stale

    def _alive(self, holder: dict) -> bool:
        if holder.get("host") != socket.gethostname():
            return bool(holder)  # unknown host: assume alive; a half-written lock: stale
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def __enter__(self) -> "WorkdirLock":
        if self.workdir is None or jax.process_index() != 0:
            return self
        config_lib.make_folder(self.workdir, "--workdir")
        for name in WORKDIR_FOLDERS:  # found before training, not at the first save
            if (self.workdir / name).exists() and not (self.workdir / name).is_dir():
                raise ValueError(f"{self.workdir / name} is a file, where zoo train keeps a "
                                 "folder; move it away or use another --workdir")
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            for _ in range(2):
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    holder = self._holder()
                    if self._alive(holder):
                        raise WorkdirBusyError(
                            f"{self.workdir} is in use by zoo train process {holder.get('pid')} "
                            f"on {holder.get('host')}; wait for it, stop it, or use another "
                            f"--workdir (if that process is gone, delete {self.path})") from None
                    self.path.unlink(missing_ok=True)  # left by a process that is gone
                    continue
                with os.fdopen(fd, "w") as f:
                    json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                               "started": time.time()}, f)
                self.held = True
                return self
        except PermissionError as e:
            raise ValueError(f"cannot write to --workdir {self.workdir} ({e.strerror}); give a "
                             "folder you can write to") from None
        raise WorkdirBusyError(f"could not take {self.path}; another process keeps making it")

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _drop_rows_after(path: Path, step: int) -> None:
    """Rewrites ``metrics.jsonl`` without the rows of steps after ``step`` (and any line a kill
    cut short), through a temporary file renamed over it."""
    kept = []
    for line in path.read_text(errors="replace").splitlines():  # damaged lines are dropped
        try:
            if int(json.loads(line)["step"]) <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(row + "\n" for row in kept))
    tmp.replace(path)


def _saved_tokenizer(workdir: Path | None, log: Callable[[str], None]) -> dict | None:
    """The tokenizer a run in ``workdir`` trained with, if it has checkpoints to resume: the copy
    its newest readable checkpoint holds (what the run trained with), else its
    ``tokenizer.json``. A ``tokenizer.json`` that is missing, damaged or another run's is
    reported (and rewritten)."""
    if workdir is None:
        return None
    ckpts = workdir / "checkpoints"
    if not (ckpts.is_dir() and any(d.name.isdigit() for d in ckpts.iterdir())):
        return None
    file = workdir / TOKENIZER_FILE
    try:
        in_file = json.loads(file.read_text())
        tok.from_config(in_file)  # a tokenizer zoo can build, not just JSON
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # missing (an image run
        in_file = None                                                  # has none) or damaged
    reader = Checkpointer(ckpts)
    try:
        extra = reader.read_extra(log=log)
    except CheckpointError:
        return in_file  # the restore below reports the checkpoints
    finally:
        reader.close()
    saved = extra.get("data", {}).get("tokenizer")
    if saved is None:
        return in_file
    if in_file != saved:
        log(f"zoo: {file} is missing, damaged or not this run's; using the tokenizer saved with "
            f"the checkpoint at step {extra['step']}")
    return saved


def _config_dict(config) -> dict:
    return json.loads(config.to_json()) if hasattr(config, "to_json") else dict(config)


def train(config, workdir: str | Path | None = None, log: Callable[[str], None] = print, *,
          make_sampler: Callable[[build_lib.Run], Callable | None] | None = None) -> TrainResult:
    """Trains ``config.model`` on ``config.data`` for ``config.train.steps`` steps.

    With a ``workdir``: metrics go to ``metrics.jsonl`` and TensorBoard files, checkpoints to
    ``checkpoints/`` every ``train.checkpoint_every`` steps (and at the end), and an existing
    checkpoint is resumed from. ``make_sampler(run)`` gives the ``sample_fn(params, model_state,
    rng, out_dir, step)`` that writes samples to ``workdir/samples`` at each evaluation (None:
    none); it is called before training, so a sampler that cannot work fails first.
    """
    workdir = Path(workdir) if workdir is not None else None
    with WorkdirLock(workdir):
        return _train(config, workdir, log, make_sampler)


def _train(config, workdir: Path | None, log: Callable[[str], None],
           make_sampler: Callable[[build_lib.Run], Callable | None] | None) -> TrainResult:
    saved_tokenizer = _saved_tokenizer(workdir, log)
    source = None
    init_from = RunSettings.parse(config).train.init_from
    if init_from:  # the architecture (and tokenizer) from the source, before anything is built
        config, source, source_tokenizer = finetune.prepare(config, workdir, log)
        saved_tokenizer = saved_tokenizer or source_tokenizer
    run = build_lib.build(config, tokenizer=saved_tokenizer)
    tc = run.settings.train
    if source is not None:
        run = dataclasses.replace(run, template=finetune.start_from(
            run.template, source, tc.init_reinit, log, name=init_from))
    steps, batch_size = tc.steps, run.settings.data.batch_size
    sample_fn = make_sampler(run) if make_sampler is not None else None
    config, strategy, it = run.config, run.strategy, run.data.train
    tokenizer = run.data.tokenizer.to_config() if run.data.tokenizer is not None else None
    if tokenizer is not None and workdir is not None and jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        tmp = workdir / (TOKENIZER_FILE + ".tmp")  # renamed when whole: a kill leaves no half file
        tmp.write_text(json.dumps(tokenizer))
        tmp.replace(workdir / TOKENIZER_FILE)

    ckpt = None
    state, start, skipped = None, 0, 0
    if workdir is not None:
        ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=tc.keep_checkpoints,
                            best_metric=tc.best_metric or None, best_mode=tc.best_mode)
        if ckpt.latest_step() is not None:
            try:  # a damaged checkpoint is moved aside, so this run can save its step again
                state, extra, start = ckpt.restore(run.template, strategy, log=log,
                                                   move_aside=jax.process_index() == 0)
            except CheckpointError:
                if ckpt.latest_step() is not None:  # readable but not this run's (shapes)
                    raise
                log(f"zoo: no checkpoint in {ckpt.directory} could be restored (all moved "
                    "aside); training from step 0")
            else:
                it.restore(extra["data"]["iterator"])
                skipped = int(extra["data"].get("skipped_updates", 0))
                log(f"zoo: resuming from the checkpoint at step {start} in {ckpt.directory}")
    if state is None:
        state = strategy.place_state(run.template)
    trainable = params_lib.count(run.template.params,
                                 build_lib.trainable_masks(run.settings, run.template.params))
    total = param_count(run.template.params)
    shown = f"{total:,} params" if trainable == total else \
        f"{trainable:,} trainable / {total:,} params"
    with strategy.tracing():  # what the step's layers choose where it is traced
        chosen = run.family.implementations() if run.family.implementations else {}
    log(f"zoo: {run.family.name} with {shown}, strategy "
        f"{strategy.name} over {strategy.num_shards} device(s) ({jax.devices()[0].platform}), "
        f"global batch {batch_size}, steps {start}->{steps}"
        + "".join(f", {what} {how}" for what, how in chosen.items()))

    writer = MetricWriter(workdir, resumed_from=start)
    spec = run.family.batch_spec
    tokens = spec["tokens"].shape[0] - 1 if isinstance(spec, dict) and "tokens" in spec else 0
    progress = Progress(steps, start, batch_size, log, tokens)
    log_every, eval_every, save_every = tc.log_every, tc.eval_every or steps, \
        tc.checkpoint_every or steps
    history, eval_metrics, preempted, log_times = [], {}, False, []
    last_saved = start if start else None

    def save(step: int, metrics=None) -> None:
        nonlocal last_saved
        if ckpt is None:
            return
        ckpt.save(step, state, strategy, metrics=metrics, config=_config_dict(config),
                  data_state={"iterator": batches.state(), "skipped_updates": skipped,
                              "tokenizer": tokenizer})
        last_saved = step

    stop_on_nonfinite = tc.nonfinite == "stop"
    # Each step's metrics stay on the device until a step logs, saves or evaluates; then those of
    # all the steps since are fetched at once: the loop never waits for a step it need not, yet a
    # NaN is named at the step it appeared and every skipped update is counted.
    pending: list[tuple[int, dict]] = []

    def fetch() -> dict[str, float]:
        """The pending steps' metrics, checked; the newest step's as floats."""
        nonlocal skipped
        host = strategy.to_host([m for _, m in pending])
        steps_fetched = [s for s, _ in pending]
        pending.clear()
        for step, m in zip(steps_fetched, host):
            skipped += int(m.get("skipped", 0))
            if stop_on_nonfinite and not all(np.all(np.isfinite(v)) for k, v in m.items()
                                             if k != "skipped"):
                where = (f"the last good checkpoint is step {last_saved} in {ckpt.directory}"
                         if ckpt and last_saved is not None else "no checkpoint was saved")
                shown = {k: float(v) for k, v in m.items()}
                raise NonFiniteLossError(
                    f"non-finite loss at step {step} ({shown}); {where}. Lower the learning "
                    "rate, clip gradients (optimizer.grad_clip_norm) or set "
                    "train.nonfinite=skip")
        return {k: float(v) for k, v in host[-1].items()}

    # The next two batches are placed before each step is dispatched (double buffering);
    # with steps dispatched asynchronously nothing here waits for a step, except the metrics of
    # the steps that log, save or evaluate.
    batches = input_pipeline.DevicePrefetch(it, run.train_step.place_batch, depth=2) \
        if start < steps else None
    try:
        with PreemptionGuard() as guard:
            for step in range(start + 1, steps + 1):
                state, metrics = run.train_step(state, next(batches), placed=True)
                pending.append((step, metrics))
                logged = step % log_every == 0 or step == steps
                saving = step % save_every == 0 or step == steps
                evaluating = step % eval_every == 0 or step == steps
                stopping = guard.stop_requested()
                if logged or saving or evaluating or stopping:
                    m = fetch()
                    if logged:
                        now = time.perf_counter()
                        log_times.append((step, now))
                        history.append({"step": step, **m})
                        progress.update(step, m, now)
                        writer.write(step, m)
                if evaluating:
                    progress.newline()
                    eval_metrics = evaluate_lib.evaluate_run(run, state)
                    log(f"eval ({run.data.eval_split}) at step {step}: "
                        + "  ".join(f"{k} {v:.4g}" for k, v in eval_metrics.items()))
                    writer.write(step, eval_metrics, prefix="eval")
                    if sample_fn is not None and workdir is not None:
                        # to_host is a collective: every process fetches, process 0 writes.
                        params, model_state = strategy.to_host((sampling_params(state),
                                                                state.model_state))
                        if jax.process_index() == 0:
                            written = sample_fn(run.family.plain_params(params), model_state,
                                                jax.random.PRNGKey(step),
                                                workdir / "samples", step)
                            if isinstance(written, str):  # text: what the model writes now
                                log(f"sample at step {step}:\n{written}")
                if saving:
                    save(step, eval_metrics if evaluating and eval_metrics else None)
                if evaluating or saving:
                    progress.restart(step)
                if stopping:
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
    return TrainResult(state, history, eval_metrics, run.family, strategy, preempted, skipped,
                       log_times)


