"""The shared step and the parallel strategies (8 host CPU devices, see conftest.py)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import linen as nn

from zoo import data, evaluate
from zoo.core import compiled, parallel
from zoo.core.step import PER_EXAMPLE, Update, make_train_step
from zoo.core.train_state import TrainState
from zoo.models import autoencoder

STRATEGIES = [("single", {}), ("pmap", {}), ("mesh", {"data": 8}), ("mesh", {"data": 4, "fsdp": 2})]
GLOBAL_BATCH = 64


def _ae(**overrides):
    # 784-128-16 MLP: big enough that fsdp=2 shards the kernels (>= 1024 elements), small to compile.
    return autoencoder.make_family({"arch": "mlp", "hidden": (128,), "latent_dim": 16, **overrides})


def _batches(n=5, batch=GLOBAL_BATCH):
    images = data.synthetic_images(n * batch, seed=0)["image"]
    return [{"image": images[i * batch:(i + 1) * batch]} for i in range(n)]


def _train(strategy_name, options, *, family=None, tx=None, steps=5, batch=GLOBAL_BATCH, **step_options):
    family = family or _ae()
    strategy = parallel.make_strategy(strategy_name, **options)
    batches = _batches(steps, batch)
    params, model_state = family.init(jax.random.PRNGKey(0), batches[0])
    tx = tx or optax.sgd(0.05, momentum=0.9)
    state = strategy.place_state(TrainState.create(
        params=params, tx={p: tx for p in params}, model_state=model_state, seed=1))
    step = compiled.compile_train_step(family.objective, strategy, batch_spec=family.batch_spec,
                                       **step_options)
    for b in batches:
        state, metrics = step(state, b)
    return strategy.to_host(state), strategy.to_host(metrics), step


def _assert_trees_close(a, b, rtol, atol):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


def test_strategies_agree_after_five_steps():
    # Tolerance: the strategies compute the same float32 math; only the order of the batch
    # reduction differs (one sum vs per-device partial sums + all-reduce). Each reordering costs a
    # few ulps (~1e-7 relative); over 5 momentum-SGD steps that stays well under 1e-5, while a real
    # bug (a wrong shard, a missing pmean, unscaled gradients) moves params by ~1e-2.
    reference, ref_metrics, _ = _train("single", {})
    for name, options in STRATEGIES[1:]:
        got, metrics, _ = _train(name, options)
        _assert_trees_close(got.params, reference.params, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5)
        assert int(got.step) == 5
    # And the params really moved: the comparison is not between two untouched inits.
    init, _ = _ae().init(jax.random.PRNGKey(0), _batches(1)[0])
    moved = max(float(np.abs(a - b).max()) for a, b in
                zip(jax.tree.leaves(reference.params), jax.tree.leaves(init)))
    assert moved > 1e-3


def test_fsdp_shards_params_and_optimizer_state():
    strategy = parallel.make_strategy("mesh", data=4, fsdp=2)
    family = _ae()
    params, _ = family.init(jax.random.PRNGKey(0), _batches(1)[0])
    state = strategy.place_state(TrainState.create(params=params, tx={"model": optax.adam(1e-3)},
                                                   seed=0))
    kernel = state.params["model"]["enc_0"]["kernel"]  # (784, 128)
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
    assert kernel.addressable_shards[0].data.shape == (392, 128)
    mu = state.opt_state["model"][0].mu["enc_0"]["kernel"]
    assert mu.sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
    # A bias of 16 elements is too small to be worth sharding: replicated.
    assert state.params["model"]["code"]["bias"].sharding.spec == jax.sharding.PartitionSpec()
    # Abstract inputs (zoo bench --compile-only) get the shardings that placing gives.
    batch = strategy.place_batch(_batches(1)[0])
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), (state, batch))
    abstract_state, abstract_batch = strategy.abstract_placed(*shapes)
    for placed, abstract in zip(jax.tree.leaves((state, batch)),
                                jax.tree.leaves((abstract_state, abstract_batch))):
        assert abstract.shape == placed.shape and abstract.sharding == placed.sharding
    with pytest.raises(ValueError, match="mesh data=3 x fsdp=2 = 6 devices"):
        parallel.mesh_shape(8, 3, 2)
    assert parallel.mesh_shape(8, -1, 2) == (4, 2)


def test_a_mesh_layout_under_another_strategy_is_refused_and_zoo_eval_drops_its_own():
    with pytest.raises(ValueError, match=r"parallel.fsdp=2 shapes a mesh; parallel.strategy="
                                         r"'pmap' has none: set parallel.strategy=mesh"):
        parallel.strategy_from_config({"strategy": "pmap", "fsdp": 2})
    with pytest.raises(ValueError, match=r"parallel.data=4 and parallel.fsdp=2 shape a mesh"):
        parallel.strategy_from_config({"strategy": "single", "data": 4, "fsdp": 2})
    # zoo eval of a run trained on 2 devices as a 1 x 2 mesh at batch 2: on these 8 devices the
    # mesh fits (4 x 2) but the batch does not divide, so it evaluates on one device, and the
    # mesh's axes go with the mesh.
    config = ml_collections.ConfigDict({"parallel": {"strategy": "mesh", "data": -1, "fsdp": 2},
                                        "data": {"batch_size": 2, "eval_batch_size": 2}})
    said = []
    evaluate._fit_layout_to_devices(config, said.append)
    assert parallel.strategy_from_config(config.parallel).name == "single"
    assert said == ["zoo: batches of [2] do not divide over 8 devices; evaluating on one"]
    # A saved run evaluated under another strategy than its mesh (an override) still evaluates.
    config.parallel.update(strategy="pmap", data=4, fsdp=2)
    config.data.update(batch_size=8, eval_batch_size=8)
    evaluate._fit_layout_to_devices(config, said.append)
    assert parallel.strategy_from_config(config.parallel).name == "pmap"


def test_fsdp_spec_rules():
    P = jax.sharding.PartitionSpec
    assert parallel.fsdp_spec((784, 128), 2) == P("fsdp", None)
    assert parallel.fsdp_spec((3, 3, 64, 128), 4) == P(None, None, None, "fsdp")
    assert parallel.fsdp_spec((999, 7), 2) == P()  # nothing divides: replicate
    assert parallel.fsdp_spec((4096,), 1) == P()


def _dropout_loss(params, batch, rng):
    """A regression through inverted dropout (rate 1/2): the loss reads its rng."""
    keep = jax.random.bernoulli(rng, 0.5, batch["x"].shape)
    pred = (batch["x"] * keep * 2.0) @ params["w"]
    return jnp.mean((pred - batch["y"]) ** 2), {"loss": jnp.mean((pred - batch["y"]) ** 2)}


def _regression_batch(n=64, d=6, seed=0):
    r = np.random.default_rng(seed)
    x = r.normal(size=(n, d)).astype(np.float32)
    return {"x": x, "y": (x @ np.arange(1, d + 1, dtype=np.float32))[:, None]}


@pytest.mark.parametrize("name,options", [("single", {}), ("mesh", {"data": 8})])
def test_grad_accumulation_gives_each_microbatch_its_own_rng(name, options):
    """Against a hand-written reference: microbatch i is rows i, i+k, ...; its dropout masks come
    from fold_in(update_rng, i), update_rng = fold_in(fold_in(fold_in(rng, step), update), repeat).
    Giving every microbatch the same rng would draw the same masks for all four."""
    k, lr, batch = 4, 0.05, _regression_batch()
    params = {"w": jnp.full((6, 1), 0.1)}
    state = TrainState.create(params=params, tx=optax.sgd(lr), seed=3)
    strategy = parallel.make_strategy(name, **options)
    step = compiled.compile_train_step(_dropout_loss, strategy, grad_accum_steps=k)
    got = strategy.to_host(step(strategy.place_state(state), batch)[0]).params["model"]

    update_rng = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(state.rng, 0), 0), 0)
    grads = [jax.grad(lambda p, b, r: _dropout_loss(p, b, r)[0])(
        params, jax.tree.map(lambda x: x[i::k], batch), jax.random.fold_in(update_rng, i))
        for i in range(k)]
    want = params["w"] - lr * sum(g["w"] for g in grads) / k
    # float32 sums of 16 rows, reordered across devices under mesh: a few ulps.
    np.testing.assert_allclose(got["w"], want, rtol=1e-5, atol=1e-6)
    same_rng = [jax.grad(lambda p, b: _dropout_loss(p, b, update_rng)[0])(
        params, jax.tree.map(lambda x: x[i::k], batch)) for i in range(k)]
    assert float(np.abs(sum(g["w"] for g in same_rng) / k - sum(g["w"] for g in grads) / k).max()
                 ) > 1e-3  # the reference can tell the two apart


@pytest.mark.parametrize("name,options", [("single", {}), ("mesh", {"data": 8})])
def test_grad_accumulation_equals_one_big_step(name, options):
    one, m1, _ = _train(name, options, steps=1)
    four, m4, _ = _train(name, options, steps=1, grad_accum_steps=4)
    _assert_trees_close(four.params, one.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-5)


@pytest.mark.parametrize("name,options", STRATEGIES, ids=lambda x: str(x))
def test_train_step_compiles_once_over_ten_steps(name, options):
    family = _ae()
    strategy = parallel.make_strategy(name, **options)
    batches = _batches(10)
    params, _ = family.init(jax.random.PRNGKey(0), batches[0])
    state = strategy.place_state(TrainState.create(params=params, tx={"model": optax.adam(1e-3)},
                                                   seed=0))
    step = compiled.compile_train_step(family.objective, strategy, batch_spec=family.batch_spec)
    state, _ = step(state, batches[0])
    traces_after_first = step.num_traces
    assert traces_after_first >= 1
    with compiled.CompileCounter() as compiles:
        for b in batches[1:]:
            state, metrics = step(state, b)
        jax.block_until_ready(metrics)
    assert compiles.count == 0
    assert step.num_traces == traces_after_first
    assert int(strategy.to_host(state.step)) == 10


def test_single_on_cpu_hands_the_step_host_arrays_with_the_same_results():
    """On CPU the single strategy leaves a batch as host arrays (the compiled step's dispatch
    wraps them; benchmarks/README.md): one compile over the steps, and the same params, bit for
    bit, as the same steps on device-placed batches."""
    strategy = parallel.make_strategy("single")
    batches = _batches(3)
    on_cpu = jax.default_backend() == "cpu"
    assert isinstance(strategy.place_batch(batches[0])["image"], np.ndarray) == on_cpu
    family = _ae()
    params, _ = family.init(jax.random.PRNGKey(0), batches[0])
    results = []
    for placed in (False, True):
        state = strategy.place_state(TrainState.create(
            params=params, tx={"model": optax.adam(1e-3)}, seed=0))
        step = compiled.compile_train_step(family.objective, strategy,
                                           batch_spec=family.batch_spec)
        put = (lambda b: jax.device_put(b, strategy.device)) if placed else (lambda b: b)
        state, _ = step(state, put(batches[0]), placed=placed)
        with compiled.CompileCounter() as compiles:
            for b in batches[1:]:
                state, _ = step(state, put(b), placed=placed)
            jax.block_until_ready(state)
        assert compiles.count == 0
        results.append(strategy.to_host(state.params))
    _assert_trees_close(results[0], results[1], rtol=0, atol=0)


def test_compile_counter_sees_a_recompile():
    # The counter used above must be able to fail: a new input shape compiles again.
    f = jax.jit(lambda x: x * 2)
    f(np.ones(3, np.float32))
    with compiled.CompileCounter() as c:
        f(np.ones(4, np.float32))
    assert c.count == 1


def test_compile_counter_counts_a_program_fetched_from_the_persistent_cache():
    # conftest.py turns JAX's persistent compilation cache on: a second jit of the same program
    # fetches its executable instead of compiling it, and that must still count.
    assert jax.config.jax_compilation_cache_dir
    hits = []
    jax.monitoring.register_event_listener(
        lambda event, **kw: hits.append(event) if event.endswith("cache_hits") else None)
    make = lambda: jax.jit(lambda x: x * 3.0 + 1.0)
    make()(np.ones(5, np.float32))
    with compiled.CompileCounter() as c:
        make()(np.ones(5, np.float32))
    assert hits and c.count == 1


def test_the_initial_state_is_one_program_equal_to_the_op_by_op_init():
    # Op by op, a model's initialisers compile one little program per op and shape (a small
    # U-Net's: 251 of them, 30 s on 2 cores); build.initial_state compiles one. XLA fuses the
    # initialisers' arithmetic there, so values agree to float32 rounding (1 ulp seen), not bits.
    import dataclasses
    from configs_loader import load_config
    from zoo import build, models
    config = load_config("vae_mnist")
    family = models.make_family(config.model)
    batch = _batches(1, 8)[0]
    with compiled.CompileCounter() as compiles:
        state = build.initial_state(family, config, batch)
    assert compiles.count == 1
    params, _ = family.init(jax.random.PRNGKey(config.train.seed), batch)
    leaves = jax.tree.leaves(params)
    assert len(leaves) == len(jax.tree.leaves(state.params)) >= 8
    for want, got in zip(leaves, jax.tree.leaves(state.params)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # An init that needs concrete values (a Python branch on the batch) runs op by op instead.
    branching = dataclasses.replace(family, init=lambda rng, b: family.init(
        jax.random.fold_in(rng, 7 if float(b["image"].sum()) > 0 else 0), b))
    state = build.initial_state(branching, config, batch)
    params, _ = family.init(jax.random.fold_in(jax.random.PRNGKey(config.train.seed), 7), batch)
    for want, got in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(got, want)


def test_runs_are_deterministic_for_a_seed():
    # A VAE's loss draws its binarisation and its latent sample from the step's rng: the same
    # seed gives the same bits, another seed other params (so the rng is really read).
    from zoo.models import vae

    def run(seed):
        family = vae.make_family({"arch": "mlp", "hidden": (32,), "latent_dim": 4})
        strategy = parallel.make_strategy("mesh", data=8)
        batches = _batches(3)
        params, model_state = family.init(jax.random.PRNGKey(0), batches[0])
        state = strategy.place_state(TrainState.create(
            params=params, tx={"model": optax.adam(1e-2)}, model_state=model_state, seed=seed))
        step = compiled.compile_train_step(family.objective, strategy,
                                           batch_spec=family.batch_spec, grad_accum_steps=2)
        for b in batches:
            state, _ = step(state, b)
        return strategy.to_host(state)

    a, b, other = run(1), run(1), run(2)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert max(float(np.abs(x - y).max()) for x, y in
               zip(jax.tree.leaves(a.params), jax.tree.leaves(other.params))) > 1e-4


def test_rng_differs_across_pmap_shards_and_steps():
    def loss_fn(params, batch, rng):
        noise = jax.random.normal(rng, ())
        return jnp.sum(params["w"]) * 0.0, {"noise": noise, "noise_sq": noise ** 2}

    strategy = parallel.make_strategy("pmap")
    state = strategy.place_state(TrainState.create(params={"w": jnp.ones(2)}, tx=optax.sgd(0.1),
                                                   seed=0))
    step = compiled.compile_train_step(loss_fn, strategy)
    state, m1 = step(state, {"x": np.zeros((8, 1), np.float32)})
    state, m2 = step(state, {"x": np.zeros((8, 1), np.float32)})
    m1, m2 = strategy.to_host(m1), strategy.to_host(m2)
    # pmean over 8 shards: if every shard drew the same noise, mean(n^2) == mean(n)^2.
    assert float(m1["noise_sq"]) > float(m1["noise"]) ** 2 + 1e-3
    assert float(m1["noise"]) != float(m2["noise"])


def test_mixed_precision_keeps_float32_params():
    state, metrics, _ = _train("single", {}, steps=2, compute_dtype=jnp.bfloat16,
                               tx=optax.adam(1e-3))
    full, full_metrics, _ = _train("single", {}, steps=2, tx=optax.adam(1e-3))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    assert np.isfinite(metrics["loss"])
    # bf16 compute is close to, but not the same as, float32 compute.
    assert abs(float(metrics["loss"]) - float(full_metrics["loss"])) < 0.02 * float(full_metrics["loss"])
    assert float(metrics["loss"]) != float(full_metrics["loss"])


def test_remat_gives_the_same_step():
    plain, _, plain_step = _train("single", {}, steps=2)
    remat, _, remat_step = _train("single", {}, steps=2, remat=True)
    per_layer, _, per_layer_step = _train("single", {}, family=_ae(remat=True), steps=2)
    _assert_trees_close(remat.params, plain.params, rtol=1e-6, atol=1e-7)
    _assert_trees_close(per_layer.params, plain.params, rtol=1e-6, atol=1e-7)
    # ...and remat is really there: jax.checkpoint lowers its saved inputs through an
    # optimization barrier, which the plain step has none of.
    barriers = lambda step, state: step.compiled.lower(state, _batches(1)[0]).as_text().count(
        "optimization_barrier")
    assert barriers(plain_step, plain) == 0
    assert barriers(remat_step, remat) > 0 and barriers(per_layer_step, per_layer) > 0


def test_gradient_clipping_through_optax():
    clipped, m, _ = _train("single", {}, steps=1, tx=optax.chain(optax.clip_by_global_norm(1e-3),
                                                                   optax.sgd(1.0)))
    init, _ = _ae().init(jax.random.PRNGKey(0), _batches(1)[0])
    delta = optax.tree.norm(jax.tree.map(jnp.subtract, clipped.params["model"], init["model"]))
    assert float(m["grad_norm"]) > 1e-2  # the raw gradient was larger than the clip...
    np.testing.assert_allclose(float(delta), 1e-3, rtol=1e-3)  # ...and the update was clipped


def test_two_players_update_in_order():
    # A two-player objective: player "a" moves first; "b" then sees a's *new* params.
    def loss_a(params, model_state, batch, rng):
        return jnp.sum((params["a"] - 1.0) ** 2), {"a": params["a"][0]}, model_state

    def loss_b(params, model_state, batch, rng):
        target = jax.lax.stop_gradient(params["a"])
        return jnp.sum((params["b"] - target) ** 2), {"a_seen_by_b": params["a"][0]}, model_state

    state = TrainState.create(params={"a": jnp.zeros(1), "b": jnp.zeros(1)},
                              tx={"a": optax.sgd(0.25), "b": optax.sgd(0.5)}, seed=0)
    step = jax.jit(make_train_step((Update("a", loss_a, repeats=2, prefix="a_"),
                                    Update("b", loss_b, prefix="b_"))))
    state, metrics = step(state, {"x": jnp.zeros((2, 1))})
    # a: 0 -> 0.5 -> 0.75 (two repeats); b steps toward a's new value 0.75: 0 + 0.5*2*0.75 = 0.75.
    np.testing.assert_allclose(state.params["a"], [0.75])
    np.testing.assert_allclose(metrics["b_a_seen_by_b"], 0.75)
    np.testing.assert_allclose(state.params["b"], [0.75])
    assert set(metrics) == {"a_a", "a_grad_norm", "b_a_seen_by_b", "b_grad_norm"}


def test_users_own_flax_module_and_loss():
    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(1)(nn.relu(nn.Dense(32)(x)))

    model = MLP()
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    y = x.sum(axis=1, keepdims=True)

    def loss_fn(params, batch, rng):
        loss = jnp.mean((model.apply({"params": params}, batch["x"]) - batch["y"]) ** 2)
        return loss, {"loss": loss}

    strategy = parallel.make_strategy("mesh")
    state = strategy.place_state(TrainState.create(
        params=model.init(jax.random.PRNGKey(0), x[:1])["params"], tx=optax.adam(1e-2), seed=0))
    step = compiled.compile_train_step(loss_fn, strategy)
    losses = []
    for _ in range(100):
        state, metrics = step(state, {"x": x, "y": y})
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.1 * losses[0]


# A model state with both kinds of leaf: "mean", a BatchNorm-like batch statistic (averaged over
# shards), and a per-example running value "h" for each batch row (h <- h / 2 + x, per row).
ROWS = 16


def _rows_loss(params, batch, rng, model_state):
    x = batch["x"]
    loss = jnp.mean((x * params["w"]) ** 2)
    new_state = {"mean": jnp.mean(x, axis=0),
                 PER_EXAMPLE: {"h": 0.5 * model_state[PER_EXAMPLE]["h"] + x}}
    return loss, {"loss": loss}, new_state


def _rows_state(rows=ROWS):
    h0 = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)  # every row different
    return TrainState.create(params={"w": jnp.ones(3)}, tx=optax.sgd(0.1), seed=0,
                             model_state={"mean": jnp.zeros(3), PER_EXAMPLE: {"h": h0}})


def _rows_batches(n, rows=ROWS):
    rng = np.random.default_rng(0)
    return [{"x": rng.normal(size=(rows, 3)).astype(np.float32)} for _ in range(n)]


ROWS_RUNS = [("single", {}, 1), ("pmap", {}, 1), ("mesh", {"data": 4, "fsdp": 2}, 1),
             ("pmap", {}, 2), ("mesh", {"data": 8}, 2)]


def test_pmap_canonical_state_reads_the_device_buffers():
    """Under pmap the one global copy of a placed state is read from the devices' buffers, as
    host arrays: device 0's copy of a replicated leaf, the devices' rows in order for a
    per-example one; no program runs over the devices (one such program hung a test run)."""
    strategy = parallel.make_strategy("pmap")
    host = _rows_state()
    state = strategy.place_state(host.replace(step=np.int32(7)))
    canonical = strategy.canonical_state(state)
    for got, want in zip(jax.tree.leaves(canonical.model_state), jax.tree.leaves(host.model_state)):
        assert isinstance(got, np.ndarray)
        np.testing.assert_array_equal(got, want)
    assert isinstance(canonical.step, np.generic) and int(canonical.step) == 7


@pytest.mark.parametrize("name,options,grad_accum_steps", ROWS_RUNS, ids=str)
def test_per_example_state_follows_its_rows_and_the_rest_is_averaged(name, options,
                                                                     grad_accum_steps):
    strategy = parallel.make_strategy(name, **options)
    host = _rows_state()
    h0 = host.model_state["model"][PER_EXAMPLE]["h"]
    state = strategy.place_state(host)
    placed_h = state.model_state["model"][PER_EXAMPLE]["h"]
    if name == "pmap":  # device d holds its contiguous slice of rows, as it does of the batch
        per_device = ROWS // 8
        for d, device in enumerate(strategy.devices):
            shard, = [s for s in placed_h.addressable_shards if s.device == device]
            np.testing.assert_array_equal(shard.data[0], h0[d * per_device:(d + 1) * per_device])
    step = compiled.compile_train_step(_rows_loss, strategy, grad_accum_steps=grad_accum_steps)
    x1, x2 = (b["x"] for b in _rows_batches(2))
    for x in (x1, x2):
        state, _ = step(state, {"x": x})
    if name == "mesh":  # still sharded like the batch after the steps
        assert state.model_state["model"][PER_EXAMPLE]["h"].sharding.is_equivalent_to(
            strategy.batch_sharding, 2)
    got = strategy.to_host(state.model_state)["model"]
    # Each row's own running value: not averaged over devices, not reordered by microbatches.
    np.testing.assert_allclose(got[PER_EXAMPLE]["h"], 0.25 * h0 + 0.5 * x1 + x2, rtol=1e-6)
    # The statistic is averaged over devices: the global batch mean (with k microbatches, the
    # last microbatch's, rows k-1, 2k-1, ...: non-per-example state passes through them in order).
    k = grad_accum_steps
    np.testing.assert_allclose(got["mean"], x2[k - 1::k].mean(axis=0), rtol=1e-5, atol=1e-6)
    assert strategy.canonical_state(state).model_state["model"][PER_EXAMPLE]["h"].shape == (ROWS, 3)


@pytest.mark.parametrize("name,options,grad_accum_steps",
                         [("pmap", {}, 1), ("pmap", {}, 2), ("mesh", {"data": 4, "fsdp": 2}, 1),
                          ("mesh", {"data": 8}, 1)],
                         ids=str)
def test_per_example_state_compiles_once_over_ten_steps(name, options, grad_accum_steps):
    strategy = parallel.make_strategy(name, **options)
    state = strategy.place_state(_rows_state())
    # Step 2 reuses step 1's executable only if the placed state has the shardings the step's
    # outputs have (pmap once recompiled on a mismatch here).
    placed = jax.tree.map(lambda x: x.sharding, state)
    step = compiled.compile_train_step(_rows_loss, strategy, grad_accum_steps=grad_accum_steps)
    batches = _rows_batches(10)
    state, _ = step(state, batches[0])
    for x, sharding in zip(jax.tree.leaves(state), jax.tree.leaves(placed)):
        assert x.sharding.is_equivalent_to(sharding, x.ndim), (x.sharding, sharding)
    traces = step.num_traces
    with compiled.CompileCounter() as compiles:
        for b in batches[1:]:
            state, metrics = step(state, b)
        jax.block_until_ready(metrics)
    assert compiles.count == 0 and step.num_traces == traces
    assert int(strategy.to_host(state.step)) == 10


class TestBadInput:
    def _step(self, name="mesh", **options):
        family = _ae()
        strategy = parallel.make_strategy(name, **options)
        params, _ = family.init(jax.random.PRNGKey(0), _batches(1)[0])
        state = strategy.place_state(TrainState.create(params=params,
                                                       tx={"model": optax.sgd(0.1)}, seed=0))
        return state, compiled.compile_train_step(family.objective, strategy,
                                                  batch_spec=family.batch_spec)

    def test_wrong_image_shape(self):
        state, step = self._step()
        with pytest.raises(ValueError, match=r"batch\['image'\] has shape \(B, 32, 32, 1\).*"
                                             r"expected \(B, 28, 28, 1\)"):
            step(state, {"image": np.zeros((64, 32, 32, 1), np.float32)})
        assert step.num_traces == 0  # refused before any trace or compile

    def test_wrong_keys_and_dtype(self):
        state, step = self._step()
        with pytest.raises(ValueError, match=r"keys \['pixels'\]; expected keys \['image'\]"):
            step(state, {"pixels": np.zeros((64, 28, 28, 1), np.float32)})
        with pytest.raises(ValueError, match="dtype uint8; expected float32"):
            step(state, {"image": np.zeros((64, 28, 28, 1), np.uint8)})

    @pytest.mark.parametrize("name", ["pmap", "mesh"])
    def test_batch_not_divisible_over_devices(self, name):
        state, step = self._step(name)
        with pytest.raises(ValueError, match="global batch of 36 examples does not divide over 8 devices"):
            step(state, {"image": np.zeros((36, 28, 28, 1), np.float32)})
        assert step.num_traces == 0

    def test_batch_not_divisible_into_microbatches(self):
        family = _ae()
        strategy = parallel.make_strategy("mesh")
        step = compiled.compile_train_step(family.objective, strategy, batch_spec=family.batch_spec,
                                           grad_accum_steps=4)
        with pytest.raises(ValueError, match="does not divide into 4 microbatches over 8 devices; "
                                             "use a multiple of 32"):
            step.place_batch({"image": np.zeros((48, 28, 28, 1), np.float32)})

    @pytest.mark.parametrize("name", ["single", "pmap", "mesh"])
    def test_per_example_state_for_another_batch_size(self, name):
        strategy = parallel.make_strategy(name)
        state = strategy.place_state(_rows_state(16))
        step = compiled.compile_train_step(_rows_loss, strategy)
        with pytest.raises(ValueError, match=r"per-example state model_state\['model'\]"
                                             r"\['per_example'\]\['h'\] has 16 rows but the "
                                             r"global batch has 8 examples"):
            step(state, _rows_batches(1, rows=8)[0])
        assert step.num_traces == 0

    @pytest.mark.parametrize("name", ["pmap", "mesh"])
    def test_per_example_state_that_does_not_divide_over_devices(self, name):
        with pytest.raises(ValueError, match=r"\['per_example'\]\['h'\] has 12 rows, which do "
                                             r"not divide over 8 devices"):
            parallel.make_strategy(name).place_state(_rows_state(12))

    def test_unknown_strategy(self):
        with pytest.raises(ValueError, match="unknown strategy 'ddp'; choose one of single, pmap, mesh"):
            parallel.make_strategy("ddp")

    def test_mesh_that_does_not_fit_the_devices(self):
        with pytest.raises(ValueError, match=r"data=3 x fsdp=2 = 6 devices; 8 devices are available"):
            parallel.make_strategy("mesh", data=3, fsdp=2)

    def test_unknown_reconstruction_loss_and_arch(self):
        with pytest.raises(ValueError, match="unknown reconstruction loss 'l1'; choose one of mse, bernoulli"):
            autoencoder.make_family({"loss": "l1"})
        with pytest.raises(ValueError, match="unknown autoencoder arch 'rnn'"):
            autoencoder.make_family({"arch": "rnn"})
        with pytest.raises(ValueError, match="latent_dim must be >= 1"):
            autoencoder.make_family({"latent_dim": 0})


def test_many_steps_dispatched_without_waiting_finish(tmp_path):
    """200 steps on 8 CPU devices, never read back in between (as examples/reuse.py does): with a
    deep queue XLA:CPU's collectives deadlocked at about step 65, so CompiledStep keeps at most
    two steps in flight there. Run in a child process so a hang fails in 2 minutes."""
    script = """
import jax, optax
from zoo import data, models
from zoo.core import compiled, parallel
from zoo.core.train_state import TrainState
family = models.make_family({"family": "autoencoder", "hidden": (128,), "latent_dim": 8})
arrays = {"image": data.synthetic_images(1024)["image"]}
it = data.BatchIterator(arrays, 96, seed=0)
params, model_state = family.init(jax.random.PRNGKey(0), {"image": arrays["image"][:96]})
strategy = parallel.make_strategy("mesh")
state = strategy.place_state(TrainState.create(params=params, tx={"model": optax.adam(1e-3)},
                                               model_state=model_state, seed=0))
step = compiled.compile_train_step(family.objective, strategy, batch_spec=family.batch_spec)
for _ in range(200):
    state, metrics = step(state, next(it))
print("steps", int(strategy.to_host(state.step)))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, env=os.environ)
    assert out.returncode == 0 and "steps 200" in out.stdout, out.stderr[-2000:]


def _bn_dropout_model(rate):
    from flax import linen as nn
    import zoo

    class Net(nn.Module):  # a user's model: BatchNorm synced over zoo.sync_axis(), dropout
        @nn.compact
        def __call__(self, x, train: bool):
            # No bias before BatchNorm: its gradient is zero but for rounding, which Adam would
            # turn into full-size steps that differ from strategy to strategy.
            x = nn.Dense(32, use_bias=False)(x)
            x = nn.BatchNorm(use_running_average=not train, axis_name=zoo.sync_axis(),
                             momentum=0.9)(x)
            x = nn.Dropout(rate, deterministic=not train)(nn.relu(x))
            return nn.Dense(1)(x)

    return Net()


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_a_users_batchnorm_dropout_model_agrees_under_every_strategy(rate):
    """Through the public API: single = mesh exactly (to float rounding, rtol 1e-5) with
    BatchNorm and dropout; pmap too when BatchNorm syncs over zoo.sync_axis(), except that each
    of its devices draws its own dropout masks (README), so with dropout it is only close."""
    import optax
    import zoo
    model = _bn_dropout_model(rate)

    def loss_fn(params, batch, rng, model_state):
        out, updates = model.apply({"params": params, **model_state}, batch["x"], True,
                                   rngs={"dropout": rng}, mutable=["batch_stats"])
        loss = jnp.mean((out - batch["y"]) ** 2)
        return loss, {"loss": loss}, updates

    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    batch = {"x": x, "y": np.sin(x).sum(1, keepdims=True)}
    variables = model.init(jax.random.PRNGKey(0), x[:2], False)
    results, first_stats = {}, {}
    for name, options in (("single", {}), ("pmap", {}), ("mesh", {"data": 4, "fsdp": 2})):
        strategy = zoo.make_strategy(name, **options)
        state = strategy.place_state(zoo.TrainState.create(
            params=variables["params"], tx=optax.adam(1e-2),
            model_state={"batch_stats": variables["batch_stats"]}, seed=0))
        step = zoo.compile_train_step(loss_fn, strategy)
        for i in range(5):
            state, _ = step(state, batch)
            if i == 0:
                first_stats[name] = strategy.to_host(state.model_state)
        results[name] = strategy.to_host((state.params, state.model_state))
    close = lambda a, b: jax.tree.map(
        lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6), a, b)
    close(results["mesh"], results["single"])
    if rate == 0.0:
        close(results["pmap"], results["single"])  # BatchNorm's statistics are the global batch's
    else:
        diffs = [np.abs(u - v).max() for u, v in zip(jax.tree.leaves(results["pmap"]),
                                                     jax.tree.leaves(results["single"]))]
        assert max(diffs) > 1e-4  # pmap's per-device masks: the documented difference
        # BatchNorm comes before dropout, so the first step's statistics, from the same params,
        # are the global batch's under pmap too: its devices' BatchNorms are synced.
        close(first_stats["pmap"], first_stats["single"])


def test_loss_contract_and_a_missing_model_state_are_named():
    import optax
    import zoo
    model = _bn_dropout_model(0.0)
    variables = model.init(jax.random.PRNGKey(0), np.zeros((2, 8), np.float32), False)
    batch = {"x": np.ones((8, 8), np.float32), "y": np.ones((8, 1), np.float32)}
    strategy = zoo.make_strategy("single")

    def two_values(params, batch, rng, model_state):  # forgot the new model state
        return jnp.mean(batch["x"]), {}

    state = zoo.TrainState.create(params=variables["params"], tx=optax.sgd(0.1),
                                  model_state={"batch_stats": variables["batch_stats"]}, seed=0)
    with pytest.raises(ValueError, match=r"two_values takes 4 arguments, so it must be \(params, "
                                         r"batch, rng, model_state\) -> \(loss, metrics, "
                                         r"new_model_state\); it returned 2 values"):
        zoo.compile_train_step(two_values, strategy)(state, batch)

    def bn_loss(params, batch, rng, model_state):
        out, updates = model.apply({"params": params, **model_state}, batch["x"], True,
                                   mutable=["batch_stats"])
        return jnp.mean(out), {}, updates

    no_state = zoo.TrainState.create(params=variables["params"], tx=optax.sgd(0.1), seed=0)
    with pytest.raises(ValueError, match="the loss returned a model_state of another structure "
                                         r"than the state's \(new: .*batch_stats.*give "
                                         "TrainState.create the initial model_state"):
        zoo.compile_train_step(bn_loss, strategy)(no_state, batch)


def test_eval_step_takes_the_train_losss_form():
    """compile_eval_step takes a function of the form compile_train_step takes (the one
    player's params), and AllPlayers for functions of every player's dicts, as families write."""
    import optax
    import zoo
    w = {"w": jnp.arange(3.0)}

    def loss_fn(params, batch, rng):
        loss = jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)
        return loss, {"loss": loss, "w0": params["w"][0]}

    batch = {"x": np.eye(3, dtype=np.float32)[[0, 1, 2, 0]], "y": np.ones(4, np.float32)}
    strategy = zoo.make_strategy("single")
    state = strategy.place_state(zoo.TrainState.create(params=w, tx=optax.sgd(0.1), seed=0))
    got = zoo.compile_eval_step(loss_fn, strategy)(state, batch)
    want = np.mean((batch["x"] @ np.arange(3.0) - 1) ** 2)
    np.testing.assert_allclose(got["loss"], want, rtol=1e-6)
    assert float(got["w0"]) == 0.0
    by_player = zoo.compile_eval_step(zoo.AllPlayers(
        lambda params, model_state, batch, rng: {"w0": params["model"]["w"][0]}), strategy)
    assert float(by_player(state, batch)["w0"]) == 0.0
