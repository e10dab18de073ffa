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

import functools
import json
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zoo import tokenizers as tok
from zoo.models import lstm as lstm_lib
from zoo.models import transformer as transformer_lib

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
    """Batched generation with a transformer (KV cache) or an LSTM (carried state).

    Example::

        gen = Generator(model, params, tokenizer)
        texts = gen.generate_text(["ROMEO:", "JULIET:"], max_new_tokens=100, temperature=0.8,
                                  top_k=40, seed=0)
    """

    def __init__(self, model, params, tokenizer: tok.Tokenizer | None = None, *,
                 buckets: Sequence[int] = DEFAULT_BUCKETS):
        if not isinstance(model, (transformer_lib.GPT, lstm_lib.LSTMLM)):
            raise ValueError(f"cannot generate with a {type(model).__name__}; zoo generates with "
                             "GPT and LSTMLM models")
        self.model, self.params, self.tokenizer = model, params, tokenizer
        self.buckets = tuple(buckets)
        self.is_transformer = isinstance(model, transformer_lib.GPT)
        self.max_len = model.block_size if self.is_transformer else None
        # A model may have more ids than its tokenizer (GPT-2 padded to 50304): those have no text,
        # so they are never drawn. A static count per generator: compiled once.
        self.num_valid = min(tokenizer.vocab_size, model.vocab_size) if tokenizer else None
        self._prefill = jax.jit(self._prefill_impl)
        self._step = jax.jit(self._step_impl, donate_argnums=(1,))

    # -- the model behind one interface: extend(tokens (B, T), cache, start (B,), lengths (B,)) --
    def _init_cache(self, batch_size: int):
        if self.is_transformer:
            return transformer_lib.init_cache(self.model, batch_size)
        return self.model.initial_carry(batch_size)

    def _extend(self, params, tokens, cache, start, lengths):
        if self.is_transformer:
            return self.model.apply({"params": params}, tokens, cache, start,
                                    method=self.model.decode)
        return self.model.apply({"params": params}, tokens, cache, seq_lengths=lengths)

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


def model_for(model_config):
    """The generating module of a transformer or LSTM model config."""
    family = model_config.get("family")
    if family == "transformer":
        return transformer_lib.make_model(model_config)
    if family == "lstm":
        return lstm_lib.make_model(model_config)
    raise ValueError(f"cannot generate with model family {family!r}; use transformer or lstm")


def default_prompt(tokenizer: tok.Tokenizer, text: str | None, num_tokens: int = 8) -> str:
    """The first ``num_tokens`` tokens of ``text`` (a held-out split), or a newline."""
    if not text:
        return "\n"
    head = text[:2000]
    if len(text) > 2000 and " " in head:  # cut between words: a word tokenizer needs whole ones
        head = head[:head.rindex(" ")]
    return tokenizer.decode(tokenizer.encode(head)[:num_tokens])


def text_sample_fn(model, tokenizer: tok.Tokenizer, prompt: str, *, num_samples: int = 2,
                   max_new_tokens: int = 200, temperature: float = 0.8, top_k: int = 0):
    """A family ``sample_fn`` for language models: writes ``num_samples`` continuations of
    ``prompt`` to ``out_dir/step_<step>.txt`` and returns the text written.

    One :class:`Generator` is kept across calls (the params are an argument of its compiled
    functions), so sampling at each evaluation compiles once per run. The prompt and length are
    the caller's to check (:func:`make_text_sampler` does, for a run's config).
    """
    generator = None

    def sample_fn(params, model_state, rng, out_dir, step):
        nonlocal generator
        if generator is None:
            generator = Generator(model, params["model"], tokenizer)
        generator.params = params["model"]
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


def make_text_sampler(model, tokenizer: tok.Tokenizer, train_config, eval_text: str | None):
    """The ``sample_fn`` of a language-model run (:func:`text_sample_fn`), or None.

    ``train.sample_tokens`` new tokens (0: no samples, None) after ``train.sample_prompt`` (empty:
    the first tokens of ``eval_text``, see :func:`default_prompt`). Checked here, at build, so a
    prompt the tokenizer cannot encode or that leaves no room in a transformer's context is an
    error before training rather than in its middle.
    """
    num_tokens = int(train_config.get("sample_tokens", 200))
    if num_tokens < 0:
        raise ValueError(f"train.sample_tokens={num_tokens}: the number of tokens sampled at each "
                         "evaluation must be >= 0 (0: none)")
    if not num_tokens:
        return None
    prompt = train_config.get("sample_prompt", "") or default_prompt(tokenizer, eval_text)
    try:
        prompt_ids = tokenizer.encode(prompt)
    except tok.OutOfVocabularyError as e:
        raise ValueError(f"train.sample_prompt={prompt!r} has {e.what} outside the tokenizer's "
                         f"vocabulary: {e.listing}") from None
    if not prompt_ids:
        raise ValueError(f"train.sample_prompt={prompt!r} encodes to no token; sampling starts "
                         "from at least one")
    context, n = getattr(model, "block_size", None), len(prompt_ids)  # an LSTM has no limit
    if context and n >= context:
        raise ValueError(f"train.sample_prompt ({n} tokens) fills the transformer's context of "
                         f"{context} tokens, leaving none for train.sample_tokens; shorten it")
    if context and n + num_tokens > context:
        raise ValueError(f"train.sample_prompt ({n} tokens) + train.sample_tokens={num_tokens} "
                         f"exceed the transformer's context of {context} tokens; set "
                         f"train.sample_tokens to at most {context - n}")
    return text_sample_fn(model, tokenizer, prompt, max_new_tokens=num_tokens)


@functools.lru_cache(maxsize=4)
def _load_gpt2(path: str):
    from zoo import convert_gpt2
    model, params = convert_gpt2.load(path)
    return model, params, tok.GPT2Tokenizer.from_dir(path)


def load_run(path: str | Path):
    """(model, params, tokenizer) of a language model: a ``zoo train`` run directory (its newest
    checkpoint, with the config and tokenizer saved in it), one checkpoint of it
    (``RUN/checkpoints/STEP``), or a Hugging Face GPT-2 folder. A run restores on this machine
    whatever device count it trained on."""
    from zoo import checkpoint

    path = Path(path)
    if (path / "config.json").is_file():
        return _load_gpt2(str(path))
    step = None
    if path.name.isdigit() and checkpoint.find_checkpoints(path.parent) == path.parent:
        path, step = path.parent, int(path.name)
    ckpt_dir = checkpoint.find_checkpoints(path)
    if ckpt_dir is None:
        raise ValueError(f"{str(path)!r} is neither a zoo run directory (no checkpoints/) nor a "
                         "Hugging Face GPT-2 folder (no config.json)")
    state, extra, _ = checkpoint.load_on_host(ckpt_dir, step)
    saved = extra.get("data", {}).get("tokenizer")
    if not saved and (ckpt_dir.parent / "tokenizer.json").is_file():
        saved = json.loads((ckpt_dir.parent / "tokenizer.json").read_text())
    if not saved:
        raise ValueError(f"the run in {path} saved no tokenizer: it is not a language model run")
    model_config = extra.get("config", {}).get("model", {})
    return model_for(model_config), state["params"]["model"], tok.from_config(saved)


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
        model = model_for(model_config)
        if isinstance(tokenizer, dict):
            tokenizer = tok.from_config(tokenizer)
    elif path is not None:
        model, params, tokenizer = load_run(path)
    else:
        raise ValueError("generate_main needs a path (a zoo run or a GPT-2 folder) or params")
    return Generator(model, params, tokenizer).generate_text(
        prompt, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
