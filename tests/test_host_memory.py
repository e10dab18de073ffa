"""zoo.core.host_memory: freed memory stays in the process, so a step's large buffers are not
page-faulted in again at every step, whether malloc'd by hand or by a jitted step."""

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


# A jitted gradient whose temporaries (tanh(x @ w), 64 MiB, kept for the backward pass) reach a
# worker thread's largest heap: XLA:CPU allocates them at every call. Prints whether the setting
# is on, the temporaries' bytes and the page faults of each of five calls after three.
STEP_PROBE = """
import resource, sys
from zoo.core import host_memory
kept = host_memory.keep_freed_memory() if sys.argv[1] == "keep" else False
import jax, jax.numpy as jnp
x, w = jnp.ones((2048, 256)), jnp.full((256, 8192), 0.01)
step = jax.jit(jax.grad(lambda w, x: jnp.tanh(x @ w).sum()))
temp = step.lower(w, x).compile().memory_analysis().temp_size_in_bytes
faults = []
for _ in range(8):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step(w, x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(kept, temp, *faults[3:])
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_a_jitted_steps_temporaries_are_not_faulted_in_again_at_every_call():
    # Both halves of the setting count: without synchronous dispatch (the step's buffers then
    # come from a worker thread's arena), or without mallopt, calls took 16,000-23,000 faults
    # each (the ninth and tenth sessions' runs).
    base = {k: v for k, v in os.environ.items() if k not in ("ZOO_MALLOC_DEFAULTS", "XLA_FLAGS")}
    fewest = {}
    for mode in ("default", "keep"):
        done = subprocess.run([sys.executable, "-c", STEP_PROBE, mode], env=base, text=True,
                              capture_output=True, check=True)
        kept, temp, *faults = done.stdout.split()
        assert kept == str(mode == "keep") and int(temp) >= 64 << 20
        fewest[mode] = min(int(f) for f in faults)
    # 64 MiB is 16,384 pages of 4 KiB (32 huge pages where the kernel backs it with them): by
    # default the buffers are mapped afresh at every call. Kept, a call reuses them; now and then
    # one still faults thousands of pages (strace saw a heap grow again, a worker thread's among
    # them), so the test takes each mode's fewest.
    assert 4 * fewest["keep"] < fewest["default"] and fewest["default"] > 16, fewest


def test_cpu_steps_run_on_the_calling_thread_only_on_one_cpu_device():
    # With several CPU devices synchronous dispatch made the LSTM's step 1.1-1.2x slower.
    from zoo.core import host_memory
    assert host_memory.cpu_device_count({"XLA_FLAGS": ""}) == 1
    assert host_memory.cpu_device_count(
        {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --x=1"}) == 8
    probe = ("import sys, jax; from zoo.core import host_memory; host_memory.keep_freed_memory();"
             "print(host_memory.cpu_async_dispatch(), len(jax.devices()))")
    base = {k: v for k, v in os.environ.items() if k not in ("ZOO_MALLOC_DEFAULTS", "XLA_FLAGS")}
    for flags, want in (("", "False 1"), ("--xla_force_host_platform_device_count=2", "True 2")):
        done = subprocess.run([sys.executable, "-c", probe], env={**base, "XLA_FLAGS": flags},
                              text=True, capture_output=True, check=True)
        assert done.stdout.split() == want.split(), (flags, done.stdout, done.stderr[-500:])
