"""Small convnet on MNIST, >= 99.2% test accuracy: zoo's discriminative baseline and the fixed
feature extractor of its image-quality metrics (classifier-FID, precision/recall, mode coverage).

Source: the Keras ``mnist_cnn`` example (F. Chollet, keras/examples/mnist_cnn.py: conv-conv-pool,
dropout 0.25, dense 128, dropout 0.5; "99.25% test accuracy after 12 epochs") with a pooling layer
after each conv as in the Flax MNIST example (flax/examples/mnist), which makes it ~4x cheaper on a
CPU. Adam 1e-3 with cosine decay, batch 128, 12 epochs (5,616 steps).

    python -m zoo.models.classifier configs/classifier_mnist_cnn.py --save zoo/assets/mnist_cnn.msgpack
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(
        family="classifier", arch="cnn", image_shape=(28, 28, 1), num_classes=10,
        features=(32, 64), dense=128, conv_dropout=0.25, dropout=0.5))
    config.data = ml_collections.ConfigDict(dict(
        dataset="mnist", batch_size=128, eval_batch_size=1000, synthetic_size=4096,
        tfds_data_dir="", download_dir=""))
    config.optimizer = ml_collections.ConfigDict(dict(
        name="adam", learning_rate=1e-3, schedule="cosine", warmup_steps=0, grad_clip_norm=0.0,
        b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, momentum=0.0, end_factor=0.0))
    config.parallel = ml_collections.ConfigDict(dict(strategy="mesh", data=-1, fsdp=1))
    config.train = ml_collections.ConfigDict(dict(
        steps=5616, log_every=468, seed=0, grad_accum_steps=1, compute_dtype="float32",
        remat=False))
    return config
