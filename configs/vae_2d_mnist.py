"""MLP VAE with a 2-d latent space on dynamically binarised MNIST, for latent plots.

Kingma & Welling (2014), "Auto-Encoding Variational Bayes", figure 4 (learned 2-d MNIST manifold):
500 hidden units, Bernoulli decoder, batch 100; ReLU and Adam 1e-3 instead of tanh and Adagrad.
``zoo sample`` on a run of it also draws the test set's latent means coloured by label.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return _config(
        model=dict(family="vae", arch="mlp", image_shape=(28, 28, 1), hidden=(500,), latent_dim=2,
                   likelihood="bernoulli", binarize=True, num_classes=0),
        optimizer={}, batch_size=100, steps=6000)


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
