"""Multinomial logistic regression on MNIST pixels: the simplest baseline.

Source: the linear-classifier rows of LeCun et al. 1998, "Gradient-based learning applied to
document recognition", and the MNIST page (yann.lecun.com/exdb/mnist): a linear classifier
(1-layer NN) at 12.0% test error, 8.4% with deskewing.
Adam 1e-3, batch 128, 10 epochs (4,680 steps).

    zoo train --config configs/classifier_mnist_logreg.py --workdir /tmp/run
"""

import default
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = ml_collections.ConfigDict(dict(
        family="classifier", arch="logreg", image_shape=(28, 28, 1), num_classes=10))
    config.optimizer.update(schedule="cosine")
    config.train.update(steps=4680, log_every=468)
    return config
