"""zoo bench: the harness at tiny sizes (every field present), peaks, timing, and the peers."""

import json
import mmap
import os
import platform
import subprocess
import sys

import jax
import numpy as np
import pytest

from zoo import models
from zoo.bench import bench_main, catalog, hardware, records, report, suites, timing, zoo_runner

RECORD_FIELDS = {
    "case", "family", "framework", "strategy", "devices", "batch_size", "compute_dtype", "step_s",
    "examples_per_s", "tokens_per_s", "param_count", "compile_s", "device_kind", "loss_last",
    "device_memory_stats", "page_faults_per_step", "flops_per_step_analytic",
    "flops_per_step_jaxpr", "flops_per_step_xla", "xla_to_analytic", "flops_source",
    "achieved_flops_per_s",
    "peak_flops_per_s_table", "mfu", "peak_flops_per_s_measured", "fraction_of_measured_peak"}
ZOO_FIELDS = RECORD_FIELDS | {"lower_s", "compile_total_s", "memory_analysis",
                              "peak_bytes_estimate", "speedup_vs_torch_eager",
                              "speedup_vs_torch_compile", "implementations"}
META_FIELDS = {"jax", "jaxlib", "flax", "optax", "torch", "platform", "device_kind",
               "device_count", "cpu_model", "suite", "date_utc", "command", "measured_peak",
               "table_peak_flops_per_s", "peak_table", "steps", "warmup", "wall_s"}


def test_time_stats_and_chrono():
    s = timing.time_stats([float(x) for x in range(1, 101)])
    assert s["n"] == 100 and s["median"] == 50.5 and s["min"] == 1 and s["max"] == 100
    assert s["p10"] == pytest.approx(10.9) and s["p90"] == pytest.approx(90.1)
    c = timing.Chrono()
    c.time(lambda: None, n=3)
    with pytest.raises(RuntimeError):
        with c.lap():
            raise RuntimeError("failed steps are not timed")
    assert c.stats()["n"] == 3 and len(c.faults) == 3
    with pytest.raises(ValueError):
        timing.time_stats([])


def test_chrono_counts_the_page_faults_of_fresh_memory():
    def touch_fresh_pages():  # an anonymous mapping: every page faults on its first write
        with mmap.mmap(-1, 64 * 4096) as m:
            for page in range(64):
                m[page * 4096] = 1
    fresh, idle = timing.Chrono(), timing.Chrono()
    fresh.time(touch_fresh_pages, n=3)
    idle.time(lambda: None, n=3)
    assert fresh.faults_per_step() >= 1  # 64 with 4 KiB pages, fewer where huge pages back it
    assert idle.faults_per_step() < fresh.faults_per_step()


def test_run_alternating_interleaves_rounds():
    calls = []
    chronos = timing.run_alternating({"a": lambda: calls.append("a"),
                                     "b": lambda: calls.append("b")},
                                    warmup=1, steps=5, rounds=2)
    assert calls == ["a", "b"] + ["a"] * 3 + ["b"] * 3 + ["a"] * 2 + ["b"] * 2
    assert chronos["a"].stats()["n"] == chronos["b"].stats()["n"] == 5


def test_peak_table_by_device_kind():
    assert hardware.table_peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
    assert hardware.table_peak_flops("NVIDIA H100 PCIe", "bfloat16") == 756e12
    assert hardware.table_peak_flops("NVIDIA A100-SXM4-40GB", "bfloat16") == 312e12
    assert hardware.table_peak_flops("TPU v4", "bfloat16") == 275e12
    assert hardware.table_peak_flops("TPU v5 lite", "bfloat16") == 197e12
    assert hardware.table_peak_flops("TPU v5p", "bfloat16") == 459e12
    assert hardware.table_peak_flops("TPU v6 lite", "bfloat16") == 918e12
    assert hardware.table_peak_flops("cpu", "float32") is None


def test_measured_matmul_peak_from_a_known_clock(monkeypatch):
    # A clock that reads 0, 0.25, 0.5, ...: every timed 256^3 matmul takes 0.25 s, so the peak is
    # 2 * 256^3 / 0.25 FLOP/s, counted by hand; the matmul itself must be right too.
    ticks = iter(np.arange(0, 1000, 0.25))
    monkeypatch.setattr(hardware.time, "perf_counter", lambda: float(next(ticks)))
    m = hardware.measure_matmul_peak(256, reps=3)
    assert m["n"] == 256 and m["flops_per_matmul"] == 2 * 256 ** 3
    assert m["best_flops_per_s"] == m["median_flops_per_s"] == 2 * 256 ** 3 / 0.25


def test_throughput_mfu_and_speedup_from_known_times():
    """Numbers worked out by hand: a 2 GFLOP step of 32 examples x 128 tokens taking 10 ms on
    each of 8 devices with a 1 TFLOP/s table peak (measured 0.5), against a 25 ms peer."""
    case = catalog.Case("lm", "transformer", {}, 32, tokens_per_example=128)
    stats = {"median": 0.010}
    zoo = records.record(case, "zoo", "single", 1, 32, stats,
                         **records.flops_fields(2e9, 2.2e9, 1.9e9, 0.010, 1e12, 0.5e12, 8))
    assert zoo["examples_per_s"] == pytest.approx(3200) and zoo["tokens_per_s"] == pytest.approx(
        409_600)
    assert zoo["achieved_flops_per_s"] == pytest.approx(2e11)
    assert zoo["mfu"] == pytest.approx(0.025)                       # 2e11 / 8e12
    assert zoo["fraction_of_measured_peak"] == pytest.approx(0.05)  # 2e11 / 4e12
    assert zoo["xla_to_analytic"] == pytest.approx(1.1) and zoo["flops_source"] == "analytic"
    jaxpr_only = records.flops_fields(None, 2.2e9, 1.9e9, 0.010, None, None, 1)
    assert jaxpr_only["flops_source"] == "jaxpr" and jaxpr_only["mfu"] is None
    assert jaxpr_only["xla_to_analytic"] is None  # no family count to compare XLA's with
    assert jaxpr_only["achieved_flops_per_s"] == pytest.approx(1.9e11)
    peer = records.record(case, "torch-eager", "single", 1, 32, {"median": 0.025})
    recs = [zoo, peer]
    records.add_peer_ratios(recs)
    assert zoo["speedup_vs_torch_eager"] == pytest.approx(2.5)
    assert zoo["speedup_vs_torch_compile"] is None and "speedup_vs_torch_eager" not in peer


def test_synthetic_batch_matches_spec():
    spec = {"image": jax.ShapeDtypeStruct((4, 4, 1), np.float32),
            "tokens": jax.ShapeDtypeStruct((9,), np.int32)}
    b = zoo_runner.synthetic_batch(spec, 3, int_high={"tokens": 5})
    assert b["image"].shape == (3, 4, 4, 1) and b["image"].dtype == np.float32
    assert b["tokens"].shape == (3, 9) and b["tokens"].dtype == np.int32
    assert 0 <= b["tokens"].min() and b["tokens"].max() < 5


def test_tiny_suite_has_every_field(tmp_path):
    result = suites.run_suite(suite="tiny", cases=["autoencoder-mlp"], strategies=("single",),
                             peers=("eager",), sweep=(2,), sweep_strategies=("mesh",), warmup=1,
                             steps=20, rounds=2, peak_n=256, log=lambda s: None)
    assert META_FIELDS <= set(result["meta"])
    recs = result["records"]
    assert not [r for r in recs if "error" in r], recs
    kinds = {(r["framework"], r["strategy"], r["devices"]) for r in recs}
    # The sweep ran in a subprocess with 2 host devices (this process has 8, see conftest).
    assert kinds == {("zoo", "single", 1), ("torch-eager", "single", 1), ("zoo", "mesh", 2)}
    for r in recs:
        want = ZOO_FIELDS - ({"speedup_vs_torch_eager", "speedup_vs_torch_compile"}
                             if r["devices"] > 1 else set()) if r["framework"] == "zoo" \
            else RECORD_FIELDS
        assert want <= set(r), (r["framework"], want - set(r))
        assert r["step_s"]["n"] >= 20 and r["page_faults_per_step"] >= 0
        assert r["step_s"]["p10"] <= r["step_s"]["median"] <= r["step_s"]["p90"]
        assert np.isfinite(r["loss_last"])
        # 784-64-32-8-32-64-784 at batch 16, counted by hand: 2 FLOPs per multiply-add forward,
        # twice that backward, less the first layer's input gradient (its input is data).
        forward = 2 * (784 * 64 + 64 * 32 + 32 * 8 + 8 * 32 + 32 * 64 + 64 * 784)
        assert r["flops_per_step_analytic"] == 16 * (3 * forward - 2 * 784 * 64)
        assert r["fraction_of_measured_peak"] > 0
    zoo = [r for r in recs if r["framework"] == "zoo" and r["devices"] == 1]
    peer = next(r for r in recs if r["framework"] == "torch-eager")
    for r in zoo:
        assert r["compile_s"] > 0 and r["lower_s"] > 0 and r["peak_bytes_estimate"] > 0
        assert r["flops_per_step_xla"] > 0 and r["xla_to_analytic"] > 0
        assert r["speedup_vs_torch_eager"] > 0
        assert r["param_count"] == peer["param_count"]
    paths = report.write_report(result, tmp_path)
    loaded = json.loads(paths["json"].read_text())
    assert len(loaded["records"]) == 3
    md = paths["markdown"].read_text()
    assert md.count("| autoencoder-mlp |") == 3 and "jax " + jax.__version__ in md
    # The MLP's layers choose nothing; a record that names a choice is listed under the table.
    assert [r["implementations"] for r in zoo] == [{}] and "Implementations" not in md
    zoo[0]["implementations"] = {"lstm": "cudnn", "attention": "xla"}
    assert "- autoencoder-mlp: lstm cudnn, attention xla\n" in report.markdown_report(result)
    for name in ("throughput", "scaling", "peer_ratio"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _peer_cases():
    return [pytest.param(c, suite, id=f"{suite}-{c.name}")
            for suite in ("tiny", "quick") for c in catalog.case_table(suite) if c.peer]


@pytest.mark.parametrize("case,suite", _peer_cases())
def test_peer_has_the_zoo_models_parameter_count(case, suite):
    from zoo.bench import peers
    from zoo.core.train_state import param_count
    family = models.make_family(case.model_config())
    batch = zoo_runner.synthetic_batch(family.batch_spec, 2, int_high=case.int_high)
    params, _ = jax.eval_shape(family.init, jax.random.PRNGKey(0), batch)  # shapes, no compute
    peer = peers.make_peer(case.peer, case.model_config(), case.optimizer, batch)
    assert set(peer.players) == set(params)
    assert peer.param_count() == {p: param_count(params[p]) for p in params}
    if suite == "tiny":  # and the peer trains: a finite loss, parameters that move
        before = [p.detach().clone() for m in peer.players.values() for p in m.parameters()]
        loss = float(peer.step().detach())
        after = [p.detach() for m in peer.players.values() for p in m.parameters()]
        assert np.isfinite(loss)
        assert any(not bool((a == b).all()) for a, b in zip(after, before))


@pytest.mark.parametrize("argv, says", [
    (["--strategies", "nope"], "unknown strategy 'nope'; choose single, pmap, mesh"),
    (["--cases", "nosuch"], "--cases: unknown case(s) nosuch in the tiny suite; choose from"),
    (["--sweep-cases", "nope"], "--sweep-cases: unknown case(s) nope"),
    (["--out", __file__], "is a file; give a folder"),
    (["--out", f"{__file__}/results"], "cannot be made a folder: Not a directory"),
    (["--torch-threads", "xyz"], "give a number of threads, or auto"),
    (["--sweep", "1,0"], "argument --sweep: 0 must be >= 1"),
    (["--rounds", "0"], "argument --rounds: 0 must be >= 1"),
    # Options that the chosen mode would ignore.
    (["--loop", "--compile-only"], "--compile-only and --loop are separate modes; choose one"),
    (["--log-every", "5"], "the suite run (no --compile-only, --loop or --profile) reads none "
                           "of --log-every; leave it out"),
    (["--profile", "--sweep", "2"], "--profile reads none of --sweep; leave it out"),
    (["--loop", "--peers", "eager", "--torch-threads", "1", "--rounds", "2"],
     "--loop reads none of --peers, --torch-threads, --rounds; leave them out"),
    (["--compile-only", "--no-peak"], "--compile-only reads none of --no-peak"),
    (["--compile-only", "--strategies", "pmap"], "--compile-only compiles under single or mesh"),
    (["--cases", ""], "--cases '' names no case; name at least one"),
])
def test_bench_main_refuses_bad_options_in_one_line_before_running(argv, says, capsys):
    try:
        rc = bench_main(["--suite", "tiny", *argv])
    except SystemExit as e:  # argparse's own refusals
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and says in err[0] and "Traceback" not in err[0], err


def test_bench_main_writes_json_markdown_and_command(tmp_path, capsys):
    out = tmp_path / "run"
    rc = bench_main(["--suite", "tiny", "--cases", "autoencoder-mlp", "--peers", "none",
                           "--sweep", "", "--no-peak", "--no-plots", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| autoencoder-mlp | zoo | single | 1 | 16 |" in printed
    result = json.loads((out / "results.json").read_text())
    assert [r["framework"] for r in result["records"]] == ["zoo"]
    assert result["meta"]["measured_peak"] is None and result["meta"]["suite"] == "tiny"
    assert (out / "command.txt").read_text().startswith("zoo bench --suite tiny")
    assert not (out / report.PARTIAL).exists()  # the run finished: results.json has it all


def test_a_strategy_whose_devices_a_batch_does_not_split_over_is_left_out_with_a_note(
        monkeypatch):
    # On these 8 devices the tiny LSTM's batch of 4 runs only under single; in a sweep over 8
    # (the full suite's LSTM: 20 over 8) only the autoencoder's batch of 16 is swept.
    ran, swept = [], []
    monkeypatch.setattr(suites, "run_case",
                        lambda case, **kw: ran.append((case.name, kw["strategies"])) or [])
    monkeypatch.setattr(suites, "sweep_devices",
                        lambda n, **kw: swept.append((n, kw["cases"])) or [])
    result = suites.run_suite(suite="tiny", cases=["autoencoder-mlp", "lstm"],
                              strategies=("single", "mesh"), peers=(), sweep=(8,),
                              sweep_strategies=("pmap", "mesh"), peak=False, log=lambda s: None)
    assert ran == [("autoencoder-mlp", ("single", "mesh")), ("lstm", ("single",))]
    assert swept == [(8, ["autoencoder-mlp"])]
    assert result["notes"] == [
        "lstm: mesh not run over 8 devices: global batch of 4 examples does not divide over 8 "
        "devices",
        "sweep: lstm: pmap, mesh not run over 8 devices: global batch of 4 examples does not "
        "divide over 8 devices"]
    # A sweep whose worker dies is a failed record for each of its cases, not a note.
    def dies(n, **kw):
        raise RuntimeError("worker for 2 devices exited -9")
    monkeypatch.setattr(suites, "sweep_devices", dies)
    result = suites.run_suite(suite="tiny", cases=["autoencoder-mlp"], peers=(), sweep=(2,),
                              peak=False, log=lambda s: None)
    assert [(r["case"], r["devices"], r["sweep"], r["error"]) for r in result["records"]] == [
        ("autoencoder-mlp", 2, True, "RuntimeError: worker for 2 devices exited -9")]


def test_a_case_that_fails_while_running_is_named_on_stderr(tmp_path, monkeypatch, capsys):
    def run_case(case, **kwargs):
        raise MemoryError("RESOURCE_EXHAUSTED: out of memory allocating 1.2 TiB")
    monkeypatch.setattr(suites, "run_case", run_case)
    rc = bench_main(["--suite", "tiny", "--cases", "vae-mlp", "--peers", "none", "--sweep", "",
                     "--no-peak", "--no-plots", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err == ["zoo bench: vae-mlp (zoo/single) failed: MemoryError: "
                               "RESOURCE_EXHAUSTED: out of memory allocating 1.2 TiB"], err


def test_a_bench_cut_short_keeps_the_cases_it_finished(tmp_path, monkeypatch):
    # A GPU run under a timeout: the records of each finished case are on disk before the next
    # case starts, so a kill in the middle of a case loses that case only.
    done = []

    def run_case(case, **kwargs):
        if done:
            raise KeyboardInterrupt  # stands in for the kill (not an error a case may have)
        done.append(case.name)
        return [{"case": case.name, "framework": "zoo", "strategy": "single", "step_s": {}}]
    monkeypatch.setattr(suites, "run_case", run_case)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        bench_main(["--suite", "tiny", "--cases", "autoencoder-mlp,vae-mlp", "--peers", "none",
                    "--sweep", "", "--no-peak", "--no-plots", "--out", str(out)])
    kept = json.loads((out / report.PARTIAL).read_text())["records"]
    assert done == ["autoencoder-mlp"] and [r["case"] for r in kept] == ["autoencoder-mlp"]
    assert not (out / "results.json").exists()


def test_importing_the_bench_loads_no_torch_or_tensorflow():
    code = ("import sys, zoo.bench, zoo.bench.cli, zoo.bench.peers, zoo.bench.suites; "
            "heavy = [m for m in ('torch', 'tensorflow', 'tensorflow_datasets') "
            "if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_zoo_runner_builds_the_case_as_zoo_train_does():
    """Per-player optimizers, train options and mesh options reach the runner's config; the
    strategy, state and step come from zoo.build; its FLOPs are the family's."""
    base = next(c for c in catalog.case_table("tiny") if c.name == "gan-mlp")
    g_adam = {"name": "adam", "learning_rate": 1e-4}
    case = catalog.Case(base.name, base.family, base.model, base.batch_size,
                        optimizer=base.optimizer, optimizers={"generator": g_adam},
                        train={"grad_accum_steps": 2}, parallel={"fsdp": 2}, peer=base.peer)
    config = zoo_runner.zoo_config(case, "mesh")
    assert config.parallel.strategy == "mesh" and config.parallel.fsdp == 2
    assert dict(zoo_runner.zoo_config(case, "pmap").parallel) == {"strategy": "pmap"}
    assert config.train.grad_accum_steps == 2 and config.optimizers.generator.learning_rate == 1e-4
    runner = zoo_runner.ZooRunner(case, "mesh", jax.devices()[:2])
    assert runner.strategy.name == "mesh" and (runner.strategy.data, runner.strategy.fsdp) == (1, 2)
    assert runner.step_fn.grad_accum_steps == 2
    assert runner.players == ("discriminator", "generator")
    runner.step()
    assert np.isfinite(runner.loss())
    assert runner.family_flops == runner.family.flops_per_example * case.batch_size
    assert runner.jaxpr_flops == pytest.approx(runner.family_flops, rel=1e-6)
    # The peer trains each player with that player's optimizer too.
    from zoo.bench.peer_runner import PeerRunner
    peer = PeerRunner(case, runner.host_batch, players=runner.players).peer
    assert peer.optimizers["generator"].param_groups[0]["lr"] == 1e-4
    assert peer.optimizers["discriminator"].param_groups[0]["lr"] == base.optimizer["learning_rate"]


def test_compile_only_compiles_at_full_size_without_allocating(tmp_path, capsys):
    """``--compile-only`` (what checks the GPU suite on a CPU): abstract inputs, the case's real
    parameter count (against an actual init), the family's FLOPs, XLA's and the memory estimate;
    a case that cannot compile is an error record and a non-zero exit."""
    from zoo.bench import compile_only

    (record,) = compile_only.run_compile_only("tiny", ["vae-mlp"], log=lambda s: None)
    case = next(c for c in catalog.suite_cases("tiny")[0] if c.name == "vae-mlp")
    family = models.make_family(case.model_config())
    batch = zoo_runner.synthetic_batch(family.batch_spec, case.batch_size)
    params, _ = family.init(jax.random.PRNGKey(0), batch)
    assert record["param_count"] == sum(int(np.size(x)) for x in jax.tree.leaves(params))
    assert record["flops_per_step_family"] == family.flops_per_example * case.batch_size
    # XLA counts the same matmuls plus the elementwise work: within a few tens of percent.
    assert 0.8 < record["flops_per_step_xla"] / record["flops_per_step_family"] < 2.0
    memory = record["memory_analysis"]
    assert memory["argument_size_in_bytes"] >= 4 * record["param_count"] * 3  # params + 2 Adam
    assert record["peak_bytes_estimate"] >= memory["argument_size_in_bytes"] - memory.get(
        "alias_size_in_bytes", 0)
    # Under a mesh over the 8 test devices: batch 16 splits; the transformer's batch of 4 cannot.
    mesh, bad = compile_only.run_compile_only("tiny", ["autoencoder-mlp", "transformer"],
                                              strategy="mesh", log=lambda s: None)
    assert mesh["devices"] == jax.device_count() == 8 and mesh["compile_s"] > 0
    assert "does not divide" in bad["error"] and "param_count" not in bad
    with pytest.raises(ValueError, match="single or mesh"):
        compile_only.compile_case(case, "pmap")
    assert bench_main(["--suite", "tiny", "--cases", "lstm", "--compile-only",
                       "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "compile_only.json").read_text())
    assert [r["case"] for r in saved["records"]] == ["lstm"] and "jax" in saved["meta"]
    assert saved["records"][0]["implementations"] == {"lstm": "scan"}  # what a CPU compiled
    # bench_main set zoo's allocator setting (zoo.core.host_memory), where glibc has it.
    glibc = platform.libc_ver()[0] == "glibc" and os.environ.get("ZOO_MALLOC_DEFAULTS") != "0"
    assert saved["meta"]["malloc_keeps_freed_memory"] is glibc
    # Over the tests' 8 forced CPU devices, dispatch stays asynchronous (zoo.core.host_memory).
    assert saved["meta"]["cpu_async_dispatch"] is True
    assert "| lstm |" in capsys.readouterr().out


def test_loop_mode_times_the_real_training_loop_beside_the_step(tmp_path, capsys):
    from zoo.bench import loop
    from zoo.core.train_state import param_count
    case = next(c for c in catalog.case_table("tiny") if c.name == "lstm")
    # The loop trains the case's own model: the same parameters as the step alone.
    config = loop.loop_config(case, "single", steps=20, log_every=10)
    from zoo import train
    result = train.train(config, None, log=lambda s: None)
    runner = zoo_runner.ZooRunner(case, "single")
    assert param_count(result.state.params) == runner.param_count
    assert [s for s, _ in result.log_times] == [10, 20]
    out = tmp_path / "loop"
    assert bench_main(["--suite", "tiny", "--loop", "--cases", "autoencoder-mlp",
                       "--steps", "20", "--log-every", "5", "--out", str(out)]) == 0
    records = json.loads((out / "loop.json").read_text())["records"]
    assert [r["case"] for r in records] == ["autoencoder-mlp"]
    for r in records:
        assert r["loop_over_step"] == pytest.approx(
            r["step_s"]["median"] / r["loop_step_s"]["median"])
        # 20 steps alone in intervals of 5, two on each side of the loop's 5 timed intervals.
        assert r["step_s"]["n"] == 4 and r["loop_step_s"]["n"] == 5 and r["loop_step_s"]["min"] > 0
        assert r["loop_log_every"] == 5
    assert "| autoencoder-mlp | single | 16 |" in capsys.readouterr().out
    assert (out / "loop.md").read_text().startswith("| case | strategy |")


def test_loop_intervals_default_to_about_a_second_of_steps():
    from zoo.bench import loop
    calls = []
    times = loop.interval_times(lambda: calls.append(1), intervals=3, steps=7)
    assert len(times) == 3 and len(calls) == 21 and min(times) > 0
    assert loop.steps_per_interval(0.005) == 200     # the quick classifier's 5 ms step
    assert loop.steps_per_interval(0.4) == 10        # slow steps: never fewer than 10
    assert loop.steps_per_interval(1e-5) == 1000     # nor more than 1,000
    assert loop.steps_per_interval(0.005, interval_s=0.5) == 100


def test_profile_mode_names_each_sides_top_ops(tmp_path):
    out = tmp_path / "profile"
    assert bench_main(["--suite", "tiny", "--profile", "--cases", "autoencoder-mlp",
                       "--out", str(out)]) == 0
    profiles = json.loads((out / "profile.json").read_text())["profiles"]
    assert [p["framework"] for p in profiles] == ["zoo", "torch-eager"]
    zoo, peer = profiles
    for p in profiles:
        shares = [op["share"] for op in p["ops"]]
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-9
    # An MLP autoencoder's step is matmuls: both sides must see them.
    assert any(k["kind"] == "dot" for k in zoo["by_kind"])
    assert any(op["hlo"].startswith(("dot", "fusion")) for op in zoo["ops"])
    assert any(op["op"] in ("aten::mm", "aten::addmm") for op in peer["ops"])


def test_profile_counts_ops_on_every_thread_and_nothing_else():
    """XLA:CPU runs a step's ops on its worker threads and on the calling thread, where Python's
    and the runtime's events sit beside them: the op times take every op, on every thread, and
    no other event. A loop's event spans its body's ops, which count on their own; a thread
    pool's wait on a worker counts (the profiles report it)."""
    from types import SimpleNamespace as NS

    from zoo.bench.profile import op_seconds
    ms = lambda name, t: NS(name=name, duration_ns=t * 1e6)
    planes = [NS(lines=[
        NS(name="python", events=[ms("PjitFunction(step)", 9), ms("$profiler.py:307 trace", 5),
                                  ms("CommonPjRtLoadedExecutable::ExecuteHelperOnSingleDevice", 8),
                                  ms("Handle inputs", 0.1), ms("while.2", 7), ms("dot.3", 2),
                                  ms("fusion.1", 1)]),
        NS(name="tf_XLAEigen/123", events=[ms("fusion.1", 3), ms("ThreadpoolListener::Record", 4),
                                           ms("SlinkyThreadPool::Await", 0.5), ms("while.5", 6)]),
    ])]
    hlo = {"dot.3": "f32[4,4]{1,0} dot(...)", "fusion.1": "f32[4]{0} fusion(...)",
           "while.2": "(s32[], f32[4]{0}) while(%tuple.1), condition=%c, body=%b",
           "while.5": "(s32[], f32[4]{0}) while(%tuple.2), condition=%c2, body=%b2"}
    totals = {k: round(v * 1e3, 6) for k, v in op_seconds(planes, hlo).items()}
    assert totals == {"dot.3": 2, "fusion.1": 4, "SlinkyThreadPool::Await": 0.5}


def test_diffusion_peer_mirrors_the_unet_at_every_size():
    """The PyTorch U-Net has zoo's parameter count for each suite's diffusion case (presets
    resolved as zoo resolves them: tiny, mnist, ddpm_cifar10's 35.7M) and for a conditional one,
    whose peer trains with labels."""
    from zoo.bench import peers
    from zoo.bench.peers import diffusion as peer_lib
    from zoo.bench.peers.common import param_count
    from zoo.models.diffusion import param_count_of
    cases = [c for s in catalog.SUITES for c in catalog.case_table(s) if c.family == "diffusion"]
    assert {c.name for c in cases} >= {"diffusion-unet", "diffusion-ddpm-cifar10"}
    for case in cases:
        assert case.peer == "diffusion"
        config = case.model_config()
        assert param_count(peer_lib.make_unet(config)) == param_count_of(config), case.name
    conditional = {"family": "diffusion", "image_shape": (8, 8, 1), "channels": 8,
                   "channel_mult": (1, 2), "attention_resolutions": (4,), "groups": 4,
                   "num_classes": 3, "prediction": "v", "diffusion_steps": 50}
    batch = zoo_runner.synthetic_batch(models.make_family(conditional).batch_spec, 2,
                                       int_high={"label": 3})
    peer = peers.make_peer("diffusion", conditional, catalog.DDPM_ADAM, batch)
    assert peer.param_count() == {"model": param_count_of(conditional)}
    assert np.isfinite(float(peer.step().detach()))


def test_diffusion_case_runs_zoo_and_its_peer():
    """One bench run of the tiny diffusion case: a zoo row and a torch-eager row, the same
    parameters, finite losses, FLOPs from the jaxpr (the family has no analytic count)."""
    result = suites.run_suite(suite="tiny", cases=["diffusion-unet"], strategies=("single",),
                              peers=("eager",), sweep=(), warmup=1, steps=3, rounds=1,
                              peak=False, log=lambda s: None)
    recs = result["records"]
    assert not [r for r in recs if "error" in r], recs
    assert [(r["case"], r["framework"]) for r in recs] == [("diffusion-unet", "zoo"),
                                                            ("diffusion-unet", "torch-eager")]
    zoo, peer = recs
    assert zoo["param_count"] == peer["param_count"] > 0
    for r in recs:
        assert r["family"] == "diffusion" and r["batch_size"] == 4 and r["step_s"]["n"] == 3
        assert np.isfinite(r["loss_last"]) and r["loss_last"] > 0
        assert r["flops_source"] == "jaxpr" and r["flops_per_step_jaxpr"] > 0
    assert zoo["speedup_vs_torch_eager"] == pytest.approx(
        peer["step_s"]["median"] / zoo["step_s"]["median"])
