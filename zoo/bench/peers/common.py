"""What every peer shares: a train step over one or more players, each with its own Adam."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

from zoo.core import settings


def make_optimizer(params, config: Mapping) -> torch.optim.Optimizer:
    """Adam/AdamW as zoo's optax config asks, its defaults zoo's (``OptimizerSettings``), with
    the fastest torch kernel that exists (fused)."""
    opt = settings.parse(settings.OptimizerSettings, config, "optimizer")
    kwargs = dict(lr=opt.learning_rate, betas=(opt.b1, opt.b2), eps=opt.eps)
    if opt.name == "adam":
        cls = torch.optim.Adam
    elif opt.name == "adamw":
        cls, kwargs["weight_decay"] = torch.optim.AdamW, opt.weight_decay
    else:
        raise ValueError(f"peers implement adam and adamw; got optimizer {opt.name!r}")
    params = list(params)
    try:
        return cls(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return cls(params, foreach=True, **kwargs)


def player_config(optimizer_config: Mapping, player: str) -> Mapping:
    """``player``'s optimizer config: ``optimizer_config[player]`` when it is given per player,
    else ``optimizer_config`` itself (one config for every player)."""
    own = optimizer_config.get(player)
    return own if isinstance(own, Mapping) else optimizer_config


def to_tensor(x, device, dtype=None) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    return t if dtype is None else t.to(dtype)


def param_count(module: nn.Module) -> int:
    """Trainable parameters (frozen ones, like the LSTM peer's zero ``bias_hh``, are not counted)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class Peer:
    """One training step of a torch model: ``loss = peer.step()``.

    Subclasses set ``self.players`` (name -> ``nn.Module``, the same players as the zoo family)
    and implement ``step``; ``optimizer_config`` is one config for every player or a mapping of
    player to config. ``compile()`` swaps each player's forward for ``torch.compile`` 's.
    """

    def __init__(self, players: dict[str, nn.Module], optimizer_config: Mapping, device: str):
        self.device = device
        self.players = {k: m.to(device) for k, m in players.items()}
        self.optimizers = {k: make_optimizer(m.parameters(), player_config(optimizer_config, k))
                           for k, m in self.players.items()}
        self.fn = dict(self.players)  # what step() calls: the module or its compiled form
        self.compiled = False

    def compile(self, **kwargs) -> "Peer":
        self.fn = {k: torch.compile(m, **kwargs) for k, m in self.players.items()}
        self.compiled = True
        return self

    def param_count(self) -> dict[str, int]:
        return {k: param_count(m) for k, m in self.players.items()}

    def update(self, player: str, loss: torch.Tensor) -> None:
        opt = self.optimizers[player]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def step(self) -> torch.Tensor:
        raise NotImplementedError

    def sync(self) -> None:
        if str(self.device).startswith("cuda"):
            torch.cuda.synchronize()
