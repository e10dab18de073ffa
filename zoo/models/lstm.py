"""LSTM language models: Zaremba, Sutskever & Vinyals (2014) on PTB, and character-level models.

Embedding, a stack of LSTM layers (flax's ``OptimizedLSTMCell`` under ``nn.RNN``, a scan over
time), dropout on the non-recurrent connections only (Zaremba et al.: embedding output, between
layers, before the softmax), and a softmax output that is tied to the embedding or not.

Truncated backpropagation through time: the family's model state holds each layer's ``(c, h)`` for
every batch row, and the loss returns the state after the batch, so row i of the next batch
(:class:`zoo.text_data.StreamIterator`) starts where row i of this one stopped. Gradients do not
flow across batches; a row with ``reset == 1`` starts from zeros. The state is per-example model
state (``model_state["model"][PER_EXAMPLE]["carry"]``, see :mod:`zoo.core.step`), so the shared
step splits it over devices and microbatches like the batch: it trains under every strategy and
with gradient accumulation. ``carry_state=False`` starts every batch from zeros.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from flax import linen as nn

from zoo import flops
from zoo.core import dtypes, settings
from zoo.core.family import Family
from zoo.core.step import PER_EXAMPLE, Update
from zoo.models.language import check_unit, lm_metrics

Carry = list  # per layer: (c, h), each (B, hidden_size)


def symmetric_uniform(scale: float):
    """U(-scale, scale), Zaremba et al.'s initialisation of every weight."""
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)
    return init


class LSTMLM(nn.Module):
    """``LSTMLM(...)(tokens (B, T), carry) -> (logits (B, T, vocab) float32, new carry)``."""

    vocab_size: int
    hidden_size: int = 200
    num_layers: int = 2
    embed_dim: int | None = None  # None: hidden_size
    dropout: float = 0.0
    tie_embeddings: bool = False
    init_scale: float = 0.1
    dtype: jnp.dtype = jnp.float32

    def initial_carry(self, batch_size: int) -> Carry:
        z = jnp.zeros((batch_size, self.hidden_size), jnp.float32)
        return [(z, z) for _ in range(self.num_layers)]

    @nn.compact
    def __call__(self, tokens: jax.Array, carry: Carry | None = None, deterministic: bool = True,
                 seq_lengths: jax.Array | None = None):
        chex.assert_rank(tokens, 2)
        B = tokens.shape[0]
        carry = self.initial_carry(B) if carry is None else carry
        chex.assert_equal(len(carry), self.num_layers)
        embed_dim = self.embed_dim or self.hidden_size
        if self.tie_embeddings and embed_dim != self.hidden_size:
            raise ValueError(f"tied embeddings need embed_dim ({embed_dim}) == hidden_size "
                             f"({self.hidden_size})")
        init = symmetric_uniform(self.init_scale)
        drop = nn.Dropout(self.dropout)
        embed = nn.Embed(self.vocab_size, embed_dim, embedding_init=init, dtype=self.dtype,
                         name="embed")
        x = drop(embed(tokens), deterministic=deterministic)
        new_carry = []
        for i, layer_carry in enumerate(carry):
            chex.assert_shape(layer_carry, (B, self.hidden_size))
            cell = nn.OptimizedLSTMCell(self.hidden_size, kernel_init=init,
                                        recurrent_kernel_init=init, bias_init=init,
                                        dtype=self.dtype, name=f"lstm_{i}")
            layer_carry, x = nn.RNN(cell)(
                x, initial_carry=tuple(layer_carry), seq_lengths=seq_lengths, return_carry=True)
            new_carry.append(layer_carry)
            x = drop(x, deterministic=deterministic)
        if self.tie_embeddings:
            logits = embed.attend(x)
        else:
            logits = nn.Dense(self.vocab_size, dtype=self.dtype, kernel_init=init, bias_init=init,
                              name="out")(x)
        return logits.astype(jnp.float32), new_carry

    # The TextDecoder capability (zoo.core.family): what zoo.generate drives.
    @property
    def context(self) -> None:
        return None  # a recurrent model reads sequences of any length

    def init_cache(self, batch_size: int) -> Carry:
        return self.initial_carry(batch_size)

    def extend(self, tokens: jax.Array, cache: Carry, start: jax.Array, lengths: jax.Array):
        # The carry is the position: start is implicit. Steps past a row's length keep its carry.
        return self(tokens, cache, seq_lengths=lengths)


def make_model(config) -> LSTMLM:
    vocab = config.get("vocab_size", None)
    if not vocab:
        raise ValueError("the LSTM needs model.vocab_size (the tokenizer's vocabulary)")
    kwargs = settings.module_fields(LSTMLM, config, exclude=("dtype", "embed_dim"))
    if config.get("dtype"):
        kwargs["dtype"] = dtypes.dtype(config.get("dtype"), "model.dtype")
    # embed_dim 0 (or unset): the hidden size.
    return LSTMLM(**kwargs, embed_dim=config.get("embed_dim", None) or None)


def _reset(carry: Carry, reset: jax.Array) -> Carry:
    """The carried state with the rows where ``reset == 1`` zeroed (a stream starts again)."""
    keep = (1 - reset).astype(jnp.float32)[:, None]
    return [(c * keep, h * keep) for c, h in carry]


def make_family(config) -> Family:
    """The LSTM LM family. Keys: vocab_size, hidden_size, num_layers, embed_dim, dropout,
    tie_embeddings, init_scale, dtype, seq_len, unit (char, word), carry_state (default True).
    Batches: ``{"tokens": (B, seq_len + 1) int32, "reset": (B,) int32}`` (no ``reset`` without
    ``carry_state``); the model state is
    ``{PER_EXAMPLE: {"carry": [(c, h)] * num_layers}}``, each (global B, hidden_size)."""
    model = make_model(config)
    seq_len = int(config.get("seq_len", 35))
    unit = check_unit(config.get("unit", "word"))
    carry_state = bool(config.get("carry_state", True))

    def loss_fn(params, model_state, batch, rng):
        tokens = batch["tokens"]
        state = model_state["model"]
        # The step hands the loss the carried rows of exactly the batch rows it sees.
        carry = _reset(state[PER_EXAMPLE]["carry"], batch["reset"]) if carry_state else None
        logits, new_carry = model.apply({"params": params["model"]}, tokens[:, :-1], carry,
                                        deterministic=False, rngs={"dropout": rng})
        loss, metrics = lm_metrics(logits, tokens[:, 1:], unit)
        if carry_state:
            state = {**state, PER_EXAMPLE: {"carry": jax.lax.stop_gradient(new_carry)}}
        return loss, metrics, {**model_state, "model": state}

    def eval_metrics(params, model_state, batch, rng):
        # With a carried state, evaluation reads the split as streams too (stream batches, in
        # order), carrying its own state from zeros: how Zaremba et al. report perplexity.
        tokens = batch["tokens"]
        state = model_state["model"]
        carry = _reset(state[PER_EXAMPLE]["carry"], batch["reset"]) if carry_state else None
        logits, new_carry = model.apply({"params": params["model"]}, tokens[:, :-1], carry)
        metrics = lm_metrics(logits, tokens[:, 1:], unit)[1]
        if not carry_state:
            return metrics
        return metrics, {**model_state, "model": {**state, PER_EXAMPLE: {"carry": new_carry}}}

    def init(rng, batch):
        tokens = jnp.asarray(batch["tokens"])
        params = jax.jit(model.init)(rng, tokens[:1, :-1])["params"]
        # One carried row per example of the batch init is given: that must be the global batch.
        carry = {"carry": model.initial_carry(tokens.shape[0])}
        return {"model": params}, {"model": {PER_EXAMPLE: carry} if carry_state else {}}

    per_token = 3 * flops.lstm_forward_flops_per_token(  # backward = 2x forward
        input_dim=model.embed_dim or model.hidden_size, hidden_dim=model.hidden_size,
        num_layers=model.num_layers, vocab_size=model.vocab_size)
    return Family(
        name="lstm",
        modules={"model": model},
        init=init,
        objective=(Update("model", loss_fn),),
        eval_metrics=eval_metrics,
        # ``reset`` marks where a carried state starts again; without one there is none to mark
        # (and random windows, which have no reset, train it).
        batch_spec={"tokens": jax.ShapeDtypeStruct((seq_len + 1,), jnp.int32),
                    **({"reset": jax.ShapeDtypeStruct((), jnp.int32)} if carry_state else {})},
        flops_per_example=float(seq_len * per_token),
        text_decoder=model,
        text_batching=("stream", "the LSTM carries its state from batch to batch "
                                 "(model.carry_state=True), which needs contiguous rows (or set "
                                 "model.carry_state=False)") if carry_state else None,
    )

