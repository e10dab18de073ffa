"""The one-stochastic-layer VAE of Burda, Grosse & Salakhutdinov (2016), "Importance Weighted
Autoencoders", on dynamically binarised MNIST.

Section 5 of the paper: encoder and decoder with two deterministic layers of 200 tanh units, 50
latent units, a Bernoulli decoder, batch 20, Adam (beta1 0.9, beta2 0.999, eps 1e-4) at
1e-3 * 10^(-i/7) for 3^i epochs, i = 0..7 (3,280 epochs); test log-likelihood by IWAE with
k = 5000. Their VAE (k = 1) reaches a test NLL of 86.76 nats; the IWAE (k = 50) 84.78.

This config runs the schedule's first five stages, i = 0..4 (1 + 3 + 9 + 27 + 81 = 121 epochs),
which fits a 2-core CPU; set ``train.steps`` to STEPS_PER_EPOCH * 3280 for the whole schedule.
Evaluate with ``zoo eval RUN_DIR --iwae-k 5000``.
"""

import default
import ml_collections

BATCH = 20
STEPS_PER_EPOCH = 60_000 // BATCH
STAGES = 5  # of the paper's 8
BOUNDARIES = tuple(STEPS_PER_EPOCH * sum(3 ** j for j in range(i + 1)) for i in range(7))


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model = ml_collections.ConfigDict(dict(
        family="vae", arch="mlp", image_shape=(28, 28, 1), hidden=(200, 200), activation="tanh",
        latent_dim=50, likelihood="bernoulli", binarize=True, num_classes=0))
    config.data.batch_size = BATCH
    config.optimizer.update(eps=1e-4, schedule="piecewise", decay_rate=10 ** (-1 / 7),
                            boundaries=BOUNDARIES)
    config.parallel.strategy = "single"
    config.train.update(steps=BOUNDARIES[STAGES - 1], log_every=3000, eval_every=30_000,
                        checkpoint_every=30_000)
    return config
