"""Classifiers: logistic regression, an MLP and a small convnet (the discriminative baseline).

The same shared train step trains them as every generative family; the objective is softmax
cross-entropy and the metrics are ``loss`` and ``accuracy``. A trained MNIST CNN is also the fixed
feature extractor of zoo's image-quality metrics (:mod:`zoo.metrics`): :func:`features` gives its
penultimate-layer activations and :func:`predict_logits` its class scores.

The CNN is the usual small MNIST convnet (conv3x3-32, pool, conv3x3-64, pool, dropout, dense-128,
dropout, dense-10), after the Keras ``mnist_cnn`` example and the Flax MNIST example. The module a
set of params belongs to is read back from the params' shapes (:func:`model_from_params`), so
``features(params, images)`` needs nothing but the params.

A :class:`FeatureClassifier` is such params with the dataset they were trained on; zoo ships
one per dataset in :data:`SHIPPED` (:func:`shipped`). Train one like any family and save its
params (1.7 MB)::

    zoo train --config configs/classifier_mnist_cnn.py --workdir /tmp/mnist_cnn
    zoo export /tmp/mnist_cnn --format msgpack --out zoo/assets/mnist_cnn.msgpack

(``--config.data.dataset=fashion_mnist`` and ``fashion_mnist_cnn.msgpack`` for Fashion-MNIST.)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import serialization

from zoo import flops
from zoo.core import settings
from zoo.core.family import Family
from zoo.core.step import Update

ASSET_DIR = Path(__file__).resolve().parents[1] / "assets"
# The feature classifiers zoo ships, by the dataset they were trained on (test accuracy in
# docs/results.md): the default judges of that dataset's generated images.
SHIPPED = {"mnist": "mnist_cnn.msgpack", "fashion_mnist": "fashion_mnist_cnn.msgpack"}
DEFAULT_PARAMS_PATH = ASSET_DIR / SHIPPED["mnist"]


class LogisticRegression(nn.Module):
    """Multinomial logistic regression on the flattened image; its "features" are the pixels."""

    num_classes: int = 10

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        return x.reshape(x.shape[0], -1)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return nn.Dense(self.num_classes, name="out")(self.features(x, train))


class MLP(nn.Module):
    """Dense+ReLU hidden layers with dropout after each; features are the last hidden layer."""

    hidden: Sequence[int] = (512, 512)
    num_classes: int = 10
    dropout: float = 0.2

    def setup(self):
        self.dense = [nn.Dense(h, name=f"dense_{i}") for i, h in enumerate(self.hidden)]
        self.drop = nn.Dropout(self.dropout)
        self.out = nn.Dense(self.num_classes, name="out")

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        h = x.reshape(x.shape[0], -1)
        for i, layer in enumerate(self.dense):
            if i:
                h = self.drop(h, deterministic=not train)
            h = nn.relu(layer(h))
        return h

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        h = self.drop(self.features(x, train), deterministic=not train)
        return self.out(h)


class CNN(nn.Module):
    """conv3x3+ReLU+maxpool2 per entry of ``features``, dropout, dense+ReLU, dropout, dense.

    ``features(x)`` is the dense+ReLU layer's output (before dropout): the penultimate layer.
    """

    features_: Sequence[int] = (32, 64)
    dense: int = 128
    num_classes: int = 10
    conv_dropout: float = 0.25
    dropout: float = 0.5

    def setup(self):
        self.convs = [nn.Conv(f, (3, 3), padding="SAME", name=f"conv_{i}")
                      for i, f in enumerate(self.features_)]
        self.hidden = nn.Dense(self.dense, name="hidden")
        self.drop_conv = nn.Dropout(self.conv_dropout)
        self.drop = nn.Dropout(self.dropout)
        self.out = nn.Dense(self.num_classes, name="out")

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        chex.assert_rank(x, 4)
        h = x
        for conv in self.convs:
            h = nn.max_pool(nn.relu(conv(h)), (2, 2), strides=(2, 2))
        h = self.drop_conv(h, deterministic=not train)
        return nn.relu(self.hidden(h.reshape(h.shape[0], -1)))

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        h = self.drop(self.features(x, train), deterministic=not train)
        return self.out(h)


ARCHS = {"logreg": LogisticRegression, "mlp": MLP, "cnn": CNN}


def make_model(config) -> nn.Module:
    """The classifier module from a model config (keys: arch, num_classes, hidden, features,
    dense, dropout, conv_dropout)."""
    arch = config.get("arch", "cnn")
    if arch not in ARCHS:
        raise ValueError(f"unknown classifier arch {arch!r}; choose one of {', '.join(ARCHS)}")
    cls = ARCHS[arch]
    model = cls(**settings.module_fields(cls, config, rename={"features": "features_"}))
    if model.num_classes < 1:
        raise ValueError(f"model.num_classes={model.num_classes}: a classifier needs at least one "
                         "class (the dataset's labels are 0 to num_classes - 1)")
    return model


def cross_entropy_metrics(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict]:
    """Mean softmax cross-entropy and the metrics ``loss`` and ``accuracy`` (batch means)."""
    logits = logits.astype(jnp.float32)
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    accuracy = jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
    return loss, {"loss": loss, "accuracy": accuracy}


def make_family(config) -> Family:
    """The classifier family (player ``"model"``); the batch holds ``image`` and ``label``."""
    model = make_model(config)
    shape = tuple(config.get("image_shape", (28, 28, 1)))

    def loss_fn(params, model_state, batch, rng):
        logits = model.apply({"params": params["model"]}, batch["image"], train=True,
                             rngs={"dropout": rng})
        loss, metrics = cross_entropy_metrics(logits, batch["label"])
        return loss, metrics, model_state

    def eval_metrics(params, model_state, batch, rng):
        logits = model.apply({"params": params["model"]}, batch["image"], train=False)
        return cross_entropy_metrics(logits, batch["label"])[1]

    def init(rng, batch):
        params = model.init(rng, jnp.asarray(batch["image"][:1]), train=False)["params"]
        return {"model": params}, {"model": {}}

    return Family(
        name="classifier",
        modules={"model": model},
        init=init,
        objective=(Update("model", loss_fn),),
        eval_metrics=eval_metrics,
        batch_spec={"image": jax.ShapeDtypeStruct(shape, jnp.float32),
                    "label": jax.ShapeDtypeStruct((), jnp.int32)},
        num_classes=model.num_classes,
        flops_per_example=train_flops_per_example(model, shape),
        feature_extractor=lambda params: params["model"],
    )


# ----------------------------------------------------------------------------------------------
# The classifier as a fixed feature extractor.


def _unwrap(params: Mapping[str, Any]) -> Mapping[str, Any]:
    """Accepts a player's params, ``{"model": params}`` or ``{"params": params}``."""
    for key in ("model", "params"):
        if set(params) == {key}:
            params = params[key]
    return params


def model_from_params(params: Mapping[str, Any]) -> nn.Module:
    """The classifier module these params belong to, read from their names and shapes.

    Dropout rates do not matter at inference and are left at their defaults.
    """
    p = _unwrap(params)
    k = int(np.shape(p["out"]["kernel"])[-1])
    if "conv_0" in p:
        n = sum(1 for name in p if name.startswith("conv_"))
        feats = tuple(int(np.shape(p[f"conv_{i}"]["kernel"])[-1]) for i in range(n))
        return CNN(feats, int(np.shape(p["hidden"]["kernel"])[-1]), k)
    if "dense_0" in p:
        n = sum(1 for name in p if name.startswith("dense_"))
        return MLP(tuple(int(np.shape(p[f"dense_{i}"]["kernel"])[-1]) for i in range(n)), k)
    return LogisticRegression(k)


def _batched(fn, images: np.ndarray, batch_size: int) -> np.ndarray:
    images = np.asarray(images, np.float32)
    if images.ndim == 3:  # (N, H, W): add the channel
        images = images[..., None]
    out = [np.asarray(fn(jnp.asarray(images[i:i + batch_size])))
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


_JITTED: dict = {}


def _apply_fn(model: nn.Module, method: str):
    key = (model, method)
    if key not in _JITTED:
        _JITTED[key] = jax.jit(lambda p, x: model.apply(
            {"params": p}, x, train=False, method=getattr(type(model), method)))
    return _JITTED[key]


def features(params: Mapping[str, Any], images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Penultimate-layer features (N, D) of ``images`` (N, H, W, C) in [0, 1], as float32 numpy.

    Works for any classifier of this family; the module is read from the params' shapes. Images
    go through in batches of ``batch_size`` so large sets fit in memory.
    """
    model = model_from_params(params)
    fn = _apply_fn(model, "features")
    p = _unwrap(params)
    return _batched(lambda x: fn(p, x), images, batch_size)


def predict_logits(params: Mapping[str, Any], images: np.ndarray,
                   batch_size: int = 1000) -> np.ndarray:
    """Class logits (N, K) of ``images``, as float32 numpy."""
    model = model_from_params(params)
    fn = _apply_fn(model, "__call__")
    p = _unwrap(params)
    return _batched(lambda x: fn(p, x), images, batch_size)


def save_params(params: Mapping[str, Any], path: str | Path = DEFAULT_PARAMS_PATH) -> Path:
    """Writes a classifier's params (float32) with flax msgpack serialization."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    host = jax.tree.map(lambda x: np.asarray(x, np.float32), dict(_unwrap(params)))
    path.write_bytes(serialization.msgpack_serialize(host))
    return path


def load_params(path: str | Path = DEFAULT_PARAMS_PATH) -> dict:
    """Params written by :func:`save_params` (the default: zoo's trained MNIST CNN)."""
    path = Path(path)
    if not path.exists():
        dataset = {v: k for k, v in SHIPPED.items()}.get(path.name, "mnist")
        raise FileNotFoundError(
            f"no classifier params at {path}; train them with `zoo train --config "
            f"configs/classifier_mnist_cnn.py --config.data.dataset={dataset} --workdir RUN` and "
            f"`zoo export RUN --format msgpack --out {path}`")
    return serialization.msgpack_restore(path.read_bytes())


@dataclasses.dataclass(frozen=True)
class FeatureClassifier:
    """A trained classifier as a fixed feature extractor, with the dataset it was trained on.

    Image-quality metrics compare generated and real images in its features, which only mean
    something for images like its training data; ``dataset`` lets them refuse the others.

    Example::

        judge = FeatureClassifier.shipped("fashion_mnist")
        feats = judge.features(images)  # (N, 128)
    """

    params: Mapping[str, Any]
    dataset: str | None  # None: unknown (raw params; the caller vouches for them)
    name: str  # where it came from, for messages

    @classmethod
    def shipped(cls, dataset: str) -> FeatureClassifier:
        """The classifier zoo ships for ``dataset`` (:data:`SHIPPED`); a ValueError naming the
        datasets it ships one for otherwise."""
        if dataset not in SHIPPED:
            raise ValueError(f"zoo ships no feature classifier for {dataset!r}, only for "
                             f"{', '.join(SHIPPED)}; train one (configs/classifier_mnist_cnn.py "
                             "with data.dataset set) and pass it (zoo eval --classifier RUN)")
        return cls(load_params(ASSET_DIR / SHIPPED[dataset]), dataset, f"zoo's {dataset} CNN")

    def features(self, images: np.ndarray) -> np.ndarray:
        """Penultimate-layer features (N, D) of images in [0, 1] (:func:`features`)."""
        return features(self.params, images)

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Class logits (N, K) (:func:`predict_logits`)."""
        return predict_logits(self.params, images)


# ---- FLOPs


def train_flops_per_example(model: nn.Module, shape: Sequence[int]) -> float:
    """Forward+backward FLOPs of one training example (:mod:`zoo.flops` conventions): 3x the
    forward of each conv and dense layer, less the first layer's input gradient (its input is
    data, which nobody differentiates). Matches the train step's jaxpr count exactly."""
    h, w, c = shape
    if isinstance(model, CNN):  # 3x3 SAME convolutions, each followed by a 2x2 max-pool
        layers = []
        for f in model.features_:
            layers.append(flops.conv2d_flops(1, (h, w), (3, 3), c, f))
            h, w, c = h // 2, w // 2, f
        layers += [flops.dense_flops(1, h * w * c, model.dense),
                   flops.dense_flops(1, model.dense, model.num_classes)]
        return flops.train_flops(sum(layers), layers[0])
    hidden = tuple(model.hidden) if isinstance(model, MLP) else ()
    return flops.mlp_train_flops([h * w * c, *hidden, model.num_classes])
