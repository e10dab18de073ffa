"""`zoo train` across processes through the real command line (jax.distributed on 127.0.0.1, gloo):
two processes x 2 devices give one process x 4's params, a run killed on both resumes, a run saved
by two processes resumes in one, bad cluster options are one line within a bounded time, and a
failure on one process alone (a save it cannot write, any other error) does not hang the others."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from configs_loader import CONFIGS, load_config
from zoo import build
from zoo.checkpoint import Checkpointer
from zoo.config import apply_overrides
from zoo.core import parallel

SMALL = ["--config.data.dataset=synthetic", "--config.data.synthetic_size=512",
         "--config.data.batch_size=32", "--config.model.hidden=(64,)",
         "--config.train.log_every=1", "--config.train.checkpoint_every=3"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _zoo_train(workdir, processes: int, devices: int, *overrides, preexec_fns=None):
    """``processes`` zoo train processes with ``devices`` CPU devices each, on one workdir."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    cluster = lambda i: (["--coordinator", f"127.0.0.1:{port}", "--num-processes",
                          str(processes), "--process-id", str(i)] if processes > 1 else [])
    return [subprocess.Popen([sys.executable, "-m", "zoo.cli", "train", "--config",
                              str(CONFIGS / "autoencoder_mnist.py"), "--workdir", str(workdir),
                              *SMALL, *overrides, *cluster(i)], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             preexec_fn=(preexec_fns or {}).get(i))
            for i in range(processes)]


def _outputs(procs, timeout: float) -> list[str]:
    """Each process's output once all have ended; a hang past ``timeout`` leaves none behind."""
    try:
        return [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()


def _finish(procs, timeout=300):
    outs = _outputs(procs, timeout)
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


def _params(workdir, *overrides):
    config = apply_overrides(load_config("autoencoder_mnist"), [*SMALL, *overrides])
    ckpt = Checkpointer(Path(workdir) / "checkpoints")
    try:
        state, _, step = ckpt.restore(build.build(config).template, parallel.make_strategy("single"))
    finally:
        ckpt.close()
    return step, jax.device_get(state.params)


def _close(a, b):
    # Same global batches and math; only the all-reduce order differs (gloo vs in-process).
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)


def test_two_zoo_train_processes_give_one_processs_params(tmp_path):
    outs = _finish(_zoo_train(tmp_path / "two", 2, 2, "--config.train.steps=6"))
    _finish(_zoo_train(tmp_path / "one", 1, 4, "--config.train.steps=6"))
    (s2, p2), (s1, p1) = _params(tmp_path / "two"), _params(tmp_path / "one")
    assert s2 == s1 == 6
    _close(p2, p1)
    assert "over 4 device(s)" in outs[0] and "step      6/6" in outs[0]
    assert "step " not in outs[1]  # process 1 prints no progress; process 0 writes the metrics
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text()
            .splitlines() if '"train"' in line]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_a_run_killed_on_both_processes_resumes_and_goes_on_in_one(tmp_path):
    procs = _zoo_train(tmp_path / "run", 2, 2, "--config.train.steps=100000")
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.exists() and metrics.read_text().count('"train"') >= 8):
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.05)
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    outs = _finish(_zoo_train(tmp_path / "run", 2, 2, "--config.train.steps=9"))
    assert "resuming from the checkpoint at step" in outs[0]
    # Saved by two processes, continued by one with all four devices.
    _finish(_zoo_train(tmp_path / "run", 1, 4, "--config.train.steps=12"))
    _finish(_zoo_train(tmp_path / "alone", 1, 4, "--config.train.steps=12"))
    (s, resumed), (_, alone) = _params(tmp_path / "run"), _params(tmp_path / "alone")
    assert s == 12
    _close(resumed, alone)


@pytest.mark.parametrize("failing, resume", [
    pytest.param(1, False, id="process-1"),
    pytest.param(0, True, id="process-0-then-resume", marks=pytest.mark.slow)])
def test_a_save_one_process_cannot_write_stops_every_process_in_one_line(tmp_path, failing,
                                                                         resume):
    # A full disk on one process (its files limited to 200 kB, as in test_cli_errors: the
    # 784 x 128 kernels do not fit). Its save of step 4 fails; the other's succeeds. With orbax's
    # own barriers both waited for each other until its 20-minute timeout.
    import resource
    run = tmp_path / "run"
    ae = ("--config.model.hidden=(128,)", "--config.train.checkpoint_every=2")
    _finish(_zoo_train(run, 1, 1, *ae, "--config.train.steps=2"))  # two processes go on from it
    small_files = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
    procs = _zoo_train(run, 2, 1, *ae, "--config.train.steps=6",
                       preexec_fns={failing: small_files})
    outs = _outputs(procs, 120)
    whole = "the checkpoint of step 2 is whole; once the folder can be written, running again " \
            "resumes from it"
    for i, (p, out) in enumerate(zip(procs, outs)):
        errors = [line for line in out.splitlines() if line.startswith("zoo train: error")]
        why = "File too large" if i == failing else \
            f"process {failing} could not write its part: File too large"
        assert p.returncode == 1 and "Traceback" not in out, out[-3000:]
        assert errors == [f"zoo train: error: could not write the checkpoint of step 4 in "
                          f"{run / 'checkpoints'}: {why}; {whole}"], out[-3000:]
    assert _params(run, *ae)[0] == 2  # step 4 was never finalized; step 2 is whole
    if resume:
        outs = _finish(_zoo_train(run, 2, 1, *ae, "--config.train.steps=6"))
        assert "resuming from the checkpoint at step 2" in outs[0]
        assert sorted(d.name for d in (run / "checkpoints").iterdir()) == ["2", "4", "6"]


def test_an_error_on_process_0_alone_stops_both_processes_in_seconds(tmp_path):
    # Process 0 writes the metrics; here it cannot (a folder sits at metrics.jsonl), while
    # process 1 goes on to its first step's collective. Both used to wait 5 minutes (process 0
    # at JAX's shutdown barrier, process 1 for process 0), then abort.
    (tmp_path / "metrics.jsonl").mkdir()
    procs = _zoo_train(tmp_path, 2, 1, "--config.train.steps=50")
    outs = _outputs(procs, 120)
    errors = [line for line in outs[0].splitlines() if line.startswith("zoo train: error")]
    assert procs[0].returncode == 1 and "Traceback" not in outs[0], outs[0][-3000:]
    assert errors == [f"zoo train: error: [Errno 21] Is a directory: "
                      f"'{tmp_path / 'metrics.jsonl'}'"], outs[0][-3000:]
    assert procs[1].returncode != 0  # ended by JAX: "another task died"
    assert "step " not in outs[0]  # stopped before its first step


@pytest.mark.slow  # ~45 s; the mid-run case above is the default one
def test_an_error_on_process_0_alone_after_process_1_finished_lets_process_1_exit_0(tmp_path):
    # zoo eval across two processes; process 0 cannot write eval.json. Process 1 has finished,
    # so process 0 must not leave at once (JAX would abort process 1): both pass the shutdown
    # barrier, each with its own status.
    _finish(_zoo_train(tmp_path, 2, 1, "--config.train.steps=2"))
    (tmp_path / "eval.json").mkdir()
    port, env = _free_port(), {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen([sys.executable, "-m", "zoo.cli", "eval", str(tmp_path),
                               "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                               "--process-id", str(i)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
    outs = _outputs(procs, 240)
    errors = [line for line in outs[0].splitlines() if line.startswith("zoo eval: error")]
    assert procs[0].returncode == 1 and errors == [
        f"zoo eval: error: [Errno 21] Is a directory: '{tmp_path / 'eval.json'}'"], outs[0][-3000:]
    assert procs[1].returncode == 0, outs[1][-3000:]


def test_a_timeout_and_a_port_that_cannot_work_are_refused_before_joining():
    # Before: a timeout of 0 waited for ever, and a port "abc" failed in int() unnamed.
    import argparse
    from zoo.core import distributed
    args = lambda **kw: argparse.Namespace(**{
        "distributed": None, "coordinator": "127.0.0.1:1234", "num_processes": 2,
        "process_id": 1, "distributed_timeout": 30, **kw})
    assert distributed.cluster_from(args(), environ={}).coordinator == "127.0.0.1:1234"
    for timeout in (0, -3):
        with pytest.raises(ValueError, match=f"--distributed-timeout {timeout} must be > 0"):
            distributed.cluster_from(args(distributed_timeout=timeout), environ={})
    for coordinator in ("localhost:abc", ":", "localhost:0", "host:70000"):
        with pytest.raises(ValueError, match="must be HOST:PORT, the port a number from 1"):
            distributed.cluster_from(args(coordinator=coordinator), environ={})


def test_a_bad_process_id_and_a_dead_coordinator_are_one_line_in_bounded_time(tmp_path):
    # No cluster for --distributed auto to find, wherever the tests run.
    cluster_vars = ("SLURM_", "OMPI_", "PMI_", "KUBERNETES_", "TPU_", "CLOUD_TPU", "MEGASCALE")
    env = {k: v for k, v in os.environ.items()
           if k != "XLA_FLAGS" and not k.startswith(cluster_vars)}
    base = [sys.executable, "-m", "zoo.cli", "train", "--config",
            str(CONFIGS / "autoencoder_mnist.py"), *SMALL]
    cases = [(["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"],
              "--process-id 2 is not one of the 2 processes (0 to 1)"),
             (["--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "2",
               "--process-id", "1", "--distributed-timeout", "3"],
              "no coordinator answers at 127.0.0.1:"),
             (["--num-processes", "2", "--process-id", "1"], "missing --coordinator"),
             (["--distributed", "auto", "--distributed-timeout", "5"],
              "JAX found no cluster it knows")]
    for extra, says in cases:
        t0 = time.perf_counter()
        done = subprocess.run([*base, *extra], env=env, text=True, capture_output=True,
                              timeout=120)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2 and len(lines) == 1 and says in lines[0], done.stderr[-2000:]
        assert "Traceback" not in done.stderr and time.perf_counter() - t0 < 60


@pytest.mark.parametrize("devices, extra, says", [
    pytest.param([2, 2], [[], ["--config.train.seed=1"]], "run another config than process 0",
                 id="config"),
    # ~2 minutes on 2 cores: each process starts its own device count before they can compare.
    pytest.param([2, 4], [[], []], "different numbers of local devices ([2, 4])", id="devices",
                 marks=pytest.mark.slow),
])
def test_processes_with_different_configs_or_device_counts_are_refused_on_each(devices, extra,
                                                                               says):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "zoo.cli", "train", "--config",
         str(CONFIGS / "autoencoder_mnist.py"), *SMALL, *extra[i], "--coordinator",
         f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
        env={**env, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices[i]}"},
        text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=180)
        errors = [line for line in err.splitlines() if line.startswith("zoo train: error")]
        assert p.returncode == 2 and len(errors) == 1 and says in errors[0], err[-2000:]
        assert "Traceback" not in err


@pytest.mark.slow  # the bench's mesh over two processes; test_two_zoo_train_processes_give_one_processs_params
# covers the multi-process mesh in the default run
def test_zoo_bench_across_two_processes_times_the_mesh_over_every_device(tmp_path):
    port = _free_port()
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    procs = [subprocess.Popen([sys.executable, "-m", "zoo.cli", "bench", "--suite", "tiny",
                               "--cases", "autoencoder-mlp", "--no-peak", "--no-plots",
                               "--out", str(tmp_path / "out"), "--coordinator",
                               f"127.0.0.1:{port}", "--num-processes", "2", "--process-id",
                               str(i)], env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for i in range(2)]
    outs = _finish(procs)
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    zoo_rows = [r for r in result["records"] if r["framework"] == "zoo"]
    assert [(r["strategy"], r["devices"]) for r in zoo_rows] == [("mesh", 4)]
    assert result["meta"]["processes"] == 2 and zoo_rows[0]["step_s"]["n"] == 20
    assert "| autoencoder-mlp | zoo | mesh | 4 |" in outs[0]
    assert "| autoencoder-mlp |" not in outs[1]  # process 0 alone reports


def test_sigterm_to_one_process_saves_and_stops_them_all(tmp_path):
    procs = _zoo_train(tmp_path, 2, 2, "--config.train.steps=100000",
                       "--config.train.checkpoint_every=100000")
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.exists() and metrics.read_text().count('"train"') >= 5):
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)  # only the second process is told
    outs = _finish(procs, timeout=120)
    stopped = int(outs[0].split("received ")[1].split("at step ")[1].split(";")[0])
    ckpt = Checkpointer(tmp_path / "checkpoints")
    try:
        assert ckpt.latest_step() == stopped >= 5  # both saved that step together
    finally:
        ckpt.close()
