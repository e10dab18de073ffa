"""PyTorch peers of zoo's models: the same shapes, optimizer and batch, in plain ``torch.nn``.

Each module ``zoo.bench.peers.<family>`` has ``make_peer(model_config, optimizer_config, batch,
device) -> Peer``; ``batch`` is the zoo batch as numpy arrays (images NHWC, as zoo feeds them), and
``optimizer_config`` is one optax-style config for every player or one per player. Importing this
package does not import torch; :func:`make_peer` does.
"""

from __future__ import annotations

import importlib
from typing import Mapping

PEERS = ("autoencoder", "vae", "gan", "lstm", "transformer", "diffusion")


def make_peer(family: str, model_config: Mapping, optimizer_config: Mapping, batch,
              device: str = "cpu"):
    """The peer of zoo family ``family``; ValueError if there is none."""
    if family not in PEERS:
        raise ValueError(f"no PyTorch peer for family {family!r}; peers: {', '.join(PEERS)}")
    module = importlib.import_module(f"zoo.bench.peers.{family}")
    return module.make_peer(dict(model_config), dict(optimizer_config), batch, device)
