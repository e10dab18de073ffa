"""The deeper MLP GAN on MNIST: 100-256-512-1024-784 against 784-512-256-1.

Layer sizes of the widely used PyTorch MNIST GANs (e.g. znxlwm/pytorch-MNIST-CelebA-GAN-CGAN,
eriklindernoren/PyTorch-GAN "gan"), after Goodfellow et al. (2014); LeakyReLU(0.2), tanh output,
non-saturating loss, Adam 2e-4 with beta1 0.5 (Radford et al. 2016), batch 64. 30,000 steps (32
epochs, ~6 min on 2 CPU cores) reach classifier-FID 26 (docs/results.md).
"""

import default
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = ml_collections.ConfigDict(dict(
        family="gan", arch="mlp", image_shape=(28, 28, 1), latent_dim=100,
        g_hidden=(256, 512, 1024), d_hidden=(512, 256), loss="non_saturating",
        gradient_penalty=0.0, n_critic=1, num_classes=0, conditioning="projection", embed_dim=10))
    config.optimizer.update(learning_rate=2e-4, b1=0.5)
    config.data.batch_size = 64
    config.train.update(steps=30000, log_every=100, best_metric="")
    return config
