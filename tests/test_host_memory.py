"""zoo.core.host_memory: freed memory stays in the process, so a step's large buffers are not
page-faulted in again at every step."""

import os
import platform
import subprocess
import sys

import pytest

# Allocates and fills a 64 MiB block (above glibc's largest mmap threshold, 32 MiB) through the C
# allocator five times; prints the page faults of the last three.
PROBE = """
import ctypes, resource, sys
from zoo.core import host_memory
kept = host_memory.keep_freed_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def touch():
    p = libc.malloc(64 << 20)
    ctypes.memset(p, 1, 64 << 20)
    libc.free(p)
touch(); touch()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    touch()
print(kept, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) // 3)
"""


def _faults(mode: str, **env) -> tuple[str, int]:
    base = {k: v for k, v in os.environ.items() if k != "ZOO_MALLOC_DEFAULTS"}
    done = subprocess.run([sys.executable, "-c", PROBE, mode], env={**base, **env},
                          text=True, capture_output=True, check=True)
    kept, faults = done.stdout.split()
    return kept, int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_stops_refaulting_a_large_block():
    default_kept, default_faults = _faults("default")
    kept, kept_faults = _faults("keep")
    assert (default_kept, kept) == ("False", "True")
    # 64 MiB is 16,384 pages of 4 KiB (32 huge pages where the kernel backs it with them): glibc
    # maps the block afresh on every malloc; kept, the heap's pages are reused without a fault.
    assert kept_faults < 16 < default_faults
    assert _faults("keep", ZOO_MALLOC_DEFAULTS="0")[0] == "False"
