"""GPT-2 fine-tuned on tiny-shakespeare: nanoGPT's config/finetune_shakespeare.py.

Hugging Face GPT-2 weights (train.init_from; the architecture and the BPE tokenizer come from the
folder), tiny-shakespeare through GPT-2's tokenizer, AdamW at a constant 3e-5, 20 iterations of
32,768 tokens (32 rows of 1,024 in microbatches of one: train.grad_accum_steps=32), evaluation
every 5. nanoGPT starts from gpt2-xl; any GPT-2 folder works. The weights cannot be downloaded on
zoo's CI machines; on one with internet:

    huggingface-cli download gpt2 --local-dir gpt2     # config.json, model.safetensors, vocab.json, merges.txt
    zoo train --config configs/finetune_gpt2_shakespeare.py --config.train.init_from=gpt2 --workdir runs/ft
    zoo export runs/ft --format hf-gpt2 --out runs/ft_hf    # back to transformers
"""

import default
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    # Layers, width, heads, context and vocabulary come from the GPT-2 folder.
    config.model = ml_collections.ConfigDict(dict(family="transformer", vocab_size=0, dropout=0.0))
    config.data = default.text_data("tiny_shakespeare", batching="random", seq_len=1024,
                                    batch_size=32, tokenizer="gpt2")
    config.data.eval_batch_size = 8
    config.optimizer.update(name="adamw", learning_rate=3e-5, schedule="constant", b2=0.95,
                            weight_decay=0.1, grad_clip_norm=1.0)
    config.train.update(steps=20, grad_accum_steps=32, log_every=1, eval_every=5,
                        checkpoint_every=5, init_from="gpt2")
    default.text_sampling(config, tokens=100)
    return config
