"""nanoGPT's shakespeare_char baby GPT: a character-level transformer on tiny_shakespeare.

Karpathy's nanoGPT, config/train_shakespeare_char.py: 6 layers, 6 heads, 384 wide, context 256,
dropout 0.2, batch 64, AdamW at 1e-3 (beta2 0.99, weight decay 0.1), 100 warmup steps then cosine to
1e-4 at 5000 steps, gradient norm clipped at 1. nanoGPT reaches a validation loss of about 1.47.
"""

import default
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = ml_collections.ConfigDict(dict(
        family="transformer", preset="char", vocab_size=0, block_size=256, n_layer=6, n_head=6,
        n_embd=384, dropout=0.2, dtype="float32", remat=False, attention_impl=""))
    config.data = default.text_data("tiny_shakespeare", source="tfds", batching="random",
                                    seq_len=256, batch_size=64)
    config.optimizer.update(name="adamw", learning_rate=1e-3, schedule="warmup_cosine",
                            warmup_steps=100, end_factor=0.1, b2=0.99, weight_decay=0.1,
                            grad_clip_norm=1.0)
    config.train.update(steps=5000, log_every=100, eval_every=250, checkpoint_every=500)
    default.text_sampling(config)
    return config
