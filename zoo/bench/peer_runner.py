"""PyTorch's side of a case: its peer (:mod:`zoo.bench.peers`) on one device, eager or compiled.

torch is imported when a :class:`PeerRunner` is built, never before (it is an optional extra:
``pip install 'zoo[bench]'``).
"""

from __future__ import annotations

import time
from typing import Sequence

from zoo.bench.catalog import Case
from zoo.bench.hardware import cores
from zoo.bench.timing import Chrono


class PeerRunner:
    """The case's PyTorch peer on one device; ``mode`` is ``eager`` or ``compile``.

    ``players`` are the zoo family's players: each peer player gets the optimizer its zoo player
    trains with (``case.optimizer_for``).
    """

    def __init__(self, case: Case, host_batch: dict, mode: str = "eager", device: str = "cpu",
                 threads: int | str | None = None, players: Sequence[str] = ()):
        import torch
        from zoo.bench import peers
        torch.manual_seed(0)
        if str(device).startswith("cuda"):
            # JAX's default float32 matmul/conv precision on NVIDIA GPUs is TF32; match it.
            torch.set_float32_matmul_precision("high")
            torch.backends.cudnn.allow_tf32 = True
        self.mode = mode
        optimizers = ({p: case.optimizer_for(p) for p in players} if players
                      else case.optimizer)
        self.peer = peers.make_peer(case.peer, case.model_config(), optimizers, host_batch,
                                    device)
        self.param_count = sum(self.peer.param_count().values())
        self.compile_s = None
        self.last = None
        if mode == "compile":
            self.peer.compile()
            t0 = time.perf_counter()
            self.step()  # torch.compile compiles on the first call
            self.compile_s = time.perf_counter() - t0
        self.threads = self._pick_threads(threads) if device == "cpu" else torch.get_num_threads()

    def _pick_threads(self, threads) -> int:
        """CPU threads for this peer: a number, or ``auto``: the faster of all cores and one.

        PyTorch's OpenMP parallel regions wait at a barrier for every thread; on a machine whose
        cores are busy with other work, a descheduled thread stalls each of the step's many small
        ops, and one thread can be 10x faster than two. ``auto`` times a few steps each way.
        """
        import torch
        if threads != "auto":
            n = int(threads or cores())
            torch.set_num_threads(n)
            return n
        best = None
        for n in sorted({cores(), 1}, reverse=True):
            torch.set_num_threads(n)
            self.peer.step()
            chrono = Chrono()
            chrono.time(self.step, 3)
            t = chrono.stats()["median"]
            if best is None or t < best[1]:
                best = (n, t)
        torch.set_num_threads(best[0])
        return best[0]

    def step(self) -> None:
        import torch
        if getattr(self, "threads", None) and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        self.last = self.peer.step()
        self.peer.sync()

    def loss(self) -> float | None:
        return None if self.last is None else float(self.last.detach().float().cpu())

    def memory(self) -> dict | None:
        """Peak CUDA memory the peer allocated (None on CPU)."""
        import torch
        if str(self.peer.device).startswith("cuda"):
            return {"peak_bytes_in_use": int(torch.cuda.max_memory_allocated())}
        return None
