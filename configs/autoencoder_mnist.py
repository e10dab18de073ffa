"""MLP autoencoder on MNIST: a short run that shows zoo working (the README's main job).

Shaped after Hinton & Salakhutdinov (2006), "Reducing the dimensionality of data with neural
networks", narrowed for a quick CPU run (configs/autoencoder_hinton2006.py is the paper's
784-1000-500-250-30). Adam at 1e-3 on the per-image Bernoulli cross-entropy.
"""

import default
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = ml_collections.ConfigDict(dict(
        family="autoencoder", arch="mlp", image_shape=(28, 28, 1), hidden=(512, 256),
        latent_dim=32, loss="bernoulli", features=(32, 64), remat=False))
    config.train.update(steps=300, checkpoint_every=100)
    return config
