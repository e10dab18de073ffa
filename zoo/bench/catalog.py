"""The benchmark cases: each suite's models, sizes, optimizers and run options, as data.

A :class:`Case` is a zoo config in small: the ``model`` section, ``optimizer`` (or per-player
``optimizers``), ``train`` options (``compute_dtype``, ``grad_accum_steps``, ``remat``) and
``parallel`` options (``data``, ``fsdp``), plus a batch size; the runner turns it into the config
``zoo train`` reads (:func:`zoo.bench.zoo_runner.zoo_config`). FLOPs are the family's own
``flops_per_example`` where it has one, else the count of the step's jaxpr
(:func:`zoo.bench.records.flops_fields`).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

SUITES = ("quick", "full", "gpu", "tiny")

# suite: (strategies, peers, sweep device counts, sweep cases, steps, warm-up); the command line
# may override each.
SUITE_DEFAULTS = {
    "tiny": (("single",), ("eager",), (), None, 20, 2),
    "quick": (("single",), ("eager",), (1, 2), ("autoencoder-mlp",), 20, 3),
    "full": (("single", "pmap", "mesh"), ("eager", "compile"), (1, 2, 4, 8), None, 30, 5),
    "gpu": (("single",), ("eager", "compile"), (), None, 50, 10),
}

ADAM = {"name": "adam", "learning_rate": 1e-3}
DCGAN_ADAM = {"name": "adam", "learning_rate": 2e-4, "b1": 0.5, "b2": 0.999}
DDPM_ADAM = {"name": "adam", "learning_rate": 2e-4}  # DDPM's (its warm-up and clipping left out)


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark: a zoo family at one size, with the config ``zoo train`` would run it with.

    Attributes:
      name: the case's name in tables and plots (e.g. ``autoencoder-mlp``).
      family: the zoo family (a key of ``zoo.models.FAMILIES``).
      model: the family's model config (a plain dict; ``family`` is filled in).
      batch_size: global batch size.
      optimizer: optax optimizer config (``config.optimizer``), the same for the peer.
      optimizers: per-player optimizer configs (``config.optimizers``); a player without one uses
        ``optimizer``.
      train: train options (``compute_dtype``, ``grad_accum_steps``, ``remat``, ``nonfinite``).
      parallel: strategy options besides its name (``data``, ``fsdp`` for ``mesh``).
      tokens_per_example: tokens in one example (sequence models), 0 for images.
      int_high: exclusive upper bound of integer batch leaves (token ids, labels), by key.
      peer: the family whose PyTorch peer mirrors this case (None: no peer).
    """

    name: str
    family: str
    model: dict
    batch_size: int
    optimizer: dict = dataclasses.field(default_factory=lambda: dict(ADAM))
    optimizers: dict = dataclasses.field(default_factory=dict)
    train: dict = dataclasses.field(default_factory=dict)
    parallel: dict = dataclasses.field(default_factory=dict)
    tokens_per_example: int = 0
    int_high: dict = dataclasses.field(default_factory=dict)
    peer: str | None = None

    @property
    def compute_dtype(self) -> str:
        return self.train.get("compute_dtype", "float32")

    def model_config(self) -> dict:
        return {**self.model, "family": self.family}

    def optimizer_for(self, player: str) -> dict:
        """The optimizer config ``player`` trains with (as :func:`zoo.build.make_optimizers`)."""
        return self.optimizers.get(player, self.optimizer)


def lstm_case(name: str, batch: int, *, peer: str | None = "lstm", **model) -> Case:
    """A word-level LSTM LM case (Zaremba et al. shapes; state not carried between batches)."""
    model = {"vocab_size": 10_000, "hidden_size": 200, "num_layers": 2, "seq_len": 20,
             "unit": "word", "carry_state": False, "init_scale": 0.1, **model}
    return Case(name, "lstm", model, batch, tokens_per_example=model["seq_len"],
                int_high={"tokens": model["vocab_size"], "reset": 1}, peer=peer)


def transformer_case(name: str, batch: int, *, optimizer: dict | None = None,
                     compute_dtype: str = "float32", peer: str | None = "transformer",
                     **model) -> Case:
    """A GPT-2-style LM case (char vocabulary and AdamW unless told otherwise)."""
    model = {"vocab_size": 65, "dropout": 0.0, "unit": "char", **model}
    seq = int(model.get("seq_len") or model["block_size"])
    return Case(name, "transformer", model, batch,
                optimizer=optimizer or {"name": "adamw", "learning_rate": 1e-3, "b2": 0.99,
                                        "weight_decay": 0.1},
                train={"compute_dtype": compute_dtype},
                tokens_per_example=seq, int_high={"tokens": model["vocab_size"]}, peer=peer)


def gpt2_small_case(name: str, **kw) -> Case:
    """GPT-2 small (124M) at context 1024 and batch 16 in bfloat16, with nanoGPT's AdamW; the
    vocabulary padded to 50304 (a multiple of 128, as nanoGPT and llm.c do) so the head's matmul
    tiles evenly."""
    return transformer_case(name, 16, preset="gpt2", vocab_size=50304, block_size=1024,
                            seq_len=1024, dtype="bfloat16", unit="token",
                            optimizer={"name": "adamw", "learning_rate": 6e-4, "b2": 0.95,
                                       "weight_decay": 0.1}, compute_dtype="bfloat16", **kw)


def diffusion_case(name: str, batch: int, **model) -> Case:
    """A DDPM U-Net case (unconditional, eps-prediction, linear schedule over T = 1000). The family
    has no ``flops_per_example``: its records count FLOPs from the step's jaxpr."""
    model = {"schedule": "linear", "diffusion_steps": 1000, "prediction": "eps", **model}
    return Case(name, "diffusion", model, batch, optimizer=DDPM_ADAM, peer="diffusion")


def case_table(suite: str) -> list[Case]:
    """Every case of ``suite``, whether or not its family exists yet (see :func:`suite_cases`)."""
    mnist = {"image_shape": (28, 28, 1)}
    if suite == "tiny":  # tests: seconds, not minutes
        return [
            Case("autoencoder-mlp", "autoencoder",
                 {**mnist, "arch": "mlp", "hidden": (64, 32), "latent_dim": 8, "loss": "bernoulli"},
                 16, peer="autoencoder"),
            Case("vae-mlp", "vae", {**mnist, "arch": "mlp", "hidden": (64, 32), "latent_dim": 4},
                 16, peer="vae"),
            Case("gan-mlp", "gan", {**mnist, "arch": "mlp", "g_hidden": (32,), "d_hidden": (32,),
                                    "latent_dim": 8}, 16, optimizer=DCGAN_ADAM, peer="gan"),
            lstm_case("lstm", 4, vocab_size=50, hidden_size=16, seq_len=8),
            transformer_case("transformer", 4, block_size=16, n_layer=1, n_head=2, n_embd=32),
            diffusion_case("diffusion-unet", 4, **mnist, preset="tiny", channels=8,
                           attention_resolutions=(), groups=4),
        ]
    if suite in ("quick", "full"):
        big = suite == "full"
        return [
            Case("autoencoder-mlp", "autoencoder",
                 {**mnist, "arch": "mlp", "hidden": (1000, 500, 250) if big else (512, 256),
                  "latent_dim": 30 if big else 32, "loss": "bernoulli"},
                 256 if big else 128, peer="autoencoder"),
            Case("vae-mlp", "vae", {**mnist, "arch": "mlp", "hidden": (512, 256), "latent_dim": 16},
                 256 if big else 128, peer="vae"),
            Case("gan-dcgan", "gan", {**mnist, "arch": "dcgan", "features": 64 if big else 32,
                                      "latent_dim": 100},
                 128 if big else 64, optimizer=DCGAN_ADAM, peer="gan"),
            # Zaremba et al. (2014) small (quick) and medium (full), word-level PTB shapes.
            lstm_case("lstm", 20, **({"hidden_size": 650, "seq_len": 35} if big else {})),
            # Other families: zoo only (no PyTorch peer).
            Case("classifier-mlp", "classifier", {**mnist, "arch": "mlp", "hidden": (512, 512),
                                                  "num_classes": 10, "dropout": 0.2},
                 256 if big else 128, int_high={"label": 10}),
            # quick: 4 x 256 wide, context 128; full: nanoGPT's shakespeare_char baby GPT.
            (transformer_case("transformer", 16, preset="char", block_size=256, n_layer=6,
                              n_head=6, n_embd=384) if big else
             transformer_case("transformer", 4, block_size=128, n_layer=4, n_head=4, n_embd=256)),
            # quick: the "tiny" U-Net (16 channels, 28 -> 14, attention only in the middle);
            # full: the "mnist" preset (28 -> 14 -> 7, attention at 7) at configs/diffusion_mnist's
            # batch.
            (diffusion_case("diffusion-unet", 64, **mnist, preset="mnist") if big else
             diffusion_case("diffusion-unet", 16, **mnist, preset="tiny",
                            attention_resolutions=())),
        ]
    if suite == "gpu":
        return [
            # zoo's choice of attention on one GPU: cuDNN's fused kernel (gpt2-small-xla, below,
            # runs XLA's, with no peer).
            gpt2_small_case("gpt2-small"),
            Case("gan-dcgan64", "gan", {"image_shape": (64, 64, 3), "arch": "dcgan",
                                        "features": 64, "latent_dim": 100}, 128,
                 optimizer=DCGAN_ADAM, peer="gan"),
            # Zaremba large: zoo's choice on a host with one GPU (cuDNN's kernel through
            # jax.experimental.rnn; with more GPUs, its scan) against PyTorch's cuDNN nn.LSTM,
            # and zoo's scan beside it.
            lstm_case("lstm-large", 20, hidden_size=1500, seq_len=35),
            lstm_case("lstm-large-scan", 20, hidden_size=1500, seq_len=35, lstm_impl="scan",
                      peer=None),
            Case("vae-mlp", "vae", {**mnist, "arch": "mlp", "hidden": (512, 256), "latent_dim": 16},
                 1024, peer="vae"),
            Case("autoencoder-mlp", "autoencoder",
                 {**mnist, "arch": "mlp", "hidden": (1000, 500, 250), "latent_dim": 30,
                  "loss": "bernoulli"}, 1024, peer="autoencoder"),
            gpt2_small_case("gpt2-small-xla", attention_impl="xla", peer=None),
            # DDPM's CIFAR-10 U-Net (35.7M parameters, 32x32x3, dropout 0.1) at its batch; last,
            # as it has no target (gpu.sh's bench timeout keeps the cases finished before it).
            diffusion_case("diffusion-ddpm-cifar10", 128, preset="ddpm_cifar10"),
        ]
    raise ValueError(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")


def suite_cases(suite: str, names: Iterable[str] | None = None) -> tuple[list[Case], list[str]]:
    """The cases of ``suite`` whose family exists, and notes on the ones left out."""
    from zoo import models
    table = case_table(suite)
    wanted = set(names) if names else None
    if wanted:
        unknown = wanted - {c.name for c in table}
        if unknown:
            raise ValueError(f"unknown case(s) {sorted(unknown)} in suite {suite!r}; known: "
                             f"{', '.join(c.name for c in table)}")
    cases, notes = [], []
    for case in table:
        if wanted is not None and case.name not in wanted:
            continue
        if case.family not in models.FAMILIES:
            notes.append(f"{case.name}: family {case.family!r} is not in zoo.models.FAMILIES; "
                         "case left out")
            continue
        cases.append(case)
    return cases, notes
