"""The C allocator setting zoo's commands run with: freed memory stays in the process for reuse.

glibc's malloc serves each block above its mmap threshold (128 KiB, rising with use to at most
32 MiB) with a fresh ``mmap`` and unmaps it on ``free``. XLA:CPU allocates a step's temporaries
anew at every execution, so a step whose buffers exceed 32 MiB gets fresh pages each time, and
the kernel zero-fills them one page fault at a time: the quick suite's LSTM and transformer (56-59
MB of temporaries) took 15,000-20,000 page faults a step. With mmap off, trimming off and one
arena, freed blocks stay in the heap and the next step reuses them, as PyTorch's caching
allocator does on a GPU: zoo's LSTM step got 1.12x (quick suite) and 1.18x (full suite) faster
(``benchmarks/README.md``, "The allocator"). The cost: the process keeps its peak heap until it
exits (a training run's peak recurs every step).

``zoo`` and ``zoo bench`` call :func:`keep_freed_memory` at start, so the PyTorch peers, in the
bench's process, run with it too; ``ZOO_MALLOC_DEFAULTS=0`` leaves glibc's defaults. Importing zoo
as a library changes nothing: a project that runs zoo's steps in its own process can call it.
"""

from __future__ import annotations

import ctypes
import os
from typing import Mapping

OPT_OUT_ENV = "ZOO_MALLOC_DEFAULTS"
# mallopt(3) parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
applied = False  # whether this process runs with the setting (benchmark records say so)


def keep_freed_memory(environ: Mapping[str, str] = os.environ) -> bool:
    """Turns off glibc's mmap for large blocks, its trimming and its per-thread arenas
    (``mallopt``), so freed memory is reused instead of being unmapped and faulted in again; call
    it before threads start. Returns False where the C library has no ``mallopt`` (not glibc:
    macOS, musl) or ``ZOO_MALLOC_DEFAULTS=0``.

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
    # of -1 never trims; one arena, because a thread's own arena grows in heaps of at most 64 MiB
    # and maps anything larger afresh (the full transformer's 1.1 GB a step). Arenas that threads
    # already made stay in use. Each call returns 1 on success; all are tried.
    results = [mallopt(param, value) for param, value in
               ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1), (M_ARENA_MAX, 1))]
    applied = all(r == 1 for r in results)
    return applied
