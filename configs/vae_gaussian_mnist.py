"""MLP VAE with a Gaussian likelihood on (non-binarised) MNIST intensities.

Kingma & Welling (2014) use a Gaussian decoder for real-valued data (Frey faces, appendix C.2); the
shared noise scale is learned, as in the sigma-VAE of Rybkin, Daniilidis & Levine (2021), "Simple
and effective VAE training with calibrated decoders". Log-likelihoods are densities (nats), not
comparable with the Bernoulli configs.
"""

import default
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = ml_collections.ConfigDict(dict(
        family="vae", arch="mlp", image_shape=(28, 28, 1), hidden=(500,), latent_dim=20,
        likelihood="gaussian", binarize=False, num_classes=0))
    config.data.batch_size = 100
    config.train.update(steps=6000, log_every=100)
    return config
