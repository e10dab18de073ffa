"""configs/finetune_gpt2_shakespeare.py through LoRA adapters (Hu et al. 2021).

Hu et al.'s GPT-2 setup: rank 4, alpha 32, on the attention's query/key/value projection
(GPT-2 fuses them in c_attn), base weights frozen, learning rate 2e-4. With GPT-2 (124M) that is
147,456 trained parameters of 124,587,264 (0.12%); the first log line says so. The adapters are
merged into plain weights by zoo export and every reader of the run.

    zoo train --config configs/finetune_gpt2_shakespeare_lora.py --config.train.init_from=gpt2 --workdir runs/lora
"""

import finetune_gpt2_shakespeare


def get_config():
    config = finetune_gpt2_shakespeare.get_config()
    config.model.update(lora_rank=4, lora_alpha=32.0, lora_targets="attn/c_attn")
    config.optimizer.learning_rate = 2e-4
    return config
