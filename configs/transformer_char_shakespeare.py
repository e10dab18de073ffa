"""nanoGPT's shakespeare_char baby GPT: a character-level transformer on tiny_shakespeare.

Karpathy's nanoGPT, config/train_shakespeare_char.py: 6 layers, 6 heads, 384 wide, context 256,
dropout 0.2, batch 64, AdamW at 1e-3 (beta2 0.99, weight decay 0.1), 100 warmup steps then cosine to
1e-4 at 5000 steps, gradient norm clipped at 1. nanoGPT reaches a validation loss of about 1.47.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(
        family="transformer", preset="char", vocab_size=65, block_size=256, n_layer=6, n_head=6,
        n_embd=384, dropout=0.2, dtype="float32", remat=False, attention_impl="", seq_len=256,
        unit="char"))
    config.data = ml_collections.ConfigDict(dict(
        dataset="tiny_shakespeare", source="tfds", path="", tokenizer="char", batching="random",
        seq_len=256, batch_size=64, eval_batch_size=64, tfds_data_dir="", download_dir=""))
    config.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=1e-3, schedule="warmup_cosine", warmup_steps=100,
        end_factor=0.1, b1=0.9, b2=0.99, weight_decay=0.1, grad_clip_norm=1.0))
    config.parallel = ml_collections.ConfigDict(dict(strategy="mesh", data=-1, fsdp=1))
    config.train = ml_collections.ConfigDict(dict(
        steps=5000, log_every=100, seed=0, grad_accum_steps=1, compute_dtype="float32",
        remat=False))
    return config
