"""A barrier for saving a checkpoint across processes that stops waiting, on every process, as
soon as one process's save fails; and the words for why a write failed.

With orbax's own barriers (``jax.distributed``'s), a process whose write failed (a full disk) never
reaches the barrier after the writes while the others wait there, and it waits at the next: every
process hangs until orbax's timeout, 20 minutes a barrier. :class:`zoo.checkpoint.Checkpointer`
hands :class:`SaveBarrier` to orbax in their place (``AsyncOptions.barrier_sync_fn``).
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time

from zoo.core import distributed


def write_failure(error: BaseException) -> str | None:
    """What went wrong, if ``error`` is a failed write: the OS's words for tensorstore's
    ``os_error_code`` (orbax's array writes), or an ``OSError``'s; None for any other error."""
    code = re.search(r"os_error_code='?(\d+)", str(error))
    if code:
        return os.strerror(int(code.group(1)))
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return None


class PeerSaveError(OSError):
    """Another process could not write its part of the checkpoint being saved."""


class SaveBarrier:
    """orbax's barrier function (every process waits until all arrive), kept in
    ``jax.distributed``'s key-value store.

    orbax's finalize thread reaches its last barrier in a ``finally``, so a background thread that
    arrives while raising is a failed save: it records why and does not wait. The processes
    waiting read that and raise :class:`PeerSaveError`. Call :meth:`begin_save` before each save.
    """

    # Shared by all instances: every process saves, and calls orbax's barriers, in the same
    # order, so the n-th save, and the n-th call of a barrier key in it, is the same on each.
    # (Counted per save: a failed save, whose processes left at different barriers, does not
    # set the next save's counts apart.)
    _saves = 0
    _calls: dict[tuple[int, str], int] = {}
    _lock = threading.Lock()

    def __init__(self):
        self.client, self.process, self.count = distributed.coordination()
        self.save_id = 0  # the save in flight (one at a time: Checkpointer.save waits first)
        self.saver = threading.current_thread()  # the thread that calls save, not orbax's

    def begin_save(self) -> None:
        with self._lock:
            self.save_id = SaveBarrier._saves = SaveBarrier._saves + 1
        self.saver = threading.current_thread()

    def _failures(self) -> str:
        return f"zoo/checkpoint/save{self.save_id}/failed/"

    def __call__(self, *, key: str, timeout_ms: int) -> None:
        error = sys.exc_info()[1]
        if error is not None and threading.current_thread() is not self.saver:
            if not isinstance(error, PeerSaveError):
                reason = write_failure(error) or f"{type(error).__name__}: {error}"
                self.client.key_value_set(self._failures() + str(self.process), reason,
                                          allow_overwrite=True)  # it may arrive twice
            return
        with self._lock:
            n = self._calls[self.save_id, key] = self._calls.get((self.save_id, key), -1) + 1
        arrived = f"zoo/barrier/save{self.save_id}/{key}/{n}"
        self.client.key_value_increment(arrived, 1)
        deadline, poll_s = time.monotonic() + timeout_ms / 1000, 0.005
        while int(self.client.key_value_try_get(arrived)) < self.count:
            failed = {int(k.rsplit("/", 1)[1]): why
                      for k, why in self.client.key_value_dir_get(self._failures())}
            if failed:
                first = min(failed)
                raise PeerSaveError(f"process {first} could not write its part: {failed[first]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout_ms / 1000:g} s at {key} for the other "
                                   "processes saving the checkpoint")
            time.sleep(poll_s)
            poll_s = min(2 * poll_s, 0.25)  # a long write is not polled hundreds of times a second
