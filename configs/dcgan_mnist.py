"""DCGAN on MNIST (28x28): transposed convolutions with BatchNorm in G, strided ones in D.

Radford, Metz & Chintala (2016), "Unsupervised Representation Learning with Deep Convolutional
GANs": no pooling or fully connected hidden layers, BatchNorm in both players (not on G's output or
D's input), ReLU in G with tanh output, LeakyReLU(0.2) in D, Adam 2e-4 with beta1 0.5, batch 128,
N(0, 0.02)-scale init (here flax's defaults). 28x28 = 7x7 upsampled twice (4x4 stride-2 kernels),
as in the paper's MNIST variant; 64 base features (ngf/ndf). features=32 trains faster on a CPU.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    return _config(
        model=dict(family="gan", arch="dcgan", image_shape=(28, 28, 1), latent_dim=100, features=64,
                   loss="non_saturating", gradient_penalty=0.0, n_critic=1, num_classes=0,
                   conditioning="projection", embed_dim=10),
        optimizer=dict(learning_rate=2e-4, b1=0.5), batch_size=128, steps=3000)


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
