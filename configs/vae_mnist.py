"""MLP VAE on dynamically binarised MNIST.

Kingma & Welling (2014), "Auto-Encoding Variational Bayes", section 5: one hidden layer of 500 units
in encoder and decoder, a Bernoulli decoder, a Gaussian encoder, minibatches of 100. Differences
from the paper: ReLU instead of tanh, Adam (Kingma & Ba 2015) at 1e-3 instead of Adagrad, and a
20-d latent. steps=6000 (10 epochs) gives clear digits in a few CPU minutes; the paper trains far
longer. ``zoo.models.vae.test_log_likelihood`` gives the IWAE-5000 test log-likelihood.
"""

import default
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = ml_collections.ConfigDict(dict(
        family="vae", arch="mlp", image_shape=(28, 28, 1), hidden=(500,), latent_dim=20,
        likelihood="bernoulli", binarize=True, num_classes=0))
    config.data.batch_size = 100
    config.train.update(steps=6000, log_every=100)
    return config
