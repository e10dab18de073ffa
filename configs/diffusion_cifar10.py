"""DDPM's CIFAR-10 setup (Ho et al. 2020, appendix B), for a GPU.

The 35.7M-parameter U-Net (128 base channels, multipliers 1, 2, 2, 2, two residual blocks per
level, attention at 16x16, dropout 0.1), linear schedule over T = 1000, eps-prediction, Adam 2e-4
with 5000 warm-up steps, gradient clipping at 1, batch 128, EMA decay 0.9999, 800k steps (FID
3.17). DDPM also flips training images at random, which zoo's data pipeline does not do yet.
"""

import default
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = ml_collections.ConfigDict(dict(
        family="diffusion", preset="ddpm_cifar10", image_shape=(32, 32, 3), num_classes=0,
        schedule="linear", diffusion_steps=1000, prediction="eps", sampling_steps=100,
        guidance=1.0, p_uncond=0.1, channels=None, channel_mult=None, num_res_blocks=None,
        attention_resolutions=None, groups=None, dropout=None))
    config.data.update(dataset="cifar10", batch_size=128, eval_batch_size=1000)
    config.optimizer.update(name="adam", learning_rate=2e-4, warmup_steps=5000,
                            grad_clip_norm=1.0)
    config.train.update(steps=800_000, log_every=500, eval_every=50_000,
                        checkpoint_every=10_000, ema_decay=0.9999, compute_dtype="bfloat16")
    return config
