"""PyTorch peer of ``zoo.models.vae`` (MLP, Bernoulli, unconditional): negative ELBO, one sample."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from zoo.bench.peers.common import Peer, to_tensor
from zoo.models import vae


def _mlp(sizes):
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)


class MLPVAE(nn.Module):
    def __init__(self, image_shape, hidden, latent_dim):
        super().__init__()
        d = int(np.prod(image_shape))
        self.enc = _mlp([d, *hidden])
        self.mean = nn.Linear(hidden[-1], latent_dim)
        self.logvar = nn.Linear(hidden[-1], latent_dim)
        rev = list(reversed(hidden))
        self.dec = _mlp([latent_dim, *rev])
        self.out = nn.Linear(rev[-1], d)

    def forward(self, x, u):
        """x: (B, D) in [0, 1]; u: uniform noise for binarisation. Returns the mean -ELBO."""
        x = (u < x).to(x.dtype)                          # dynamic binarisation
        h = self.enc(x)
        mean, logvar = self.mean(h), self.logvar(h)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        logits = self.out(self.dec(z))
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
        kl = 0.5 * (torch.exp(logvar) + mean ** 2 - 1.0 - logvar).sum(1)
        return (recon + kl).mean()


class VAEPeer(Peer):
    def __init__(self, config, optimizer_config, batch, device):
        zoo_vae = vae.make_model(config)  # its fields, the config's keys over their defaults
        if zoo_vae.arch != "mlp" or zoo_vae.num_classes or zoo_vae.activation != "relu":
            raise ValueError("the VAE peer is the unconditional MLP VAE with ReLU layers")
        if zoo_vae.likelihood != "bernoulli" or not vae.binarises(config):
            raise ValueError("the VAE peer has a Bernoulli likelihood on binarised images")
        model = MLPVAE(tuple(zoo_vae.image_shape), tuple(zoo_vae.hidden), zoo_vae.latent_dim)
        super().__init__({"model": model}, optimizer_config, device)
        x = batch["image"]
        self.x = to_tensor(np.reshape(x, (x.shape[0], -1)), device)

    def step(self):
        loss = self.fn["model"](self.x, torch.rand_like(self.x))
        self.update("model", loss)
        return loss


def make_peer(config: Mapping, optimizer_config: Mapping, batch: Mapping,
              device: str = "cpu") -> Peer:
    """The PyTorch MLP VAE of zoo's model ``config``, training on ``batch``
    (:func:`zoo.bench.peers.make_peer`)."""
    return VAEPeer(config, optimizer_config, batch, device)
