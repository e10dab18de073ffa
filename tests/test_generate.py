"""Generation: KV-cache decoding against full recompute, sampling, seeds, compiles, bad input."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zoo import generate, models, text_data
from zoo import tokenizers as tok
from zoo.core import compiled, parallel
from zoo.core.compiled import CompileCounter
from zoo.core.train_state import TrainState
from zoo.models import lstm, transformer

TINY = dict(family="transformer", vocab_size=65, block_size=32, n_layer=2, n_head=2, n_embd=32,
            seq_len=16, unit="char")


@pytest.fixture(scope="module")
def shakespeare(shared_data):
    cfg = {"dataset": "tiny_shakespeare", "path": str(shared_data / "raw" / "tiny_shakespeare")}
    return text_data.load_tokens(cfg, "train")


@pytest.fixture(scope="module")
def gpt(shakespeare):
    _, tokenizer = shakespeare
    model = transformer.make_model(TINY)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
    return generate.Generator(model, params, tokenizer, buckets=(8, 16))


def _greedy_by_recompute(model, params, prompt, n, apply_fn, width=16):
    """Greedy decoding by running the whole sequence for every token (padded: one compile)."""
    seq = list(prompt)
    for _ in range(n):
        logits = apply_fn(params, jnp.asarray([seq + [0] * (width - len(seq))]))
        seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
    return seq[len(prompt):]


def test_greedy_kv_cache_generation_equals_recompute_in_a_mixed_length_batch(gpt):
    prompts = [[5, 9, 13], [1, 2, 3, 4, 5, 6, 7]]
    out = gpt.generate_tokens(prompts, 6, temperature=0.0)
    apply = jax.jit(lambda p, x: gpt.model.apply({"params": p}, x))
    for prompt, row in zip(prompts, out):
        assert row.tolist() == _greedy_by_recompute(gpt.model, gpt.params, prompt, 6, apply)


def test_lstm_generates_through_the_same_api_and_generate_main():
    cfg = dict(family="lstm", vocab_size=20, hidden_size=16, num_layers=2)
    model = lstm.make_model(cfg)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]
    tokenizer = tok.CharTokenizer("abcdefghijklmnopqrst")
    prompts = ["de", "fghij"]
    out = generate.generate_main(prompt=prompts, model_config=cfg, params=params,
                                 tokenizer=tokenizer.to_config(), max_new_tokens=5,
                                 temperature=0.0)
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x)[0])
    for prompt, text in zip(prompts, out):
        want = _greedy_by_recompute(model, params, tokenizer.encode(prompt), 5, apply)
        assert tokenizer.encode(text) == want


def test_seeded_sampling_and_no_recompiles_within_a_bucket(gpt):
    kw = dict(temperature=1.0, top_k=20, top_p=0.95)
    a = gpt.generate_text(["ROMEO:", "JULIET: O"], 8, seed=1, **kw)
    with CompileCounter() as counter:
        b = gpt.generate_text(["ROMEO:", "JULIET: O"], 8, seed=1, **kw)
        c = gpt.generate_text(["ROMEO:", "JULIET: O"], 8, seed=2, **kw)
        gpt.generate_text(["To be, or not", "Ay"], 12, temperature=0.7, top_k=0, top_p=1.0)
    assert a == b and a != c
    assert counter.count == 0  # other lengths, settings and seeds reuse the compiled steps
    assert all(len(t) == 8 for t in a)


def test_sample_logits_top_k_and_top_p():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 2000))
    sample = jax.jit(generate.sample_logits)
    draw = lambda **kw: np.asarray(sample(
        logits, jax.random.PRNGKey(0), jnp.float32(kw.get("t", 1.0)), jnp.int32(kw.get("k", 0)),
        jnp.float32(kw.get("p", 1.0))))
    assert set(draw(k=2).tolist()) == {0, 1}
    assert set(draw(p=0.7).tolist()) == {0, 1}      # 0.5 < 0.7 <= 0.8
    assert set(draw().tolist()) == {0, 1, 2, 3}
    assert set(draw(t=0.0).tolist()) == {0}
    np.testing.assert_allclose(np.mean(draw() == 0), 0.5, atol=0.04)


def test_bad_input_errors(gpt):
    with pytest.raises(ValueError, match=r"2 character\(s\) outside the vocabulary.*'@'.*'é'"):
        gpt.generate_text(["caf\u00e9 @ home"], 4)
    with pytest.raises(ValueError, match="exceeds the model's context of 32 tokens"):
        gpt.generate_text(["ROMEO: " * 4], 10)
    with pytest.raises(ValueError, match="unknown tokenizer 'wordpiece'"):
        generate.generate_main(prompt="hi", model_config=TINY, params=gpt.params,
                               tokenizer={"name": "wordpiece"})


def test_a_runs_text_sampler_is_checked_when_it_is_made(gpt, tmp_path):
    # A family whose text decoder is player "lm": the sampler asks the family which params.
    family = dataclasses.replace(models.make_family(TINY), modules={"lm": gpt.model},
                                 text_decoder=gpt.model)
    tokenizer = gpt.tokenizer  # a context of 32 characters
    make = lambda **train: generate.make_text_sampler(family, tokenizer, train, "First Citizen:")
    assert make(sample_tokens=0) is None
    with pytest.raises(ValueError, match=r"train.sample_prompt='caf\u00e9 @' has 2 "
                                         r"character\(s\) outside the tokenizer's vocabulary: "
                                         r"'@', '\u00e9'"):
        make(sample_prompt="caf\u00e9 @", sample_tokens=4)
    with pytest.raises(ValueError, match=r"train.sample_prompt \(40 tokens\) fills the "
                                         r"transformer's context of 32 tokens"):
        make(sample_prompt="ROMEO: " * 5 + "Hello", sample_tokens=4)
    with pytest.raises(ValueError, match=r"train.sample_prompt \(8 tokens\) \+ "
                                         r"train.sample_tokens=30 exceed the transformer's context "
                                         r"of 32 tokens; set train.sample_tokens to at most 24"):
        make(sample_tokens=30)  # the default prompt: 8 characters of the evaluation text
    sample_fn = make(sample_tokens=24)
    written = sample_fn({"lm": gpt.params}, {}, jax.random.PRNGKey(0), tmp_path, 7)
    assert written.count("First Ci") == 2 and (tmp_path / "step_0000007.txt").is_file()
    # An LSTM has no context to fill.
    lstm_family = models.make_family(dict(family="lstm", vocab_size=65, hidden_size=8))
    assert generate.make_text_sampler(lstm_family, tokenizer, {"sample_tokens": 500}, "x" * 9)
    # A family that generates no text has no sampler, whatever the config asks.
    with pytest.raises(ValueError, match="the autoencoder family cannot generate text"):
        generate.make_text_sampler(models.make_family({"family": "autoencoder"}), tokenizer,
                                   {"sample_tokens": 4}, "x")


def test_short_training_on_tiny_shakespeare_lowers_the_loss(shakespeare):
    tokens, tokenizer = shakespeare
    family = models.make_family({**TINY, "vocab_size": tokenizer.vocab_size})
    it = text_data.WindowIterator(tokens, 16, 16, seed=0)
    params, _ = family.init(jax.random.PRNGKey(0), None)
    strategy = parallel.make_strategy("single")
    state = strategy.place_state(TrainState.create(params=params["model"],
                                                   tx=optax.adam(3e-3), seed=0))
    step = compiled.compile_train_step(family.objective, strategy, batch_spec=family.batch_spec)
    losses = []
    for _ in range(60):
        state, m = step(state, next(it))
        losses.append(float(m["loss"]))
    assert losses[0] > 3.9  # ln(65) = 4.17 at the start
    assert np.mean(losses[-10:]) < losses[0] - 0.9, losses  # 3.3 nats: character frequencies


@pytest.mark.slow
def test_tiny_shakespeare_through_tfds_offline(tfds_dirs, shared_data):
    cfg = {"dataset": "tiny_shakespeare", "source": "tfds", **tfds_dirs}
    train = text_data.load_text(cfg, "train")
    raw = (shared_data / "raw" / "tiny_shakespeare" / "input.txt").read_text()
    assert len(train) == 1_003_854 and raw.startswith(train)
    tokens, tokenizer = text_data.load_tokens(cfg, "test")
    assert tokenizer.vocab_size == 65 and len(tokens) == 55_770


def test_a_model_vocabulary_larger_than_the_tokenizers_never_yields_padded_ids(shakespeare):
    _, tokenizer = shakespeare  # 65 characters
    model = transformer.make_model({**TINY, "vocab_size": 80})
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
    gen = generate.Generator(model, params, tokenizer, buckets=(8,))
    ids = gen.generate_tokens([tokenizer.encode("ROMEO:")] * 8, 24, temperature=1.0, seed=0)
    assert ids.max() < 65 and len(np.unique(ids)) > 20  # 192 draws spread over the 65
    assert all(len(t) == 24 for t in gen.generate_text(["ROMEO:"] * 8, 24, temperature=1.0))

    # An LSTM whose padded ids have by far the largest logits: greedy and sampling skip them.
    lstm_model = lstm.make_model(dict(family="lstm", vocab_size=80, hidden_size=16))
    params = jax.jit(lstm_model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]
    params["out"]["bias"] = params["out"]["bias"].at[65:].set(100.0)
    gen = generate.Generator(lstm_model, params, tokenizer)
    for temperature in (0.0, 1.0):
        ids = gen.generate_tokens([[1, 2, 3]] * 4, 16, temperature=temperature, top_k=70)
        assert ids.max() < 65, temperature
