"""The LSTM LM: truncated BPTT with the state carried across batches, stream batching, training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zoo import models, text_data
from zoo.core import compiled, parallel
from zoo.core.train_state import TrainState

CFG = dict(family="lstm", vocab_size=30, hidden_size=16, num_layers=2, seq_len=5, unit="word",
           init_scale=0.1)


def test_stream_iterator_rows_continue():
    tokens = np.arange(203, dtype=np.int32)
    it = text_data.StreamIterator(tokens, 4, 5, process_index=0, process_count=1)
    assert it.batches_per_epoch == (50 - 1) // 5
    a, b = next(it), next(it)
    assert a["tokens"].shape == (4, 6) and a["reset"].tolist() == [1, 1, 1, 1]
    assert b["reset"].tolist() == [0, 0, 0, 0]
    np.testing.assert_array_equal(a["tokens"][:, 0], [0, 50, 100, 150])
    np.testing.assert_array_equal(b["tokens"][:, 0], a["tokens"][:, -1])  # row i continues row i
    saved = it.state()
    c = next(it)
    it.restore(saved)
    np.testing.assert_array_equal(next(it)["tokens"], c["tokens"])
    half = text_data.StreamIterator(tokens, 4, 5, process_index=1, process_count=2)
    np.testing.assert_array_equal(next(half)["tokens"], a["tokens"][2:])


def test_carried_state_across_two_batches_equals_concatenated_sequence():
    family = models.make_family(CFG)
    model = family.modules["model"]
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 30, 2 * 11 + 1).astype(np.int32)
    it = text_data.StreamIterator(tokens, 2, 5, process_index=0, process_count=1)
    b1, b2 = next(it), next(it)
    params, state = family.init(jax.random.PRNGKey(0), b1)
    loss_fn = jax.jit(family.objective[0].loss_fn)
    _, m1, state = loss_fn(params, state, b1, jax.random.PRNGKey(1))
    _, m2, state2 = loss_fn(params, state, b2, jax.random.PRNGKey(1))
    # The same 10 steps in one go.
    rows = np.concatenate([b1["tokens"], b2["tokens"][:, 1:]], axis=1)  # (2, 11)
    logits, carry = jax.jit(model.apply)({"params": params["model"]}, rows[:, :-1])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, rows[:, 1:])
    np.testing.assert_allclose(m1["loss"], ce[:, :5].mean(), rtol=1e-5)
    np.testing.assert_allclose(m2["loss"], ce[:, 5:].mean(), rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
                 state2["model"]["carry"], carry)
    # A reset batch ignores the carried state: b1 again after b1 gives b1's first loss.
    _, m_reset, _ = loss_fn(params, state, b1, jax.random.PRNGKey(1))
    _, m_no_reset, _ = loss_fn(params, state, {**b1, "reset": np.zeros(2, np.int32)},
                               jax.random.PRNGKey(1))
    np.testing.assert_allclose(m_reset["loss"], m1["loss"], rtol=1e-6)
    assert abs(float(m_no_reset["loss"]) - float(m1["loss"])) > 1e-6


def test_trains_on_ptb_with_carried_state_and_rejects_pmap(shared_data):
    cfg = {"dataset": "ptb", "path": str(shared_data / "raw" / "ptb"), "batching": "stream",
           "seq_len": 10, "batch_size": 8}
    tokens, tokenizer = text_data.load_tokens(cfg, "valid")
    family = models.make_family({**CFG, "vocab_size": tokenizer.vocab_size, "hidden_size": 32,
                                 "seq_len": 10, "dropout": 0.2, "tie_embeddings": True})
    it = text_data.make_iterator(cfg, tokens[:20_000])
    params, model_state = family.init(jax.random.PRNGKey(0), next(iter(
        text_data.make_iterator(cfg, tokens[:20_000]))))
    strategy = parallel.make_strategy("single")
    state = strategy.place_state(TrainState.create(
        params=params["model"], model_state=model_state["model"],
        tx=optax.chain(optax.clip_by_global_norm(5.0), optax.adam(1e-2)), seed=0))
    step = compiled.compile_train_step(family.objective, strategy, batch_spec=family.batch_spec)
    losses = []
    for _ in range(25):
        state, m = step(state, next(it))
        losses.append(float(m["loss"]))
    assert np.isfinite(losses).all() and losses[0] > 9.0  # ln(10000) = 9.2 at the start
    assert np.mean(losses[-5:]) < losses[0] - 1.5, losses
    carry = state.model_state["model"]["carry"]
    assert float(jnp.abs(carry[1][1]).max()) > 0.01  # the state really is carried
    with pytest.raises(ValueError, match="carried state needs the single or mesh strategy"):
        pmap = parallel.make_strategy("pmap")
        compiled.compile_train_step(family.objective, pmap, batch_spec=family.batch_spec)(
            pmap.place_state(state), next(it))
