"""The host memory setting zoo's commands run with: freed memory stays in the process for reuse.

glibc's malloc serves each block above its mmap threshold (128 KiB, rising with use to at most
32 MiB) with a fresh ``mmap`` and unmaps it on ``free``. XLA:CPU allocates a step's temporaries
anew at every execution, so a step whose buffers exceed 32 MiB gets fresh pages each time, and
the kernel zero-fills them one page fault at a time: the quick suite's LSTM and transformer (56-59
MB of temporaries) took 15,000-20,000 page faults a step. With mmap and trimming off, freed blocks
stay in the heap and the next step reuses them, as PyTorch's caching allocator does on a GPU:
zoo's LSTM step got 1.12x (quick suite) and 1.18x (full suite) faster with the first form of this
setting, which also limited glibc to one arena (``benchmarks/README.md``, "The allocator"). The
cost: the process keeps its peak heap until it exits (a training run's peak
recurs every step).

A thread other than the main one allocates from an arena of its own, which grows in heaps of at
most 64 MiB and maps anything larger afresh. JAX runs a CPU step on a worker thread unless its
dispatch is synchronous, so the full transformer's 1.1 GB of temporaries would still be faulted
in every step. Hence, on a single CPU device, steps run on the thread that calls them: their
buffers come from the main heap, which grows without that limit. The first form limited glibc to
one arena instead; every thread then shared one arena's lock (4-10x the voluntary context
switches), and small steps ran 1.08-1.32x slower (``benchmarks/README.md``). With several CPU
devices (forced, as tests and the bench's sweeps do) dispatch stays asynchronous: there the
synchronous form made the LSTM's step 1.1-1.2x slower than per-thread arenas alone.

``zoo`` and ``zoo bench`` call :func:`keep_freed_memory` at start, so the PyTorch peers, in the
bench's process, run with it too; ``ZOO_MALLOC_DEFAULTS=0`` leaves glibc's and JAX's defaults.
Importing zoo as a library changes nothing: a project that runs zoo's steps in its own process can
call it.
"""

from __future__ import annotations

import ctypes
import os
import re
from typing import Mapping

import jax

OPT_OUT_ENV = "ZOO_MALLOC_DEFAULTS"
# mallopt(3) parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
ASYNC_DISPATCH = "jax_cpu_enable_async_dispatch"  # JAX's option; True is its default
applied = False  # whether this process runs with the setting (benchmark records say so)


def keep_freed_memory(environ: Mapping[str, str] = os.environ) -> bool:
    """Turns off glibc's mmap for large blocks and its trimming (``mallopt``), and runs CPU steps
    on the calling thread (JAX's synchronous CPU dispatch), so a step's freed buffers are reused
    instead of being unmapped and faulted in again. Call it before JAX starts its backend.
    Returns False, changing nothing, where the C library has no ``mallopt`` (not glibc: macOS,
    musl) or ``ZOO_MALLOC_DEFAULTS=0``.

    Example::

        from zoo.core import host_memory
        host_memory.keep_freed_memory()  # once, early; then build and run the train step
    """
    global applied
    if environ.get(OPT_OUT_ENV, "1") == "0" or os.name != "posix":
        return False
    try:  # the process's own symbols: libc's where it is linked in
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no mallopt: not glibc
        return False
    # No mmap for large blocks (glibc still maps one when the heap cannot grow); a trim threshold
    # of -1 never trims. Each call returns 1 on success; both are tried.
    results = [mallopt(param, value) for param, value in ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))]
    applied = all(r == 1 for r in results)
    if applied and cpu_device_count(environ) == 1:  # the main heap, not a thread's arena
        try:
            jax.config.update(ASYNC_DISPATCH, False)
        except AttributeError:  # a JAX without the option: its own dispatch
            pass
    return applied


def cpu_async_dispatch() -> bool | None:
    """Whether JAX dispatches CPU steps to a worker thread (None: this JAX has no such option)."""
    try:
        return bool(jax.config.read(ASYNC_DISPATCH))
    except AttributeError:
        return None


def cpu_device_count(environ: Mapping[str, str] = os.environ) -> int:
    """The devices JAX's CPU platform will have: ``jax_num_cpu_devices``, else XLA's
    ``--xla_force_host_platform_device_count``, else 1."""
    configured = getattr(jax.config, "jax_num_cpu_devices", -1)  # -1: not set (or no option)
    if configured > 0:
        return configured
    forced = re.findall(r"--xla_force_host_platform_device_count=(\d+)",
                        environ.get("XLA_FLAGS", ""))
    return int(forced[-1]) if forced else 1
