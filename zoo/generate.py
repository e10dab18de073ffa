"""Batched incremental text generation for zoo's language models.

A :class:`Generator` wraps a model and its params. ``generate`` encodes the prompts, pads them on
the right to a length bucket, runs the whole prompt once (prefill: fills the transformer's key/value
cache, or runs the LSTM to its carried state), then calls one compiled step per new token: sample
from the last logits, feed the sampled token, update the cache. Each row has its own length, so
prompts of different lengths share a batch. Compiles happen once per (batch size, bucket) for the
prefill and once per batch size for the step, never per token or per prompt length in a bucket.

Sampling: ``temperature=0`` is greedy; otherwise softmax(logits / temperature) restricted to the
``top_k`` most likely tokens (0: all) and to the smallest set whose probability reaches ``top_p``
(1.0: all). The settings are traced values, so changing them does not recompile. A ``seed`` fixes
the draws: the same seed, prompts and settings give the same text. Ids beyond the tokenizer's
vocabulary (a model padded to a larger one) are never drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zoo import checkpoint, models
from zoo import tokenizers as tok
from zoo.core import settings
from zoo.core.family import Family, TextDecoder
from zoo.core.settings import TrainSettings

DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048)


def sample_logits(logits: jax.Array, rng: jax.Array, temperature, top_k, top_p) -> jax.Array:
    """Token ids (B,) from logits (B, V): greedy if temperature <= 0, else top-k/top-p sampling."""
    logits = logits.astype(jnp.float32)
    V = logits.shape[-1]
    greedy = jnp.argmax(logits, axis=-1)
    scaled = logits / jnp.maximum(temperature, 1e-6)
    desc = -jnp.sort(-scaled, axis=-1)                                   # (B, V), largest first
    k = jnp.where(top_k > 0, jnp.minimum(top_k, V), V)
    desc = jnp.where(jnp.arange(V) < k, desc, -jnp.inf)                  # top-k
    probs = jax.nn.softmax(desc, axis=-1)
    keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p                  # top-p; keeps the first
    keep = keep | (top_p >= 1.0)
    threshold = jnp.min(jnp.where(keep & (desc > -jnp.inf), desc, jnp.inf), axis=-1, keepdims=True)
    scaled = jnp.where(scaled >= threshold, scaled, -jnp.inf)
    sampled = jax.random.categorical(rng, scaled, axis=-1)
    return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)


def bucket_for(length: int, buckets: Sequence[int], max_len: int | None) -> int:
    """The smallest bucket holding ``length`` (capped at the model's context)."""
    for b in sorted(buckets):
        if b >= length:
            return min(b, max_len) if max_len else b
    if max_len and length <= max_len:
        return max_len
    return int(2 ** np.ceil(np.log2(length)))


class Generator:
    """Batched generation with any :class:`zoo.core.family.TextDecoder` (a family's
    ``text_decoder``: a transformer with its KV cache, an LSTM with its carried state).

    Example::

        gen = Generator(family.text_decoder, params[family.text_player], tokenizer)
        texts = gen.generate_text(["ROMEO:", "JULIET:"], max_new_tokens=100, temperature=0.8,
                                  top_k=40, seed=0)
    """

    def __init__(self, model: TextDecoder, params, tokenizer: tok.Tokenizer | None = None, *,
                 buckets: Sequence[int] = DEFAULT_BUCKETS):
        missing = [m for m in ("init_cache", "extend", "context", "vocab_size")
                   if not hasattr(model, m)]
        if missing:
            raise ValueError(f"cannot generate with a {type(model).__name__}: it is no text "
                             f"decoder (it lacks {', '.join(missing)}; see "
                             "zoo.core.family.TextDecoder)")
        self.model, self.params, self.tokenizer = model, params, tokenizer
        self.buckets = tuple(buckets)
        self.max_len = model.context
        # A model may have more ids than its tokenizer (GPT-2 padded to 50304): those have no text,
        # so they are never drawn. A static count per generator: compiled once.
        self.num_valid = min(tokenizer.vocab_size, model.vocab_size) if tokenizer else None
        self._prefill = jax.jit(self._prefill_impl)
        self._step = jax.jit(self._step_impl, donate_argnums=(1,))

    def _init_cache(self, batch_size: int):
        return self.model.init_cache(batch_size)

    def _extend(self, params, tokens, cache, start, lengths):
        return self.model.apply({"params": params}, tokens, cache, start, lengths,
                                method="extend")

    def _mask(self, logits):
        """Logits (B, V) with the ids the tokenizer cannot decode at -inf."""
        if self.num_valid is None or self.num_valid >= logits.shape[-1]:
            return logits
        return jnp.where(jnp.arange(logits.shape[-1]) < self.num_valid, logits, -jnp.inf)

    def _prefill_impl(self, params, tokens, lengths):
        B = tokens.shape[0]
        logits, cache = self._extend(params, tokens, self._init_cache(B),
                                     jnp.zeros((B,), jnp.int32), lengths)
        return self._mask(logits[jnp.arange(B), lengths - 1]), cache

    def _step_impl(self, params, cache, logits, lengths, rng, i, temperature, top_k, top_p):
        token = sample_logits(logits, jax.random.fold_in(rng, i), temperature, top_k, top_p)
        logits, cache = self._extend(params, token[:, None], cache, lengths,
                                     jnp.ones_like(lengths))
        return token, self._mask(logits[:, 0]), cache, lengths + 1

    def generate_tokens(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
                        temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                        seed: int = 0) -> np.ndarray:
        """``max_new_tokens`` new ids for each prompt (lists of ids): an int32 array (B, N)."""
        if not prompts:
            raise ValueError("no prompts given")
        lengths = np.array([len(p) for p in prompts], np.int32)
        if lengths.min() < 1:
            raise ValueError("a prompt is empty; generation starts from at least one token")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if top_k < 0 or temperature < 0:
            raise ValueError("top_k and temperature must be >= 0")
        vocab = self.model.vocab_size
        bad = sorted({int(t) for p in prompts for t in p if not 0 <= int(t) < vocab})
        if bad:
            raise ValueError(f"prompt token ids {bad[:10]} are outside the vocabulary of {vocab}")
        if self.max_len and int(lengths.max()) + max_new_tokens > self.max_len:
            raise ValueError(
                f"prompt of {int(lengths.max())} tokens + {max_new_tokens} new tokens exceeds the "
                f"model's context of {self.max_len} tokens")
        bucket = bucket_for(int(lengths.max()), self.buckets, self.max_len)
        padded = np.zeros((len(prompts), bucket), np.int32)
        for i, p in enumerate(prompts):
            padded[i, :len(p)] = p
        logits, cache = self._prefill(self.params, jnp.asarray(padded), jnp.asarray(lengths))
        cur = jnp.asarray(lengths)
        rng = jax.random.PRNGKey(seed)
        settings = (jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p))
        out = []
        for i in range(max_new_tokens):
            token, logits, cache, cur = self._step(self.params, cache, logits, cur, rng,
                                                   np.int32(i), *settings)
            out.append(token)
        return np.stack([np.asarray(t) for t in out], axis=1)

    def encode(self, prompt: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("this generator has no tokenizer; pass token ids to generate_tokens")
        return self.tokenizer.encode(prompt)

    def generate_text(self, prompts: str | Sequence[str], max_new_tokens: int = 100,
                      **sampling: Any) -> list[str]:
        """The continuation (without the prompt) of each prompt string.

        The continuation is what decoding the whole sequence adds to the decoded prompt, so it
        starts with the separator a tokenizer puts between tokens (a space between words).
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        prompt_ids = [self.encode(p) for p in prompts]
        ids = self.generate_tokens(prompt_ids, max_new_tokens, **sampling)
        out = []
        for p, row in zip(prompt_ids, ids):
            head = self.tokenizer.decode(p)
            full = self.tokenizer.decode(list(p) + row.tolist())
            out.append(full[len(head):] if full.startswith(head) else self.tokenizer.decode(row))
        return out


def generate(model, params, tokenizer: tok.Tokenizer, prompt: str | Sequence[str],
             max_new_tokens: int = 100, **sampling: Any) -> list[str]:
    """One-off generation (compiles on each call; keep a :class:`Generator` to reuse compiles)."""
    return Generator(model, params, tokenizer).generate_text(prompt, max_new_tokens, **sampling)


def default_prompt(tokenizer: tok.Tokenizer, text: str | None, num_tokens: int = 8) -> str:
    """The first ``num_tokens`` tokens of ``text`` (a held-out split), or a newline."""
    if not text:
        return "\n"
    head = text[:2000]
    if len(text) > 2000 and " " in head:  # cut between words: a word tokenizer needs whole ones
        head = head[:head.rindex(" ")]
    return tokenizer.decode(tokenizer.encode(head)[:num_tokens])


def text_sample_fn(family: Family, tokenizer: tok.Tokenizer, prompt: str, *,
                   num_samples: int = 2, max_new_tokens: int = 200, temperature: float = 0.8,
                   top_k: int = 0):
    """A ``sample_fn`` for a language-model family (one with a ``text_decoder``): writes
    ``num_samples`` continuations of ``prompt`` to ``out_dir/step_<step>.txt`` and returns the
    text written.

    One :class:`Generator` is kept across calls (the params are an argument of its compiled
    functions), so sampling at each evaluation compiles once per run. The prompt and length are
    the caller's to check (:func:`make_text_sampler` does, for a run's config).
    """
    model, player = family.require("text_decoder", "generate text"), family.text_player
    generator = None

    def sample_fn(params, model_state, rng, out_dir, step):
        nonlocal generator
        if generator is None:
            generator = Generator(model, params[player], tokenizer)
        generator.params = params[player]
        seed = int(jax.random.randint(rng, (), 0, 2**31 - 1))
        texts = generator.generate_text([prompt] * num_samples, max_new_tokens,
                                        temperature=temperature, top_k=top_k, seed=seed)
        body = "\n\n".join(f"--- sample {i} (temperature {temperature}) ---\n{prompt}{t}"
                            for i, t in enumerate(texts))
        out = Path(out_dir) / f"step_{int(step):07d}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(body + "\n", encoding="utf-8")
        return body

    return sample_fn


def make_text_sampler(family: Family, tokenizer: tok.Tokenizer, train_config,
                      eval_text: str | None):
    """The ``sample_fn`` of a language-model run (:func:`text_sample_fn`), or None.

    ``train.sample_tokens`` new tokens (0: no samples, None) after ``train.sample_prompt`` (empty:
    the first tokens of ``eval_text``, see :func:`default_prompt`). Checked here, at build, so a
    prompt the tokenizer cannot encode or that leaves no room in a transformer's context is an
    error before training rather than in its middle.
    """
    tc = settings.parse(TrainSettings, train_config, "train")
    num_tokens = tc.sample_tokens
    if num_tokens < 0:
        raise ValueError(f"train.sample_tokens={num_tokens}: the number of tokens sampled at each "
                         "evaluation must be >= 0 (0: none)")
    if not num_tokens:
        return None
    prompt = tc.sample_prompt or default_prompt(tokenizer, eval_text)
    try:
        prompt_ids = tokenizer.encode(prompt)
    except tok.OutOfVocabularyError as e:
        raise ValueError(f"train.sample_prompt={prompt!r} has {e.what} outside the tokenizer's "
                         f"vocabulary: {e.listing}") from None
    if not prompt_ids:
        raise ValueError(f"train.sample_prompt={prompt!r} encodes to no token; sampling starts "
                         "from at least one")
    model = family.require("text_decoder", "generate text")
    context, n = model.context, len(prompt_ids)  # None: an LSTM has no limit
    if context and n >= context:
        raise ValueError(f"train.sample_prompt ({n} tokens) fills the transformer's context of "
                         f"{context} tokens, leaving none for train.sample_tokens; shorten it")
    if context and n + num_tokens > context:
        raise ValueError(f"train.sample_prompt ({n} tokens) + train.sample_tokens={num_tokens} "
                         f"exceed the transformer's context of {context} tokens; set "
                         f"train.sample_tokens to at most {context - n}")
    return text_sample_fn(family, tokenizer, prompt, max_new_tokens=num_tokens)


def generate_main(path: str | None = None, prompt: str | Sequence[str] = "", *,
                  model_config=None, params=None, tokenizer: tok.Tokenizer | dict | None = None,
                  max_new_tokens: int = 100, temperature: float = 0.8, top_k: int = 0,
                  top_p: float = 1.0, seed: int = 0, dtype: str | None = None) -> list[str]:
    """What ``zoo generate`` runs: the continuations of ``prompt``.

    Either ``path`` is a ``zoo train`` run directory of a language model (``lstm`` or
    ``transformer``; its newest checkpoint, config and tokenizer) or a Hugging Face GPT-2 folder
    (``config.json``, ``model.safetensors`` or ``pytorch_model.bin``, ``vocab.json``,
    ``merges.txt``), converted on the fly; or the caller passes ``model_config`` (a run's
    ``config.model``), ``params`` (the model player's params) and ``tokenizer`` (a tokenizer or
    its ``to_config()`` dict).
    """
    if params is not None:
        if model_config is None or tokenizer is None:
            raise ValueError("generating from params needs model_config and tokenizer too")
        if dtype:
            model_config = {**dict(model_config), "dtype": dtype}
        model = models.make_family(model_config).require("text_decoder", "generate text")
        if isinstance(tokenizer, dict):
            tokenizer = tok.from_config(tokenizer)
    elif path is not None:
        run = checkpoint.load_run(path)
        model = run.family.require("text_decoder", "generate text")
        if run.tokenizer is None:
            raise ValueError(f"the run in {path} saved no tokenizer: it is not a language model "
                             "run")
        # The params that draw samples: a run's EMA where it keeps one, as zoo sample's.
        params, tokenizer = run.sampling_params[run.family.text_player], run.tokenizer
    else:
        raise ValueError("generate_main needs a path (a zoo run or a GPT-2 folder) or params")
    return Generator(model, params, tokenizer).generate_text(
        prompt, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
