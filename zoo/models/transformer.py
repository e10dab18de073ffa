"""GPT-2-style decoder-only transformer language model (Radford et al. 2019; nanoGPT's layout).

Pre-LayerNorm blocks, learned position embeddings, a GELU (tanh) MLP, output projection tied to the
token embedding, causal self-attention through ``jax.nn.dot_product_attention(is_causal=True)``
(cuDNN's flash attention on a CUDA GPU where it trains the dtype and shape and each device runs
the whole step, XLA's elsewhere; in blocks on CPU: :func:`causal_attention`). Parameter names
follow Hugging Face's GPT-2 (``wte``, ``wpe``, ``h_{i}/attn/c_attn``, ...), so
:mod:`zoo.convert_gpt2` loads real GPT-2 checkpoints. The Dense layers are
:class:`zoo.models.layers.Dense`: flax's, with the bias gradient taken from the kernel gradient's
matmul on CPU (so no forward-mode derivatives there). Dropout is on the embeddings and the
residual branches; ``dot_product_attention`` has no attention-probability dropout, so GPT-2's
``attn_pdrop`` is not applied.

``GPT.decode`` runs tokens against a key/value cache (:func:`init_cache`) for incremental
generation (:mod:`zoo.generate`): each row writes its new keys and values at its own position.
"""

from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp
from flax import linen as nn

from zoo import flops
from zoo.core import dtypes, parallel
from zoo.core.family import Family
from zoo.core.step import Update
from zoo.models.language import check_unit, lm_metrics
from zoo.models.layers import Dense

PRESETS = {
    # name: (n_layer, n_head, n_embd, block_size); GPT-2 sizes use GPT-2's 50257-token vocabulary.
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, block_size=64),
    "small_char": dict(n_layer=4, n_head=4, n_embd=128, block_size=128),
    "char": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),  # nanoGPT shakespeare_char
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024, vocab_size=50257),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280, block_size=1024, vocab_size=50257),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024, vocab_size=50257),
}


# Causal attention on CPU in blocks of this many queries (see causal_attention), at most
# CPU_MAX_QUERY_BLOCKS blocks (longer blocks beyond that: each block is unrolled into the step).
CPU_QUERY_BLOCK = 64
CPU_MAX_QUERY_BLOCKS = 8


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, implementation: str | None = None,
                     query_block: int | None = None) -> jax.Array:
    """Causal self-attention of (B, T, heads, head_dim) q, k, v.

    ``jax.nn.dot_product_attention`` with the kernel :func:`attention_kernel` names: cuDNN's
    fused flash attention on a CUDA GPU where it trains this dtype and shape and each device runs
    the whole step, XLA's otherwise (JAX's own default is XLA's everywhere). XLA:CPU has no fused
    attention kernel: it computes the whole (T, T) score matrix, of which the causal mask then
    discards nearly half. So on CPU with no ``implementation`` named, from two blocks of
    ``query_block`` queries (:data:`CPU_QUERY_BLOCK` by default), :func:`blocked_causal_attention`
    computes only the scores the mask keeps, up to whole blocks.
    """
    T = q.shape[1]
    if query_block is None:
        query_block = default_query_block(T, implementation)
    if query_block < T:
        return blocked_causal_attention(q, k, v, query_block)
    kernel = attention_kernel(implementation, q.dtype, q.shape[-1], T)
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=kernel)


def default_query_block(T: int, implementation: str | None = None) -> int:
    """The queries per block :func:`causal_attention` takes over ``T`` tokens: ``T`` (one call
    of ``jax.nn.dot_product_attention``) except on CPU with no ``implementation`` named."""
    on_cpu = jax.default_backend() == "cpu" and implementation is None
    return max(CPU_QUERY_BLOCK, -(-T // CPU_MAX_QUERY_BLOCKS)) if on_cpu else T


def cudnn_attention_applies(dtype, head_dim: int, T: int) -> bool:
    """Whether cuDNN's fused attention (``jax.nn.dot_product_attention(implementation="cudnn")``)
    trains this attention here: a CUDA GPU of compute capability 8.0 or later (cuDNN's flash
    attention needs Ampere), and what JAX checks: float16 or bfloat16, a head size that is a
    multiple of 8, at most 128 (256 from compute capability 9.0), and, for gradients, an even
    number of tokens ``T``."""
    if not parallel.on_cuda():
        return False
    capability = tuple(int(x) for x in jax.devices()[0].compute_capability.split("."))
    largest_head = 256 if capability >= (9, 0) else 128
    return (capability >= (8, 0) and jnp.dtype(dtype) in (jnp.float16, jnp.bfloat16)
            and head_dim % 8 == 0 and head_dim <= largest_head and T % 2 == 0)


def attention_kernel(implementation: str | None, dtype, head_dim: int, T: int) -> str:
    """The kernel ``jax.nn.dot_product_attention`` runs: ``implementation`` (one of
    :data:`ATTENTION_IMPLEMENTATIONS`), or for None ``cudnn`` on a CUDA GPU where
    :func:`cudnn_attention_applies` and each device runs the whole step (``single``, ``pmap``;
    see :func:`zoo.core.parallel.devices_per_program`), else ``xla``. On a mesh of several
    devices XLA's runs: JAX gives cuDNN's kernel a partitioning rule over batch and heads, but
    zoo has not run it on a mesh of GPUs; name ``cudnn`` to use it there."""
    if implementation is None:
        per_device = parallel.devices_per_program() == 1
        return "cudnn" if per_device and cudnn_attention_applies(dtype, head_dim, T) else "xla"
    if implementation == "cudnn" and not cudnn_attention_applies(dtype, head_dim, T):
        raise ValueError(f"model.attention_impl='cudnn' needs a CUDA GPU (compute capability "
                         f"8.0+), float16 or bfloat16, a head size that is a multiple of 8 up to "
                         f"128 (256 on 9.0+) and an even sequence length; here the device is "
                         f"{jax.devices()[0].platform}, the dtype {jnp.dtype(dtype).name}, the "
                         f"head size {head_dim} and the length {T}; leave it empty and zoo "
                         "chooses")
    return implementation


def attention_implementation(T: int, head_dim: int, dtype,
                             implementation: str | None = None) -> str:
    """What :func:`causal_attention` runs over ``T`` tokens here, in words (for records)."""
    block = default_query_block(T, implementation)
    if block < T:
        return f"blocked in {block}-query blocks"
    return f"dot_product_attention ({attention_kernel(implementation, dtype, head_dim, T)})"


def blocked_causal_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                             query_block: int) -> jax.Array:
    """Causal attention computed a block of queries at a time, skipping the masked scores.

    The queries of a block see every earlier key unmasked, and the keys of their own block
    through a triangular mask; one softmax spans both (a shared row maximum and sum), so no
    masked score beyond the block's own is computed. The same numbers as
    ``jax.nn.dot_product_attention(..., is_causal=True)`` up to float32 rounding, from one layout
    change to (B, heads, T, head_dim) instead of one per block. On 2 CPU cores, one layer's
    attention at nanoGPT's char shape (256 tokens, 4 blocks) ran 0.80x PyTorch's flash attention
    where ``jax.nn.dot_product_attention`` per block ran 0.45x (``benchmarks/README.md``).
    """
    T, D = q.shape[1], q.shape[-1]
    q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
    q = (q.astype(jnp.float32) / math.sqrt(D)).astype(q.dtype)
    scores = lambda q, k: jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
    outs = []
    for start in range(0, T, query_block):
        end = min(start + query_block, T)
        q_block = q[:, :, start:end]
        own = scores(q_block, k[:, :, start:end])
        own = jnp.where(jnp.tril(jnp.ones((end - start,) * 2, bool)), own, -jnp.inf)
        parts = [(own, v[:, :, start:end])] + ([(scores(q_block, k[:, :, :start]), v[:, :, :start])]
                                               if start else [])
        # A shared maximum keeps exp in range; the softmax does not depend on it.
        top = jax.lax.stop_gradient(
            functools.reduce(jnp.maximum, [s.max(-1, keepdims=True) for s, _ in parts]))
        weights = [(jnp.exp(s - top), v_part) for s, v_part in parts]
        total = sum(w.sum(-1, keepdims=True) for w, _ in weights)
        out = sum(jnp.einsum("bhqk,bhkd->bhqd", w.astype(v_part.dtype), v_part,
                             preferred_element_type=jnp.float32) for w, v_part in weights)
        outs.append((out / total).astype(q.dtype))
    return jnp.concatenate(outs, axis=2).transpose(0, 2, 1, 3)


class CausalSelfAttention(nn.Module):
    n_head: int
    n_layer: int
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32
    attention_impl: str | None = None  # None: see attention_kernel; "xla" or "cudnn" to force

    @nn.compact
    def __call__(self, x, deterministic: bool, cache=None, start=None):
        B, T, C = x.shape
        H = self.n_head
        init = nn.initializers.normal(0.02)
        qkv = Dense(3 * C, dtype=self.dtype, kernel_init=init, name="c_attn")(x)
        q, k, v = (a.reshape(B, T, H, C // H) for a in jnp.split(qkv, 3, axis=-1))
        if cache is None:
            y = causal_attention(q, k, v, self.attention_impl)
        else:
            # Row b's T new tokens sit at positions start[b] .. start[b]+T-1 of the cache.
            write = jax.vmap(lambda c, new, s: jax.lax.dynamic_update_slice(c, new, (s, 0, 0)))
            cache = {"k": write(cache["k"], k.astype(cache["k"].dtype), start),
                     "v": write(cache["v"], v.astype(cache["v"].dtype), start)}
            S = cache["k"].shape[1]
            query_pos = start[:, None] + jnp.arange(T)                      # (B, T)
            mask = jnp.arange(S)[None, None, :] <= query_pos[:, :, None]     # (B, T, S)
            y = jax.nn.dot_product_attention(q, cache["k"].astype(q.dtype),
                                             cache["v"].astype(q.dtype), mask=mask[:, None])
        proj_init = nn.initializers.normal(0.02 / math.sqrt(2 * self.n_layer))
        y = Dense(C, dtype=self.dtype, kernel_init=proj_init, name="c_proj")(y.reshape(B, T, C))
        return nn.Dropout(self.dropout)(y, deterministic=deterministic), cache


class MLP(nn.Module):
    n_layer: int
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool):
        C = x.shape[-1]
        h = Dense(4 * C, dtype=self.dtype, kernel_init=nn.initializers.normal(0.02),
                  name="c_fc")(x)
        h = nn.gelu(h, approximate=True)  # GPT-2's "gelu_new"
        proj_init = nn.initializers.normal(0.02 / math.sqrt(2 * self.n_layer))
        h = Dense(C, dtype=self.dtype, kernel_init=proj_init, name="c_proj")(h)
        return nn.Dropout(self.dropout)(h, deterministic=deterministic)


class Block(nn.Module):
    n_head: int
    n_layer: int
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32
    attention_impl: str | None = None
    layer_norm_eps: float = 1e-5

    @nn.compact
    def __call__(self, x, deterministic: bool, cache=None, start=None):
        ln = lambda name: nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype, name=name)
        y, cache = CausalSelfAttention(self.n_head, self.n_layer, self.dropout, self.dtype,
                                       self.attention_impl, name="attn")(
            ln("ln_1")(x), deterministic, cache, start)
        x = x + y
        mlp = MLP(self.n_layer, self.dropout, self.dtype, name="mlp")
        x = x + mlp(ln("ln_2")(x), deterministic)
        return x, cache


class GPT(nn.Module):
    """``GPT(...)(tokens (B, T)) -> logits (B, T, vocab)``, float32 logits."""

    vocab_size: int
    block_size: int = 256
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32
    remat: bool = False
    attention_impl: str | None = None
    layer_norm_eps: float = 1e-5

    def setup(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} does not divide into {self.n_head} heads")
        init = nn.initializers.normal(0.02)
        self.wte = nn.Embed(self.vocab_size, self.n_embd, embedding_init=init, dtype=self.dtype)
        self.wpe = nn.Embed(self.block_size, self.n_embd, embedding_init=init, dtype=self.dtype)
        # Rematerialise per block: the backward pass recomputes each block's activations.
        block = nn.remat(Block, static_argnums=(2,)) if self.remat else Block
        self.h = [block(self.n_head, self.n_layer, self.dropout, self.dtype, self.attention_impl,
                        self.layer_norm_eps) for _ in range(self.n_layer)]
        self.ln_f = nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype)
        self.drop = nn.Dropout(self.dropout)

    def _check_length(self, T: int) -> None:
        if T > self.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds the model's context of "
                             f"{self.block_size}")

    def _head(self, x):
        return self.wte.attend(self.ln_f(x)).astype(jnp.float32)  # tied output embedding

    def __call__(self, tokens: jax.Array, deterministic: bool = True) -> jax.Array:
        chex.assert_rank(tokens, 2)
        B, T = tokens.shape
        self._check_length(T)
        x = self.drop(self.wte(tokens) + self.wpe(jnp.arange(T)[None]), deterministic=deterministic)
        for block in self.h:
            x, _ = block(x, deterministic)
        return self._head(x)

    def decode(self, tokens: jax.Array, cache: list, start: jax.Array):
        """Runs ``tokens`` (B, T) at positions ``start[b] + t`` against ``cache``; writes their keys
        and values. Returns logits (B, T, vocab) and the new cache. No dropout."""
        chex.assert_rank(tokens, 2)
        B, T = tokens.shape
        chex.assert_shape(start, (B,))
        self._check_length(T)
        x = self.wte(tokens) + self.wpe(start[:, None] + jnp.arange(T)[None])
        new_cache = []
        for block, layer_cache in zip(self.h, cache):
            x, layer_cache = block(x, True, layer_cache, start)
            new_cache.append(layer_cache)
        return self._head(x), new_cache

    # The TextDecoder capability (zoo.core.family): what zoo.generate drives.
    @property
    def context(self) -> int:
        return self.block_size

    def init_cache(self, batch_size: int) -> list:
        return init_cache(self, batch_size)

    def extend(self, tokens: jax.Array, cache: list, start: jax.Array, lengths: jax.Array):
        return self.decode(tokens, cache, start)  # causal: padding after lengths is never read


def init_cache(model: GPT, batch_size: int, max_len: int | None = None, dtype=None) -> list:
    """An empty key/value cache: one ``{"k", "v"}`` of shape (B, max_len, heads, head_dim) per
    layer; ``max_len`` defaults to the model's context."""
    shape = (batch_size, max_len or model.block_size, model.n_head, model.n_embd // model.n_head)
    zeros = lambda: jnp.zeros(shape, dtype or model.dtype)
    return [{"k": zeros(), "v": zeros()} for _ in range(model.n_layer)]


ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")  # jax.nn.dot_product_attention's


def model_kwargs(config) -> dict:
    """GPT's constructor arguments from a model config (``preset`` then explicit keys)."""
    preset = config.get("preset", None)
    if preset and preset not in PRESETS:
        raise ValueError(f"unknown transformer preset {preset!r}; choose one of "
                         f"{', '.join(PRESETS)}")
    kw = dict(PRESETS.get(preset, PRESETS["tiny"]))
    for key in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout", "remat",
                "attention_impl", "layer_norm_eps"):
        value = config.get(key, None)
        if value is not None and value != "":
            kw[key] = value
    if "vocab_size" not in kw:
        raise ValueError("the transformer needs model.vocab_size (the tokenizer's vocabulary)")
    kw["dtype"] = dtypes.dtype(config.get("dtype", "float32"), "model.dtype")
    kw["attention_impl"] = kw.get("attention_impl") or None
    if kw["attention_impl"] not in (None, *ATTENTION_IMPLEMENTATIONS):
        raise ValueError(f"unknown model.attention_impl {kw['attention_impl']!r}; choose one of "
                         f"{', '.join(ATTENTION_IMPLEMENTATIONS)}, or leave it empty (zoo "
                         "chooses)")
    return kw


def make_model(config) -> GPT:
    """The GPT of a model config (:func:`model_kwargs`)."""
    return GPT(**model_kwargs(config))


def make_family(config) -> Family:
    """The transformer LM family. Keys: preset, vocab_size, block_size, n_layer, n_head, n_embd,
    dropout, dtype, remat, attention_impl, seq_len (default block_size), unit (char, word, token).
    Batches: ``{"tokens": (B, seq_len + 1) int32}``."""
    model = make_model(config)
    seq_len = int(config.get("seq_len", None) or model.block_size)
    if seq_len > model.block_size:
        raise ValueError(f"seq_len={seq_len} exceeds the model's context of {model.block_size}")
    unit = check_unit(config.get("unit", "char"))

    def loss_fn(params, model_state, batch, rng):
        tokens = batch["tokens"]
        logits = model.apply({"params": params["model"]}, tokens[:, :-1], deterministic=False,
                             rngs={"dropout": rng})
        loss, metrics = lm_metrics(logits, tokens[:, 1:], unit)
        return loss, metrics, model_state

    def eval_metrics(params, model_state, batch, rng):
        tokens = batch["tokens"]
        logits = model.apply({"params": params["model"]}, tokens[:, :-1])
        return lm_metrics(logits, tokens[:, 1:], unit)[1]

    def init(rng, batch):
        params = jax.jit(model.init)(rng, jnp.zeros((1, seq_len), jnp.int32))["params"]
        return {"model": params}, {"model": {}}

    per_token = flops.lm_train_flops_per_token(
        hidden_dim=model.n_embd, intermediate_dim=4 * model.n_embd, num_layers=model.n_layer,
        num_heads=model.n_head, seq_len=seq_len, vocab_size=model.vocab_size)
    return Family(
        name="transformer",
        modules={"model": model},
        init=init,
        objective=(Update("model", loss_fn),),
        eval_metrics=eval_metrics,
        batch_spec={"tokens": jax.ShapeDtypeStruct((seq_len + 1,), jnp.int32)},
        flops_per_example=float(seq_len * per_token),
        text_decoder=model, text_unit=unit,
        implementations=lambda: {"attention": attention_implementation(
            seq_len, model.n_embd // model.n_head, model.dtype, model.attention_impl)},
        text_batching=("random", "the transformer trains on random windows ('stream' lays out "
                                 "contiguous rows for an LSTM's carried state)"),
    )
