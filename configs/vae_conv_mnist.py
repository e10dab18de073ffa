"""Convolutional VAE on dynamically binarised MNIST.

After the TensorFlow "Convolutional Variational Autoencoder" tutorial (tensorflow.org/tutorials/
generative/cvae): two stride-2 3x3 convolutions (32, 64 filters) down, a mirror of transposed
convolutions up, Bernoulli decoder, Adam 1e-4 there (1e-3 here, with a 256-unit dense layer and a
16-d latent for a short CPU run), batch 128; itself following Kingma & Welling (2014).
"""

import default
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = ml_collections.ConfigDict(dict(
        family="vae", arch="conv", image_shape=(28, 28, 1), features=(32, 64), latent_dim=16,
        likelihood="bernoulli", binarize=True, num_classes=0))
    config.train.update(steps=3000, log_every=100)
    return config
