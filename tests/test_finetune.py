"""Fine-tuning: train.init_from (a zoo run, a Hugging Face GPT-2), optimizer.freeze, LoRA, and
zoo export --format hf-gpt2, each checked against the source weights or transformers itself."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import transformers

from configs_loader import load_config
from zoo import build, checkpoint, cli, convert_gpt2, eval_quality, finetune, models, train
from zoo.core import lora
from zoo.core import params as params_lib

ARCH = dict(family="transformer", preset="tiny", block_size=32, n_layer=2, n_head=2, n_embd=32)


def text_config(steps: int, **model):
    """A tiny transformer on synthetic text (vocabulary 64), on one device."""
    config = load_config("transformer_char_cpu")
    config.model = ml_collections.ConfigDict({"family": "transformer", "vocab_size": 0,
                                              "dropout": 0.0, **model})
    config.data.update(dataset="synthetic", seq_len=16, batch_size=8, eval_batch_size=8,
                       synthetic_size=4000)
    config.optimizer.update(warmup_steps=0, schedule="constant", learning_rate=3e-3)
    config.train.update(steps=steps, log_every=1, eval_every=0, checkpoint_every=0,
                        sample_tokens=0)
    return config


def quiet(_):
    pass


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A trained zoo transformer run: 30 steps from random weights."""
    workdir = tmp_path_factory.mktemp("source")
    train.train(text_config(30, **ARCH), workdir, log=quiet)
    return workdir, checkpoint.load_run(workdir)


def finetune_config(source_dir, steps: int, **changes):
    config = text_config(steps, **changes.pop("model", {}))
    config.train.init_from = str(source_dir)
    for key, value in changes.items():
        section, name = key.split(".")
        config[section][name] = value
    return config


def host_params(result) -> dict:
    return params_lib.flatten(jax.device_get(result.state.params))


def test_a_run_from_a_zoo_run_starts_from_its_weights_and_architecture(source, tmp_path):
    source_dir, src = source
    lines = []
    result = train.train(finetune_config(source_dir, 1), tmp_path / "ft", log=lines.append)
    # The config named no layers, width or vocabulary: all came from the source.
    assert any("initialised from" in line and "28 of 28" in line for line in lines), lines
    # Step 1's loss is the source's weights on the first batch: rebuild that batch and check.
    run = build.build(finetune_config(source_dir, 1))
    batch = next(run.data.train)
    model = src.family.modules["model"]
    logits = model.apply({"params": src.params["model"]}, jnp.asarray(batch["tokens"][:, :-1]))
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["tokens"][:, 1:, None], -1)
    assert result.history[0]["loss"] == pytest.approx(float(nll.mean()), rel=1e-5)
    assert result.history[0]["loss"] < 3.5  # random weights give ln(64) = 4.16


def test_the_step_0_params_are_the_sources_and_reinit_redraws_only_what_it_matches(source):
    source_dir, src = source
    config, loaded, tokenizer = finetune.prepare(finetune_config(source_dir, 1), None, quiet)
    run = build.build(config, tokenizer=tokenizer)
    theirs = params_lib.flatten(src.params)
    start = params_lib.flatten(finetune.start_from(run.template, loaded, log=quiet).params)
    assert start.keys() == theirs.keys()
    for path in theirs:
        np.testing.assert_array_equal(start[path], theirs[path], err_msg=path)
    fresh = params_lib.flatten(run.template.params)
    redrawn = params_lib.flatten(
        finetune.start_from(run.template, loaded, "^model/h_1/mlp/", log=quiet).params)
    for path in theirs:
        want = fresh[path] if path.startswith("model/h_1/mlp/") else theirs[path]
        np.testing.assert_array_equal(redrawn[path], want, err_msg=path)
    assert not np.array_equal(fresh["model/h_1/mlp/c_fc/kernel"],
                              theirs["model/h_1/mlp/c_fc/kernel"])
    with pytest.raises(ValueError, match="init_reinit='nothing_here' matches no parameter"):
        finetune.start_from(run.template, loaded, "nothing_here", log=quiet)


def test_a_config_that_sets_another_architecture_is_refused_naming_both_values(source):
    source_dir, _ = source
    with pytest.raises(ValueError, match=r"model\.n_embd=48 here, 32 in the source"):
        finetune.prepare(finetune_config(source_dir, 1, model=dict(n_embd=48)), None, quiet)
    # Keys that say how the model runs are the config's own.
    config, _, _ = finetune.prepare(finetune_config(source_dir, 1, model=dict(dropout=0.2)),
                                    None, quiet)
    assert config.model.dropout == 0.2 and config.model.n_embd == 32


def test_shapes_that_differ_are_refused_by_name_unless_reinitialised(source, tmp_path):
    source_dir, src = source

    def larger_vocabulary(reinit):  # more symbols: the token embedding no longer fits
        config = finetune_config(source_dir, 2, model=dict(vocab_size=80))
        config.data.synthetic_vocab = 80
        config.train.init_reinit = reinit
        return config

    with pytest.raises(ValueError, match=r"model\.vocab_size=80 here, 64 in the source"):
        finetune.prepare(larger_vocabulary(""), None, quiet)
    with pytest.raises(ValueError, match=r"model/wte/embedding is \(64, 32\) in the source, "
                                         r"\(80, 32\) here.*train\.init_reinit"):
        train.train(larger_vocabulary("h_1/mlp"), tmp_path / "a", log=quiet)
    config, loaded, _ = finetune.prepare(larger_vocabulary("wte"), None, quiet)
    run = build.build(config)
    start = params_lib.flatten(finetune.start_from(run.template, loaded, "wte", log=quiet).params)
    theirs, fresh = params_lib.flatten(src.params), params_lib.flatten(run.template.params)
    for path in fresh:
        want = fresh[path] if "wte" in path else theirs[path]
        np.testing.assert_array_equal(start[path], want, err_msg=path)
    result = train.train(larger_vocabulary("wte"), tmp_path / "b", log=quiet)
    assert np.isfinite(result.history[-1]["loss"])


def test_a_resumed_fine_tuning_run_reads_its_own_checkpoints_not_init_from(source, tmp_path):
    import shutil
    source_dir, _ = source
    copy = tmp_path / "source_copy"
    shutil.copytree(source_dir, copy)
    whole = train.train(finetune_config(source_dir, 4), tmp_path / "whole", log=quiet)
    config = finetune_config(copy, 2)
    train.train(config, tmp_path / "ft", log=quiet)
    shutil.rmtree(copy)  # the source is gone: a resume must not need it
    config.train.steps = 4
    lines = []
    resumed = train.train(config, tmp_path / "ft", log=lines.append)
    assert any("resuming from the checkpoint at step 2" in line for line in lines), lines
    a, b = host_params(whole), host_params(resumed)
    for path in a:
        np.testing.assert_array_equal(a[path], b[path], err_msg=path)


def _tiny_hf_gpt2(path, vocab=64):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=vocab, n_positions=32, n_embd=32, n_layer=2,
                                     n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     initializer_range=0.2, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # LayerNorms and biases away from 1 and 0, so a misplaced one shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    return model


def test_a_run_from_a_hugging_face_gpt2_starts_at_its_loss(tmp_path):
    hf = _tiny_hf_gpt2(tmp_path / "gpt2")
    config = finetune_config(tmp_path / "gpt2", 1)
    lines = []
    result = train.train(config, tmp_path / "ft", log=lines.append)
    batch = next(build.build(finetune.prepare(config, None, quiet)[0]).data.train)["tokens"]
    with torch.no_grad():
        logits = hf(torch.from_numpy(batch[:, :-1].astype(np.int64))).logits
        want = torch.nn.functional.cross_entropy(logits.reshape(-1, 64),
                                                 torch.from_numpy(batch[:, 1:].astype(
                                                     np.int64)).reshape(-1))
    assert result.history[0]["loss"] == pytest.approx(float(want), rel=1e-4)
    assert any("initialised from" in line and "28 of 28" in line for line in lines), lines


def test_frozen_parameters_stay_bitwise_and_keep_no_optimizer_state(source, tmp_path):
    source_dir, src = source
    lines = []
    result = train.train(finetune_config(source_dir, 3, **{"optimizer.freeze": "wte|ln_"}),
                         tmp_path / "ft", log=lines.append)
    theirs, mine = params_lib.flatten(src.params), host_params(result)
    frozen = [p for p in theirs if "wte" in p or "ln_" in p]
    assert len(frozen) == 11  # the embedding, and scale and bias of five LayerNorms
    for path in theirs:
        same = np.array_equal(mine[path], theirs[path])
        assert same == (path in frozen), path
    trainable = sum(theirs[p].size for p in theirs if p not in frozen)
    total = sum(x.size for x in theirs.values())
    assert any(f"{trainable:,} trainable / {total:,} params" in line for line in lines), lines
    # Adam's two moments for the trained leaves, and nothing for the frozen ones.
    moments = jax.tree.leaves(result.state.opt_state)
    assert sum(x.size for x in moments if np.ndim(x) > 0) == 2 * trainable


def test_lora_adapters_start_as_the_base_model_and_merge_exactly():
    family = models.make_family({**ARCH, "vocab_size": 64, "lora_rank": 4, "lora_alpha": 8.0,
                                 "lora_targets": "attn/c_attn"})
    params, _ = family.init(jax.random.PRNGKey(0), None)
    adapted = [p for p in params_lib.flatten(params) if p.endswith("lora_a")]
    assert adapted == ["model/h_0/attn/c_attn/lora_a", "model/h_1/attn/c_attn/lora_a"]
    base = {k: v for k, v in params_lib.flatten(params).items() if "lora" not in k}
    merged = params_lib.flatten(lora.merge(params, 2.0))
    assert merged.keys() == base.keys()
    for path in base:  # lora_b starts at zero: step 0 is the base model exactly
        np.testing.assert_array_equal(merged[path], base[path])
    # A trained adapter: the merged kernel computes x W + (alpha / r) (x A) B, the layer with its
    # adapter branch (Hu et al.'s eq. 3), here in float64 numpy.
    node = params["model"]["h_0"]["attn"]["c_attn"]
    b = np.random.default_rng(0).normal(size=node["lora_b"].shape).astype(np.float32)
    node = {**node, "lora_b": jnp.asarray(b)}
    x = np.random.default_rng(1).normal(size=(5, 32))
    a64, w64 = (np.asarray(node[k], np.float64) for k in ("lora_a", "kernel"))
    branch = x @ w64 + 2.0 * (x @ a64) @ b.astype(np.float64)
    np.testing.assert_allclose(x @ np.asarray(lora.merge(node, 2.0)["kernel"], np.float64),
                               branch, atol=1e-5)
    with pytest.raises(ValueError, match="lora_targets='nowhere' matches no Dense kernel; the "
                                         "model has model/h_0/attn/c_attn/kernel"):
        models.make_family({**ARCH, "vocab_size": 64, "lora_rank": 4,
                            "lora_targets": "nowhere"}).init(jax.random.PRNGKey(0), None)


LORA = dict(lora_rank=4, lora_alpha=8.0, lora_targets="attn/c_(attn|proj)")


def _lora_run(source_dir, tmp_path, name, steps=3, **changes):
    config = finetune_config(source_dir, steps, model=dict(LORA), **changes)
    lines = []
    result = train.train(config, tmp_path / name, log=lines.append)
    return result, lines


def test_lora_trains_only_its_adapters_and_exports_what_it_trained(source, tmp_path):
    source_dir, src = source
    result, lines = _lora_run(source_dir, tmp_path, "lora")
    theirs, mine = params_lib.flatten(src.params), host_params(result)
    for path, x in theirs.items():  # every base weight bitwise as the source has it
        np.testing.assert_array_equal(mine[path], x, err_msg=path)
    adapters = [p for p in mine if p not in theirs]
    assert len(adapters) == 8 and all(np.any(mine[p] != 0) for p in adapters
                                      if p.endswith("lora_b"))
    assert any(f"{sum(mine[p].size for p in adapters):,} trainable" in line for line in lines)
    # Read back, the run is the plain model with its adapters merged, and computes what the
    # run trained through them.
    run = checkpoint.load_run(tmp_path / "lora")
    assert set(params_lib.flatten(run.params)) == set(theirs)
    batch = {"tokens": np.random.default_rng(0).integers(0, 64, (4, 17)).astype(np.int32)}
    through_adapters = models.make_family(run.config["model"]).objective[0].loss_fn(
        jax.device_get(result.state.params), {"model": {}}, batch, jax.random.PRNGKey(0))[0]
    merged = run.family.eval_metrics(run.params, run.model_state, batch, jax.random.PRNGKey(0))
    assert float(merged["loss"]) == pytest.approx(float(through_adapters), abs=1e-6)
    out = convert_gpt2.save(tmp_path / "hf", run.family.modules["model"], run.params["model"],
                            run.tokenizer)
    hf = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    with torch.no_grad():
        want = hf(torch.from_numpy(batch["tokens"].astype(np.int64))).logits.numpy()
    got = run.family.modules["model"].apply({"params": run.params["model"]}, batch["tokens"])
    assert np.max(np.abs(np.asarray(got) - want)) <= 1e-5 * np.max(np.abs(want))


def test_lora_gives_the_same_numbers_under_mesh_and_with_grad_accumulation(source, tmp_path):
    source_dir, _ = source
    single, _ = _lora_run(source_dir, tmp_path, "single")
    mesh, _ = _lora_run(source_dir, tmp_path, "mesh", **{"parallel.strategy": "mesh",
                                                         "parallel.data": 4, "parallel.fsdp": 2})
    accum, _ = _lora_run(source_dir, tmp_path, "accum", **{"train.grad_accum_steps": 2})
    a = host_params(single)
    for other in (mesh, accum):
        b = host_params(other)
        for path in a:
            np.testing.assert_allclose(a[path], b[path], atol=1e-5, err_msg=path)
    # bfloat16 compute with accumulation: params stay float32, base weights untouched.
    bf16, _ = _lora_run(source_dir, tmp_path, "bf16", **{"train.compute_dtype": "bfloat16",
                                                         "train.grad_accum_steps": 2})
    c = host_params(bf16)
    for path in a:
        assert c[path].dtype == np.float32
        if "lora" not in path:
            np.testing.assert_array_equal(c[path], a[path], err_msg=path)
    assert abs(bf16.history[-1]["loss"] - single.history[-1]["loss"]) < 0.05


def test_zoo_export_hf_gpt2_is_a_folder_transformers_loads_and_reads_back_the_same(
        source, tmp_path, capsys):
    source_dir, src = source
    out = tmp_path / "hf"
    assert cli.main(["export", str(source_dir), "--format", "hf-gpt2", "--out", str(out)]) == 0
    hf, info = transformers.GPT2LMHeadModel.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched tensors
    tokens = np.random.default_rng(0).integers(0, 64, (3, 20))
    with torch.no_grad():
        want = hf.eval()(torch.from_numpy(tokens)).logits.numpy()
    got = np.asarray(src.family.modules["model"].apply({"params": src.params["model"]}, tokens))
    assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))
    # The character tokenizer, as a byte-level BPE without merges, tokenizes as zoo's does.
    hf_tokenizer = transformers.GPT2Tokenizer.from_pretrained(out)
    text = src.tokenizer.decode(tokens[0])
    assert hf_tokenizer.encode(text) == src.tokenizer.encode(text) == tokens[0].tolist()
    # Export then import is the identity, bit for bit.
    _, params = convert_gpt2.load(out)
    for path, x in params_lib.flatten(src.params["model"]).items():
        np.testing.assert_array_equal(params_lib.flatten(params)[path], x, err_msg=path)


def test_import_then_export_gives_back_the_hugging_face_model(tmp_path):
    hf = _tiny_hf_gpt2(tmp_path / "in", vocab=97)
    model_config, params = convert_gpt2.load(tmp_path / "in")
    out = convert_gpt2.save(tmp_path / "out", models.make_family(model_config).modules["model"],
                            params)
    again = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    for name, tensor in hf.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[name].numpy(), tensor.numpy(),
                                      err_msg=name)
    config = json.loads((out / "config.json").read_text())
    assert (config["n_layer"], config["n_embd"], config["vocab_size"]) == (2, 32, 97)


def test_export_refuses_what_gpt2_cannot_hold(tmp_path, capsys):
    lstm = dict(family="lstm", vocab_size=30, hidden_size=16, num_layers=1, seq_len=5)
    family = models.make_family(lstm)
    params, model_state = family.init(jax.random.PRNGKey(0), {
        "tokens": np.zeros((2, 6), np.int32), "reset": np.zeros(2, np.int32)})
    checkpoint.save_run(tmp_path / "lstm", lstm, params, model_state)
    assert cli.main(["export", str(tmp_path / "lstm"), "--format", "hf-gpt2",
                     "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not zoo's transformer (GPT)" in err[0], err
    assert not (tmp_path / "out").exists()
    from zoo import tokenizers
    gpt = models.make_family({**ARCH, "vocab_size": 64}).modules["model"]
    with pytest.raises(ValueError, match="word tokenizer has no GPT-2"):
        convert_gpt2.save(tmp_path / "w", gpt, {}, tokenizers.WordTokenizer(["a", "b", "<eos>"]))
    with pytest.raises(ValueError, match="more than one byte"):
        convert_gpt2.save(tmp_path / "c", gpt, {}, tokenizers.CharTokenizer(["a", "é"]))


def _tiny_hf_gpt2_with_bpe(path):
    """A tiny random GPT-2 whose tokenizer is byte-level BPE without merges: 256 byte tokens and
    <|endoftext|>, files as GPT-2's."""
    from zoo import tokenizers
    vocab = {c: i for i, c in enumerate(tokenizers.bytes_to_unicode().values())}
    vocab["<|endoftext|>"] = 256
    _tiny_hf_gpt2(path, vocab=257)
    (path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")


SMALL = ["--config.data.seq_len=32", "--config.data.batch_size=4",
         "--config.train.grad_accum_steps=2", "--config.train.steps=4",
         "--config.train.eval_every=2", "--config.train.checkpoint_every=2",
         "--config.data.eval_batch_size=256", "--config.train.sample_tokens=10",
         "--config.parallel.strategy=single"]


def test_the_gpt2_shakespeare_configs_fine_tune_a_gpt2_folder_and_export_it(tmp_path, capsys):
    _tiny_hf_gpt2_with_bpe(tmp_path / "gpt2")
    for name in ("finetune_gpt2_shakespeare", "finetune_gpt2_shakespeare_lora"):
        code = cli.main(["train", "--config", f"configs/{name}.py", "--workdir",
                         str(tmp_path / name), f"--config.train.init_from={tmp_path / 'gpt2'}",
                         *SMALL])
        out = capsys.readouterr().out
        assert code == 0, out
        assert "initialised from" in out and "eval (validation) at step 4" in out, out
        saved = json.loads((tmp_path / name / "tokenizer.json").read_text())
        assert saved["name"] == "gpt2" and saved["vocab_file"] == str(
            (tmp_path / "gpt2" / "vocab.json").resolve())
    # LoRA on c_attn, rank 4: 2 blocks x (32 x 4 + 4 x 96) adapters of the 34,720 + 1,024.
    assert "1,024 trainable / 35,744 params" in out, out
    assert cli.main(["export", str(tmp_path / "finetune_gpt2_shakespeare_lora"), "--format",
                     "hf-gpt2", "--out", str(tmp_path / "hf")]) == 0
    tokenizer = transformers.GPT2Tokenizer.from_pretrained(tmp_path / "hf")
    run = checkpoint.load_run(tmp_path / "finetune_gpt2_shakespeare_lora")
    text = "ROMEO:\nWhat light breaks?"  # within the context of 32
    assert tokenizer.encode(text) == run.tokenizer.encode(text)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    tokens = np.array([run.tokenizer.encode(text)])
    with torch.no_grad():
        want = hf(torch.from_numpy(tokens)).logits.numpy()
    got = run.family.modules["model"].apply({"params": run.params["model"]}, tokens)
    assert np.max(np.abs(np.asarray(got) - want)) <= 1e-5 * np.max(np.abs(want))


def test_zoo_evals_text_report_on_a_lora_state_judges_the_model_it_trained():
    # zoo eval hands the report a state's params, adapters and all; the text decoder takes plain
    # params, and given the adapters unmerged flax would ignore them: the report would judge the
    # base model. With a trained (here random) lora_b the three models write different text.
    config = text_config(1, **ARCH, **LORA)
    run = build.build(config)
    params = jax.device_get(run.template.params)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: np.random.default_rng(0).normal(size=x.shape).astype(x.dtype)
        if "lora_b" in jax.tree_util.keystr(path) else x, params)
    base = jax.tree.map(lambda x: x, params)
    for path in [p for p in params_lib.flatten(params) if "lora" in p]:
        *parents, leaf = path.split("/")
        node = base
        for key in parents:
            node = node[key]
        del node[leaf]
    example = lambda p: eval_quality.run_quality_report(
        run.family, p, {"model": {}}, config, data=run.data, metrics={"loss": 1.0})["example"]
    through_adapters = example(params)
    assert through_adapters == example(run.family.plain_params(params))
    assert through_adapters != example(base)
