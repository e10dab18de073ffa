"""The LSTM LM: truncated BPTT with the state carried across batches, stream batching, training."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zoo import models, text_data
from zoo.checkpoint import Checkpointer
from zoo.core import compiled, parallel
from zoo.core.step import PER_EXAMPLE, AllPlayers
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
                 state2["model"][PER_EXAMPLE]["carry"], carry)
    # A reset batch ignores the carried state: b1 again after b1 gives b1's first loss.
    _, m_reset, _ = loss_fn(params, state, b1, jax.random.PRNGKey(1))
    _, m_no_reset, _ = loss_fn(params, state, {**b1, "reset": np.zeros(2, np.int32)},
                               jax.random.PRNGKey(1))
    np.testing.assert_allclose(m_reset["loss"], m1["loss"], rtol=1e-6)
    assert abs(float(m_no_reset["loss"]) - float(m1["loss"])) > 1e-6


@pytest.mark.parametrize("name,options", [("single", {}), ("pmap", {}), ("mesh", {"data": 8})])
def test_evaluation_carries_the_state_through_the_split(name, options):
    """The shared eval step over a stream pass equals the loss of each row's whole stream at once,
    under every strategy (the evaluation's own carried state is per-example state)."""
    from zoo import evaluate

    cfg = {**CFG, "init_scale": 0.5}  # larger weights: a state that matters more
    family = models.make_family(cfg)
    model = family.modules["model"]
    tokens = np.random.default_rng(1).integers(0, 30, 8 * 16 + 1).astype(np.int32)
    it = text_data.StreamIterator(tokens, 8, 5, process_index=0, process_count=1)
    params, model_state = family.init(jax.random.PRNGKey(0), next(iter(it.epoch_batches())))
    strategy = parallel.make_strategy(name, **options)
    # The training carry has another number of rows (16) than the evaluation batch (8).
    model_state = {"model": {PER_EXAMPLE: {"carry": model.initial_carry(16)}}}
    state = strategy.place_state(TrainState.create(
        params=params["model"], model_state=model_state["model"], tx=optax.sgd(1.0), seed=0))
    eval_step = compiled.compile_eval_step(AllPlayers(family.eval_metrics), strategy,
                                           batch_spec=family.batch_spec)
    got = evaluate.evaluate(eval_step, state, it.epoch_batches())
    rows = it.rows[:, :it.batches_per_epoch * 5 + 1]                  # (8, 16): 3 batches of 5
    logits, _ = model.apply({"params": params["model"]}, rows[:, :-1])
    want = optax.softmax_cross_entropy_with_integer_labels(logits, rows[:, 1:]).mean()
    np.testing.assert_allclose(got["loss"], want, rtol=1e-5)
    np.testing.assert_allclose(got["perplexity"], np.exp(want), rtol=1e-5)
    # Batch by batch from zeros is a different number: the carried state matters.
    no_carry = models.make_family({**cfg, "carry_state": False})
    fresh = np.mean([no_carry.eval_metrics(params, {"model": {}}, b, None)["loss"]
                     for b in it.epoch_batches()])
    assert abs(fresh - float(want)) > 1e-3, (fresh, want)


def test_trains_on_ptb_with_carried_state_then_goes_on_under_pmap(shared_data):
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
    carry = state.model_state["model"][PER_EXAMPLE]["carry"]
    assert float(jnp.abs(carry[1][1]).max()) > 0.01  # the state really is carried
    # The same run goes on under pmap: the state's 8 rows are split over the 8 devices and keep
    # training (that they give the single strategy's numbers is tested on random tokens below).
    pmap = parallel.make_strategy("pmap")
    state = pmap.place_state(strategy.to_host(state))
    pmap_step = compiled.compile_train_step(family.objective, pmap, batch_spec=family.batch_spec)
    for _ in range(5):
        state, m = pmap_step(state, next(it))
        losses.append(float(pmap.to_host(m)["loss"]))
    assert np.isfinite(losses).all() and np.mean(losses[-5:]) < losses[0] - 1.5, losses
    carry = pmap.to_host(state.model_state)["model"][PER_EXAMPLE]["carry"]
    assert carry[1][1].shape == (8, 32) and float(np.abs(carry[1][1]).max()) > 0.01


# A stream of random tokens: 16 rows of 16 tokens, 3 batches of seq_len 5 per epoch, so a 5-step
# run crosses an epoch boundary (a reset) and then carries the state again.
STREAM_BATCH = 16


def _stream():
    tokens = np.random.default_rng(0).integers(0, CFG["vocab_size"], STREAM_BATCH * 16)
    return text_data.StreamIterator(tokens, STREAM_BATCH, CFG["seq_len"], process_index=0,
                                    process_count=1)


def _host_state(family):
    params, model_state = family.init(jax.random.PRNGKey(0), next(_stream()))
    return TrainState.create(params=params, tx={"model": optax.sgd(1.0)},
                             model_state=model_state, seed=0)


def _train_stream(name, options, grad_accum_steps=1, steps=5, cfg=CFG):
    family = models.make_family(cfg)  # dropout 0: every strategy computes the same function
    strategy = parallel.make_strategy(name, **options)
    state = strategy.place_state(_host_state(family))
    step = compiled.compile_train_step(family.objective, strategy, batch_spec=family.batch_spec,
                                       grad_accum_steps=grad_accum_steps)
    it, losses = _stream(), []
    for _ in range(steps):
        state, m = step(state, next(it))
        losses.append(float(strategy.to_host(m)["loss"]))
    return strategy.to_host(state), losses


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def stream_reference():
    return _train_stream("single", {})


@pytest.mark.parametrize("name,options,grad_accum_steps", [
    ("pmap", {}, 1), ("mesh", {"data": 4, "fsdp": 2}, 1), ("single", {}, 2), ("pmap", {}, 2)])
def test_carried_state_is_the_same_under_every_strategy(stream_reference, name, options,
                                                         grad_accum_steps):
    # Tolerance: every run computes the same float32 functions of the same rows; they differ only
    # in how the gradient's mean over the 16 rows is summed (one sum, per-device partial sums plus
    # an all-reduce, or two microbatch means). Each order costs a few ulps (~1e-7 relative); after
    # 5 SGD steps on a 16-unit LSTM params and carry differ by ~3e-8, far below atol 1e-6. A carry
    # averaged over devices or put back in the wrong row order is off by ~2e-2 (its rows differ).
    reference, ref_losses = stream_reference
    got, losses = _train_stream(name, options, grad_accum_steps)
    _assert_trees_close(got.model_state, reference.model_state)
    _assert_trees_close(got.params, reference.params)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    h = reference.model_state["model"][PER_EXAMPLE]["carry"][1][1]
    assert h.shape == (STREAM_BATCH, CFG["hidden_size"]) and float(np.abs(h).max()) > 0.01
    assert len(np.unique(h.round(4), axis=0)) == STREAM_BATCH  # every row its own state
    init = _host_state(models.make_family(CFG))
    assert max(float(np.abs(a - b).max()) for a, b in
               zip(jax.tree.leaves(reference.params), jax.tree.leaves(init.params))) > 1e-3


def test_checkpoint_saved_under_pmap_restores_under_mesh(tmp_path):
    family = models.make_family(CFG)
    template = _host_state(family)
    pmap, mesh = parallel.make_strategy("pmap"), parallel.make_strategy("mesh", data=4, fsdp=2)
    pmap_step, mesh_step = (compiled.compile_train_step(family.objective, s,
                                                        batch_spec=family.batch_spec)
                            for s in (pmap, mesh))
    it = _stream()
    state = pmap.place_state(template)
    for _ in range(2):
        state, _ = pmap_step(state, next(it))
    ckpt = Checkpointer(tmp_path, async_save=False)
    ckpt.save(2, state, pmap)
    restored, _, step = ckpt.restore(template, mesh)
    ckpt.close()
    assert step == 2
    carry = restored.model_state["model"][PER_EXAMPLE]["carry"]
    assert carry[0][0].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
    saved = pmap.to_host(state)
    assert float(np.abs(saved.model_state["model"][PER_EXAMPLE]["carry"][1][1]).max()) > 0.01
    jax.tree.map(np.testing.assert_array_equal, mesh.to_host(restored), saved)  # a copy: exact
    # And training goes on from it the same way under both (tolerance as above).
    batch = next(it)
    state, _ = pmap_step(state, batch)
    restored, _ = mesh_step(restored, batch)
    _assert_trees_close(mesh.to_host(restored), pmap.to_host(state))


def test_without_carried_state_it_trains_on_random_windows_or_rows():
    """carry_state=False has no reset to take: random windows (no reset) and stream rows both
    train it."""
    from zoo import train
    from zoo.config import default_config
    for batching in ("random", "stream"):
        config = default_config()
        config.model = {**CFG, "hidden_size": 16, "seq_len": 8, "carry_state": False,
                        "vocab_size": 0, "unit": ""}
        config.data.update(dataset="synthetic", seq_len=8, batch_size=8, eval_batch_size=8,
                           synthetic_size=2000, batching=batching)
        config.train.update(steps=40, log_every=5, sample_tokens=0)
        config.optimizer.learning_rate = 0.02
        result = train.train(config, None, log=lambda s: None)
        assert "reset" not in result.family.batch_spec
        losses = [h["loss"] for h in result.history]  # from ln(64) = 4.16 down towards the
        assert losses[-1] < losses[0] - 0.3, losses   # synthetic text's noise entropy


def test_the_lstm_layer_is_flaxs_optimized_lstm_cell_in_values_and_gradients():
    # zoo's LSTMLayer (one input matmul before the scan, a custom backward that forms the weight
    # gradients in one matmul over all steps) against flax's OptimizedLSTMCell under nn.RNN, the
    # autodiffed scan it replaces, on the same params: outputs, final carry and gradients of
    # a loss that reads all of them; with seq_lengths (decoding) the carry of each row's last step.
    from flax import linen as nn
    from zoo.models.lstm import LSTMLayer, symmetric_uniform
    B, T, D, H = 3, 7, 5, 6
    init = symmetric_uniform(0.5)  # large enough that every gate saturates somewhere
    ours = LSTMLayer(H, kernel_init=init, recurrent_kernel_init=init, bias_init=init)
    flax_rnn = nn.RNN(nn.OptimizedLSTMCell(H, kernel_init=init, recurrent_kernel_init=init,
                                           bias_init=init))
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    x = jax.random.normal(k[0], (B, T, D))
    carry = (jax.random.normal(k[1], (B, H)), jax.random.normal(k[2], (B, H)))
    params = ours.init(k[3], x, carry)["params"]
    flax_params = flax_rnn.init(k[3], x, initial_carry=carry)["params"]["cell"]
    # The same names and shapes (checkpoints move between the two; nn.RNN's lifted scan folds
    # the init rng differently, so fresh values differ), and the same initialiser's range.
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, flax_params)
    values = np.concatenate([np.ravel(a) for a in jax.tree.leaves(params)])
    assert 0.45 < np.max(np.abs(values)) <= 0.5 and len(np.unique(values)) == values.size

    def loss(run):
        def f(params, x, carry):
            (c, h), ys = run(params, x, carry)
            return jnp.sum(jnp.sin(3 * ys)) + jnp.sum(c * jnp.arange(H)) + jnp.sum(h ** 3)
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))

    ours_run = lambda p, x, carry: ours.apply({"params": p}, x, carry)
    flax_run = lambda p, x, carry: flax_rnn.apply({"params": {"cell": p}}, x,
                                                  initial_carry=carry, return_carry=True)
    got, want = loss(ours_run)(params, x, carry), loss(flax_run)(params, x, carry)
    assert abs(float(want[0])) > 1 and float(optax.tree.norm(want[1][0])) > 1
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    lengths = jnp.array([7, 1, 4])
    got = ours.apply({"params": params}, x, carry, lengths)
    want = flax_rnn.apply({"params": {"cell": params}}, x, initial_carry=carry,
                          seq_lengths=lengths, return_carry=True)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def _reference_cudnn_kernel(calls):
    """``jax.experimental.rnn.lstm``'s signature over its pure-JAX reference (``lstm_ref``, the
    semantics of cuDNN's kernel) and its own unpacking of the flat weights: where no GPU runs
    the kernel, this checks zoo's packing against JAX's layout."""
    from jax.experimental import rnn

    def kernel(x, h_0, c_0, weights, seq_lengths, input_size, hidden_size, num_layers, dropout,
               bidirectional):
        calls.append(x.shape)
        unpacked = rnn.unpack_lstm_weights(weights, input_size, hidden_size, num_layers,
                                           bidirectional)
        return rnn.lstm_ref(x, h_0, c_0, *unpacked, seq_lengths, input_size, hidden_size,
                            num_layers, dropout, bidirectional)
    return kernel


def test_the_cudnn_path_is_the_scan_in_values_and_gradients(monkeypatch):
    # With model.lstm_impl="cudnn" (what an unset one is on one CUDA GPU), each layer runs
    # jax.experimental.rnn's cuDNN kernel. Here the kernel is its reference implementation and
    # "a CUDA GPU" is pretended: the two-layer model's loss, carry and gradients equal the scan's.
    from jax.experimental import rnn
    from zoo.models import lstm
    calls = []
    monkeypatch.setattr(rnn, "lstm", _reference_cudnn_kernel(calls))
    monkeypatch.setattr(lstm, "cudnn_applies", lambda dtype: True)
    cfg = dict(family="lstm", vocab_size=30, hidden_size=8, num_layers=2, embed_dim=6,
               init_scale=0.5)  # large enough that the gates saturate somewhere
    scan, cudnn = (lstm.make_model({**cfg, "lstm_impl": name}) for name in ("scan", "cudnn"))
    tokens = jax.random.randint(jax.random.PRNGKey(0), (3, 7), 0, 30)
    carry = [tuple(jax.random.normal(jax.random.PRNGKey(i), (2, 3, 8))) for i in (1, 2)]
    params = scan.init(jax.random.PRNGKey(3), tokens, carry)["params"]

    def loss(model):
        def f(params, carry):
            logits, new_carry = model.apply({"params": params}, tokens, carry)
            return jnp.sum(jnp.sin(logits)) + sum(jnp.sum(c) + jnp.sum(h ** 3)
                                                  for c, h in new_carry)
        return jax.value_and_grad(f, argnums=(0, 1))(params, carry)

    want, got = loss(scan), loss(cudnn)
    assert calls == [(3, 7, 6), (3, 7, 8)]  # batch-first, one call per layer
    assert abs(float(want[0])) > 1 and float(optax.tree.norm(want[1])) > 1
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name,options,rows_per_call", [
    ("single", {}, STREAM_BATCH), ("pmap", {}, STREAM_BATCH // 8), ("mesh", {"data": 8}, None),
    ("mesh", "one device", STREAM_BATCH)])
def test_cudnn_runs_where_each_device_runs_the_whole_step(stream_reference, monkeypatch, name,
                                                          options, rows_per_call):
    # On a pretended CUDA GPU, model.lstm_impl unset: under single and pmap each device runs the
    # whole step, so the kernel (here JAX's reference of it) runs there, on each device's rows;
    # under a mesh of 8 devices XLA partitions the step, so the scan runs; a mesh of one of the
    # 8 devices runs the kernel again. Every strategy trains to the single strategy's scan
    # numbers, and the record says what ran.
    from jax.experimental import rnn
    from zoo.models import lstm
    if options == "one device":
        options = {"devices": jax.devices()[:1]}
    calls = []
    monkeypatch.setattr(rnn, "lstm", _reference_cudnn_kernel(calls))
    monkeypatch.setattr(lstm, "cudnn_applies", lambda dtype: True)
    got, losses = _train_stream(name, options, steps=3)
    want = stream_reference[1][:3]
    np.testing.assert_allclose(losses, want, rtol=2e-5)
    rows = {shape[0] for shape in calls}
    assert rows == ({rows_per_call} if rows_per_call else set()), calls
    with parallel.make_strategy(name, **options).tracing():
        chosen = models.make_family(CFG).implementations()
    assert chosen == {"lstm": "cudnn" if rows_per_call else "scan"}


def test_the_lstm_implementation_is_the_scan_on_cpu_and_a_named_one_is_checked(monkeypatch):
    from zoo.models import lstm
    assert lstm.lstm_implementation(None, jnp.float32) == "scan"
    # A pretended CUDA GPU (a device as JAX describes one): cuDNN in float32 on one device; the
    # scan in bfloat16 (the kernel takes float32 only) and on more devices.
    cuda = types.SimpleNamespace(platform="gpu",
                                 client=types.SimpleNamespace(platform_version="cuda 12090"))
    with monkeypatch.context() as pretend:
        pretend.setattr(jax, "devices", lambda *backend: [cuda])
        assert lstm.cudnn_applies(jnp.float32) and not lstm.cudnn_applies(jnp.bfloat16)
        for devices, want in ((1, "cudnn"), (8, "scan")):
            pretend.setattr(jax, "device_count", lambda: devices)
            assert lstm.lstm_implementation(None, jnp.float32) == want
            # What the family tells zoo train's log and the bench's records.
            assert models.make_family(CFG).implementations() == {"lstm": want}
        pretend.setattr(jax, "device_count", lambda: 1)
        assert lstm.lstm_implementation(None, jnp.bfloat16) == "scan"
    assert models.make_family(CFG).implementations() == {"lstm": "scan"}
    assert lstm.lstm_implementation("scan", jnp.float32) == "scan"
    with pytest.raises(ValueError, match="lstm_impl='cudnn' needs a CUDA GPU and float32"):
        lstm.lstm_implementation("cudnn", jnp.float32)
    with pytest.raises(ValueError, match="unknown model.lstm_impl 'fused'; choose one of scan, cudnn"):
        lstm.make_model(dict(family="lstm", vocab_size=30, lstm_impl="fused"))
    # Decoding (seq_lengths) runs the scan whatever is named: a run that trained with cuDNN
    # generates on any machine.
    model = lstm.make_model(dict(family="lstm", vocab_size=30, hidden_size=8, lstm_impl="cudnn"))
    tokens = jnp.zeros((2, 3), jnp.int32)
    params = lstm.make_model(dict(family="lstm", vocab_size=30, hidden_size=8)).init(
        jax.random.PRNGKey(0), tokens)["params"]
    logits, _ = model.apply({"params": params}, tokens, seq_lengths=jnp.array([3, 2]))
    assert logits.shape == (2, 3, 30)
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        model.apply({"params": params}, tokens)
