"""Quality and diversity metrics for generated images and text.

Images are judged in the feature space of a fixed zoo classifier trained on their dataset
(Inception features mean little on MNIST; :mod:`zoo.eval_quality` picks the judge and builds the
real-data floors from these functions):

* :func:`frechet_distance` / :func:`fid_from_features`: the Fréchet distance between Gaussians fit
  to two feature sets (Heusel et al. 2017, "GANs trained by a two time-scale update rule converge
  to a local Nash equilibrium"); the matrix square root is taken in a symmetric eigen-decomposition
  (or with ``scipy.linalg.sqrtm``), in float64.
* :func:`precision_recall`: improved precision and recall with k-nearest-neighbour manifolds
  (Kynkäänniemi et al. 2019, "Improved precision and recall metric for assessing generative
  models"): precision is the fraction of generated samples inside the real manifold, recall the
  fraction of real samples inside the generated one.
* :func:`conditional_accuracy`: does "draw a 7" give a 7, by the classifier's reading.
* :func:`mode_coverage`: fraction of classes produced and the entropy of the predicted labels.

Text: :func:`perplexity`, :func:`bits_per_char` (from a mean negative log-likelihood in nats),
:func:`sequence_nll` (from logits), :func:`distinct_n` (Li et al. 2016, "A diversity-promoting
objective function for neural conversation models"). Speed: :func:`generation_speed`.

Everything returns plain Python floats (or dicts of them) so reports serialise to JSON as they are.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from zoo.models.language import LOSS_DERIVED_METRICS


# ----------------------------------------------------------------------------------------------
# Fréchet distance


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N >= 2, D); got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix.

    ``eigh`` of the symmetrised matrix; eigenvalues below zero (round-off on a singular covariance)
    are set to zero, so the result is real and symmetric PSD.
    """
    a = np.asarray(a, np.float64)
    a = (a + a.T) / 2
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, method: str = "eigh") -> float:
    """``tr((sigma1 @ sigma2)^(1/2))`` for covariance matrices.

    ``eigh`` (default): ``sigma1 @ sigma2`` is similar to the symmetric PSD matrix
    ``S = sigma1^(1/2) sigma2 sigma1^(1/2)``, so the trace is the sum of the square roots of S's
    eigenvalues, clipped at zero: real, stable for singular covariances, no complex round-off.
    ``scipy``: ``scipy.linalg.sqrtm(sigma1 @ sigma2)`` as in the reference FID code, with a small
    diagonal offset if the product is singular and the imaginary round-off dropped.
    """
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if method == "eigh":
        r1 = sqrtm_psd(s1)
        s = r1 @ s2 @ r1
        w = np.linalg.eigvalsh((s + s.T) / 2)
        return float(np.sum(np.sqrt(np.clip(w, 0.0, None))))
    if method == "scipy":
        import scipy.linalg

        covmean = scipy.linalg.sqrtm(s1 @ s2)
        if not np.all(np.isfinite(covmean)):
            offset = np.eye(s1.shape[0]) * 1e-6
            covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
        if np.iscomplexobj(covmean):
            imag = np.max(np.abs(np.diagonal(covmean).imag))
            if imag > 1e-3 * max(1.0, float(np.max(np.abs(covmean.real)))):
                raise ValueError(f"sqrtm of the covariance product has imaginary part {imag:.3g}")
            covmean = covmean.real
        return float(np.trace(covmean))
    raise ValueError(f"unknown matrix-sqrt method {method!r}; choose eigh or scipy")


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     method: str = "eigh") -> float:
    """Fréchet (2-Wasserstein) distance squared between N(mu1, sigma1) and N(mu2, sigma2):

    ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))``.

    Round-off can make the exact zero of identical Gaussians a tiny negative number; the result is
    clipped at 0.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shapes disagree: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs "
                         f"{s2.shape}")
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2, method)
    return float(max(fd, 0.0))


def fid_from_features(features1: np.ndarray, features2: np.ndarray, method: str = "eigh") -> float:
    """Fréchet distance between Gaussians fit to two feature sets (N1, D) and (N2, D)."""
    return frechet_distance(*gaussian_stats(features1), *gaussian_stats(features2), method=method)


# ----------------------------------------------------------------------------------------------
# Precision and recall with k-NN manifolds


def _sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def _pairwise_sq_dists(a: np.ndarray, b: np.ndarray, b_norms: np.ndarray) -> np.ndarray:
    d = _sq_norms(a)[:, None] + b_norms[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def knn_radii(features: np.ndarray, k: int = 3, chunk: int = 1024) -> np.ndarray:
    """Squared distance from each point to its k-th nearest neighbour in the set (itself excluded)."""
    f = np.asarray(features, np.float64)
    if not 1 <= k < len(f):
        raise ValueError(f"k must be in [1, {len(f) - 1}] for {len(f)} points; got {k}")
    norms = _sq_norms(f)
    out = np.empty(len(f))
    for i in range(0, len(f), chunk):
        d = _pairwise_sq_dists(f[i:i + chunk], f, norms)
        out[i:i + chunk] = np.partition(d, k, axis=1)[:, k]  # index 0 is the point itself
    return out


def manifold_coverage(reference: np.ndarray, radii: np.ndarray, query: np.ndarray,
                      chunk: int = 1024) -> float:
    """Fraction of ``query`` points inside some reference point's k-NN ball (squared ``radii``)."""
    ref = np.asarray(reference, np.float64)
    q = np.asarray(query, np.float64)
    norms = _sq_norms(ref)
    # Round-off of the |a|^2 + |b|^2 - 2ab expansion: a point on the boundary (or the point itself,
    # radius 0 for duplicates) must count as inside.
    tol = 1e-9 * (float(np.mean(norms)) + 1e-30)
    inside = np.zeros(len(q), bool)
    for i in range(0, len(q), chunk):
        d = _pairwise_sq_dists(q[i:i + chunk], ref, norms)
        inside[i:i + chunk] = np.any(d <= radii[None, :] + tol, axis=1)
    return float(np.mean(inside))


def precision_recall(real_features: np.ndarray, fake_features: np.ndarray,
                     k: int = 3, real_radii: np.ndarray | None = None) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019), k = 3 as in the paper.

    The real manifold is the union of balls around each real feature reaching its k-th nearest
    real neighbour; likewise for the generated one. precision = fraction of generated features in
    the real manifold (quality); recall = fraction of real features in the generated manifold
    (coverage). A set against itself gives 1 and 1. ``real_radii``: ``knn_radii(real_features,
    k)`` when already computed (scoring several sets against one real set).
    """
    real = np.asarray(real_features, np.float64)
    fake = np.asarray(fake_features, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D; got {real.shape}, {fake.shape}")
    if real_radii is None:
        real_radii = knn_radii(real, k)
    precision = manifold_coverage(real, real_radii, fake)
    recall = manifold_coverage(fake, knn_radii(fake, k), real)
    return {"precision": precision, "recall": recall}


# ----------------------------------------------------------------------------------------------
# Labels: conditional accuracy and mode coverage


def _labels(pred: np.ndarray) -> np.ndarray:
    pred = np.asarray(pred)
    return np.argmax(pred, axis=-1) if pred.ndim == 2 else pred.astype(np.int64)


def conditional_accuracy(predicted: np.ndarray, requested: np.ndarray) -> float:
    """Fraction of class-conditional samples the classifier reads as the class asked for.

    ``predicted``: predicted labels (N,) or logits (N, K); ``requested``: the labels (N,) the
    samples were conditioned on.
    """
    pred, req = _labels(predicted), np.asarray(requested).astype(np.int64)
    if pred.shape != req.shape:
        raise ValueError(f"{pred.shape[0]} predictions for {req.shape[0]} requested labels")
    return float(np.mean(pred == req))


def mode_coverage(predicted: np.ndarray, num_classes: int, min_count: int = 1) -> dict[str, Any]:
    """How many classes a generator produces, by the classifier's reading.

    Returns ``classes_covered`` (fraction of the K classes predicted at least ``min_count`` times),
    ``num_classes_produced``, ``label_entropy`` (nats, of the predicted-label histogram; log K for
    a uniform spread), ``label_entropy_normalized`` (entropy / log K, in [0, 1]) and
    ``label_histogram`` (fractions per class).
    """
    pred = _labels(predicted)
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}); got [{pred.min()}, {pred.max()}]")
    counts = np.bincount(pred, minlength=num_classes)
    p = counts / max(counts.sum(), 1)
    nz = p[p > 0]
    entropy = float(-np.sum(nz * np.log(nz)))
    return {"classes_covered": float(np.mean(counts >= min_count)),
            "num_classes_produced": int(np.sum(counts >= min_count)),
            "label_entropy": entropy,
            "label_entropy_normalized": entropy / math.log(num_classes) if num_classes > 1 else 0.0,
            "label_histogram": [float(x) for x in p]}


def subsample(x: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` rows of ``x`` drawn without replacement (all of ``x``, in order, if n >= len(x))."""
    if n >= len(x):
        return np.asarray(x)
    idx = np.sort(np.random.default_rng(seed).choice(len(x), n, replace=False))
    return np.asarray(x)[idx]


# ----------------------------------------------------------------------------------------------
# Text


def perplexity(mean_nll: float) -> float:
    """exp of the mean negative log-likelihood per token (in nats)."""
    return float(LOSS_DERIVED_METRICS["perplexity"](mean_nll))


def bits_per_char(mean_nll: float) -> float:
    """Bits per character from the mean negative log-likelihood per character (in nats)."""
    return float(LOSS_DERIVED_METRICS["bits_per_char"](mean_nll))


def sequence_nll(logits, targets, mask=None) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) of ``targets`` (B, T) under ``logits`` (B, T, V), and
    the number of tokens counted (``mask`` (B, T) selects them; default all). Divide for the mean.
    """
    logits = jnp.asarray(logits, jnp.float32)
    targets = jnp.asarray(targets)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), targets[..., None], -1)[..., 0]
    mask = jnp.ones_like(nll) if mask is None else jnp.asarray(mask, jnp.float32)
    return float(jnp.sum(nll * mask)), int(jnp.sum(mask))


def ngrams(sequence: Sequence, n: int) -> list[tuple]:
    """The n-grams of one sequence (a string gives character n-grams), as tuples."""
    return [tuple(sequence[i:i + n]) for i in range(len(sequence) - n + 1)]


def distinct_n(samples: Iterable[Sequence], n: int) -> float:
    """distinct-n (Li et al. 2016): unique n-grams over all n-grams, pooled over the samples.

    A sample is a string (character n-grams), a list of words or a sequence of token ids. 0 when
    the samples hold no n-gram.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    total, unique = 0, set()
    for s in samples:
        s = list(np.asarray(s).tolist()) if isinstance(s, np.ndarray) else s
        grams = ngrams(s, n)
        total += len(grams)
        unique.update(grams)
    return float(len(unique) / total) if total else 0.0


# ----------------------------------------------------------------------------------------------
# Speed


def generation_speed(generate: Callable[[], Any], num_samples: int,
                     tokens_per_sample: int | None = None, *, warmup: int = 1,
                     repeats: int = 3) -> dict[str, float]:
    """Samples/s (and tokens/s) of ``generate()``, which makes ``num_samples`` samples per call.

    The first ``warmup`` calls (compilation) are not timed; results are waited for with
    ``jax.block_until_ready``; the median of ``repeats`` timed calls is reported.
    """
    for _ in range(warmup):
        jax.block_until_ready(generate())
    times = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        jax.block_until_ready(generate())
        times.append(time.perf_counter() - t0)
    t = float(np.median(times))
    out = {"seconds_per_call": t, "samples_per_s": num_samples / t}
    if tokens_per_sample:
        out["tokens_per_s"] = num_samples * tokens_per_sample / t
    return out
