"""Class-conditional DCGAN on MNIST: label embedding in G, projection discriminator.

DCGAN players and optimiser of Radford et al. (2016) (see configs/dcgan_mnist.py), conditioned as in
Mirza & Osindero (2014) for G and Miyato & Koyama (2018) for D, with the hinge loss of Miyato et
al. (2018), "Spectral Normalization for GANs"; Adam 2e-4, beta1 0.5, batch 128.
"""

import default
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = ml_collections.ConfigDict(dict(
        family="gan", arch="dcgan", image_shape=(28, 28, 1), latent_dim=100, features=64,
        loss="hinge", gradient_penalty=0.0, n_critic=1, num_classes=10, conditioning="projection",
        embed_dim=10))
    config.optimizer.update(learning_rate=2e-4, b1=0.5)
    config.train.update(steps=3000, log_every=100, best_metric="")
    return config
