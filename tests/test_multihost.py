"""Multi-host: 2 processes x 2 devices (jax.distributed on 127.0.0.1, gloo) == 1 process x 4."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("multihost_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(nproc: int, local_devices: int, out: Path, *workdir: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(i), str(nproc), str(port),
                               str(local_devices), str(out), *map(str, workdir)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(nproc)]
    try:
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text[-3000:]


def test_two_processes_match_one_process(tmp_path):
    _run(2, 2, tmp_path / "multi.npz")
    _run(1, 4, tmp_path / "single.npz")
    multi, single = np.load(tmp_path / "multi.npz"), np.load(tmp_path / "single.npz")
    assert sorted(multi.files) == sorted(single.files) and len(multi.files) > 4
    for name in single.files:
        # Same global batches and math; only the all-reduce order differs (gloo vs in-process):
        # float32 rounding, far below the 5 SGD updates' size (~1e-2).
        np.testing.assert_allclose(multi[name], single[name], rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.slow  # ~80 s: four processes; test_two_processes_match_one_process and
# test_multihost_cli run two processes by default
def test_the_training_pipeline_across_two_processes(tmp_path):
    """zoo.train.train with a workdir over 2 processes x 2 devices: an LSTM on PTB whose carried
    state spans both processes' rows, evaluation (carrying its own state), text samples and
    checkpoints, as one process x 4 devices computes it."""
    _run(2, 2, tmp_path / "multi.npz", tmp_path / "multi")
    _run(1, 4, tmp_path / "single.npz", tmp_path / "single")
    multi, single = np.load(tmp_path / "multi.npz"), np.load(tmp_path / "single.npz")
    assert "loss" in single.files and "perplexity" in single.files
    for name in single.files:
        np.testing.assert_allclose(multi[name], single[name], rtol=1e-5, atol=1e-6, err_msg=name)
    for run in ("multi", "single"):  # process 0 wrote the samples; the checkpoints are whole
        assert sorted(p.name for p in (tmp_path / run / "samples").iterdir()) == [
            "step_0000003.txt", "step_0000006.txt"]
        assert sorted(p.name for p in (tmp_path / run / "checkpoints").iterdir()) == ["3", "6"]
