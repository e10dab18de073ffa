"""MLP VAE with a 2-d latent space on dynamically binarised MNIST, for latent plots.

Kingma & Welling (2014), "Auto-Encoding Variational Bayes", figure 4 (learned 2-d MNIST manifold):
500 hidden units, Bernoulli decoder, batch 100; ReLU and Adam 1e-3 instead of tanh and Adagrad.
``zoo sample`` on a run of it also draws the test set's latent means coloured by label.
"""

import default
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = ml_collections.ConfigDict(dict(
        family="vae", arch="mlp", image_shape=(28, 28, 1), hidden=(500,), latent_dim=2,
        likelihood="bernoulli", binarize=True, num_classes=0))
    config.data.batch_size = 100
    config.train.update(steps=6000, log_every=100)
    return config
