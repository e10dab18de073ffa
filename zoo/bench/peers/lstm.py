"""PyTorch peer of ``zoo.models.lstm``: embedding, ``nn.LSTM`` (cuDNN on GPUs), vocabulary head.

Flax's LSTM cell has one bias per gate; ``nn.LSTM`` has two (``bias_ih`` and ``bias_hh``) that are
only ever summed. The peer freezes ``bias_hh`` at zero (not trained, not counted), so it computes
the same function with the same trainable parameters and still runs the fused ``nn.LSTM`` kernel.
The state starts from zeros each batch (the bench's LSTM case has ``carry_state=False``).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from zoo.bench.peers.common import Peer, to_tensor
from zoo.models import lstm


class LSTMLM(nn.Module):
    def __init__(self, vocab_size, hidden_size, num_layers, embed_dim, tie_embeddings):
        super().__init__()
        embed_dim = embed_dim or hidden_size
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden_size, num_layers, batch_first=True)
        for name, p in self.lstm.named_parameters():
            if name.startswith("bias_hh"):
                nn.init.zeros_(p)
                p.requires_grad_(False)
        self.tie = tie_embeddings
        self.out = None if tie_embeddings else nn.Linear(hidden_size, vocab_size)

    def forward(self, tokens):
        h, _ = self.lstm(self.embed(tokens))
        return h @ self.embed.weight.T if self.tie else self.out(h)


class LSTMPeer(Peer):
    def __init__(self, config, optimizer_config, batch, device):
        zoo_lm = lstm.make_model(config)  # its fields: the config's over the module's defaults
        if zoo_lm.dropout:
            raise ValueError("the LSTM peer has no dropout")
        model = LSTMLM(zoo_lm.vocab_size, zoo_lm.hidden_size, zoo_lm.num_layers,
                       zoo_lm.embed_dim, zoo_lm.tie_embeddings)
        super().__init__({"model": model}, optimizer_config, device)
        self.tokens = to_tensor(batch["tokens"], device, torch.long)

    def step(self):
        logits = self.fn["model"](self.tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                               self.tokens[:, 1:].reshape(-1))
        self.update("model", loss)
        return loss


def make_peer(config: Mapping, optimizer_config: Mapping, batch: Mapping,
              device: str = "cpu") -> Peer:
    """The PyTorch LSTM language model of zoo's model ``config``, training on ``batch``
    (:func:`zoo.bench.peers.make_peer`)."""
    return LSTMPeer(config, optimizer_config, batch, device)
