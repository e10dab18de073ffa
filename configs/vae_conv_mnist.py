"""Convolutional VAE on dynamically binarised MNIST.

After the TensorFlow "Convolutional Variational Autoencoder" tutorial (tensorflow.org/tutorials/
generative/cvae): two stride-2 3x3 convolutions (32, 64 filters) down, a mirror of transposed
convolutions up, Bernoulli decoder, Adam 1e-4 there (1e-3 here, with a 256-unit dense layer and a
16-d latent for a short CPU run), batch 128; itself following Kingma & Welling (2014).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return _config(
        model=dict(family="vae", arch="conv", image_shape=(28, 28, 1), features=(32, 64), latent_dim=16,
                   likelihood="bernoulli", binarize=True, num_classes=0),
        optimizer={}, batch_size=128, steps=3000)


def _config(model: dict, optimizer: dict, batch_size: int, steps: int):
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(model)
    config.data = ml_collections.ConfigDict(dict(
        dataset="mnist", batch_size=batch_size, eval_batch_size=1000, synthetic_size=4096,
        tfds_data_dir="", download_dir=""))
    config.optimizer = ml_collections.ConfigDict(dict(
        dict(name="adam", learning_rate=1e-3, schedule="constant", warmup_steps=0,
             grad_clip_norm=0.0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, momentum=0.0,
             end_factor=0.0), **optimizer))
    config.parallel = ml_collections.ConfigDict(dict(strategy="mesh", data=-1, fsdp=1))
    config.train = ml_collections.ConfigDict(dict(
        steps=steps, log_every=100, seed=0, grad_accum_steps=1, compute_dtype="float32",
        remat=False))
    return config
