"""The machine: peak FLOP/s by device kind, a measured matmul peak, and environment facts.

Nothing here imports torch at module level; :func:`environment` asks for its version if it is
installed.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

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


def cores() -> int:
    """Cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def limit_cores(n: int) -> None:
    """Pins this process (and the workers it starts) to its first ``n`` cores.

    Both XLA and PyTorch then run on those cores only. (XLA_FLAGS cannot do this: measured here,
    ``--xla_cpu_multi_thread_eigen=false`` leaves XLA's matmuls on both cores.)
    """
    if not hasattr(os, "sched_setaffinity"):
        print("zoo bench: warning: --threads needs sched_setaffinity (Linux); ignored",
              file=sys.stderr)
        return
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:n])


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> float | None:
    """The 1-minute load average, where the OS has one."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def device_memory_stats(device) -> dict | None:
    """Peak and current bytes in use on ``device``, where its backend reports them."""
    try:
        stats = device.memory_stats()
    except Exception:  # CPU devices have none on some jaxlib versions
        return None
    if not stats:
        return None
    keep = ("peak_bytes_in_use", "bytes_in_use", "bytes_limit", "largest_alloc_size")
    return {k: int(stats[k]) for k in keep if k in stats}


def environment() -> dict[str, Any]:
    """Versions, CPU, devices and load: the ``meta`` of a benchmark result."""
    import flax
    import jax
    import jaxlib
    import optax

    from zoo.core import host_memory
    env = {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
           "optax": optax.__version__, "numpy": np.__version__,
           "python": platform.python_version(), "machine": platform.machine(),
           "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "cores_used": cores(),
           "xla_flags": os.environ.get("XLA_FLAGS", ""),
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
           "malloc_keeps_freed_memory": host_memory.applied,
           "cpu_async_dispatch": host_memory.cpu_async_dispatch(),
           "load_average_1m": load_average()}
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
