"""The deep autoencoder of Hinton & Salakhutdinov (2006) on MNIST: 784-1000-500-250-30.

The paper pretrains with RBMs and fine-tunes with cross-entropy, reporting a test squared error of
3.00 per image; zoo trains end to end with Adam (no pretraining) on the Bernoulli cross-entropy and
reports `mse_per_image` beside it. Layer sizes from the paper; optimizer and schedule are zoo's.
"""

import default
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = ml_collections.ConfigDict(dict(
        family="autoencoder", arch="mlp", image_shape=(28, 28, 1), hidden=(1000, 500, 250),
        latent_dim=30, loss="bernoulli", features=(32, 64), remat=False))
    config.optimizer.update(learning_rate=1e-3, schedule="cosine", warmup_steps=500)
    config.train.update(steps=30000, eval_every=5000, checkpoint_every=5000)
    return config
