"""The GPT-style transformer: KV cache, causality, presets, context errors, single vs mesh."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from zoo import models
from zoo.core import compiled, parallel
from zoo.core.train_state import TrainState
from zoo.models import transformer

TINY = dict(family="transformer", preset="tiny", vocab_size=65, block_size=32, n_layer=2,
            n_head=2, n_embd=32, seq_len=16, unit="char")


@pytest.fixture(scope="module")
def tiny():
    model = transformer.make_model(TINY)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
    return model, params


def test_kv_cache_matches_full_recompute(tiny):
    model, params = tiny
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 20), 0, 65)
    full = jax.jit(model.apply)({"params": params}, tokens)
    # Rows prefilled to different lengths (right-padded), then fed one token at a time.
    lengths = jnp.array([5, 9])
    padded = jnp.where(jnp.arange(12) < lengths[:, None], tokens[:, :12], 0)
    cache = transformer.init_cache(model, 2)
    step = jax.jit(lambda tok, cache, start: model.apply(
        {"params": params}, tok, cache, start, method=model.decode))
    logits, cache = step(padded, cache, jnp.zeros(2, jnp.int32))
    for b in range(2):
        np.testing.assert_allclose(logits[b, :lengths[b]], full[b, :lengths[b]], atol=1e-5)
    pos = lengths
    for _ in range(8):
        logits, cache = step(tokens[jnp.arange(2), pos][:, None], cache, pos)
        np.testing.assert_allclose(logits[:, 0], full[jnp.arange(2), pos], atol=1e-5)
        pos = pos + 1


def test_causal(tiny):
    model, params = tiny
    a = jax.random.randint(jax.random.PRNGKey(2), (1, 16), 0, 65)
    b = a.at[0, 10].set((a[0, 10] + 1) % 65)
    apply = jax.jit(model.apply)
    la, lb = apply({"params": params}, a), apply({"params": params}, b)
    np.testing.assert_array_equal(la[0, :10], lb[0, :10])
    assert float(jnp.max(jnp.abs(la[0, 10:] - lb[0, 10:]))) > 1e-3


def test_context_length_error(tiny):
    model, params = tiny
    with pytest.raises(ValueError, match="33 tokens exceeds the model's context of 32"):
        model.apply({"params": params}, jnp.zeros((1, 33), jnp.int32))
    with pytest.raises(ValueError, match="seq_len=64 exceeds"):
        models.make_family({**TINY, "seq_len": 64})
    with pytest.raises(ValueError, match="unknown transformer preset 'gpt5'"):
        transformer.make_model({**TINY, "preset": "gpt5"})


@pytest.mark.parametrize("preset,expected", [("gpt2", 124_439_808), ("gpt2-medium", 354_823_168)])
def test_gpt2_preset_sizes(preset, expected):
    model = transformer.make_model({"preset": preset})
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
    assert sum(x.size for x in jax.tree.leaves(shapes)) == expected  # Hugging Face's counts


def test_remat_and_bfloat16_agree_with_float32(tiny):
    _, params = tiny
    tokens = jax.random.randint(jax.random.PRNGKey(3), (2, 16), 0, 65)

    def loss(model, p):
        logits = model.apply({"params": p}, tokens[:, :-1])
        return transformer.lm_metrics(logits, tokens[:, 1:], "char")[0]

    base = transformer.make_model(TINY)
    remat = transformer.make_model({**TINY, "remat": True})
    bf16 = transformer.make_model({**TINY, "dtype": "bfloat16"})  # bf16 activations, f32 params
    g32, g_remat, l32, l16 = jax.jit(lambda p: (
        jax.grad(lambda q: loss(base, q))(p), jax.grad(lambda q: loss(remat, q))(p),
        loss(base, p), loss(bf16, p)))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g32, g_remat)
    assert abs(float(l16) - float(l32)) < 0.05
    assert float(l16) != float(l32)  # the bf16 model did compute in bf16
    # remat is really there: jax.checkpoint lowers through optimization barriers.
    barriers = lambda model: jax.jit(jax.grad(lambda q: loss(model, q))).lower(
        params).as_text().count("optimization_barrier")
    assert barriers(base) == 0 and barriers(remat) > 0


def _train(strategy, family, params, batches):
    # SGD: parameter differences then track gradient differences (Adam would amplify the tiny
    # reduction-order differences of near-zero gradients).
    state = TrainState.create(params=params, tx=optax.sgd(1.0), seed=0)
    step = compiled.compile_train_step(family.objective, strategy, batch_spec=family.batch_spec)
    state = strategy.place_state(state)
    losses = []
    for batch in batches:
        state, m = step(state, batch)
        losses.append(float(strategy.to_host(m)["loss"]))
    return strategy.to_host(state.params), losses, state


def test_single_and_mesh_fsdp_give_the_same_params():
    family = models.make_family({**TINY, "n_layer": 1, "dropout": 0.1})
    params, _ = family.init(jax.random.PRNGKey(0), None)
    rng = np.random.default_rng(0)
    batches = [{"tokens": rng.integers(0, 65, (8, 17)).astype(np.int32)} for _ in range(3)]
    single, l1, _ = _train(parallel.make_strategy("single"), family, params["model"], batches)
    mesh = parallel.make_strategy("mesh", data=4, fsdp=2)
    sharded, l2, state = _train(mesh, family, params["model"], batches)
    wte = state.params["model"]["wte"]["embedding"]
    assert "fsdp" in str(wte.sharding.spec)  # the big leaves really are sharded
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), single, sharded)


@pytest.mark.slow
@pytest.mark.parametrize("cfg,batch", [
    (TINY, {"tokens": np.zeros((4, 17), np.int32)}),
    (dict(family="lstm", vocab_size=30, hidden_size=16, num_layers=2, seq_len=5),
     {"tokens": np.zeros((4, 6), np.int32), "reset": np.zeros(4, np.int32)})])
def test_flops_per_example_counts_every_matmul(cfg, batch):
    from zoo import flops
    from zoo.core import step as step_lib
    family = models.make_family(cfg)
    params, model_state = family.init(jax.random.PRNGKey(0), batch)
    state = TrainState.create(params=params, tx={"model": optax.sgd(1.0)},
                              model_state=model_state, seed=0)
    counted = flops.jaxpr_flops(step_lib.make_train_step(family.objective), state, batch)
    assert counted == pytest.approx(4 * family.flops_per_example, rel=1e-6)


@pytest.mark.parametrize("block, T", [(8, 32), (16, 32), (7, 30), (13, 30), (1, 5)])
def test_blocked_causal_attention_is_jaxs_causal_attention(block, T):
    # The blocks skip only masked scores (weight exactly 0), so values and gradients are
    # jax.nn.dot_product_attention's up to float32 rounding (7 and 13 do not divide 30: a shorter
    # last block). Unit-scale q and k make the softmax far from uniform, so a block that sees a
    # wrong key range, or a softmax that is not shared across its two parts, shows.
    q, k, v, dy = (jax.random.normal(jax.random.PRNGKey(i), (2, T, 3, 8)) for i in range(4))
    plain = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True))
    blocked = jax.jit(lambda q, k, v: transformer.causal_attention(q, k, v, query_block=block))
    np.testing.assert_allclose(blocked(q, k, v), plain(q, k, v), rtol=1e-5, atol=1e-6)
    want = jax.vjp(plain, q, k, v)[1](dy)
    got = jax.vjp(blocked, q, k, v)[1](dy)
    for a, b in zip(want, got):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(a))))
    # bfloat16 in, bfloat16 out, within bfloat16's rounding of jax's own bfloat16 attention.
    half = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    got_half = blocked(*half)
    assert got_half.dtype == jnp.bfloat16
    np.testing.assert_allclose(got_half.astype(jnp.float32), plain(*half).astype(jnp.float32),
                               atol=3e-2)


def test_causal_attention_on_cpu_blocks_from_two_blocks_and_gives_the_same_numbers():
    q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (1, 1024, 2, 8)) for i in range(3))
    plain = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True))
    default = jax.jit(transformer.causal_attention)
    # n blocks: n own-block and n - 1 earlier-keys score products, as many products with v.
    dots = lambda n, **kw: str(jax.make_jaxpr(lambda q, k, v: transformer.causal_attention(
        q, k, v, **kw))(q[:, :n], k[:, :n], v[:, :n])).count("dot_general")
    block = transformer.CPU_QUERY_BLOCK
    assert dots(4 * block) == 2 * (2 * 4 - 1)
    assert dots(2 * block) == 2 * (2 * 2 - 1)
    assert dots(block) == 2  # one block: jax.nn.dot_product_attention
    assert dots(4 * block, implementation="xla") == 2  # a named implementation is JAX's
    # Long contexts: at most CPU_MAX_QUERY_BLOCKS blocks, each longer.
    most = transformer.CPU_MAX_QUERY_BLOCKS
    assert dots(2 * most * block) == 2 * (2 * most - 1)
    np.testing.assert_allclose(default(q[:, :256], k[:, :256], v[:, :256]),
                               plain(q[:, :256], k[:, :256], v[:, :256]), rtol=1e-5, atol=1e-6)


def test_the_family_says_which_attention_it_runs_here():
    # For zoo train's first line and the bench's records: on CPU, blocks from two of them.
    chosen = lambda **kw: models.make_family(dict(family="transformer", vocab_size=65,
                                                  **kw)).implementations()
    block = transformer.CPU_QUERY_BLOCK
    assert chosen(block_size=4 * block) == {"attention": f"blocked in {block}-query blocks"}
    assert chosen(block_size=block) == {"attention": "dot_product_attention (xla)"}
    assert chosen(block_size=4 * block, attention_impl="xla") == \
        {"attention": "dot_product_attention (xla)"}


def _pretended_gpu(capability="9.0"):
    """A CUDA GPU as JAX describes one (what cudnn_attention_applies reads of it)."""
    return types.SimpleNamespace(platform="gpu", compute_capability=capability,
                                 client=types.SimpleNamespace(platform_version="cuda 13000"))


def test_cudnn_attention_is_chosen_on_one_cuda_gpu_where_it_trains_the_dtype_and_shape(
        monkeypatch):
    bf16, f16, f32 = jnp.bfloat16, jnp.float16, jnp.float32
    assert not transformer.cudnn_attention_applies(bf16, 64, 256)  # here: a CPU
    assert transformer.attention_kernel(None, bf16, 64, 256) == "xla"
    with pytest.raises(ValueError, match="attention_impl='cudnn' needs a CUDA GPU .* here the "
                                         "device is cpu, the dtype bfloat16, the head size 64 "
                                         "and the length 256"):
        transformer.attention_kernel("cudnn", bf16, 64, 256)
    strategies = [parallel.make_strategy(name, **options) for name, options in
                  (("single", {}), ("pmap", {}), ("mesh", {"data": 8}))]
    with monkeypatch.context() as pretend:
        # Heads that are multiples of 8 up to 256 from compute capability 9.0, up to 128 on 8.0;
        # none before 8.0 or in float32.
        for capability, heads in (("9.0", {8, 64, 128, 136, 192, 256}), ("8.0", {8, 64, 128}),
                                  ("7.5", set())):
            pretend.setattr(jax, "devices", lambda *backend, c=capability: [_pretended_gpu(c)])
            for dtype in (bf16, f16, f32):
                for head in (8, 60, 64, 128, 136, 192, 256, 264):
                    want = dtype != f32 and head in heads
                    assert transformer.cudnn_attention_applies(dtype, head, 1024) == want, \
                        (capability, dtype, head)
        pretend.setattr(jax, "devices", lambda *backend: [_pretended_gpu()])
        # JAX refuses cuDNN's gradients at an odd number of tokens.
        assert [transformer.cudnn_attention_applies(bf16, 64, T) for T in (2, 255, 256, 1024)] \
            == [True, False, True, True]
        for devices, want in ((1, "cudnn"), (8, "xla")):
            pretend.setattr(jax, "device_count", lambda: devices)
            assert transformer.attention_kernel(None, bf16, 64, 256) == want
        # With 8 devices: cuDNN's kernel where each device runs the whole step (single, pmap),
        # XLA's where XLA partitions it over the mesh.
        for strategy, want in zip(strategies, ("cudnn", "cudnn", "xla")):
            with strategy.tracing():
                assert transformer.attention_kernel(None, bf16, 64, 256) == want, strategy.name
        pretend.setattr(jax, "device_count", lambda: 1)
        assert transformer.attention_kernel(None, f32, 64, 256) == "xla"
        assert transformer.attention_kernel(None, bf16, 64, 255) == "xla"
        assert transformer.attention_kernel("xla", bf16, 64, 256) == "xla"
        assert transformer.attention_kernel("cudnn", bf16, 64, 256) == "cudnn"
        with pytest.raises(ValueError, match="the dtype float32, the head size 64"):
            transformer.attention_kernel("cudnn", f32, 64, 256)
        # What zoo train's first line and the bench's records say: GPT-2 small's 64-wide heads
        # in bfloat16 run cuDNN's kernel, in float32 XLA's.
        pretend.setattr(jax, "default_backend", lambda: "gpu")
        chosen = lambda dtype: models.make_family(dict(
            family="transformer", preset="gpt2", vocab_size=65, block_size=1024,
            dtype=dtype)).implementations()
        assert chosen("bfloat16") == {"attention": "dot_product_attention (cudnn)"}
        assert chosen("float32") == {"attention": "dot_product_attention (xla)"}
        # A ROCm GPU (its capability is a gfx name): XLA's.
        rocm = types.SimpleNamespace(platform="gpu", compute_capability="gfx90a",
                                     client=types.SimpleNamespace(platform_version="rocm 60300"))
        pretend.setattr(jax, "devices", lambda *backend: [rocm])
        assert not transformer.cudnn_attention_applies(bf16, 64, 256)


def test_the_model_asks_jax_for_the_chosen_attention_kernel(monkeypatch):
    # On a pretended GPU where cuDNN's kernel applies, every layer's training attention asks
    # jax.nn.dot_product_attention for "cudnn" (run here as XLA's: no cuDNN on CPU), and decoding
    # against the cache asks for JAX's default (its mask is not causal-only).
    calls, dot_product_attention = [], jax.nn.dot_product_attention

    def recorded(*args, implementation=None, **kw):
        calls.append(implementation)
        return dot_product_attention(*args, **kw)
    monkeypatch.setattr(jax.nn, "dot_product_attention", recorded)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(transformer, "cudnn_attention_applies", lambda *shape: True)
    monkeypatch.setattr(jax, "device_count", lambda: 1)  # the tests' CPU has 8
    model = transformer.make_model(dict(preset="tiny", vocab_size=65, dtype="bfloat16"))
    tokens = jnp.zeros((2, 8), jnp.int32)
    # Traced, not run op by op (a compile per op): the kernel is chosen while tracing.
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)["params"]
    calls.clear()
    jax.eval_shape(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, tokens)
                                              .astype(jnp.float32))), params)
    assert calls == ["cudnn"] * model.n_layer
    calls.clear()
    cache = transformer.init_cache(model, 2, 8)
    jax.eval_shape(lambda p, c: model.apply({"params": p}, tokens[:, :1], cache=c,
                                            start=jnp.zeros(2, jnp.int32), method=model.decode),
                   params, cache)
    assert calls == [None] * model.n_layer
