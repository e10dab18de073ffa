"""DDPM on MNIST (unconditional): a small U-Net, linear schedule over T = 1000, EMA weights.

Ho et al. (2020)'s setup scaled to a 2-core CPU: the ``mnist`` preset U-Net (32 base channels, 28
-> 14 -> 7, one residual block per level, attention at 7x7; 1.1M parameters), eps-prediction with
L_simple, Adam 2e-4 with warm-up and gradient clipping at 1 as DDPM, batch 64, EMA decay 0.999
(DDPM: 0.9999 over 800k steps; this run is far shorter). Samples: DDIM, 50 steps. Also with
``--config.data.dataset=fashion_mnist`` or ``synthetic``, and ``--config.model.preset=tiny`` for
a smoke run.
"""

import default
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = ml_collections.ConfigDict(dict(
        family="diffusion", preset="mnist", image_shape=(28, 28, 1), num_classes=0,
        schedule="linear", diffusion_steps=1000, prediction="eps", sampling_steps=50,
        guidance=1.0, p_uncond=0.1,
        # The U-Net's sizes: None takes the preset's (zoo.models.diffusion.PRESETS).
        channels=None, channel_mult=None, num_res_blocks=None, attention_resolutions=None,
        groups=None, dropout=None))
    config.data.update(batch_size=64, eval_batch_size=1000)
    config.optimizer.update(name="adam", learning_rate=2e-4, warmup_steps=200,
                            grad_clip_norm=1.0)
    config.train.update(steps=8000, log_every=100, eval_every=2000, checkpoint_every=1000,
                        ema_decay=0.999)
    return config
