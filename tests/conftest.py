"""Test setup: 8 host CPU devices (set before JAX starts) and offline datasets from ../shared/data."""

import os

# 8 CPU devices are 8 threads on 2 cores: under load one can reach a collective more than XLA's
# default 40 s after the others, which aborts the process. Wait up to 10 minutes instead.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8"
                           " --xla_cpu_collective_call_terminate_timeout_seconds=600"
                           " --xla_cpu_collective_call_warn_stuck_timeout_seconds=120").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Tests build the same small models many times (each build is a new jit, so a new compile) and
# start zoo in subprocesses: a persistent compilation cache for this session (and its children)
# compiles each program once. Fresh per session, so no run depends on another's leftovers;
# compiled.CompileCounter counts cache hits as compiles (test_core), so "compiles once" holds.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="zoo-tests-xla-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import fcntl  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ZOO_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: raw MNIST, Fashion-MNIST, tiny-shakespeare, PTB and a TFDS download cache."""
    if not (SHARED_DATA / "tfds_downloads").is_dir():
        pytest.fail(f"offline datasets not found at {SHARED_DATA}; set ZOO_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tfds_dirs(shared_data, tmp_path_factory, worker_id) -> dict[str, str]:
    """TFDS data_dir (fresh, prepared once per session) and the offline download cache.

    Under pytest-xdist every worker is its own session: they share one data_dir in the run's
    base folder, so each dataset is prepared once, not once per worker (zoo.data's lock lets
    one prepare while the others wait)."""
    if worker_id == "master":
        data_dir = tmp_path_factory.mktemp("tfds")
    else:
        data_dir = tmp_path_factory.getbasetemp().parent / "tfds"
        data_dir.mkdir(exist_ok=True)
    return {"tfds_data_dir": str(data_dir), "download_dir": str(shared_data / "tfds_downloads")}


@pytest.fixture(scope="session")
def built_once(tmp_path_factory, worker_id) -> Callable[[str, Callable[[Path], None]], Path]:
    """``built_once(name, build)``: the folder ``build(path)`` fills, built once per test run.

    Under pytest-xdist every worker is its own session, so a module fixture is built again on
    each worker that runs one of its tests (a diffusion run: ~20 s each time). Here the first
    worker to ask builds it under a lock while the others wait, then all reuse it: tests must
    only read it."""
    base = tmp_path_factory.getbasetemp()
    root = (base if worker_id == "master" else base.parent) / "built_once"
    root.mkdir(exist_ok=True)

    def get(name: str, build: Callable[[Path], None]) -> Path:
        path, done = root / name, root / f"{name}.done"
        with open(root / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not done.exists():
                shutil.rmtree(path, ignore_errors=True)  # a build that failed on another worker
                build(path)
                done.touch()
        return path

    return get


@pytest.fixture(scope="session")
def mnist(tfds_dirs):
    """Real MNIST as numpy through TFDS, prepared offline: {"train": arrays, "test": arrays}."""
    from zoo import data
    return {split: data.load_tfds("mnist", split, data_dir=tfds_dirs["tfds_data_dir"],
                                  download_dir=tfds_dirs["download_dir"])
            for split in ("train", "test")}
