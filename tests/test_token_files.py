"""Memory-mapped token files: zoo prepare-text writes nanoGPT's layout, data.dataset=tokens trains
on it without loading it, with the same batches and losses as the text it came from."""

import json

import numpy as np
import pytest

from test_text_pipeline import TRANSFORMER, _config
from test_tokenizers import _train_bpe
from zoo import cli, text_data, token_files, train


@pytest.fixture(scope="module")
def shakespeare_tokens(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("tokens") / "shakespeare_char"
    raw = {"dataset": "tiny_shakespeare", "path": str(shared_data / "raw" / "tiny_shakespeare")}
    assert cli.main(["prepare-text", "--dataset", "tiny_shakespeare", "--path", raw["path"],
                     "--out", str(out)]) == 0
    return out, raw


def test_prepare_text_writes_nanogpts_layout(shakespeare_tokens, shared_data, capsys):
    out, raw = shakespeare_tokens
    meta = json.loads((out / "meta.json").read_text())
    # nanoGPT's shakespeare_char/prepare.py: 1,003,854 train and 111,540 val tokens, 65 chars.
    assert meta["tokens"] == {"train": 1_003_854, "validation": 111_540}
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 65
    assert (out / "train.bin").stat().st_size == 2 * 1_003_854
    for split in ("train", "validation"):
        ids = token_files.open_split(out, split)
        assert isinstance(ids, np.memmap) and ids.dtype == np.uint16
        want, _ = text_data.load_tokens(raw, split)
        np.testing.assert_array_equal(ids, want)
    # From a text file: the same 90/10 cut as the raw dataset, the same files.
    again = out.parent / "from_file"
    assert cli.main(["prepare-text", "--text", str(shared_data / "raw" / "tiny_shakespeare" /
                                                   "input.txt"), "--out", str(again)]) == 0
    assert (again / "train.bin").read_bytes() == (out / "train.bin").read_bytes()
    assert "--config.data.dataset=tokens" in capsys.readouterr().out


def test_iterators_on_a_memory_map_read_rows_not_the_file(shakespeare_tokens):
    out, raw = shakespeare_tokens
    mapped = token_files.open_split(out, "train")
    in_memory = np.asarray(mapped, np.int32)
    for batching in ("random", "stream"):
        data = {**raw, "batching": batching, "seq_len": 16, "batch_size": 8}
        for process in ({}, {"process_index": 1, "process_count": 2}):
            a = text_data.make_iterator(data, mapped, seed=3, **process)
            b = text_data.make_iterator(data, in_memory, seed=3, **process)
            held = a.tokens if batching == "random" else a.rows
            assert isinstance(held, np.memmap)  # a view of the file, never a loaded copy
            for _ in range(3):
                x, y = next(a), next(b)
                assert x["tokens"].dtype == np.int32
                assert x["tokens"].shape == (8 // (1 + bool(process)), 17)
                np.testing.assert_array_equal(x["tokens"], y["tokens"])
            # Resumable like the in-memory iterator.
            saved = a.state()
            after = next(a)["tokens"]
            a.restore(saved)
            np.testing.assert_array_equal(next(a)["tokens"], after)


def test_training_on_token_files_equals_training_on_the_text(shakespeare_tokens):
    out, raw = shakespeare_tokens
    overrides = [*TRANSFORMER, "--config.train.steps=20", "--config.train.sample_tokens=0",
                 f"--config.data.path={raw['path']}"]
    on_text = train.train(_config("transformer_char_cpu", *overrides), log=lambda s: None)
    on_files = train.train(_config("transformer_char_cpu", *overrides,
                                   "--config.data.dataset=tokens", f"--config.data.path={out}"),
                           log=lambda s: None)
    assert [h["loss"] for h in on_files.history] == [h["loss"] for h in on_text.history]
    assert on_files.eval_metrics == on_text.eval_metrics
    assert len(on_files.history) == 2


def test_gpt2_token_folder_carries_its_tokenizer(tmp_path, monkeypatch):
    bpe = _train_bpe("to be or not to be, that is the question", 20, tmp_path / "bpe")
    (tmp_path / "play.txt").write_text("to be or not to be, that is the question\n" * 200)
    out = tmp_path / "tokens"
    assert cli.main(["prepare-text", "--text", str(tmp_path / "play.txt"), "--tokenizer", "gpt2",
                     "--tokenizer-path", str(bpe), "--out", str(out)]) == 0
    moved = tmp_path / "moved"
    out.rename(moved)  # the folder holds its BPE files: it can move
    (bpe / "vocab.json").unlink()
    data = {"dataset": "tokens", "path": str(moved), "seq_len": 8, "batch_size": 2}
    tokenizer = text_data.make_tokenizer(data)
    assert tokenizer.name == "gpt2"
    ids, _ = text_data.load_tokens(data, "train", tokenizer)
    assert tokenizer.decode(ids[:10]).startswith("to be or not")
    with pytest.raises(ValueError, match=r"data.tokenizer='char', but .* was written with the "
                                         r"gpt2 tokenizer"):
        text_data.make_tokenizer({**data, "tokenizer": "char"})


def test_bad_token_folders_are_named(shakespeare_tokens, tmp_path, capsys):
    out, _ = shakespeare_tokens
    data = {"dataset": "tokens", "seq_len": 8, "batch_size": 2}
    with pytest.raises(ValueError, match="reads train.bin and val.bin from data.path, which is "
                                         "empty"):
        text_data.make_tokenizer(data)
    with pytest.raises(ValueError, match="holds no train.bin"):
        text_data.make_tokenizer({**data, "path": str(tmp_path)})
    # A truncated split is damaged, not silently shorter.
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for f in ("train.bin", "val.bin", "meta.json"):
        (damaged / f).write_bytes((out / f).read_bytes())
    with open(damaged / "val.bin", "r+b") as f:
        f.truncate(1001)
    with pytest.raises(ValueError, match=r"val.bin is 1,001 bytes, not the 111540 uint16 tokens "
                                         "meta.json records"):
        text_data.load_tokens({**data, "path": str(damaged)}, "validation")
    with pytest.raises(ValueError, match=r"has no test.bin for the test split \(it has train, "
                                         r"validation\)"):
        text_data.load_tokens({**data, "path": str(out)}, "test")
    with pytest.raises(ValueError, match="written with a vocabulary of 65, the tokenizer has 3"):
        token_files.open_split(out, "train", vocab_size=3)
    # nanoGPT's GPT-2 folders have no meta.json: the tokenizer must be named.
    (damaged / "meta.json").unlink()
    with pytest.raises(ValueError, match="has no meta.json; for nanoGPT's GPT-2 token files set "
                                         "data.tokenizer='gpt2'"):
        text_data.make_tokenizer({**data, "path": str(damaged)})
    # Through the command: one line, exit 2.
    assert cli.main(["prepare-text", "--text", str(tmp_path / "none.txt"), "--out",
                     str(tmp_path / "x")]) == 2
    assert "text file" in capsys.readouterr().err
    # A character only the validation part holds is in the vocabulary (nanoGPT's prepare.py
    # takes the whole file's), not refused as outside the train part's.
    (tmp_path / "ends.txt").write_text("abab" * 100 + "the end ~\n")
    assert cli.main(["prepare-text", "--text", str(tmp_path / "ends.txt"), "--out",
                     str(tmp_path / "ends")]) == 0
    meta = json.loads((tmp_path / "ends" / "meta.json").read_text())
    assert "~" in meta["tokenizer"]["chars"] and meta["vocab_size"] == len(set("abthe nd~\n"))


def test_token_ids_outside_the_vocabulary_are_refused(shakespeare_tokens, tmp_path, capsys,
                                                      monkeypatch):
    # A stream whose third batch (8 rows x 17 ids) holds an id beyond the 65 characters: the
    # first two batches come, the third is refused, before it reaches an embedding (where an
    # out-of-range id gives NaN, not an error).
    out, raw = shakespeare_tokens
    ids = np.array(token_files.open_split(out, "train")[:8 * 200])
    ids[2 * 16 + 5] = 65
    for batching in ("stream", "random"):
        data = {**raw, "batching": batching, "seq_len": 16, "batch_size": 1}
        it = text_data.make_iterator(data, ids, vocab_size=65, with_reset=False)
        with pytest.raises(ValueError, match="holds id 65, outside the tokenizer's vocabulary of "
                                             "65"):
            for _ in range(1000):
                next(it)
        assert max(it.state().values()) > 1  # batches came before the one refused
    # uint32 ids beyond int32 do not wrap to a negative id that passes.
    huge = np.full(40, 1 << 31, np.uint32)
    with pytest.raises(ValueError, match="holds id -2147483648"):
        next(text_data.make_iterator({**raw, "seq_len": 16, "batch_size": 1}, huge, vocab_size=65))
    # Through the command: a train.bin of random bytes (its size and meta.json intact) is refused
    # in one line, exit 2, before the steps are built; so is a val.bin, whose text is decoded.
    from zoo import build
    built = []
    real_compile_steps = build.compile_steps
    monkeypatch.setattr(build, "compile_steps",
                        lambda *a, **k: built.append(1) or real_compile_steps(*a, **k))
    for damaged_file in ("train.bin", "val.bin"):
        folder = tmp_path / damaged_file
        folder.mkdir()
        for f in ("train.bin", "val.bin", "meta.json"):
            (folder / f).write_bytes((out / f).read_bytes())
        size = (folder / damaged_file).stat().st_size
        (folder / damaged_file).write_bytes(np.random.default_rng(0).bytes(size))
        code = cli.main(["train", "--config", "configs/transformer_char_cpu.py", "--workdir",
                         str(tmp_path / f"run-{damaged_file}"), *TRANSFORMER,
                         "--config.train.steps=2", "--config.data.dataset=tokens",
                         f"--config.data.path={folder}"])
        err = capsys.readouterr().err
        assert code == 2, err
        assert "outside the tokenizer's vocabulary of 65" in err and len(err.splitlines()) == 1
        assert not built
