"""A small character transformer on tiny_shakespeare that trains in minutes on a laptop CPU.

nanoGPT's shakespeare_char recipe (configs/transformer_char_shakespeare.py) shrunk as nanoGPT's
README suggests for CPUs: 4 layers, 4 heads, 128 wide, context 128, batch 16, no dropout. Expect a
loss near 2 after ~600 steps: Shakespeare-shaped text with invented words.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(
        family="transformer", preset="small_char", vocab_size=65, block_size=128, n_layer=4,
        n_head=4, n_embd=128, dropout=0.0, dtype="float32", remat=False, attention_impl="",
        seq_len=128, unit="char"))
    config.data = ml_collections.ConfigDict(dict(
        dataset="tiny_shakespeare", source="raw", path="", tokenizer="char", batching="random",
        seq_len=128, batch_size=16, eval_batch_size=64, tfds_data_dir="", download_dir=""))
    config.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=2e-3, schedule="warmup_cosine", warmup_steps=50,
        end_factor=0.1, b1=0.9, b2=0.99, weight_decay=0.1, grad_clip_norm=1.0))
    config.parallel = ml_collections.ConfigDict(dict(strategy="single", data=-1, fsdp=1))
    config.train = ml_collections.ConfigDict(dict(
        steps=600, log_every=50, seed=0, grad_accum_steps=1, compute_dtype="float32",
        remat=False))
    return config
