"""MLP VAE with a Gaussian likelihood on (non-binarised) MNIST intensities.

Kingma & Welling (2014) use a Gaussian decoder for real-valued data (Frey faces, appendix C.2); the
shared noise scale is learned, as in the sigma-VAE of Rybkin, Daniilidis & Levine (2021), "Simple
and effective VAE training with calibrated decoders". Log-likelihoods are densities (nats), not
comparable with the Bernoulli configs.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return _config(
        model=dict(family="vae", arch="mlp", image_shape=(28, 28, 1), hidden=(500,), latent_dim=20,
                   likelihood="gaussian", binarize=False, num_classes=0),
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
