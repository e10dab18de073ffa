"""Defaults every config starts from: data, optimizer, parallel layout, training loop.

A config file calls ``default.get_config()`` and sets its model and what differs, so each file
reads as the list of choices that make it what it is. Language-model configs replace ``data`` with
``default.text_data(...)`` and call ``default.text_sampling(config)``; the model's vocabulary
(``vocab_size=0``), sequence length and unit come from the data and its tokenizer
(``zoo.input_pipeline.fill_model_config``).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict()  # set by each config: family and its options
    config.data = ml_collections.ConfigDict(dict(
        dataset="mnist", batch_size=128, eval_batch_size=1000, eval_split="",
        synthetic_size=4096, tfds_data_dir="", download_dir=""))
    config.optimizer = ml_collections.ConfigDict(dict(
        name="adam", learning_rate=1e-3, schedule="constant", warmup_steps=0, grad_clip_norm=0.0,
        b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, momentum=0.0, end_factor=0.0,
        decay_rate=0.5, transition_steps=0, decay_begin=0, boundaries=()))
    config.parallel = ml_collections.ConfigDict(dict(strategy="mesh", data=-1, fsdp=1))
    config.train = ml_collections.ConfigDict(dict(
        steps=1000, log_every=50, eval_every=0, checkpoint_every=500, keep_checkpoints=3,
        best_metric="loss", best_mode="min", nonfinite="stop", seed=0, grad_accum_steps=1,
        compute_dtype="float32", remat=False))
    return config


def text_data(dataset: str, *, seq_len: int, batch_size: int, batching: str,
              tokenizer: str = "char", source: str = "raw") -> ml_collections.ConfigDict:
    """A text dataset's data section.

    ``source``: tiny_shakespeare from its raw ``input.txt`` (90/10 split, as nanoGPT) or through
    TFDS (``tfds``; its own train/validation/test splits). ``path``: the text file's folder
    (default ``../shared/data/raw/<dataset>``). ``batching``: ``stream`` (contiguous rows, for an
    LSTM's carried state) or ``random`` windows. ``eval_split``: default ``validation``.
    ``tokenizer_path``: the folder of GPT-2's ``vocab.json`` and ``merges.txt`` (``gpt2``).
    ``dataset="synthetic"`` (no files, any tokenizer setting ignored): ``synthetic_size`` tokens
    per split of ``synthetic_vocab`` symbols following a noisy successor rule.
    """
    return ml_collections.ConfigDict(dict(
        dataset=dataset, source=source, path="", tokenizer=tokenizer, tokenizer_path="",
        batching=batching, seq_len=seq_len, batch_size=batch_size, eval_batch_size=batch_size,
        eval_split="", tfds_data_dir="", download_dir="", synthetic_size=100_000,
        synthetic_vocab=64))


def text_sampling(config: ml_collections.ConfigDict, tokens: int = 200) -> None:
    """Text written to ``samples/step_N.txt`` at each evaluation: ``tokens`` new tokens (0: none)
    after ``sample_prompt`` (empty: the first tokens of the evaluation split). With a transformer,
    prompt and new tokens must fit its context."""
    config.train.update(sample_prompt="", sample_tokens=tokens)
