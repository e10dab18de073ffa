"""Class-conditional MLP GAN on MNIST with a projection discriminator.

Mirza & Osindero (2014), "Conditional Generative Adversarial Nets": the label's embedding is
concatenated to G's noise; D conditions by projection, Miyato & Koyama (2018), "cGANs with
Projection Discriminator". Players as in configs/gan_deep_mnist.py, hinge loss (Miyato et al. 2018),
Adam 2e-4 with beta1 0.5, batch 64. Set conditioning="concat" for Mirza & Osindero's D.
"""

import default
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = ml_collections.ConfigDict(dict(
        family="gan", arch="mlp", image_shape=(28, 28, 1), latent_dim=100,
        g_hidden=(256, 512, 1024), d_hidden=(512, 256), loss="hinge", gradient_penalty=0.0,
        n_critic=1, num_classes=10, conditioning="projection", embed_dim=10))
    config.optimizer.update(learning_rate=2e-4, b1=0.5)
    config.data.batch_size = 64
    config.train.update(steps=6000, log_every=100, best_metric="")
    return config
