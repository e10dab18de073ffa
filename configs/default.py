"""Defaults every config starts from: data, optimizer, parallel layout, training loop.

The defaults themselves live in ``zoo.core.settings`` (one home; ``zoo.config.default_config``
fills a ConfigDict from them). A config file calls ``default.get_config()`` and sets its model and
what differs, so each file reads as the list of choices that make it what it is. Language-model
configs replace ``data`` with ``default.text_data(...)`` and call ``default.text_sampling(config)``;
the model's vocabulary (``vocab_size=0``), sequence length and unit come from the data and its
tokenizer (``zoo.input_pipeline.fill_model_config``).
"""

import ml_collections

from zoo.config import default_config
from zoo.core.settings import DataSettings, TrainSettings, defaults


def get_config() -> ml_collections.ConfigDict:
    return default_config()


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
    return ml_collections.ConfigDict({
        **defaults(DataSettings), "dataset": dataset, "source": source, "tokenizer": tokenizer,
        "batching": batching, "seq_len": seq_len, "batch_size": batch_size,
        "eval_batch_size": batch_size, "synthetic_size": 100_000})


def text_sampling(config: ml_collections.ConfigDict,
                  tokens: int = TrainSettings.sample_tokens) -> None:
    """Text written to ``samples/step_N.txt`` at each evaluation: ``tokens`` new tokens (0: none)
    after ``sample_prompt`` (empty: the first tokens of the evaluation split). With a transformer,
    prompt and new tokens must fit its context."""
    config.train.update(sample_prompt=TrainSettings.sample_prompt, sample_tokens=tokens)
