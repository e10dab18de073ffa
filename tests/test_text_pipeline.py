"""Language models through the one pipeline: zoo train on text, tokenizers saved with the run,
carried-state evaluation, exact resume, zoo eval's text report and zoo generate on a run."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs_loader import CONFIGS, load_config
from zoo import build, checkpoint, cli, generate, input_pipeline, sample, train
from zoo.config import apply_overrides

# A tiny transformer on tiny_shakespeare's raw text (the pipeline is under test, not the model).
TRANSFORMER = ["--config.model.n_layer=2", "--config.model.n_head=2", "--config.model.n_embd=32",
               "--config.model.block_size=32", "--config.data.seq_len=32",
               "--config.data.batch_size=8", "--config.data.eval_batch_size=64",
               "--config.train.log_every=10", "--config.train.sample_tokens=20"]
# A tiny LSTM on PTB, state carried across batches.
LSTM = ["--config.model.hidden_size=32", "--config.data.seq_len=10", "--config.data.batch_size=8",
        "--config.data.eval_batch_size=8", "--config.train.log_every=5",
        "--config.train.sample_tokens=10"]


def _config(name, *overrides):
    return apply_overrides(load_config(name), overrides)


def test_zoo_train_eval_generate_on_tiny_shakespeare(tmp_path, capsys):
    code = cli.main(["train", "--config", str(CONFIGS / "transformer_char_cpu.py"), "--workdir",
                     str(tmp_path), *TRANSFORMER, "--config.train.steps=60",
                     "--config.train.eval_every=30", "--config.train.checkpoint_every=30"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "eval (validation) at step 60" in out and "tok/s" in out
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [h["train"]["loss"] for h in history if "train" in h]
    assert losses[0] > 3.5 and losses[-1] < losses[0] - 0.5, losses  # ln(65) = 4.17 at the start
    # The tokenizer is saved with the run and text samples are written at each evaluation.
    tokenizer = json.loads((tmp_path / "tokenizer.json").read_text())
    assert tokenizer["name"] == "char" and len(tokenizer["chars"]) == 65
    samples = sorted((tmp_path / "samples").glob("step_*.txt"))
    assert [p.name for p in samples] == ["step_0000030.txt", "step_0000060.txt"]
    assert "--- sample 0" in samples[-1].read_text()

    assert cli.main(["eval", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["split"] == "validation" and result["step"] == 60
    quality = result["quality"]
    # Bits per character is the mean NLL in nats over ln 2, in the metrics and the report alike.
    bits = result["metrics"]["loss"] / np.log(2)
    np.testing.assert_allclose(result["metrics"]["bits_per_char"], bits, rtol=1e-6)
    np.testing.assert_allclose(quality["bits_per_char"], bits, rtol=1e-6)
    assert 1.0 < bits < np.log2(65)  # better than uniform over the 65 characters after training
    # distinct-n itself is checked on known inputs in test_metrics; here that it is reported.
    assert {"distinct_2", "distinct_2_reference"} <= set(quality)
    assert quality["tokens_per_s"] > 0 and quality["num_samples"] == 20

    capsys.readouterr()
    args = ["generate", str(tmp_path), "--prompt", "ROMEO:", "--prompt", "JULIET:",
            "--max-new-tokens", "12", "--seed", "3"]
    assert cli.main(args) == 0
    first = capsys.readouterr().out
    assert cli.main(args) == 0
    assert capsys.readouterr().out == first  # seeded
    assert first.startswith("ROMEO:") and "\nJULIET:" in first
    assert len(first.split("\n\n")[0]) == len("ROMEO:") + 12  # one character per token
    # One checkpoint of the run, by its step directory: the model as it was at step 30.
    assert cli.main(["generate", str(tmp_path / "checkpoints" / "30"), *args[2:]]) == 0
    earlier = capsys.readouterr().out
    assert earlier.startswith("ROMEO:") and earlier != first
    # Characters the model never saw are named.
    assert cli.main(["generate", str(tmp_path), "--prompt", "ROMEO: ñ€"]) == 2
    assert "'ñ'" in capsys.readouterr().err


def _train_lstm(workdir, *overrides):
    return train.train(_config("lstm_ptb_small", *LSTM, *overrides), workdir, log=lambda s: None)


def test_lstm_on_ptb_resumes_exactly_with_its_stream_position(tmp_path):
    steps = ["--config.train.steps=12", "--config.train.checkpoint_every=4",
             "--config.train.eval_every=12"]
    whole = _train_lstm(tmp_path / "whole", *steps)
    _train_lstm(tmp_path / "cut", "--config.train.steps=8", "--config.train.checkpoint_every=4",
                "--config.train.eval_every=8")
    resumed = _train_lstm(tmp_path / "cut", *steps)  # resumes at step 8
    a, b = jax.device_get(whole.state), jax.device_get(resumed.state)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    # Carried evaluation over the validation split: perplexity is exp(mean loss) per word.
    m = whole.eval_metrics
    assert set(m) == {"loss", "perplexity"}
    np.testing.assert_allclose(m["perplexity"], np.exp(m["loss"]), rtol=1e-6)
    assert m["perplexity"] < 10_000  # better than uniform over the vocabulary after 12 steps


def test_language_models_train_on_synthetic_text_and_generate_from_it(tmp_path, capsys):
    synthetic = ["--config.data.dataset=synthetic", "--config.data.synthetic_size=20000",
                 "--config.train.steps=40", "--config.train.eval_every=40",
                 "--config.train.checkpoint_every=40", "--config.train.log_every=5"]
    runs = {"transformer_char_cpu": [*TRANSFORMER, "--config.optimizer.warmup_steps=5",
                                     "--config.optimizer.learning_rate=1e-2"],
            "lstm_char_shakespeare": [*LSTM, "--config.optimizer.decay_begin=0",
                                      "--config.optimizer.learning_rate=3e-2"]}
    # The run's first line says what the layers with a choice run here (Family.implementations).
    chosen = {"transformer_char_cpu": ", attention dot_product_attention (xla)",
              "lstm_char_shakespeare": ", lstm scan"}
    for name, overrides in runs.items():
        lines = []
        result = train.train(_config(name, *overrides, *synthetic), tmp_path / name,
                             log=lines.append)
        assert next(m for m in lines if " params, strategy " in m).endswith(chosen[name]), lines
        losses = [h["loss"] for h in result.history]
        assert losses[0] > 3.8 and losses[-1] < losses[0] - 0.8, (name, losses)  # ln(64) = 4.16
        assert result.eval_metrics["loss"] < losses[0] - 0.8, name
    # The run's tokenizer writes the 64 ids as letters, digits and punctuation, and the
    # transformer has learnt the successor rule.
    assert json.loads((tmp_path / name / "tokenizer.json").read_text())["chars"][:12] == \
        "abcdefghijkl"
    capsys.readouterr()
    assert cli.main(["generate", str(tmp_path / "transformer_char_cpu"), "--prompt", "abcdefgh",
                     "--temperature", "0", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == "abcdefghijklmnop\n"
    # Synthetic data in an image data section (no seq_len) is named, not a KeyError: by the text
    # keys left in it, or with none, by the family's need.
    config = _config("transformer_char_cpu", *TRANSFORMER, *synthetic,
                     "--config.model.vocab_size=64")
    del config.data["seq_len"]
    with pytest.raises(ValueError, match=r"data.dataset='synthetic' holds images, but "
                                         r"data.tokenizer='char' is a key of text data"):
        build.build(config)
    for key in input_pipeline.TEXT_ONLY_KEYS:
        if key in config.data:
            del config.data[key]
    with pytest.raises(ValueError, match=r"synthetic data for the transformer family needs a text "
                                         r"data section \(data.seq_len, data.batching"):
        build.build(config)


def test_text_config_errors(tmp_path):
    with pytest.raises(ValueError, match="model.vocab_size=50 is smaller than the 65 tokens"):
        build.build(_config("transformer_char_cpu", *TRANSFORMER, "--config.model.vocab_size=50"))
    with pytest.raises(ValueError, match="unknown dataset 'wikitext'; known: .*tiny_shakespeare"):
        build.build(_config("transformer_char_cpu", "--config.data.dataset=wikitext"))
    with pytest.raises(ValueError, match="unknown tokenizer 'wordpiece'; choose one of char"):
        build.build(_config("transformer_char_cpu", "--config.data.tokenizer=wordpiece"))
    with pytest.raises(ValueError, match="train.best_metric='accuracy' is not an eval metric of "
                                         "the transformer family; choose one of bits_per_char"):
        build.build(_config("transformer_char_cpu", *TRANSFORMER,
                            "--config.train.best_metric=accuracy"))
    # Sampling settings are checked when zoo train makes the run's text sampler, before
    # training, not at the first evaluation.
    with pytest.raises(ValueError, match=r"train.sample_prompt \(8 tokens\) \+ "
                                         r"train.sample_tokens=30 exceed the transformer's context "
                                         r"of 32 tokens"):
        sample.run_sampler(build.build(_config("transformer_char_cpu", *TRANSFORMER,
                                               "--config.train.sample_tokens=30")))
    assert sample.run_sampler(build.build(_config("transformer_char_cpu", *TRANSFORMER,
                                                  "--config.train.sample_tokens=0"))) is None
    # An evaluation split too short for one batch (it would evaluate nothing): random windows
    # (111,540 characters make 3,485 windows of 32 + 1) and contiguous rows.
    with pytest.raises(ValueError, match=r"the validation split of tiny_shakespeare \(111,540 "
                                         r"tokens\) makes no evaluation batch of "
                                         r"data.eval_batch_size=4000 rows of data.seq_len \+ 1 = "
                                         r"33 tokens; set data.eval_batch_size to at most 3485"):
        build.build(_config("transformer_char_cpu", *TRANSFORMER,
                            "--config.data.eval_batch_size=4000"))
    with pytest.raises(ValueError, match=r"the test split of ptb \(82,430 tokens\) makes no "
                                         r"evaluation batch .* at most 7493"):
        build.build(_config("lstm_ptb_small", *LSTM, "--config.data.eval_batch_size=8000"),
                    train=False, eval_split="test")


def test_the_model_is_filled_from_its_data_and_must_agree_with_it():
    from zoo import input_pipeline, tokenizers

    chars = tokenizers.CharTokenizer(list("abc\n"))
    fill = input_pipeline.fill_model_config
    filled = fill(_config("transformer_char_cpu"), chars).model
    assert (filled.vocab_size, filled.seq_len, filled.unit) == (4, 128, "char")
    bpe = tokenizers.GPT2Tokenizer({"a": 0, "b": 1}, [])
    assert fill(_config("transformer_char_cpu"), bpe).model.unit == "token"
    words = tokenizers.WordTokenizer(["<eos>", "the"])
    filled = fill(_config("lstm_ptb_small"), words).model
    assert (filled.vocab_size, filled.seq_len, filled.unit) == (2, 20, "word")
    assert fill(_config("lstm_ptb_small", "--config.data.batching=random",
                        "--config.model.carry_state=False"), words).model.seq_len == 20

    config = _config("transformer_char_cpu")
    config.model.seq_len = 64
    with pytest.raises(ValueError, match=r"model.seq_len=64 differs from data.seq_len=128"):
        fill(config, chars)
    config = _config("transformer_char_cpu")
    config.model.unit = "word"
    with pytest.raises(ValueError, match=r"model.unit='word' does not match the char tokenizer"):
        fill(config, chars)
    # The batching a family needs (its text_batching), through zoo train's build, before
    # anything compiles.
    with pytest.raises(ValueError, match=r"data.batching='stream', but the transformer trains on "
                                         r"random windows .* Set data.batching='random'"):
        build.build(_config("transformer_char_cpu", "--config.data.batching=stream"))
    with pytest.raises(ValueError, match=r"data.batching='random', but the LSTM carries its state "
                                         r".*or set model.carry_state=False\). Set "
                                         r"data.batching='stream'"):
        build.build(_config("lstm_ptb_small", *LSTM, "--config.data.batching=random"))


def test_zoo_generate_refuses_a_folder_that_is_no_run(tmp_path, capsys):
    assert cli.main(["generate", str(tmp_path), "--prompt", "hi"]) == 2
    assert "is not a trained run" in capsys.readouterr().err
    # Config overrides are for train and eval; generate would drop them silently.
    assert cli.main(["generate", str(tmp_path), "--prompt", "hi", "--config.model.n_layer=2"]) == 2
    assert "unrecognised arguments --config.model.n_layer=2" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.py")), ids=lambda p: p.stem)
def test_every_config_builds_its_family(path):
    from zoo import input_pipeline, models, tokenizers

    config = load_config(path.stem)
    if path.stem == "default":
        assert not config.model  # every other config sets the model
        return
    assert set(config) >= {"model", "data", "optimizer", "parallel", "train"}
    input_pipeline.check_dataset(config.data)
    if config.train.get("init_from"):
        # The architecture and tokenizer come from the source (zoo.finetune): stand in GPT-2
        # 124M's config.json; the config must leave room for it (no conflicting key).
        from zoo import convert_gpt2, finetune
        gpt2_124m = dict(vocab_size=50257, n_positions=1024, n_layer=12, n_head=12, n_embd=768)
        config = finetune.adopt_architecture(config, convert_gpt2.model_config_from_hf(gpt2_124m),
                                             "gpt2 (stand-in)", log=lambda _: None)
        assert config.model.n_layer == 12 and config.model.vocab_size == 50257
    elif input_pipeline.is_text(config.data):
        # A stand-in for the vocabulary built from the data: 65 characters, or 10k PTB words.
        tokenizer = (tokenizers.WordTokenizer(["<eos>"] + [f"w{i}" for i in range(9_999)])
                     if config.data.tokenizer == "word" else
                     tokenizers.CharTokenizer([chr(32 + i) for i in range(65)]))
        config = input_pipeline.fill_model_config(config, tokenizer)
        assert config.model.vocab_size == tokenizer.vocab_size
        assert config.model.seq_len == config.data.seq_len
    family = models.make_family(config.model)
    assert family.objective and family.batch_spec
    from zoo.core import optim
    for optimizer in [config.optimizer, *dict(config.get("optimizers", None) or {}).values()]:
        optim.make_optimizer(optimizer, int(config.train.steps))  # its schedule's keys hold


@pytest.mark.slow  # ~70 s: three processes; test_pipeline restores an 8-device checkpoint on
# one device by default
def test_a_run_trained_on_eight_devices_generates_and_evaluates_on_one(tmp_path):
    """An LSTM trained on a data x fsdp mesh of 8 devices (carried per-example state sharded over
    the batch): a 1-device process evaluates it (carried evaluation, the saved mesh replaced)
    and generates from it, with what the checkpoint alone holds."""
    result = _train_lstm(tmp_path, "--config.train.steps=4", "--config.parallel.strategy=mesh",
                         "--config.parallel.data=4", "--config.parallel.fsdp=2",
                         "--config.train.eval_every=4")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    run = lambda *args: subprocess.run([sys.executable, "-m", "zoo.cli", *args], env=env,
                                       capture_output=True, text=True, timeout=300)
    out = run("eval", str(tmp_path), "--split", "validation")
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    np.testing.assert_allclose(metrics["loss"], result.eval_metrics["loss"], rtol=1e-4)
    out = run("generate", str(tmp_path), "--prompt", "the company said", "--max-new-tokens", "5")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("the company said ") and len(out.stdout.split()) == 3 + 5


def test_resuming_with_another_batch_size_names_the_change(tmp_path):
    """The LSTM's carried state has a row per example: a changed data.batch_size cannot resume,
    and the error says so instead of calling every checkpoint unreadable."""
    _train_lstm(tmp_path, "--config.train.steps=2")
    with pytest.raises(ValueError, match=r"holds model_state/model/per_example/"
                                         r".* of shape \(8, 32\), this run's is \(16, 32\): the "
                                         "config changed"):
        _train_lstm(tmp_path, "--config.train.steps=4", "--config.data.batch_size=16")


def test_zoo_generate_draws_from_a_runs_ema_as_zoo_sample_does(tmp_path):
    # A run trained with train.ema_decay keeps the params' moving average, and what draws
    # samples is the average (train-time samples, zoo sample, zoo eval): zoo generate too.
    config = _config("transformer_char_cpu", *TRANSFORMER, "--config.data.dataset=synthetic",
                     "--config.train.steps=6", "--config.train.ema_decay=0.5",
                     "--config.optimizer.learning_rate=3e-2", "--config.optimizer.warmup_steps=0",
                     "--config.train.sample_tokens=0")
    train.train(config, tmp_path, log=lambda s: None)
    run = checkpoint.load_run(tmp_path)
    model = run.family.text_decoder
    continuation = lambda params: generate.Generator(model, params, run.tokenizer).generate_text(
        "abcdefgh", 16, temperature=1.0, seed=3)
    got = generate.generate_main(str(tmp_path), "abcdefgh", max_new_tokens=16, temperature=1.0,
                                 seed=3)
    assert got == continuation(run.ema_params["model"])
    assert got != continuation(run.params["model"])
