"""Multinomial logistic regression on MNIST pixels: the simplest baseline.

Source: the linear-classifier rows of LeCun et al. 1998, "Gradient-based learning applied to
document recognition", and the MNIST page (yann.lecun.com/exdb/mnist): a linear classifier
(1-layer NN) at 12.0% test error, 8.4% with deskewing.
Adam 1e-3, batch 128, 10 epochs (4,680 steps).

    python -m zoo.models.classifier configs/classifier_mnist_logreg.py
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(
        family="classifier", arch="logreg", image_shape=(28, 28, 1), num_classes=10))
    config.data = ml_collections.ConfigDict(dict(
        dataset="mnist", batch_size=128, eval_batch_size=1000, synthetic_size=4096,
        tfds_data_dir="", download_dir=""))
    config.optimizer = ml_collections.ConfigDict(dict(
        name="adam", learning_rate=1e-3, schedule="cosine", warmup_steps=0, grad_clip_norm=0.0,
        b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, momentum=0.0, end_factor=0.0))
    config.parallel = ml_collections.ConfigDict(dict(strategy="mesh", data=-1, fsdp=1))
    config.train = ml_collections.ConfigDict(dict(
        steps=4680, log_every=468, seed=0, grad_accum_steps=1, compute_dtype="float32",
        remat=False))
    return config
