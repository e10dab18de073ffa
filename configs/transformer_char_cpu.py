"""A small character transformer on tiny_shakespeare that trains in minutes on a laptop CPU.

nanoGPT's shakespeare_char recipe (configs/transformer_char_shakespeare.py) shrunk as nanoGPT's
README suggests for CPUs: 4 layers, 4 heads, 128 wide, context 128, batch 16, no dropout, 2,000
steps. Validation loss 1.69 in 337 s on 2 CPU cores (docs/results.md; nanoGPT's CPU run, context 64
and batch 12, reports 1.88): Shakespeare-shaped text with some invented words.
"""

import default
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = ml_collections.ConfigDict(dict(
        family="transformer", preset="small_char", vocab_size=0, block_size=128, n_layer=4,
        n_head=4, n_embd=128, dropout=0.0, dtype="float32", remat=False, attention_impl=""))
    config.data = default.text_data("tiny_shakespeare", batching="random", seq_len=128,
                                    batch_size=16)
    config.data.eval_batch_size = 64
    config.optimizer.update(name="adamw", learning_rate=2e-3, schedule="warmup_cosine",
                            warmup_steps=50, end_factor=0.1, b2=0.99, weight_decay=0.1,
                            grad_clip_norm=1.0)
    config.parallel.strategy = "single"
    config.train.update(steps=2000, log_every=50, eval_every=500, checkpoint_every=500)
    default.text_sampling(config, tokens=100)  # within the context of 128 after the prompt
    return config
