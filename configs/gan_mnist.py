"""The MLP GAN on MNIST: 100-d noise -> 256 -> 784 tanh, against 784 -> 256 -> 1.

Goodfellow et al. (2014), "Generative Adversarial Nets" (MLP players; the original used maxout units
and dropout in D, here LeakyReLU(0.2) as in most re-implementations) with the non-saturating
generator loss the paper recommends, and Radford et al. (2016)'s Adam settings (2e-4, beta1 0.5),
batch 64. Each player gets its own Adam; config.optimizers.generator / .discriminator
(full optimizer configs, read by zoo.train) would give them different settings.
"""

import default
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = ml_collections.ConfigDict(dict(
        family="gan", arch="mlp", image_shape=(28, 28, 1), latent_dim=100, g_hidden=(256,),
        d_hidden=(256,), loss="non_saturating", gradient_penalty=0.0, n_critic=1, num_classes=0,
        conditioning="projection", embed_dim=10))
    config.optimizer.update(learning_rate=2e-4, b1=0.5)
    config.data.batch_size = 64
    config.train.update(steps=10000, log_every=100, best_metric="")
    return config
