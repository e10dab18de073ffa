"""PyTorch peers of zoo's models: the same shapes, optimizer and batch, in plain ``torch.nn``.

Each module ``benchmarks.peers.<family>`` has ``make_peer(model_config, optimizer_config, batch,
device) -> Peer``; ``batch`` is the zoo batch as numpy arrays (images NHWC, as zoo feeds them).
"""

from __future__ import annotations

import importlib

PEERS = ("autoencoder", "vae", "gan", "lstm", "transformer")


def make_peer(family: str, model_config, optimizer_config, batch, device: str = "cpu"):
    """The peer of zoo family ``family``; ValueError if there is none."""
    if family not in PEERS:
        raise ValueError(f"no PyTorch peer for family {family!r}; peers: {', '.join(PEERS)}")
    module = importlib.import_module(f"benchmarks.peers.{family}")
    return module.make_peer(dict(model_config), dict(optimizer_config), batch, device)
