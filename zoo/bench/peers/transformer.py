"""PyTorch peer of ``zoo.models.transformer``: GPT-2 (nanoGPT's layout), tied output embedding.

Pre-LayerNorm blocks, fused q/k/v projection, ``F.scaled_dot_product_attention(is_causal=True)``
(flash attention on GPUs), tanh-GELU MLP, learned positions, no dropout. ``dtype="bfloat16"``
runs under ``torch.autocast`` (float32 master weights), as zoo computes in bfloat16.
"""

from __future__ import annotations

from typing import Mapping

import math

import jax.numpy as jnp
import torch
from torch import nn
from torch.nn import functional as F

from zoo.bench.peers.common import Peer, to_tensor
from zoo.models import transformer


class Block(nn.Module):
    def __init__(self, n_embd, n_head, eps):
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(n_embd, eps=eps)
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.attn_proj = nn.Linear(n_embd, n_embd)
        self.ln_2 = nn.LayerNorm(n_embd, eps=eps)
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.mlp_proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (a.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for a in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab_size, block_size, n_layer, n_head, n_embd, layer_norm_eps):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head, layer_norm_eps) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, eps=layer_norm_eps)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, tokens):
        T = tokens.shape[1]
        x = self.wte(tokens) + self.wpe(torch.arange(T, device=tokens.device))[None]
        for block in self.h:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T  # tied head


class TransformerPeer(Peer):
    def __init__(self, config, optimizer_config, batch, device):
        gpt = transformer.make_model(config)  # its fields: the preset, then the config's keys
        if gpt.dropout:
            raise ValueError("the transformer peer has no dropout")
        model = GPT(gpt.vocab_size, gpt.block_size, gpt.n_layer, gpt.n_head, gpt.n_embd,
                    gpt.layer_norm_eps)
        super().__init__({"model": model}, optimizer_config, device)
        self.tokens = to_tensor(batch["tokens"], device, torch.long)
        self.autocast = gpt.dtype == jnp.bfloat16

    def step(self):
        device_type = "cuda" if str(self.device).startswith("cuda") else "cpu"
        with torch.autocast(device_type, torch.bfloat16, enabled=self.autocast):
            logits = self.fn["model"](self.tokens[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                               self.tokens[:, 1:].reshape(-1))
        self.update("model", loss)
        return loss


def make_peer(config: Mapping, optimizer_config: Mapping, batch: Mapping,
              device: str = "cpu") -> Peer:
    """The PyTorch GPT of zoo's model ``config``, training on ``batch``
    (:func:`zoo.bench.peers.make_peer`)."""
    return TransformerPeer(config, optimizer_config, batch, device)
