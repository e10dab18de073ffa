"""Joining a multi-process run through ``jax.distributed``, from the command line.

``zoo train``, ``zoo eval`` and ``zoo bench`` take ``--coordinator HOST:PORT --num-processes N --process-id I``
(or ``ZOO_COORDINATOR``, ``ZOO_NUM_PROCESSES``, ``ZOO_PROCESS_ID``), or ``--distributed auto`` for
JAX's own cluster detection (SLURM, Open MPI, Kubernetes/GKE, Cloud TPU). :func:`join` runs before
anything touches a device. On CPU the processes' collectives go through gloo, set here. A bad
process id, or a coordinator that does not answer within ``--distributed-timeout`` seconds, is a
``ValueError`` naming it; :func:`check_agreement` refuses processes whose configs or local device
counts differ, on every process, instead of a hang. :func:`leave_after_error` ends a process whose
run failed while others still run, without waiting for them at JAX's shutdown barrier
(:func:`mark_finished` tells it which have finished).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
from typing import Mapping

ENV = {"coordinator": "ZOO_COORDINATOR", "num_processes": "ZOO_NUM_PROCESSES",
       "process_id": "ZOO_PROCESS_ID"}
DEFAULT_TIMEOUT_S = 120


@dataclasses.dataclass(frozen=True)
class Cluster:
    """How this process joins: explicitly (all three fields) or ``auto`` (JAX detects them)."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False
    timeout_s: int = DEFAULT_TIMEOUT_S


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of :class:`Cluster` on a subcommand's parser."""
    g = parser.add_argument_group("more than one process (jax.distributed)")
    g.add_argument("--coordinator", default=None,
                   help=f"HOST:PORT of process 0 (or ${ENV['coordinator']})")
    g.add_argument("--num-processes", type=int, default=None,
                   help=f"how many processes take part (or ${ENV['num_processes']})")
    g.add_argument("--process-id", type=int, default=None,
                   help=f"this process's index, 0 .. N-1 (or ${ENV['process_id']})")
    g.add_argument("--distributed", choices=("auto", "off"), default=None,
                   help="auto: let JAX detect the cluster (SLURM, Open MPI, Kubernetes, Cloud TPU)")
    g.add_argument("--distributed-timeout", type=int, default=DEFAULT_TIMEOUT_S,
                   help=f"seconds to wait for the coordinator (default {DEFAULT_TIMEOUT_S})")


def _int(value, what: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{what}={value!r} must be an integer") from None


def cluster_from(args: argparse.Namespace, environ: Mapping[str, str] = os.environ
                 ) -> Cluster | None:
    """The options (falling back on the environment), checked; None: a single process."""
    if getattr(args, "distributed", None) == "off":
        return None
    timeout = getattr(args, "distributed_timeout", None)
    if timeout is not None and not timeout > 0:
        raise ValueError(f"--distributed-timeout {timeout} must be > 0 seconds")
    if getattr(args, "distributed", None) == "auto":
        return Cluster(auto=True, timeout_s=args.distributed_timeout)
    coordinator = args.coordinator or environ.get(ENV["coordinator"]) or None
    n = args.num_processes if args.num_processes is not None else _int(
        environ.get(ENV["num_processes"]), ENV["num_processes"])
    i = args.process_id if args.process_id is not None else _int(
        environ.get(ENV["process_id"]), ENV["process_id"])
    given = {"--coordinator": coordinator, "--num-processes": n, "--process-id": i}
    if all(v is None for v in given.values()):
        return None
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise ValueError(f"a multi-process run needs --coordinator, --num-processes and "
                         f"--process-id (or their ZOO_ variables); missing {', '.join(missing)}")
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--process-id {i} is not one of the {n} processes (0 to {n - 1})")
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--coordinator {coordinator!r} must be HOST:PORT, the port a number "
                         "from 1 to 65535")
    return Cluster(coordinator, n, i, timeout_s=args.distributed_timeout)


def join(cluster: Cluster | None) -> None:
    """Initialises ``jax.distributed`` for ``cluster`` (nothing for None or one process)."""
    if cluster is None or (not cluster.auto and cluster.num_processes == 1):
        return
    if not cluster.auto and cluster.process_id != 0:
        _wait_for_coordinator(cluster.coordinator, cluster.timeout_s)
    import jax
    # CPU processes exchange their collectives over gloo (jax's CPU default has none).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        if cluster.auto:
            jax.distributed.initialize(initialization_timeout=cluster.timeout_s)
        else:
            jax.distributed.initialize(cluster.coordinator, num_processes=cluster.num_processes,
                                       process_id=cluster.process_id,
                                       initialization_timeout=cluster.timeout_s)
    except Exception as e:  # noqa: BLE001 -- jax's errors are several lines of RPC status
        where = ("the cluster JAX detects" if cluster.auto else
                 f"{cluster.coordinator} as process {cluster.process_id} of "
                 f"{cluster.num_processes}")
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        hint = ("JAX found no cluster it knows (SLURM, Open MPI, Kubernetes, Cloud TPU); give "
                "--coordinator, --num-processes and --process-id" if cluster.auto else
                "check that process 0 runs at that address and every process was given the same "
                "--num-processes")
        raise ValueError(f"could not join the run at {where} within {cluster.timeout_s} s "
                         f"({first}); {hint}") from None


def _wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Waits until something listens at ``address``: JAX's own connect ends the process (a fatal
    log, no exception) when the coordinator never answers, so the wait is done here first."""
    import socket
    import time
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1.0).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise ValueError(f"no coordinator answers at {address} within {timeout_s:g} s: "
                                 "start process 0 (it serves that address) or check "
                                 "--coordinator") from None
            time.sleep(0.25)


def check_agreement(config_json: str) -> None:
    """Refuses processes that have different local device counts or run different configs (a
    global batch split unevenly, or two models averaged), on every process."""
    import collections

    import jax
    import numpy as np
    if jax.process_count() == 1:
        return
    # Every process sees the global device list: no message needed to compare the counts.
    per_process = collections.Counter(d.process_index for d in jax.devices())
    counts = [per_process[i] for i in range(jax.process_count())]
    if len(set(counts)) > 1:
        raise ValueError(f"the processes have different numbers of local devices ({counts}); "
                         "give each the same")
    from jax.experimental import multihost_utils
    digest = int(hashlib.sha256(config_json.encode()).hexdigest()[:8], 16)
    every = np.asarray(multihost_utils.process_allgather(np.array(digest, np.int64))).ravel()
    if len(set(every.tolist())) > 1:
        differ = [i for i, d in enumerate(every) if d != every[0]]
        raise ValueError(f"process(es) {differ} run another config than process 0: give every "
                         "process the same config file and --config overrides")


def coordination():
    """``(client, process_id, num_processes)``: jax.distributed's client (its key-value store and
    barriers) and this process's place; None outside a multi-process run."""
    from jax._src import distributed as jax_distributed  # its client: no public handle
    state = jax_distributed.global_state
    if state.client is None or state.num_processes in (None, 1):
        return None
    return state.client, state.process_id, state.num_processes


_ENDED = "zoo/ended/"  # per process: "ok" (its run finished), "error", or "left" (exited at once)


def mark_finished() -> None:
    """Records that this process's run finished (see :func:`leave_after_error`)."""
    if (joined := coordination()) is not None:
        client, me, _ = joined
        client.key_value_set(_ENDED + str(me), "ok", allow_overwrite=True)


def leave_after_error(code: int, grace_s: float = 10.0) -> None:
    """After reporting an error that may be this process's alone, ends it at once (``os._exit``)
    if some other process of the run is still running; returns otherwise (nothing with one
    process).

    A normal exit waits at ``jax.distributed``'s shutdown barrier for every process, up to 5
    minutes: with the others running (waiting for this one in their next collective) all hang,
    then JAX aborts them. Leaving without it, JAX ends the others within seconds ("another task
    died"). This process first waits up to ``grace_s`` for the others to end too: processes that
    fail together (configs that disagree), or that had finished, then all pass the barrier and
    exit with their own status. One that left at once makes the rest leave too (the barrier
    would wait for it).
    """
    import sys
    import time
    if (joined := coordination()) is None:
        return
    client, me, count = joined
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        client.key_value_set(_ENDED + str(me), "error", allow_overwrite=True)
        deadline = time.monotonic() + grace_s
        while len(ended := dict(client.key_value_dir_get(_ENDED))) < count:
            if time.monotonic() > deadline or "left" in ended.values():
                break
            time.sleep(0.05)
        if len(ended) == count and "left" not in ended.values():
            return
        client.key_value_set(_ENDED + str(me), "left", allow_overwrite=True)
    except Exception:  # noqa: BLE001 -- process 0, which serves the key-value store, is gone
        pass
    os._exit(code)
