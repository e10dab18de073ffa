"""char-rnn's larger setting on tiny_shakespeare: 2 layers of 512 LSTM units, dropout 0.5.

Karpathy's char-rnn README suggests ``-rnn_size 512 -num_layers 2 -dropout 0.5`` once there is
data enough; everything else is configs/lstm_char_shakespeare.py (sequences of 50, batch 50, Adam
2e-3 decayed 0.97 per 400 steps from step 4,000, clip 5, state carried across batches). 8,000
steps (~20 epochs): validation 1.385 nats/char at step 4,000 and 1.350 at 8,000, 76 min on 2 CPU
cores (docs/results.md).
"""

import lstm_char_shakespeare
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = lstm_char_shakespeare.get_config()
    config.model.update(hidden_size=512, dropout=0.5)
    config.train.update(steps=8000)
    return config
