"""Surface no other test reaches: the shipped example and README code, ``zoo eval --step`` and
``--config``, ``zoo sample``, ``zoo list``, SIGINT, samples written while training, float16
compute, and the rmsprop and lamb optimizers. Each result is checked against a reference computed
here (by hand, in numpy, or with plain optax), not against zoo's own output."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from configs_loader import CONFIGS, load_config
from test_pipeline import _config as _pipeline_config
from test_pipeline import _final_params, _metric_rows, _wait_for_step, _zoo_train
from zoo import checkpoint, cli, models, train
from zoo.config import apply_overrides, load_config_file
from zoo.core import optim

ROOT = CONFIGS.parent
AE = str(CONFIGS / "autoencoder_mnist.py")
VAE = str(CONFIGS / "vae_mnist.py")
# Synthetic data, a one-hidden-layer model: what is under test is the command, not the model.
SMALL = ["--config.data.dataset=synthetic", "--config.data.synthetic_size=512",
         "--config.data.batch_size=32", "--config.model.hidden=(16,)"]


def _child_env():
    """A subprocess's environment: one host device unless the code asks for more (the tests' 8
    are set through XLA_FLAGS in conftest.py)."""
    return {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "ZOO_DEBUG")}


# ---- 1. examples/reuse.py and the README's code ------------------------------------------------

def _fenced_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


_REUSE_CHILD = r"""
import contextlib, io, json, runpy, sys
from pathlib import Path
root = Path(sys.argv[1])
out = io.StringIO()
with contextlib.redirect_stdout(out):  # the real file, as `python examples/reuse.py` runs it
    g = runpy.run_path(str(root / "examples" / "reuse.py"), run_name="__main__")
import jax, jax.numpy as jnp, numpy as np, optax
model, batch, x, state, strategy = g["model"], g["batch"], g["x"], g["state"], g["strategy"]
final = jax.tree.map(np.asarray, strategy.to_host(state.params))
specs = [str(leaf.sharding.spec) for leaf in jax.tree.leaves(state.params)]

# The reference: plain optax Adam(1e-3) on the whole batch from the same initial params, one
# device. Two equal microbatches of a mean loss average to the whole batch's gradient.
params = model.init(jax.random.PRNGKey(0), x[:1])["params"]
tx = optax.adam(1e-3)
opt = tx.init(params)
loss = lambda p: jnp.mean((model.apply({"params": p}, batch["x"]) - batch["y"]) ** 2)

@jax.jit
def ref_step(p, o):
    value, grads = jax.value_and_grad(loss)(p)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o, value

losses = []
for _ in range(200):
    params, opt, value = ref_step(params, opt)
    losses.append(float(value))
diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(final),
                                                         jax.tree.leaves(params)))

# The README's other Python blocks continue the first one's session (x, strategy, imports).
blocks = json.loads(sys.argv[2])
for block in blocks:
    exec(compile(block, "README.md", "exec"), g)
import zoo
bn_state = g["state"]
stats_before = jax.tree.leaves(g["strategy"].to_host(bn_state.model_state))
step = zoo.compile_train_step(g["loss_fn"], g["strategy"])  # donates bn_state
after, metrics = step(bn_state, batch)
stats_after = jax.tree.leaves(g["strategy"].to_host(after.model_state))
print("RESULT " + json.dumps({
    "printed": out.getvalue(), "devices": jax.device_count(), "mesh": dict(strategy.mesh.shape),
    "specs": specs, "step": int(strategy.to_host(state.step)), "ref_losses": losses,
    "param_diff": diff, "bn_loss": float(metrics["loss"]),
    "bn_stats_moved": min(float(np.max(np.abs(a - b))) for a, b in zip(stats_before,
                                                                       stats_after))}))
"""


def test_examples_reuse_and_the_readmes_python_blocks_run_as_written():
    """examples/reuse.py (the real file, in a fresh process with no XLA_FLAGS, so its own
    8-device setting is what counts) trains its regressor over a 4 x 2 data x fsdp mesh of 8
    devices exactly as plain optax Adam on the whole batch does, and prints that loss. The
    README's first Python block is that file; its second (BatchNorm, dropout, model state)
    runs in the same session and its state takes a step that moves the batch statistics."""
    readme = (ROOT / "README.md").read_text()
    blocks = _fenced_blocks(readme, "python")
    assert len(blocks) >= 2
    assert blocks[0].strip() == (ROOT / "examples" / "reuse.py").read_text().strip(), \
        "README's first Python block must be examples/reuse.py, as it says"
    done = subprocess.run([sys.executable, "-c", _REUSE_CHILD, str(ROOT), json.dumps(blocks[1:])],
                          env=_child_env(), capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(done.stdout.split("RESULT ", 1)[1])
    printed = re.fullmatch(r"loss after 200 steps: (\d+\.\d{4}) on (\d+) devices\n", r["printed"])
    assert printed, r["printed"]
    assert int(printed.group(2)) == r["devices"] == 8 and r["step"] == 200
    assert r["mesh"] == {"data": 4, "fsdp": 2}
    assert "P(None, 'fsdp')" in r["specs"]  # the 16 x 256 kernel is sharded over fsdp
    # What it printed is the last step's loss, as the reference computes it (4 decimals).
    assert abs(float(printed.group(1)) - r["ref_losses"][-1]) <= 6e-5, (printed.group(1),
                                                                        r["ref_losses"][-1])
    # The same params as the reference to float32 rounding after 200 steps (measured 1.2e-7;
    # a wrong gradient average or a lost microbatch is off by orders of magnitude more).
    assert r["param_diff"] < 1e-5, r["param_diff"]
    assert r["ref_losses"][-1] < 0.15 * r["ref_losses"][0]  # it trains, as it claims
    assert np.isfinite(r["bn_loss"]) and r["bn_stats_moved"] > 0


def _readme_zoo_commands() -> list[list[str]]:
    """Every ``zoo ...`` command in the README's bash blocks, as argv (after ``zoo``)."""
    commands = []
    for block in _fenced_blocks((ROOT / "README.md").read_text(), "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            commands += _zoo_commands_in(line)
    return commands


def _zoo_commands_in(line: str) -> list[list[str]]:
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split, lex.commenters = True, "#"
    tokens, found = list(lex), []
    for i, token in enumerate(tokens):
        if " " in token:  # a quoted command (gcloud --command="cd zoo && zoo train ...")
            found += _zoo_commands_in(token.split("=", 1)[-1])
        elif token == "zoo":  # the command, not a folder (cd zoo && ...)
            argv = []
            for t in tokens[i + 1:]:
                if t in ("&&", "&", ";", "|", "||"):
                    break
                argv.append(t)
            if argv:
                found.append(argv)
    return found


def test_every_zoo_command_in_the_readme_parses_and_names_real_configs_and_keys():
    """The README's shell blocks train for minutes (or install packages), so they are not run
    here: the quick-start and test installs (pip), the two-process, SLURM and TPU runs (several
    machines), the diffusion and language-model trainings (minutes to hours), the diffusion smoke
    run (seconds per step, on a 2-core CPU too slow even at 20 steps) and zoo sample / inpaint /
    eval / generate on runs those trainings make. (The quick-start command itself runs in
    test_pipeline's slow test; prepare-text runs in the next test, and training on its
    output, with a tiny model, in the slow one after it.)
    Every command is checked instead: zoo's own parser accepts its options, its config file
    exists, and each --config.key=value names a key of that config."""
    commands = _readme_zoo_commands()
    assert len(commands) >= 15, commands
    subcommands = set()
    for argv in commands:
        subcommands.add(argv[0])
        try:
            args, rest = cli.build_parser().parse_known_args(argv)
        except SystemExit:
            pytest.fail(f"zoo {' '.join(argv)}: zoo's parser refuses it")
        unknown = [a for a in rest if not a.startswith("--config.")]
        assert not unknown, f"zoo {' '.join(argv)}: unrecognised {unknown}"
        overrides = [a for a in rest if a.startswith("--config.")]
        assert not overrides or args.command in ("train", "eval"), argv
        if args.command == "train":
            path = ROOT / args.config
            assert path.is_file(), f"zoo {' '.join(argv)}: no {args.config}"
            apply_overrides(load_config_file(path), overrides)  # an unknown key raises
    assert {"train", "eval", "sample", "inpaint", "generate", "prepare-text"} <= subcommands


def _readme_prepare_text(tmp_path) -> tuple[list[list[str]], str]:
    """Runs the README's `zoo prepare-text --dataset tiny_shakespeare --out DIR` with DIR
    replaced by tmp_path/tok; returns the README's commands and its DIR."""
    commands = _readme_zoo_commands()
    prep = next(c for c in commands if c[0] == "prepare-text")
    folder = prep[prep.index("--out") + 1]
    assert cli.main([a.replace(folder, str(tmp_path / "tok")) for a in prep]) == 0
    return commands, folder


def test_the_readmes_prepare_text_command_writes_the_raw_texts_tokens(tmp_path, shared_data,
                                                                      monkeypatch):
    """The token files hold the raw text's characters, in nanoGPT's 90/10 split, each id the
    index of its character among the sorted characters of the text."""
    monkeypatch.chdir(ROOT)  # the README's commands run in the checkout
    _readme_prepare_text(tmp_path)
    raw = (shared_data / "raw" / "tiny_shakespeare" / "input.txt").read_text()
    meta = json.loads((tmp_path / "tok" / "meta.json").read_text())
    chars = sorted(set(raw))
    assert meta["vocab_size"] == len(chars) == 65
    ids = {s: np.fromfile(tmp_path / "tok" / f"{s}.bin", dtype=meta["dtype"])
           for s in ("train", "val")}
    assert len(ids["train"]) == int(0.9 * len(raw)) and sum(map(len, ids.values())) == len(raw)
    decoded = "".join(chars[i] for i in np.concatenate([ids["train"], ids["val"]]))
    assert decoded == raw


@pytest.mark.slow  # a transformer compiles for 10-20 s on 2 shared cores
def test_the_readmes_train_on_prepared_tokens_runs(tmp_path, monkeypatch, capsys):
    """The README's `zoo train ... --config.data.dataset=tokens --config.data.path=DIR` on
    what its prepare-text wrote, with a tiny model for 2 steps."""
    monkeypatch.chdir(ROOT)
    commands, folder = _readme_prepare_text(tmp_path)
    train_cmd = next(c for c in commands if c[0] == "train"
                     and f"--config.data.path={folder}" in c)
    train_cmd = [a.replace(folder, str(tmp_path / "tok")) for a in train_cmd]
    train_cmd[train_cmd.index("--workdir") + 1] = str(tmp_path / "run")
    tiny = ["--config.model.n_layer=1", "--config.model.n_head=2", "--config.model.n_embd=16",
            "--config.model.block_size=16", "--config.data.seq_len=16",
            "--config.data.batch_size=8", "--config.data.eval_batch_size=2048",
            "--config.train.steps=2", "--config.train.sample_tokens=0",
            "--config.train.log_every=1"]
    capsys.readouterr()
    assert cli.main([*train_cmd, *tiny]) == 0, capsys.readouterr().err
    rows = _metric_rows(tmp_path / "run")
    # A character model's first loss: near log(65), the uniform guess over the vocabulary.
    assert [s for s, _ in rows] == [1, 2]
    assert abs(rows[0][1]["loss"] - np.log(65)) < 0.5, rows


# ---- 2, 3. zoo eval --step and --config --------------------------------------------------------

def _ae_logits(p: dict, x: np.ndarray) -> np.ndarray:
    """The MLP autoencoder's forward pass in float64 numpy (enc_i, code, dec_i, out)."""
    h = x.reshape(len(x), -1).astype(np.float64)
    dense = lambda name, h: h @ np.float64(p[name]["kernel"]) + np.float64(p[name]["bias"])
    encs = sorted(k for k in p if k.startswith("enc_"))
    decs = sorted(k for k in p if k.startswith("dec_"))
    for name in encs:
        h = np.maximum(dense(name, h), 0.0)
    h = dense("code", h)
    for name in decs:
        h = np.maximum(dense(name, h), 0.0)
    return dense("out", h)


def _ae_loss(p: dict, x: np.ndarray, kind: str) -> float:
    """The per-image reconstruction loss, averaged: summed squared error on sigmoid outputs, or
    summed Bernoulli cross-entropy, log(1 + e^l) - x l."""
    logits = _ae_logits(p, x)
    x = x.reshape(len(x), -1).astype(np.float64)
    if kind == "mse":
        per_image = np.sum((1 / (1 + np.exp(-logits)) - x) ** 2, axis=1)
    else:
        per_image = np.sum(np.logaddexp(0.0, logits) - x * logits, axis=1)
    return float(np.mean(per_image))


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory):
    """A tiny autoencoder trained with the MSE loss (its config file says Bernoulli), 30 steps,
    a checkpoint and an evaluation every 10, all three checkpoints kept; with the synthetic test
    split it is evaluated on (512 images from seed train.seed + 1, one batch)."""
    from zoo import data
    root = tmp_path_factory.mktemp("ae_run")
    config = apply_overrides(load_config("autoencoder_mnist"), [
        *SMALL, "--config.model.loss=mse", "--config.train.steps=30",
        "--config.train.checkpoint_every=10", "--config.train.eval_every=10",
        "--config.train.keep_checkpoints=3", "--config.optimizer.learning_rate=0.01"])
    train.train(config, root, log=lambda s: None)
    test_images = data.synthetic_images(512, (28, 28, 1), seed=1)["image"]
    return root, test_images


def _zoo_eval(capsys, *argv) -> dict:
    capsys.readouterr()
    assert cli.main(["eval", *map(str, argv)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    return json.loads(out[out.index("{\n"):])


def _params_at(run: Path, step: int) -> dict:
    state, _, saved = checkpoint.load_on_host(run / "checkpoints", step)
    assert saved == step
    return state["params"]["model"]


def test_zoo_eval_step_evaluates_that_steps_weights(ae_run, capsys):
    run, images = ae_run
    ckpt = checkpoint.Checkpointer(run / "checkpoints")
    assert ckpt.all_steps() == [10, 20, 30]
    ckpt.close()
    logged = dict(_metric_rows(run, "eval"))
    by_hand = {s: _ae_loss(_params_at(run, s), images, "mse") for s in (10, 20, 30)}
    # Far enough apart that a checkpoint of another step cannot pass for this one's.
    assert min(abs(by_hand[a] - by_hand[b]) for a, b in ((10, 20), (20, 30), (10, 30))) > \
        1e-3 * by_hand[30], by_hand
    for step in (10, 20):
        result = _zoo_eval(capsys, run, "--step", step, "--no-quality")
        assert result["step"] == step and result["split"] == "test"
        # float32 (XLA, 8 devices) against float64 numpy over 784 pixels and 512 images.
        np.testing.assert_allclose(result["metrics"]["loss"], by_hand[step], rtol=1e-5)
        # What training's own evaluation logged at that step, with the live state.
        np.testing.assert_allclose(result["metrics"]["loss"], logged[step]["loss"], rtol=1e-5)
        assert json.loads((run / "eval.json").read_text()) == result
    newest = _zoo_eval(capsys, run, "--no-quality")
    assert newest["step"] == 30
    np.testing.assert_allclose(newest["metrics"]["loss"], by_hand[30], rtol=1e-5)


def test_zoo_eval_config_replaces_the_saved_config_and_takes_the_overrides(ae_run, capsys):
    """The run trained with model.loss=mse; --config configs/autoencoder_mnist.py evaluates its
    weights with that file's Bernoulli loss instead, and the --config.key=value overrides apply
    to the file (here the synthetic data and model size, then the loss back to mse)."""
    run, images = ae_run
    params = _params_at(run, 30)
    bernoulli, mse = _ae_loss(params, images, "bernoulli"), _ae_loss(params, images, "mse")
    assert abs(bernoulli - mse) > 10
    result = _zoo_eval(capsys, run, "--no-quality", "--config", AE, *SMALL)
    assert result["step"] == 30
    np.testing.assert_allclose(result["metrics"]["loss"], bernoulli, rtol=1e-5)
    result = _zoo_eval(capsys, run, "--no-quality", "--config", AE, *SMALL,
                       "--config.model.loss=mse")
    np.testing.assert_allclose(result["metrics"]["loss"], mse, rtol=1e-5)


# ---- 4, 6. zoo sample, zoo list; samples written while training ---------------------------------

SCALE, PAD, TITLE = 3, 2, 14 + 10  # sample.py's grid: 3x nearest-neighbour tiles, 2 px gaps


def _grid_png(path: Path, rows: int, cols: int, image: int = 28) -> np.ndarray:
    """A grid PNG, checked: the PNG signature, a whole readable image, the size a titled grid of
    rows x cols tiles of image x image pixels has; returns the tiles (rows*cols, h, w, 3)."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        cell = image * SCALE + PAD
        assert im.size == (cols * cell + PAD, TITLE + rows * cell + PAD), (path, im.size)
        pixels = np.asarray(im.convert("RGB"))
    tiles = [pixels[TITLE + PAD + r * cell:TITLE + PAD + r * cell + image * SCALE,
                    PAD + c * cell:PAD + c * cell + image * SCALE]
             for r in range(rows) for c in range(cols)]
    return np.stack(tiles)


def _assert_varied(tiles: np.ndarray) -> None:
    """Tiles with content: each not one flat colour, and not all the same picture."""
    assert all(t.std() > 1.0 for t in tiles), [float(t.std()) for t in tiles]
    assert len({t.tobytes() for t in tiles}) > len(tiles) // 2


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    """A tiny VAE trained through `zoo train` for 4 steps, evaluating (and so writing samples)
    and checkpointing every 2."""
    root = tmp_path_factory.mktemp("vae_run")
    argv = ["train", "--config", VAE, "--workdir", str(root), *SMALL,
            "--config.train.steps=4", "--config.train.eval_every=2",
            "--config.train.checkpoint_every=2", "--config.train.log_every=1",
            "--config.optimizer.learning_rate=0.01"]
    assert cli.main(argv) == 0
    return root


def test_zoo_train_writes_sample_pngs_at_each_evaluation_from_that_steps_weights(vae_run):
    from zoo import sample
    samples = vae_run / "samples"
    assert sorted(p.name for p in samples.iterdir()) == ["step_0000002", "step_0000004"]
    tiles = {}
    for step in (2, 4):
        tiles[step] = _grid_png(samples / f"step_{step:07d}" / "samples.png", 10, 10)
        _assert_varied(tiles[step])
        _grid_png(samples / f"step_{step:07d}" / "interpolation.png", 8, 10)
    # The grid of step 2 is what step 2's checkpointed weights draw with the rng of step 2,
    # and not what step 4's do: it was drawn at its step, from that step's model.
    redrawn = {}
    for step in (2, 4):
        run = checkpoint.load_run(vae_run, step=step)
        out = sample.write_samples(run.family, run.params, run.model_state,
                                   vae_run / "redrawn" / str(step), jax.random.PRNGKey(2))
        redrawn[step] = _grid_png(out["samples"], 10, 10)
    diff = lambda a, b: int(np.max(np.abs(a.astype(int) - b.astype(int))))
    assert diff(tiles[2], redrawn[2]) <= 1  # float rounding may move a pixel by one level
    assert diff(tiles[2], redrawn[4]) > 8


def test_zoo_sample_writes_valid_pngs(vae_run, tmp_path, capsys):
    capsys.readouterr()
    assert cli.main(["sample", str(vae_run), "--out", str(tmp_path / "png"), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    # A synthetic run has no test split to load: the samples and a random-latent interpolation.
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["interpolation.png",
                                                                   "samples.png"]
    for name in ("samples", "interpolation"):
        assert f"{name}: {tmp_path / 'png' / (name + '.png')}" in out.splitlines()
    _assert_varied(_grid_png(tmp_path / "png" / "samples.png", 10, 10))
    strip = _grid_png(tmp_path / "png" / "interpolation.png", 8, 10)
    _assert_varied(strip)
    # Interpolation rows run between two latents: neighbours are closer than the two ends.
    rows = strip.reshape(8, 10, *strip.shape[1:]).astype(float)
    step_apart = np.abs(rows[:, 1:] - rows[:, :-1]).mean()
    ends_apart = np.abs(rows[:, -1] - rows[:, 0]).mean()
    assert step_apart < ends_apart


def _config_lines(out: str) -> tuple[str, dict[str, str]]:
    lines = out.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("configs"))
    listed = {}
    for line in lines[i + 1:]:
        name, _, doc = line.strip().partition(" ")
        listed[name] = doc.strip()
    return lines[i], listed


def test_zoo_list_names_families_and_the_configs_where_it_looked(tmp_path, monkeypatch, capsys):
    want = {}
    for path in CONFIGS.glob("*.py"):
        doc = path.read_text().split('"""')[1].strip().splitlines()[0]
        want[path.stem] = doc
    want.pop("default")
    monkeypatch.chdir(tmp_path)  # no ./configs here: the checkout's
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    families = out.split("configs")[0].splitlines()
    assert families[0] == "model families:"
    assert [f.strip() for f in families[1:]] == sorted(models.FAMILIES)
    header, listed = _config_lines(out)
    assert header == f"configs ({CONFIGS}):"
    assert listed == want  # every config, with the first line of its docstring; not default

    mine = tmp_path / "configs"  # ./configs, where there is one
    mine.mkdir()
    (mine / "default.py").write_text('"""Defaults."""\n')
    (mine / "tiny.py").write_text('"""A tiny run.\n\nMore."""\n')
    (mine / "bare.py").write_text("x = 1\n")
    assert cli.main(["list"]) == 0
    header, listed = _config_lines(capsys.readouterr().out)
    assert header == "configs (configs):" and listed == {"bare": "", "tiny": "A tiny run."}
    assert cli.main(["list", "--configs", str(tmp_path / "nowhere")]) == 0
    assert f"configs: none found (looked in {tmp_path / 'nowhere'}; pass --configs DIR)" in \
        capsys.readouterr().out


# ---- 5. SIGINT during zoo train --------------------------------------------------------------

def test_sigint_saves_a_checkpoint_at_its_step_that_resumes(tmp_path):
    """Ctrl-C (SIGINT) during `zoo train`: exit 0, no KeyboardInterrupt, a checkpoint of the
    step it arrived at, holding the data position after that step's batch; training again
    resumes there (in this process, on 8 devices: a checkpoint restores on any)."""
    proc = _zoo_train(tmp_path, "--config.train.steps=100000",
                      "--config.train.checkpoint_every=1000")
    _wait_for_step(tmp_path, proc, 5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out and "interrupted" not in out
    stopped = int(out.split("received SIGINT at step ")[1].split(";")[0])
    assert stopped >= 5
    step, _, extra = _final_params(tmp_path)
    assert step == stopped
    # Batches of 32 from 512 synthetic images: the position after `stopped` batches, not that
    # of the batches the prefetch had already read. The iterator moves to the next epoch when it
    # draws the next batch, so after an epoch's last batch it is at (epoch, 512), not (epoch+1, 0).
    seen = stopped * 32
    assert extra["data"]["iterator"] == {"epoch": (seen - 1) // 512, "index": (seen - 1) % 512 + 1}
    messages = []
    result = train.train(_pipeline_config(f"--config.train.steps={stopped + 3}"), tmp_path,
                         log=messages.append)
    assert f"zoo: resuming from the checkpoint at step {stopped} in {tmp_path / 'checkpoints'}" \
        in messages
    assert int(result.strategy.to_host(result.state.step)) == stopped + 3
    assert [s for s, _ in _metric_rows(tmp_path)] == list(range(1, stopped + 4))


# ---- 7. float16 compute --------------------------------------------------------------------

def test_float16_compute_trains_with_float32_params_close_to_float32():
    """train.compute_dtype=float16, no loss scaling: 20 steps train with finite losses, params
    and optimizer state stay float32, and the run tracks a float32 run (1%: two trajectories
    apart by rounding drift apart slowly; measured 0.5%).

    On the same weights the float16 evaluation is within 1e-3 of float32's (relative): float16
    rounds each operand to 11 significant bits (2^-11 = 4.9e-4 relative) and the loss is summed
    in float32 from the float16 logits, so no term is off by more than about that; rounding
    errors of both signs over 784 pixels x 512 images leave the mean far closer (measured
    1.5e-6). Yet not bitwise equal: equal would mean nothing ran in float16. And it is float16,
    not bfloat16 (which has float32's range): pixels of 7e4, past float16's largest finite
    value 65504, make its loss non-finite and no other dtype's."""
    from zoo import build, evaluate
    base = [*SMALL, "--config.train.steps=20", "--config.train.log_every=1",
            "--config.optimizer.learning_rate=0.01"]
    runs = {}
    for dtype in ("float32", "float16"):
        config = apply_overrides(load_config("autoencoder_mnist"),
                                 [*base, f"--config.train.compute_dtype={dtype}"])
        runs[dtype] = train.train(config, None, log=lambda s: None)
    half, full = runs["float16"], runs["float32"]
    losses = {k: np.array([h["loss"] for h in r.history]) for k, r in runs.items()}
    assert np.all(np.isfinite(losses["float16"])) and len(losses["float16"]) == 20
    assert losses["float16"][-1] < 0.6 * losses["float16"][0]  # it trains
    np.testing.assert_allclose(losses["float16"], losses["float32"], rtol=1e-2)
    for r in (half, full):
        dtypes = {x.dtype for x in jax.tree.leaves((r.state.params, r.state.opt_state))
                  if jnp.issubdtype(x.dtype, jnp.floating)}
        assert dtypes == {jnp.dtype(jnp.float32)}, dtypes

    run = build.build(config)  # the float16 run's config: its evaluation split
    batches = list(run.data.eval_batches())
    too_big = [{"image": np.full_like(batches[0]["image"], 7e4)}]
    evals = {}
    for dtype in ("float32", "float16", "bfloat16"):
        _, eval_step = build.compile_steps(run.family, full.strategy, {"compute_dtype": dtype})
        evals[dtype] = (evaluate.evaluate(eval_step, full.state, batches)["loss"],
                        evaluate.evaluate(eval_step, full.state, too_big)["loss"])
    rel = abs(evals["float16"][0] - evals["float32"][0]) / evals["float32"][0]
    assert 0 < rel <= 1e-3, evals
    assert not np.isfinite(evals["float16"][1]), evals
    assert np.isfinite(evals["float32"][1]) and np.isfinite(evals["bfloat16"][1]), evals


# ---- 8. rmsprop and lamb ---------------------------------------------------------------------

def _grads_sequence():
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(5, 3)).astype(np.float32),
              "b": (0.01 * rng.normal(size=3)).astype(np.float32)}  # a small norm: its own ratio
    grads = [{"w": rng.normal(size=(5, 3)).astype(np.float32),
              "b": (0.3 * rng.normal(size=3)).astype(np.float32)} for _ in range(3)]
    return params, grads


def _run(tx, params, grads):
    state, p, out = tx.init(params), params, []
    for g in grads:
        updates, state = tx.update(g, state, p)
        p = optax.apply_updates(p, updates)
        out.append(jax.tree.map(np.asarray, p))
    return out


def test_rmsprop_is_the_formula_with_decay_b2_and_eps():
    """optimizer.name=rmsprop: nu = b2 nu + (1 - b2) g^2 from nu = 0, then p -= lr g /
    sqrt(nu + eps) (eps inside the root: optax's and TensorFlow's RMSProp), for three steps.
    b2 differs from b1's default and eps is large, so a decay from the wrong key or eps in the
    wrong place shows; b1, which RMSProp does not read, is refused."""
    lr, b2, eps = 0.01, 0.7, 0.05
    with pytest.raises(ValueError, match="optimizer.b1=0.2 does nothing with rmsprop "
                                         r"\(it reads b2, eps\)"):
        optim.check_reads(dict(name="rmsprop", learning_rate=lr, b1=0.2, b2=b2, eps=eps))
    tx = optim.make_optimizer(dict(name="rmsprop", learning_rate=lr, b2=b2, eps=eps))
    params, grads = _grads_sequence()
    got = _run(tx, params, grads)
    p = jax.tree.map(np.float64, params)
    nu = jax.tree.map(np.zeros_like, p)
    for g, zoo_p in zip(grads, got):
        nu = jax.tree.map(lambda n, g: b2 * n + (1 - b2) * np.float64(g) ** 2, nu, g)
        p = jax.tree.map(lambda p, g, n: p - lr * g / np.sqrt(n + eps), p, g, nu)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                     zoo_p, p)
    want = _run(optax.rmsprop(lr, decay=b2, eps=eps), params, grads)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)


def test_lamb_is_the_formula_with_each_tensors_trust_ratio():
    """optimizer.name=lamb (You et al. 2020): Adam's bias-corrected moments with b1, b2, eps,
    plus weight_decay * p, each tensor's update scaled by ||p|| / ||update||, times lr."""
    lr, b1, b2, eps, wd = 0.1, 0.8, 0.95, 1e-3, 0.1
    tx = optim.make_optimizer(dict(name="lamb", learning_rate=lr, b1=b1, b2=b2, eps=eps,
                                   weight_decay=wd))
    params, grads = _grads_sequence()
    got = _run(tx, params, grads)
    p = jax.tree.map(np.float64, params)
    m = jax.tree.map(np.zeros_like, p)
    v = jax.tree.map(np.zeros_like, p)
    for t, (g, zoo_p) in enumerate(zip(grads, got), start=1):
        g = jax.tree.map(np.float64, g)
        m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, m, g)
        v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, v, g)

        def new(p, m, v):
            r = (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps) + wd * p
            ratio = np.linalg.norm(p) / np.linalg.norm(r)
            return p - lr * ratio * r

        p = jax.tree.map(new, p, m, v)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                     zoo_p, p)
    want = _run(optax.lamb(lr, b1=b1, b2=b2, eps=eps, weight_decay=wd), params, grads)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)
