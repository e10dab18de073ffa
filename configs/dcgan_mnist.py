"""DCGAN on MNIST (28x28): transposed convolutions with BatchNorm in G, strided ones in D.

Radford, Metz & Chintala (2016), "Unsupervised Representation Learning with Deep Convolutional
GANs": no pooling or fully connected hidden layers, BatchNorm in both players (not on G's output or
D's input), ReLU in G with tanh output, LeakyReLU(0.2) in D, Adam 2e-4 with beta1 0.5, batch 128,
N(0, 0.02)-scale init (here flax's defaults). 28x28 = 7x7 upsampled twice (4x4 stride-2 kernels),
as in the paper's MNIST variant; 64 base features (ngf/ndf). features=32 trains faster on a CPU.
"""

import default
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = ml_collections.ConfigDict(dict(
        family="gan", arch="dcgan", image_shape=(28, 28, 1), latent_dim=100, features=64,
        loss="non_saturating", gradient_penalty=0.0, n_critic=1, num_classes=0,
        conditioning="projection", embed_dim=10))
    config.optimizer.update(learning_rate=2e-4, b1=0.5)
    config.train.update(steps=3000, log_every=100, best_metric="")
    return config
