"""PyTorch peer of ``zoo.models.autoencoder`` (MLP): Dense+ReLU encoder, linear code, mirror decoder."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from zoo.bench.peers.common import Peer, to_tensor
from zoo.models import autoencoder


class MLPAutoencoder(nn.Module):
    def __init__(self, image_shape, hidden, latent_dim):
        super().__init__()
        d = int(np.prod(image_shape))
        enc, prev = [], d
        for h in hidden:
            enc += [nn.Linear(prev, h), nn.ReLU()]
            prev = h
        enc.append(nn.Linear(prev, latent_dim))
        dec, prev = [], latent_dim
        for h in reversed(hidden):
            dec += [nn.Linear(prev, h), nn.ReLU()]
            prev = h
        dec.append(nn.Linear(prev, d))
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)

    def forward(self, x):  # x: (B, D) flat
        return self.decoder(self.encoder(x))


def reconstruction_loss(logits, x, kind):
    if kind == "bernoulli":
        per_pixel = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    elif kind == "mse":
        per_pixel = (torch.sigmoid(logits) - x) ** 2
    else:
        raise ValueError(f"unknown reconstruction loss {kind!r}")
    return per_pixel.sum(dim=1).mean()


class AutoencoderPeer(Peer):
    def __init__(self, config, optimizer_config, batch, device):
        zoo_model = autoencoder.make_model(config)  # its fields: the config's over the defaults
        if not isinstance(zoo_model, autoencoder.MLPAutoencoder):
            raise ValueError("the autoencoder peer is the MLP autoencoder (arch='mlp')")
        model = MLPAutoencoder(tuple(zoo_model.image_shape), tuple(zoo_model.hidden),
                               zoo_model.latent_dim)
        super().__init__({"model": model}, optimizer_config, device)
        x = batch["image"]
        self.x = to_tensor(np.reshape(x, (x.shape[0], -1)), device)
        self.kind = autoencoder.loss_kind(config)

    def step(self):
        loss = reconstruction_loss(self.fn["model"](self.x), self.x, self.kind)
        self.update("model", loss)
        return loss


def make_peer(config: Mapping, optimizer_config: Mapping, batch: Mapping,
              device: str = "cpu") -> Peer:
    """The PyTorch MLP autoencoder of zoo's model ``config``, training on ``batch``
    (:func:`zoo.bench.peers.make_peer`)."""
    return AutoencoderPeer(config, optimizer_config, batch, device)
