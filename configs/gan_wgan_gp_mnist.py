"""WGAN-GP with the deeper MLP players on MNIST.

Gulrajani et al. (2017), "Improved Training of Wasserstein GANs", algorithm 1: Wasserstein loss,
gradient penalty lambda = 10, n_critic = 5, Adam 1e-4 with beta1 0, beta2 0.9; the MLP players of
configs/gan_deep_mnist.py (no BatchNorm in the critic, as the paper asks), batch 64.
"""

import default
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = ml_collections.ConfigDict(dict(
        family="gan", arch="mlp", image_shape=(28, 28, 1), latent_dim=100,
        g_hidden=(256, 512, 1024), d_hidden=(512, 256), loss="wasserstein", gradient_penalty=10.0,
        n_critic=5, num_classes=0, conditioning="projection", embed_dim=10))
    config.optimizer.update(learning_rate=1e-4, b1=0.0, b2=0.9)
    config.data.batch_size = 64
    config.train.update(steps=4000, log_every=100, best_metric="")
    return config
