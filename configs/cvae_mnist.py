"""Conditional VAE p(x | y) on dynamically binarised MNIST: the label y is given to both networks.

Sohn, Lee & Yan (2015), "Learning Structured Output Representation using Deep Conditional Generative
Models" (the CVAE), with the one-hot label appended to the encoder input and to the latent code as in
Kingma et al. (2014), "Semi-supervised learning with deep generative models" (M2's p(x|y,z));
MLP 500 hidden units, Adam 1e-3, batch 100. Sampling draws one row per digit. A 2-d latent (as in
the usual CVAE MNIST demos) leaves the class to y and the style to z: after 3000 CPU steps every
row shows its digit; with a 20-d latent the short run's decoder largely ignored y (rows mixed).
"""

import default
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = ml_collections.ConfigDict(dict(
        family="vae", arch="mlp", image_shape=(28, 28, 1), hidden=(500,), latent_dim=2,
        likelihood="bernoulli", binarize=True, num_classes=10))
    config.data.batch_size = 100
    config.train.update(steps=6000, log_every=100)
    return config
