"""Class-conditional DDPM on MNIST with classifier-free guidance (Ho & Salimans 2021).

``diffusion_mnist`` with a label embedding added to the time embedding; during training the label
is dropped (replaced by a null class) with probability 0.1, so the one network is p(x | y) and
p(x). Sampling mixes the two: eps = eps(x) + w (eps(x, y) - eps(x)); w = 0 is the unconditional
model, 1 the conditional one, and the samples drawn during training use w = 2.
"""

import diffusion_mnist
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = diffusion_mnist.get_config()
    config.model.update(num_classes=10, p_uncond=0.1, guidance=2.0)
    return config
