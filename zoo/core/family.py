"""What a model family hands the shared machinery: its objective, and what else it can do.

The training loop needs only ``init``, ``objective``, ``eval_metrics`` and ``batch_spec``. The
layers above training (sampling, generation, quality evaluation, the data pipeline) ask a family
for a *capability* (an attribute that is ``None`` when the family lacks it) and never for its
name, so a new family is one file under ``zoo/models/`` and a registry entry.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import jax

from zoo.core.step import Update
from zoo.core.train_state import PyTree


@dataclasses.dataclass(frozen=True)
class ImageSampler:
    """How a family draws images: latents (and labels) in, images in [0, 1] out.

    Attributes:
      player: whose params and model state draw (``"model"`` for a VAE, ``"generator"``).
      latent_dim: the size of one latent ``z`` (drawn from N(0, I)).
      num_classes: how many classes the images are conditioned on (0: unconditional).
      decode: ``decode(params, model_state, z (N, latent_dim), labels (N,) or None) -> images
        (N, H, W, C) in [0, 1]``, with the player's params and model state; jittable.
      encode: ``encode(params, images, labels) -> latent means (N, latent_dim)`` for families with
        an encoder (reconstructions, interpolations between real images); None: no encoder.
      title: what pictures call the model (``"VAE"``, ``"GAN"``).
      latent_name: what pictures call ``z`` (``"latent"``, a GAN's ``"noise"``).
      generates: whether ``z ~ N(0, I)`` decodes to images of the data (a VAE, a GAN). An
        autoencoder's codes have no such prior: it draws reconstructions and interpolations
        between real images only, and has no sample-quality report.
      interpolation: how pictures move between two latents: ``"lerp"``, or ``"slerp"`` for a
        latent whose norm matters (a diffusion model's starting noise).
    """

    player: str
    latent_dim: int
    num_classes: int
    decode: Callable
    encode: Callable | None = None
    title: str = "model"
    latent_name: str = "latent"
    generates: bool = True
    interpolation: str = "lerp"


class TextDecoder(Protocol):
    """A linen language model that generates token by token (``zoo.generate.Generator``).

    ``init_cache(batch_size)`` is the empty cache (a transformer's keys and values, an LSTM's zero
    carry); ``extend`` is a linen method, ``apply(..., method="extend")``: it runs ``tokens``
    (B, T) from positions ``start`` (B,), the first ``lengths`` (B,) of them real, and returns
    logits (B, T, vocab) and the new cache. ``context`` is the longest sequence it reads (None:
    no limit).
    """

    vocab_size: int

    @property
    def context(self) -> int | None: ...

    def init_cache(self, batch_size: int) -> Any: ...

    def extend(self, tokens: jax.Array, cache: Any, start: jax.Array,
               lengths: jax.Array) -> tuple[jax.Array, Any]: ...


@dataclasses.dataclass(frozen=True)
class Family:
    """A model family's objective and its capabilities.

    Attributes:
      name: the family's registry name (``autoencoder``, ``vae``, ...), for messages.
      modules: the linen modules by player; ``apply`` them for encode/decode/sample.
      init: ``init(rng, batch) -> (params, model_state)``, each a dict keyed by player.
      objective: the :class:`zoo.core.step.Update` s one train step applies, in order.
      eval_metrics: ``(params, model_state, batch, rng) -> metrics`` (dicts keyed by player), or
        ``-> (metrics, new_model_state)`` for an evaluation that carries per-example state.
      batch_spec: the batch the family trains on, without the batch dimension.
      num_classes: the classes of its ``batch["label"]`` (labels 0 .. num_classes - 1): a
        classifier's or a class-conditional model's; 0: it takes no labels.
      flops_per_example: forward+backward FLOPs of one training example (for MFU); None: unknown.
      image_sampler: how it draws images (:class:`ImageSampler`); None: it draws none.
      text_decoder: the module that generates text (:class:`TextDecoder`), a value of
        ``modules``; None: not a language model.
      text_unit: what a language model's tokens are (``char``, ``word``, ``token``: its loss
        is nats per one of them); None: not a language model.
      log_likelihood: ``log_likelihood(params, images, labels, *, k, seed) -> float`` (params
        keyed by player, as in a TrainState): an estimate of the mean log p(x) of ``images`` in
        nats per image, with ``k`` samples (a VAE's IWAE-k bound); None: none.
      denoiser: a diffusion model's :class:`zoo.core.diffusion.Denoiser` (DDPM and DDIM
        sampling, guidance, inpainting); None: not a diffusion model.
      text_batching: ``(batching, why)``: the ``data.batching`` a language model needs and the
        reason (an LSTM carrying its state needs ``stream``); None: any.
      feature_extractor: ``(params keyed by player) -> params`` of a
        :mod:`zoo.models.classifier` module: the family classifies images and can be the fixed
        feature extractor of image-quality metrics (``zoo eval --classifier``); None: it cannot.
      inference_params: ``(params keyed by player) -> params`` as the capabilities above take
        them, for a family whose trained params are another form (LoRA adapters beside the base
        weights, :func:`zoo.core.lora.adapt_family`); None: the same.
      implementations: ``() -> {what: how}``: the implementation each of its layers that has a
        choice runs on this machine (``{"lstm": "cudnn"}``), for logs and benchmark records;
        None: no layer chooses.
    """

    name: str
    modules: dict[str, Any]
    init: Callable[[jax.Array, PyTree], tuple[dict, dict]]
    objective: tuple[Update, ...]
    eval_metrics: Callable
    batch_spec: PyTree
    num_classes: int = 0
    flops_per_example: float | None = None
    image_sampler: ImageSampler | None = None
    text_decoder: TextDecoder | None = None
    text_unit: str | None = None
    log_likelihood: Callable | None = None
    text_batching: tuple[str, str] | None = None
    denoiser: Any = None
    feature_extractor: Callable | None = None
    inference_params: Callable | None = None
    implementations: Callable[[], dict[str, str]] | None = None

    def __post_init__(self):
        if self.text_decoder is not None and self.text_unit is None:
            raise ValueError(f"the {self.name} family has a text_decoder but no text_unit "
                             "(char, word or token: what its loss counts)")
        if (self.num_classes > 0) != ("label" in self.batch_spec):
            raise ValueError(f"the {self.name} family's num_classes={self.num_classes} and its "
                             "batch_spec disagree on whether it takes labels")
        for part in (self.image_sampler, self.denoiser):  # they condition on the same labels
            if part is not None and part.num_classes != self.num_classes:
                raise ValueError(f"the {self.name} family has num_classes={self.num_classes}, "
                                 f"its {type(part).__name__} {part.num_classes}")
        if self.text_decoder is not None and self.text_player is None:
            raise ValueError(f"the {self.name} family's text_decoder is none of its modules")

    @property
    def text_player(self) -> str | None:
        """The player whose module is ``text_decoder``: its params are ``params[text_player]``;
        None: not a language model."""
        if self.text_decoder is None:
            return None
        return next((p for p, m in self.modules.items() if m is self.text_decoder), None)

    def plain_params(self, params: dict) -> dict:
        """``params`` (keyed by player) in the form the capabilities take (see
        ``inference_params``)."""
        return params if self.inference_params is None else self.inference_params(params)

    def require(self, capability: str, what: str) -> Any:
        """The capability ``capability`` (an attribute name), or a ValueError naming the family
        and what it cannot do (``what``: e.g. "draw images")."""
        value = getattr(self, capability)
        if value is None:
            raise ValueError(f"the {self.name} family cannot {what} (it has no {capability})")
        return value
