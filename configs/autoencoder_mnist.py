"""MLP autoencoder on MNIST: a short run that shows zoo working (the README's main job).

Architecture after Hinton & Salakhutdinov (2006), "Reducing the dimensionality of data with neural
networks", narrowed for a quick CPU run; configs/autoencoder_hinton2006.py is the paper's 784-1000-
500-250-30. Adam at 1e-3 with a per-image Bernoulli cross-entropy.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(
        family="autoencoder", arch="mlp", image_shape=(28, 28, 1), hidden=(512, 256),
        latent_dim=32, loss="bernoulli", features=(32, 64), remat=False))
    config.data = ml_collections.ConfigDict(dict(
        dataset="mnist", batch_size=128, eval_batch_size=1000, synthetic_size=4096,
        tfds_data_dir="", download_dir=""))
    config.optimizer = ml_collections.ConfigDict(dict(
        name="adam", learning_rate=1e-3, schedule="constant", warmup_steps=0, grad_clip_norm=0.0,
        b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, momentum=0.0, end_factor=0.0))
    config.parallel = ml_collections.ConfigDict(dict(strategy="mesh", data=-1, fsdp=1))
    config.train = ml_collections.ConfigDict(dict(
        steps=300, log_every=50, eval_every=0, checkpoint_every=100, keep_checkpoints=3,
        best_metric="loss", best_mode="min", nonfinite="stop", seed=0, grad_accum_steps=1,
        compute_dtype="float32", remat=False))
    return config
