"""PyTorch peer of ``zoo.models.gan`` (DCGAN and MLP GAN, unconditional, non-saturating loss).

One step = the zoo objective: a discriminator update on real images and detached fakes (two D
calls, each with its own BatchNorm batch statistics, as zoo does), then a generator update against
the updated discriminator. The discriminator's parameters are frozen during the generator update
(no weight gradients are computed for it, as under ``jax.grad`` with respect to G only).
Images are NCHW here (PyTorch's layout); zoo feeds NHWC.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from zoo.bench.peers.common import Peer, to_tensor
from zoo.models import gan
from zoo.models.gan import dcgan_base

BN = dict(momentum=0.1, eps=1e-5)  # torch momentum 0.1 == flax momentum 0.9


class DCGANGenerator(nn.Module):
    def __init__(self, image_shape, features, latent_dim):
        super().__init__()
        base, n = dcgan_base(image_shape[0])
        width = features * 2 ** (n - 1)
        self.base, self.width = base, width
        self.project = nn.Linear(latent_dim, base * base * width, bias=False)
        self.bn_project = nn.BatchNorm2d(width, **BN)
        layers = []
        for _ in range(n - 1):
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(width // 2, **BN), nn.ReLU()]
            width //= 2
        layers.append(nn.ConvTranspose2d(width, image_shape[-1], 4, 2, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, z):
        h = self.project(z).view(z.shape[0], self.width, self.base, self.base)
        return torch.tanh(self.body(F.relu(self.bn_project(h))))


class DCGANDiscriminator(nn.Module):
    def __init__(self, image_shape, features):
        super().__init__()
        base, n = dcgan_base(image_shape[0])
        layers, cin = [], image_shape[-1]
        for i in range(n):
            layers.append(nn.Conv2d(cin, features * 2 ** i, 4, 2, 1, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(features * 2 ** i, **BN))
            layers.append(nn.LeakyReLU(0.2))
            cin = features * 2 ** i
        self.body = nn.Sequential(*layers)
        self.logit = nn.Linear(cin * base * base, 1)

    def forward(self, x):
        return self.logit(self.body(x).flatten(1))[:, 0]


class MLPGenerator(nn.Module):
    def __init__(self, image_shape, hidden, latent_dim):
        super().__init__()
        layers, prev = [], latent_dim
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.LeakyReLU(0.2)]
            prev = h
        layers.append(nn.Linear(prev, int(np.prod(image_shape))))
        self.body = nn.Sequential(*layers)
        self.image_shape = image_shape

    def forward(self, z):
        c = self.image_shape[-1]
        return torch.tanh(self.body(z)).view(z.shape[0], c, *self.image_shape[:2])


class MLPDiscriminator(nn.Module):
    def __init__(self, image_shape, hidden):
        super().__init__()
        layers, prev = [], int(np.prod(image_shape))
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.LeakyReLU(0.2)]
            prev = h
        layers.append(nn.Linear(prev, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x.flatten(1))[:, 0]


class GANPeer(Peer):
    def __init__(self, config, optimizer_config, batch, device):
        # zoo's players and objective settings: the config's keys over their defaults.
        zoo_gen, zoo_disc = gan.make_players(config)
        kind, self.n_critic, penalty = gan.objective_settings(config)
        if zoo_gen.num_classes or penalty:
            raise ValueError("the GAN peer is unconditional, without a gradient penalty")
        if kind != "non_saturating":
            raise ValueError("the GAN peer uses the non-saturating loss")
        shape, self.latent = tuple(zoo_gen.image_shape), zoo_gen.latent_dim
        if isinstance(zoo_gen, gan.DCGANGenerator):
            gen = DCGANGenerator(shape, zoo_gen.features, self.latent)
            disc = DCGANDiscriminator(shape, zoo_disc.features)
        else:
            gen = MLPGenerator(shape, tuple(zoo_gen.hidden), self.latent)
            disc = MLPDiscriminator(shape, tuple(zoo_disc.hidden))
        super().__init__({"generator": gen, "discriminator": disc}, optimizer_config, device)
        x = np.transpose(batch["image"], (0, 3, 1, 2)) * 2.0 - 1.0  # NHWC [0,1] -> NCHW [-1,1]
        self.x = to_tensor(x.astype(np.float32), device)

    def step(self):
        g, d = self.fn["generator"], self.fn["discriminator"]
        b = self.x.shape[0]
        for _ in range(self.n_critic):
            with torch.no_grad():
                fake = g(torch.randn(b, self.latent, device=self.device))
            d_loss = (F.softplus(-d(self.x)) + F.softplus(d(fake))).mean()
            self.update("discriminator", d_loss)
        self.players["discriminator"].requires_grad_(False)
        g_loss = F.softplus(-d(g(torch.randn(b, self.latent, device=self.device)))).mean()
        self.update("generator", g_loss)
        self.players["discriminator"].requires_grad_(True)
        return g_loss


def make_peer(config: Mapping, optimizer_config: Mapping, batch: Mapping,
              device: str = "cpu") -> Peer:
    """The PyTorch GAN (MLP or DCGAN players) of zoo's model ``config``, training on ``batch``
    (:func:`zoo.bench.peers.make_peer`)."""
    return GANPeer(config, optimizer_config, batch, device)
