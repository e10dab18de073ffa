"""Small convnet on MNIST, >= 99.2% test accuracy: zoo's discriminative baseline and the fixed
feature extractor of its image-quality metrics (classifier-FID, precision/recall, mode coverage).

Source: the Keras ``mnist_cnn`` example (F. Chollet, keras/examples/mnist_cnn.py: conv-conv-pool,
dropout 0.25, dense 128, dropout 0.5; "99.25% test accuracy after 12 epochs") with a pooling layer
after each conv as in the Flax MNIST example (flax/examples/mnist), which makes it ~4x cheaper on a
CPU. Adam 1e-3 with cosine decay, batch 128, 12 epochs (5,616 steps).

    zoo train --config configs/classifier_mnist_cnn.py --workdir /tmp/mnist_cnn
    zoo export /tmp/mnist_cnn --format msgpack --out zoo/assets/mnist_cnn.msgpack
"""

import default
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = ml_collections.ConfigDict(dict(
        family="classifier", arch="cnn", image_shape=(28, 28, 1), num_classes=10,
        features=(32, 64), dense=128, conv_dropout=0.25, dropout=0.5))
    config.optimizer.update(schedule="cosine")
    config.train.update(steps=5616, log_every=468)
    return config
