"""Character-level LSTM on tiny_shakespeare, after Karpathy's char-rnn (2015).

char-rnn's defaults: 2 layers of 128 LSTM units, sequences of 50 characters, batch 50, learning rate
2e-3 (RMSprop there; Adam here), gradient norm clipped at 5, dropout 0. Karpathy, "The Unreasonable
Effectiveness of Recurrent Neural Networks" and github.com/karpathy/char-rnn. The state is carried
across batches (truncated BPTT over contiguous streams). 65 characters in tiny_shakespeare.
"""

import default
import ml_collections

def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = ml_collections.ConfigDict(dict(
        family="lstm", vocab_size=0, hidden_size=128, num_layers=2, embed_dim=0, dropout=0.0,
        tie_embeddings=False, init_scale=0.08, dtype="float32", lstm_impl="", carry_state=True))
    config.data = default.text_data("tiny_shakespeare", source="tfds", batching="stream",
                                    seq_len=50, batch_size=50)
    config.optimizer.update(learning_rate=2e-3, schedule="exponential", decay_begin=10 * 400,
                            transition_steps=400, decay_rate=0.97, grad_clip_norm=5.0)
    config.parallel.strategy = "single"
    config.train.update(steps=20_000, log_every=100, eval_every=1000, checkpoint_every=1000)
    default.text_sampling(config)
    return config
