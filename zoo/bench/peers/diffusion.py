"""PyTorch peer of ``zoo.models.diffusion`` (DDPM's U-Net, eps- or v-prediction, L_simple).

One step = the zoo objective: x_0 = image * 2 - 1, t ~ U{0..T-1}, noise ~ N(0, I),
x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise, loss = mean((unet(x_t, t, y) - target)^2), with
the zoo family's schedule (:class:`zoo.core.diffusion.NoiseSchedule`) and, for a conditional model,
the label dropped to the null class with probability ``p_uncond``. The U-Net mirrors
:class:`zoo.models.diffusion.UNet` module for module (same layers, widths and parameter count;
the model config is resolved by zoo's own :func:`~zoo.models.diffusion.make_model`, presets
included): GroupNorm (flax's epsilon, 1e-6), swish, 3x3 convolutions, Dense layers on channels as
1x1 convolutions, single-head attention with ``scaled_dot_product_attention``, nearest x2
upsampling + conv. The stride-2 downsampling conv pads 1 on each side where flax's ``SAME`` pads
(0, 1) on even sizes: the same output shape and FLOPs, the window shifted by one pixel.
Images are NCHW here (PyTorch's layout); zoo feeds NHWC.
"""

from __future__ import annotations

from typing import Mapping

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from zoo.bench.peers.common import Peer, to_tensor
from zoo.models import diffusion

GN_EPS = 1e-6  # flax.linen.GroupNorm's default epsilon


def _tiny_init(conv: nn.Conv2d) -> nn.Conv2d:
    """zoo's near-zero init of a block's last layer (variance_scaling(1e-10, fan_avg, uniform))."""
    fan_in = conv.weight[0].numel()
    fan_out = conv.weight.shape[0] * conv.weight[0, 0].numel()
    limit = math.sqrt(3 * 1e-10 / ((fan_in + fan_out) / 2))
    nn.init.uniform_(conv.weight, -limit, limit)
    nn.init.zeros_(conv.bias)
    return conv


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer steps (B,) -> (B, dim), as zoo's."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, dtype=torch.float32,
                                                       device=t.device) / (half - 1))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class ResBlock(nn.Module):
    """GroupNorm-swish-conv, + Linear(time embedding), GroupNorm-swish-dropout-conv, + skip."""

    def __init__(self, cin: int, features: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm_0 = nn.GroupNorm(groups, cin, eps=GN_EPS)
        self.conv_0 = nn.Conv2d(cin, features, 3, padding=1)
        self.time = nn.Linear(emb_dim, features)
        self.norm_1 = nn.GroupNorm(groups, features, eps=GN_EPS)
        self.dropout = nn.Dropout(dropout)
        self.conv_1 = _tiny_init(nn.Conv2d(features, features, 3, padding=1))
        self.skip = nn.Conv2d(cin, features, 1) if cin != features else None  # zoo's Dense

    def forward(self, x, emb):
        h = self.conv_0(F.silu(self.norm_0(x)))
        h = h + self.time(F.silu(emb))[:, :, None, None]
        h = self.conv_1(self.dropout(F.silu(self.norm_1(h))))
        return (x if self.skip is None else self.skip(x)) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of a feature map, with a residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=GN_EPS)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = _tiny_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x):
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).view(b, 3 * c, h * w).transpose(1, 2)  # (B, HW, 3C)
        q, k, v = (a.unsqueeze(1) for a in qkv.chunk(3, dim=-1))           # (B, 1, HW, C)
        out = F.scaled_dot_product_attention(q, k, v)                      # scale 1/sqrt(C)
        return x + self.out(out[:, 0].transpose(1, 2).reshape(b, c, h, w))


class UNet(nn.Module):
    """eps_theta(x_t, t, y): images (B, C, H, W) in [-1, 1], steps (B,), labels (B,) or None;
    the arguments are :class:`zoo.models.diffusion.UNet` 's fields."""

    def __init__(self, image_shape=(28, 28, 1), channels=32, channel_mult=(1, 2, 2),
                 num_res_blocks=1, attention_resolutions=(7,), groups=8, dropout=0.0,
                 num_classes=0):
        super().__init__()
        ch, emb_dim = channels, 4 * channels
        self.channels, self.num_classes = channels, num_classes
        self.time_0 = nn.Linear(ch, emb_dim)
        self.time_1 = nn.Linear(emb_dim, emb_dim)
        self.label = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        attend = lambda c, res: (AttentionBlock(c, groups) if res in attention_resolutions
                                 else nn.Identity())
        self.stem = nn.Conv2d(image_shape[-1], ch, 3, padding=1)
        res, width, skips = image_shape[0], ch, [ch]
        self.down = nn.ModuleList()  # (ResBlock, attention) pairs, then a downsample conv
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(nn.ModuleList([
                    ResBlock(width, mult * ch, emb_dim, groups, dropout),
                    attend(mult * ch, res)]))
                width = mult * ch
                skips.append(width)
            if level < len(channel_mult) - 1:
                self.down.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
                res //= 2
                skips.append(width)
        self.mid_0 = ResBlock(width, width, emb_dim, groups, dropout)
        self.mid_attn = AttentionBlock(width, groups)
        self.mid_1 = ResBlock(width, width, emb_dim, groups, dropout)
        self.up = nn.ModuleList()  # (ResBlock, attention) pairs, then an upsample conv
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(nn.ModuleList([
                    ResBlock(width + skips.pop(), mult * ch, emb_dim, groups, dropout),
                    attend(mult * ch, res)]))
                width = mult * ch
            if level > 0:
                self.up.append(nn.Conv2d(width, width, 3, padding=1))
                res *= 2
        self.out_norm = nn.GroupNorm(groups, width, eps=GN_EPS)
        self.out = _tiny_init(nn.Conv2d(width, image_shape[-1], 3, padding=1))

    def forward(self, x, t, labels=None):
        emb = self.time_1(F.silu(self.time_0(timestep_embedding(t, self.channels))))
        if self.label is not None:
            emb = emb + self.label(labels)
        h = self.stem(x)
        skips = [h]
        for layer in self.down:
            if isinstance(layer, nn.ModuleList):
                block, attn = layer
                h = attn(block(h, emb))
            else:
                h = layer(h)
            skips.append(h)
        h = self.mid_1(self.mid_attn(self.mid_0(h, emb)), emb)
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                block, attn = layer
                h = attn(block(torch.cat([h, skips.pop()], dim=1), emb))
            else:
                h = layer(F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.out(F.silu(self.out_norm(h)))


def unet_fields(config) -> dict:
    """The U-Net's fields as zoo resolves them (preset, then the config's own keys)."""
    m = diffusion.make_model(config)
    return dict(image_shape=tuple(m.image_shape), channels=m.channels,
                channel_mult=tuple(m.channel_mult), num_res_blocks=m.num_res_blocks,
                attention_resolutions=tuple(m.attention_resolutions), groups=m.groups,
                dropout=m.dropout, num_classes=m.num_classes)


def make_unet(config) -> UNet:
    return UNet(**unet_fields(config))


class DiffusionPeer(Peer):
    def __init__(self, config, optimizer_config, batch, device):
        fields = unet_fields(config)
        super().__init__({"model": UNet(**fields)}, optimizer_config, device)
        self.num_classes = fields["num_classes"]
        schedule, self.prediction, self.p_uncond = diffusion.objective_settings(
            config, self.num_classes)
        self.num_steps = schedule.num_steps
        self.alpha_bars = to_tensor(schedule.alpha_bars.astype(np.float32), device)
        x = np.transpose(batch["image"], (0, 3, 1, 2)) * 2.0 - 1.0  # NHWC [0,1] -> NCHW [-1,1]
        self.x0 = to_tensor(x.astype(np.float32), device)
        self.labels = (to_tensor(batch["label"].astype(np.int64), device)
                       if self.num_classes else None)

    def step(self):
        x0 = self.x0
        b = x0.shape[0]
        t = torch.randint(0, self.num_steps, (b,), device=self.device)
        noise = torch.randn_like(x0)
        abar = self.alpha_bars[t].view(b, 1, 1, 1)
        x_t = abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise
        labels = None
        if self.num_classes:
            drop = torch.rand(b, device=self.device) < self.p_uncond
            labels = torch.where(drop, torch.full_like(self.labels, self.num_classes),
                                 self.labels)
        target = noise if self.prediction == "eps" else abar.sqrt() * noise - (1 - abar).sqrt() * x0
        loss = ((self.fn["model"](x_t, t, labels) - target) ** 2).mean()
        self.update("model", loss)
        return loss


def make_peer(config: Mapping, optimizer_config: Mapping, batch: Mapping,
              device: str = "cpu") -> Peer:
    """The PyTorch U-Net diffusion model of zoo's model ``config``, training on ``batch``
    (:func:`zoo.bench.peers.make_peer`)."""
    return DiffusionPeer(config, optimizer_config, batch, device)
