"""The MLP GAN on MNIST: 100-d noise -> 256 -> 784 tanh, against 784 -> 256 -> 1.

Goodfellow et al. (2014), "Generative Adversarial Nets" (MLP players; the original used maxout units
and dropout in D, here LeakyReLU(0.2) as in most re-implementations) with the non-saturating
generator loss the paper recommends, and Radford et al. (2016)'s Adam settings (2e-4, beta1 0.5),
batch 64. Each player gets its own Adam; config.optimizers.generator / .discriminator
(full optimizer configs, read by zoo.train) would give them different settings.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return _config(
        model=dict(family="gan", arch="mlp", image_shape=(28, 28, 1), latent_dim=100,
                   g_hidden=(256,), d_hidden=(256,), loss="non_saturating", gradient_penalty=0.0,
                   n_critic=1, num_classes=0, conditioning="projection", embed_dim=10),
        optimizer=dict(learning_rate=2e-4, b1=0.5), batch_size=64, steps=10000)


def _config(model: dict, optimizer: dict, batch_size: int, steps: int):
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(model)
    config.data = ml_collections.ConfigDict(dict(
        dataset="mnist", batch_size=batch_size, eval_batch_size=1000, synthetic_size=4096,
        tfds_data_dir="", download_dir=""))
    config.optimizer = ml_collections.ConfigDict(dict(
        dict(name="adam", learning_rate=1e-3, schedule="constant", warmup_steps=0,
             grad_clip_norm=0.0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, momentum=0.0,
             end_factor=0.0), **optimizer))
    config.parallel = ml_collections.ConfigDict(dict(strategy="mesh", data=-1, fsdp=1))
    config.train = ml_collections.ConfigDict(dict(
        steps=steps, log_every=100, seed=0, grad_accum_steps=1, compute_dtype="float32",
        remat=False))
    return config
