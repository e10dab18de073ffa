"""LSTM language models: Zaremba, Sutskever & Vinyals (2014) on PTB, and character-level models.

Embedding, a stack of LSTM layers (:class:`LSTMLayer`: flax's ``OptimizedLSTMCell`` with its
parameters and gates, run over the whole sequence), dropout on the non-recurrent connections only
(Zaremba et al.: embedding output, between layers, before the softmax), and a softmax output that
is tied to the embedding or not (untied, a :class:`zoo.models.layers.Dense`: flax's, with the bias
gradient taken from the kernel gradient's matmul on CPU, so no forward-mode derivatives there).

Why not ``nn.RNN(OptimizedLSTMCell)``: differentiated through a scan, every time step adds its own
small outer product to the weight gradients (B rows each) and projects its own input. The layer
projects all inputs in one matmul before the scan, and its backward (:func:`lstm_sequence`, a
custom VJP) scans only what is recurrent, then forms the weight and input gradients as one matmul
each over all T x B rows (cuDNN's RNN API likewise computes weight gradients in a pass of their
own). Same numbers as the flax cell to float32 rounding (tests/test_lstm.py).

On a CUDA GPU, in float32, where each device runs the whole step (the ``single`` and ``pmap``
strategies, or one device), training and evaluation run cuDNN's LSTM kernel instead
(``jax.experimental.rnn``; :func:`cudnn_lstm`), with the scan the fallback everywhere else (a
mesh of several devices) and always for decoding; ``model.lstm_impl`` names either.

Truncated backpropagation through time: the family's model state holds each layer's ``(c, h)`` for
every batch row, and the loss returns the state after the batch, so row i of the next batch
(:class:`zoo.text_data.StreamIterator`) starts where row i of this one stopped. Gradients do not
flow across batches; a row with ``reset == 1`` starts from zeros. The state is per-example model
state (``model_state["model"][PER_EXAMPLE]["carry"]``, see :mod:`zoo.core.step`), so the shared
step splits it over devices and microbatches like the batch: it trains under every strategy and
with gradient accumulation. ``carry_state=False`` starts every batch from zeros.
"""

from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.experimental import rnn as jax_rnn

from zoo import flops
from zoo.core import dtypes, parallel, settings
from zoo.core.family import Family
from zoo.core.step import PER_EXAMPLE, Update
from zoo.models.language import check_unit, lm_metrics
from zoo.models.layers import Dense

Carry = list  # per layer: (c, h), each (B, hidden_size)


def symmetric_uniform(scale: float):
    """U(-scale, scale), Zaremba et al.'s initialisation of every weight."""
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)
    return init


def _lstm_scan(x, c0, h0, w_i, w_h, b):
    """An LSTM over time-major ``x`` (T, B, D): the final (c, h) and each step's c, h and gate
    activations ``[i f g o]`` (T, B, 4H). Gates as flax's ``OptimizedLSTMCell``."""
    xw = x @ w_i + b  # every step's input projection, one matmul

    def step(carry, xw_t):
        c, h = carry
        i, f, g, o = jnp.split(xw_t + h.astype(w_h.dtype) @ w_h, 4, axis=-1)
        i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return (c, h), (c, h, jnp.concatenate([i, f, g, o], axis=-1))

    (c, h), (cs, hs, gates) = jax.lax.scan(step, (c0, h0), xw)
    return (c, h), cs, hs, gates


@jax.custom_vjp
def lstm_sequence(x, c0, h0, w_i, w_h, b):
    """``(c_T, h_T), hs``: an LSTM over time-major ``x`` (T, B, D) from ``(c0, h0)`` (B, H), with
    input kernel ``w_i`` (D, 4H), recurrent kernel ``w_h`` (H, 4H) and bias ``b`` (4H,), gates in
    the order i, f, g, o. Its gradient scans back only the recurrence; see the module docstring."""
    (c, h), _, hs, _ = _lstm_scan(x, c0, h0, w_i, w_h, b)
    return (c, h), hs


def _lstm_sequence_fwd(x, c0, h0, w_i, w_h, b):
    (c, h), cs, hs, gates = _lstm_scan(x, c0, h0, w_i, w_h, b)
    return ((c, h), hs), (x, c0, h0, w_i, w_h, b, cs, hs, gates)


def _lstm_sequence_bwd(res, cotangents):
    x, c0, h0, w_i, w_h, b, cs, hs, gates = res
    (dc, dh), dhs = cotangents
    c_prev = jnp.concatenate([c0[None], cs[:-1]])
    # W_h^T laid out once before the scan: inside it, dz @ W_h.T is a matmul with a transposed
    # operand, packed anew at every step (1.2-1.8% of the full suite's LSTM step).
    w_h_t = w_h.T

    def step(carry, inputs):  # back through one step: the cotangents of (c, h) before it
        dc, dh = carry
        dh_out, c, cp, gate = inputs
        i, f, g, o = jnp.split(gate.astype(jnp.float32), 4, axis=-1)
        dh = dh + dh_out
        tanh_c = jnp.tanh(c)
        dc = dc + dh * o * (1 - tanh_c ** 2)
        dz = jnp.concatenate([dc * g * i * (1 - i), dc * cp * f * (1 - f), dc * i * (1 - g ** 2),
                              dh * tanh_c * o * (1 - o)], axis=-1).astype(w_h.dtype)
        return (dc * f, (dz @ w_h_t).astype(dh.dtype)), dz

    (dc0, dh0), dz = jax.lax.scan(step, (dc, dh), (dhs, cs, c_prev, gates), reverse=True)
    h_prev = jnp.concatenate([h0[None], hs[:-1]]).astype(w_h.dtype)
    flat = lambda a: a.reshape(-1, a.shape[-1])  # (T, B, n) -> (T * B, n): one matmul for all
    dw_h = flat(h_prev).T @ flat(dz)
    dw_i = flat(x).T @ flat(dz)
    dx = dz @ w_i.T
    return (dx.astype(x.dtype), dc0.astype(c0.dtype), dh0.astype(h0.dtype),
            dw_i.astype(w_i.dtype), dw_h.astype(w_h.dtype),
            flat(dz).astype(jnp.float32).sum(0).astype(b.dtype))


lstm_sequence.defvjp(_lstm_sequence_fwd, _lstm_sequence_bwd)


LSTM_IMPLEMENTATIONS = ("scan", "cudnn")


def cudnn_applies(dtype) -> bool:
    """Whether :func:`cudnn_lstm` can run here: on a CUDA GPU (ROCm's kernel wants the gates in
    another order) in float32, the only dtype ``jax.experimental.rnn`` takes."""
    return parallel.on_cuda() and jnp.dtype(dtype) == jnp.float32


def lstm_implementation(name: str | None, dtype) -> str:
    """``name`` (one of :data:`LSTM_IMPLEMENTATIONS`), or for None: ``cudnn`` on a CUDA GPU in
    float32 where each device runs the whole step (``single``, ``pmap``; see
    :func:`zoo.core.parallel.devices_per_program`), else ``scan``. On a mesh of several devices
    the scan runs: cuDNN's kernel is a custom call with no sharding rule, so XLA's partitioner
    would run it whole on every device."""
    if name is None:
        per_device = parallel.devices_per_program() == 1
        return "cudnn" if cudnn_applies(dtype) and per_device else "scan"
    if name == "cudnn" and not cudnn_applies(dtype):
        raise ValueError(f"model.lstm_impl='cudnn' needs a CUDA GPU and float32 "
                         f"(jax.experimental.rnn); here the device is "
                         f"{jax.devices()[0].platform} and the dtype {jnp.dtype(dtype).name}; "
                         "leave it empty and zoo chooses")
    return name


def cudnn_weights(w_i, w_h, b):
    """The layer's weights as cuDNN's one flat array (``jax.experimental.rnn``'s layout for one
    layer: ``W_ih`` (4H, D) and ``W_hh`` (4H, H), gates i, f, g, o as here, then the biases
    ``b_ih`` and ``b_hh``; the layer's one bias is ``b_ih``, ``b_hh`` is zero)."""
    return jnp.concatenate([w_i.T.ravel(), w_h.T.ravel(), b, jnp.zeros_like(b)])


def cudnn_lstm(x, c0, h0, w_i, w_h, b):
    """``(c_T, h_T), hs``: :func:`lstm_sequence`'s LSTM through cuDNN's kernel, batch-first:
    ``x`` (B, T, D), ``hs`` (B, T, H)."""
    B, T, D = x.shape
    hs, h, c = jax_rnn.lstm(x, h0[None], c0[None], cudnn_weights(w_i, w_h, b),
                            jnp.full((B,), T, jnp.int32), input_size=D, hidden_size=w_h.shape[0],
                            num_layers=1, dropout=0.0, bidirectional=False)
    return (c[0], h[0]), hs


class _GateParams(nn.Module):
    """One gate's kernel (and bias), named, shaped and initialised as in ``OptimizedLSTMCell``."""

    features: int
    kernel_init: Callable
    bias_init: Callable | None = None  # None: no bias (the input kernels)

    @nn.compact
    def __call__(self, in_features: int):
        kernel = self.param("kernel", self.kernel_init, (in_features, self.features))
        bias = None if self.bias_init is None else self.param("bias", self.bias_init,
                                                              (self.features,))
        return kernel, bias


class LSTMLayer(nn.Module):
    """``LSTMLayer(hidden_size, ...)(x (B, T, D), (c, h), seq_lengths) -> ((c, h), hs (B, T, H))``.

    ``OptimizedLSTMCell``'s params (``ii``/``if``/``ig``/``io`` kernels, ``hi``/``hf``/``hg``/``ho``
    kernels and biases), so checkpoints of either restore into the other. With ``seq_lengths`` the
    returned carry is each row's after its last valid step (as ``nn.RNN``; always the scan).
    ``implementation``: see :func:`lstm_implementation`."""

    hidden_size: int
    kernel_init: Callable
    recurrent_kernel_init: Callable
    bias_init: Callable
    dtype: jnp.dtype = jnp.float32
    implementation: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, carry: tuple, seq_lengths: jax.Array | None = None):
        H, gates = self.hidden_size, "ifgo"
        w_i = [_GateParams(H, self.kernel_init, name=f"i{g}")(x.shape[-1]) for g in gates]
        w_h = [_GateParams(H, self.recurrent_kernel_init, self.bias_init, name=f"h{g}")(H)
               for g in gates]
        cast = lambda a: a.astype(self.dtype)
        w_i = cast(jnp.concatenate([k for k, _ in w_i], axis=-1))
        b = cast(jnp.concatenate([bias for _, bias in w_h]))
        w_h = cast(jnp.concatenate([k for k, _ in w_h], axis=-1))
        c0, h0 = carry
        if seq_lengths is None and lstm_implementation(self.implementation, self.dtype) == "cudnn":
            return cudnn_lstm(cast(x), cast(c0), cast(h0), w_i, w_h, b)  # the kernel reads f32
        xs = cast(jnp.swapaxes(x, 0, 1))
        if seq_lengths is None:
            carry, hs = lstm_sequence(xs, c0, h0, w_i, w_h, b)
        else:  # decoding: no gradient, the carry of each row's last valid step
            _, cs, hs, _ = _lstm_scan(xs, c0, h0, w_i, w_h, b)
            last, rows = seq_lengths - 1, jnp.arange(xs.shape[1])
            carry = (cs[last, rows], hs[last, rows])
        return carry, jnp.swapaxes(hs, 0, 1)


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
    lstm_impl: str | None = None  # None: see lstm_implementation; "scan" or "cudnn" to force

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
            layer = LSTMLayer(self.hidden_size, kernel_init=init, recurrent_kernel_init=init,
                              bias_init=init, dtype=self.dtype,
                              implementation=self.lstm_impl, name=f"lstm_{i}")
            layer_carry, x = layer(x, tuple(layer_carry), seq_lengths)
            new_carry.append(layer_carry)
            x = drop(x, deterministic=deterministic)
        if self.tie_embeddings:
            logits = embed.attend(x)
        else:
            logits = Dense(self.vocab_size, dtype=self.dtype, kernel_init=init, bias_init=init,
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
    if kwargs.get("lstm_impl") not in (None, *LSTM_IMPLEMENTATIONS):
        raise ValueError(f"unknown model.lstm_impl {kwargs['lstm_impl']!r}; choose one of "
                         f"{', '.join(LSTM_IMPLEMENTATIONS)}, or leave it empty (zoo chooses)")
    # embed_dim 0 (or unset): the hidden size.
    return LSTMLM(**kwargs, embed_dim=config.get("embed_dim", None) or None)


def _reset(carry: Carry, reset: jax.Array) -> Carry:
    """The carried state with the rows where ``reset == 1`` zeroed (a stream starts again)."""
    keep = (1 - reset).astype(jnp.float32)[:, None]
    return [(c * keep, h * keep) for c, h in carry]


def make_family(config) -> Family:
    """The LSTM LM family. Keys: vocab_size, hidden_size, num_layers, embed_dim, dropout,
    tie_embeddings, init_scale, dtype, lstm_impl, seq_len, unit (char, word), carry_state
    (default True).
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
        text_decoder=model, text_unit=unit,
        implementations=lambda: {"lstm": lstm_implementation(model.lstm_impl, model.dtype)},
        text_batching=("stream", "the LSTM carries its state from batch to batch "
                                 "(model.carry_state=True), which needs contiguous rows (or set "
                                 "model.carry_state=False)") if carry_state else None,
    )

