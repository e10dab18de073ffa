"""Conditional VAE p(x | y) on dynamically binarised MNIST: the label y is given to both networks.

Sohn, Lee & Yan (2015), "Learning Structured Output Representation using Deep Conditional Generative
Models" (the CVAE), with the one-hot label appended to the encoder input and to the latent code as in
Kingma et al. (2014), "Semi-supervised learning with deep generative models" (M2's p(x|y,z));
MLP 500 hidden units, Adam 1e-3, batch 100. Sampling draws one row per digit. A 2-d latent (as in
the usual CVAE MNIST demos) leaves the class to y and the style to z: after 3000 CPU steps every
row shows its digit; with a 20-d latent the short run's decoder largely ignored y (rows mixed).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return _config(
        model=dict(family="vae", arch="mlp", image_shape=(28, 28, 1), hidden=(500,), latent_dim=2,
                   likelihood="bernoulli", binarize=True, num_classes=10),
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
