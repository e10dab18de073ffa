"""MLP 784-512-512-10 with dropout 0.2 on MNIST.

Source: the Keras ``mnist_mlp`` example (keras/examples/mnist_mlp.py: "98.40% test accuracy after
20 epochs"); here Adam 1e-3 with cosine decay, batch 128, 20 epochs (9,360 steps).

    zoo train --config configs/classifier_mnist_mlp.py --workdir /tmp/run
"""

import default
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = ml_collections.ConfigDict(dict(
        family="classifier", arch="mlp", image_shape=(28, 28, 1), num_classes=10,
        hidden=(512, 512), dropout=0.2))
    config.optimizer.update(schedule="cosine")
    config.train.update(steps=9360, log_every=468)
    return config
