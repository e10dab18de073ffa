"""Tokenizers: char and word vocabularies; zoo's own GPT-2 byte-level BPE against transformers'."""

import collections
import json
import re

import pytest

from zoo import text_data
from zoo import tokenizers as tok

SAMPLES = [
    "Hello world! It's a test, isn't it? We'll see: 12345 apples.",
    "  leading spaces,\ttabs\nand newlines\n\n  and trailing   ",
    "Unicode: café, naïve, 東京, emoji 🙂 — dashes… «quotes»",
    "I'm you're they've she'd HE'LL 'quoted' words",
    "x=1+2*3; y = [a_b, c-d]; #hash @at $100.00 50% done!!!",
]


def test_char_tokenizer_roundtrip_and_names_unknown_characters():
    t = tok.CharTokenizer.from_text("hello world")
    assert t.vocab_size == 8 and t.decode(t.encode("hold")) == "hold"
    with pytest.raises(ValueError, match=r"2 character\(s\) outside.*'Z'.*'é'"):
        t.encode("heZlo é")
    again = tok.from_config(json.loads(json.dumps(t.to_config())))
    assert again.encode("world") == t.encode("world")


def test_ptb_word_tokenizer(shared_data):
    cfg = {"dataset": "ptb", "path": str(shared_data / "raw" / "ptb")}
    tokens, t = text_data.load_tokens(cfg, "valid")
    assert t.vocab_size == 10_000 and len(tokens) == 73_760  # Mikolov's PTB with <eos>
    line = "the company said it expects <unk> results\n"
    assert t.decode(t.encode(line)) == line
    with pytest.raises(ValueError, match=r"outside the vocabulary.*'zyzzyva'"):
        t.encode("the zyzzyva said")


def test_words_of_a_split_outside_the_train_vocabulary_are_named_with_the_split(shared_data):
    cfg = {"dataset": "tiny_shakespeare", "tokenizer": "word",
           "path": str(shared_data / "raw" / "tiny_shakespeare")}
    with pytest.raises(ValueError, match=r"^the validation split of tiny_shakespeare has 1830 "
                                         r"word\(s\) outside the vocabulary built from the train "
                                         r"split: .*'Bove.* and 1810 more$"):
        text_data.load_tokens(cfg, "validation")
    # Characters likewise.
    cfg = {"dataset": "ptb_char", "path": str(shared_data / "raw" / "ptb")}
    no_z = tok.CharTokenizer.from_text(text_data.load_text(cfg, "test").replace("z", ""))
    with pytest.raises(ValueError, match=r"^the test split of ptb_char has 1 character\(s\) "
                                         r"outside the vocabulary built from the train split: "
                                         r"'z'$"):
        text_data.load_tokens(cfg, "test", no_z)


def test_unknown_tokenizer_name():
    with pytest.raises(ValueError, match="unknown tokenizer 'sentencepiece'"):
        tok.get_tokenizer("sentencepiece", text="abc")
    with pytest.raises(ValueError, match="unknown tokenizer"):
        text_data.make_tokenizer({"dataset": "tiny_shakespeare", "tokenizer": "bytes"})
    # A saved tokenizer edited or damaged: what it lacks, not a KeyError.
    with pytest.raises(ValueError, match="the saved char tokenizer has no chars"):
        tok.from_config({"name": "char"})
    with pytest.raises(ValueError, match="the saved gpt2 tokenizer has no vocab_file, merges_file"):
        tok.from_config({"name": "gpt2"})
    with pytest.raises(ValueError, match="a saved tokenizer is a dict with its name; got str"):
        tok.from_config("abc")


def _train_bpe(text: str, num_merges: int, path):
    """A small GPT-2-format vocabulary: 256 byte tokens plus greedy BPE merges learned on text."""
    import regex
    byte_enc = tok.bytes_to_unicode()
    words = collections.Counter(
        tuple(byte_enc[b] for b in w.encode()) for w in regex.findall(tok.GPT2_PATTERN, text))
    vocab, merges = list(byte_enc.values()), []
    for _ in range(num_merges):
        pairs = collections.Counter()
        for w, n in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += n
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        vocab.append(best[0] + best[1])
        merged = collections.Counter()
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i < len(w) - 1 and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1]); i += 2
                else:
                    out.append(w[i]); i += 1
            merged[tuple(out)] += n
        words = merged
    vocab.append("<|endoftext|>")
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (path / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return path


def test_gpt2_bpe_matches_transformers(tmp_path, shared_data):
    import transformers
    text = (shared_data / "raw" / "tiny_shakespeare" / "input.txt").read_text()[:20_000]
    path = _train_bpe(text + " ".join(SAMPLES), 300, tmp_path)
    ours = tok.get_tokenizer("gpt2", path=path)
    theirs = transformers.GPT2Tokenizer(str(path / "vocab.json"), str(path / "merges.txt"))
    assert ours.vocab_size == len(theirs) == 256 + 300 + 1
    for s in SAMPLES + [text[:3000]]:
        ids = ours.encode(s)
        assert ids == theirs.encode(s), s
        assert ours.decode(ids) == s
    assert len(ours.encode(text[:3000])) < 0.6 * len(text[:3000].encode())  # merges do merge
    with pytest.raises(ValueError, match="merges.txt"):
        (path / "merges.txt").unlink()
        tok.get_tokenizer("gpt2", path=path)


def test_gpt2_tokenizer_names_its_files_by_absolute_path(tmp_path, monkeypatch):
    bpe = _train_bpe("to be or not to be", 5, tmp_path / "bpe").resolve()
    monkeypatch.chdir(tmp_path)
    saved = text_data.make_tokenizer({"tokenizer": "gpt2", "tokenizer_path": "bpe"}).to_config()
    assert saved["vocab_file"] == str(bpe / "vocab.json")
    assert saved["merges_file"] == str(bpe / "merges.txt")
    monkeypatch.chdir("/")
    assert tok.from_config(saved).encode(" be or") == tok.get_tokenizer(
        "gpt2", path=bpe).encode(" be or")
    (bpe / "merges.txt").unlink()
    with pytest.raises(ValueError, match=re.escape(f"GPT-2 tokenizer file {bpe / 'merges.txt'} "
                                                   "not found")):
        tok.from_config(saved)
    with pytest.raises(ValueError, match="data.tokenizer='gpt2' reads vocab.json and merges.txt "
                                         "from data.tokenizer_path, which is empty"):
        text_data.make_tokenizer({"tokenizer": "gpt2", "tokenizer_path": ""})


def test_a_gpt2_tokenizer_run_generates_from_another_directory(tmp_path, shared_data,
                                                               monkeypatch, capsys):
    from configs_loader import CONFIGS
    from zoo import cli

    text = (shared_data / "raw" / "tiny_shakespeare" / "input.txt").read_text()[:40_000]
    _train_bpe(text, 100, tmp_path / "bpe")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "input.txt").write_text(text)
    monkeypatch.chdir(tmp_path)  # the run names its tokenizer and text by relative paths
    assert cli.main([
        "train", "--config", str(CONFIGS / "transformer_char_cpu.py"), "--workdir", "run",
        "--config.data.tokenizer=gpt2", "--config.data.tokenizer_path=bpe",
        "--config.data.path=data", "--config.model.n_layer=1", "--config.model.n_head=2",
        "--config.model.n_embd=16", "--config.model.block_size=16", "--config.data.seq_len=16",
        "--config.data.batch_size=8", "--config.data.eval_batch_size=8",
        "--config.train.steps=4", "--config.train.sample_tokens=4"]) == 0
    saved = json.loads((tmp_path / "run" / "tokenizer.json").read_text())
    assert saved["merges_file"] == str((tmp_path / "bpe" / "merges.txt").resolve())
    eval_line = capsys.readouterr().out.split("eval (validation) at step 4: ")[1].split("\n")[0]
    assert "perplexity" in eval_line  # of BPE tokens (model.unit "token"), not bits per char
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    args = ["generate", str(tmp_path / "run"), "--prompt", "ROMEO:", "--max-new-tokens", "5"]
    assert cli.main(args) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")
    (tmp_path / "bpe" / "merges.txt").unlink()
    assert cli.main(args) == 2
    assert "merges.txt not found" in capsys.readouterr().err
