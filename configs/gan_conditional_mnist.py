"""Class-conditional MLP GAN on MNIST with a projection discriminator.

Mirza & Osindero (2014), "Conditional Generative Adversarial Nets": the label's embedding is
concatenated to G's noise; D conditions by projection, Miyato & Koyama (2018), "cGANs with
Projection Discriminator". Players as in configs/gan_deep_mnist.py, hinge loss (Miyato et al. 2018),
Adam 2e-4 with beta1 0.5, batch 64. Set conditioning="concat" for Mirza & Osindero's D.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return _config(
        model=dict(family="gan", arch="mlp", image_shape=(28, 28, 1), latent_dim=100,
                   g_hidden=(256, 512, 1024), d_hidden=(512, 256), loss="hinge", gradient_penalty=0.0,
                   n_critic=1, num_classes=10, conditioning="projection", embed_dim=10),
        optimizer=dict(learning_rate=2e-4, b1=0.5), batch_size=64, steps=6000)


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
