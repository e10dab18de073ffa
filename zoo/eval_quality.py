"""Quality reports for generated images and text, as JSON-able dicts (what ``zoo eval`` prints).

* :func:`image_quality_report`: classifier-FID with its real-train vs real-test floor, improved
  precision/recall (with the same floor), mode coverage and label entropy, and, for
  class-conditional samples, the classifier's accuracy on them.
* :func:`text_quality_report`: perplexity, bits per character, distinct-n (beside the distinct-n
  of real text of the same lengths) and generation speed.

Metric definitions are in :mod:`zoo.metrics`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import matplotlib
import numpy as np
from matplotlib import ticker

from zoo import data as data_lib
from zoo import checkpoint, evaluate, generate, sample
from zoo import config as config_lib
from zoo import metrics as M
from zoo.core import settings
from zoo.core.train_state import sampling_params
from zoo.models import classifier as classifier_lib
from zoo.models import language
from zoo.models import make_family


def _images(x: Any, like: np.ndarray | None = None) -> np.ndarray:
    """Images as float32 (N, H, W, C) in [0, 1]; accepts a dict with "image", (N, H, W) or (N, H*W*C)."""
    if isinstance(x, Mapping):
        x = x["image"]
    x = np.asarray(x, np.float32)
    if like is not None and x.ndim == 2:
        x = x.reshape(len(x), *like.shape[1:])
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C); got shape {x.shape}")
    if like is not None and x.shape[1:] != like.shape[1:]:
        raise ValueError(f"generated images have shape {x.shape[1:]}; the real ones {like.shape[1:]}")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"images must be in [0, 1] (as the classifier was trained); got values in "
                         f"[{lo:.3g}, {hi:.3g}] (logits or [-1, 1] images need converting first)")
    return x


def judge_for(classifier: classifier_lib.FeatureClassifier | Mapping | None,
              dataset: str | None, *, allow_other_dataset: bool = False
              ) -> classifier_lib.FeatureClassifier:
    """The classifier that judges images of ``dataset``: ``None`` is the one zoo ships for it
    (:data:`zoo.models.classifier.SHIPPED`); a :class:`~zoo.models.classifier.FeatureClassifier`
    trained on another dataset is refused, naming both, unless ``allow_other_dataset``; raw
    params are taken on the caller's word."""
    if classifier is None:
        if dataset is None:
            raise ValueError("say which dataset the images come from (dataset=...), so that the "
                             "classifier trained on it judges them; zoo ships one for "
                             f"{', '.join(classifier_lib.SHIPPED)}")
        return classifier_lib.FeatureClassifier.shipped(dataset)
    if not isinstance(classifier, classifier_lib.FeatureClassifier):
        return classifier_lib.FeatureClassifier(classifier, None, "the given classifier params")
    if (dataset is not None and classifier.dataset is not None and classifier.dataset != dataset
            and not allow_other_dataset):
        raise ValueError(f"{classifier.name} was trained on {classifier.dataset}, but the images "
                         f"are {dataset}: its features cannot judge them. Use a classifier "
                         f"trained on {dataset} (allow_other_dataset=True scores them anyway)")
    return classifier


class RealReference:
    """The real side of :func:`image_quality_report`, computed once: the classifier's features,
    k-NN radii and predictions of at most ``max_real`` test images (drawn with ``seed``), and the
    floors (as many training images as samples, drawn with ``seed + 1``, scored like samples)
    per sample count. ``zoo eval``'s sampling table scores several sample sets against it.
    ``classifier``, ``dataset`` and ``allow_other_dataset`` choose the judge (:func:`judge_for`).

    Example::

        real = RealReference(None, mnist["train"], mnist["test"], dataset="mnist")
        reports = [image_quality_report(None, s, reference=real) for s in sample_sets]
    """

    def __init__(self, classifier: classifier_lib.FeatureClassifier | Mapping | None,
                 real_train: Any, real_test: Any, *, dataset: str | None = None,
                 allow_other_dataset: bool = False, k: int = 3, max_real: int = 10000,
                 seed: int = 0):
        self.classifier = judge_for(classifier, dataset, allow_other_dataset=allow_other_dataset)
        self.k, self.seed = k, seed
        self.test = M.subsample(_images(real_test), max_real, seed)
        self.train = _images(real_train)
        self.features = self.classifier.features(self.test)
        self.radii = M.knn_radii(self.features, k)
        logits = self.classifier.logits(self.test)
        self.num_classes = logits.shape[-1]
        self.label_entropy = M.mode_coverage(logits, self.num_classes)["label_entropy"]
        self.classifier_accuracy = None
        if isinstance(real_test, Mapping) and "label" in real_test:
            labels = M.subsample(np.asarray(real_test["label"]), max_real, seed)
            self.classifier_accuracy = M.conditional_accuracy(logits, labels)
        self._floors: dict[int, dict[str, float]] = {}

    def score(self, features: np.ndarray) -> dict[str, float]:
        """FID, precision and recall of image features against the real test images'."""
        return {"fid": M.fid_from_features(features, self.features),
                **M.precision_recall(self.features, features, self.k, real_radii=self.radii)}

    def floor(self, n: int) -> dict[str, float]:
        """:meth:`score` of ``n`` real training images: what a perfect generator would get."""
        if n not in self._floors:
            train = M.subsample(self.train, n, self.seed + 1)
            self._floors[n] = self.score(self.classifier.features(train))
        return self._floors[n]


def image_quality_report(classifier: classifier_lib.FeatureClassifier | Mapping | None,
                         samples: Any, real_train: Any = None, real_test: Any = None,
                         labels: np.ndarray | None = None, *, dataset: str | None = None,
                         allow_other_dataset: bool = False, k: int = 3,
                         max_real: int = 10000, seed: int = 0,
                         speed: Mapping[str, float] | None = None,
                         reference: RealReference | None = None) -> dict[str, Any]:
    """Quality and diversity of generated images, judged by a fixed zoo classifier.

    Args:
      classifier: the judge, a :class:`zoo.models.classifier.FeatureClassifier` (or a trained
        zoo classifier's raw params); ``None``: the one zoo ships for ``dataset``.
      samples: generated images (N, H, W, C) in [0, 1] (or a dict with ``"image"``).
      real_train, real_test: real images, or dicts with ``"image"`` (and ``"label"``).
      dataset: the dataset the images are (or imitate), e.g. ``"fashion_mnist"``: a classifier
        trained on another is refused, naming both, unless ``allow_other_dataset``.
      labels: for class-conditional samples, the labels (N,) they were asked to show.
      k: the k of the k-NN manifolds for precision/recall.
      max_real: at most this many real test images are used (drawn with ``seed``).
      speed: e.g. :func:`zoo.metrics.generation_speed`'s result, copied into the report.
      reference: a :class:`RealReference` built once for several reports; it replaces
        ``classifier``, ``real_train``, ``real_test``, ``dataset``, ``allow_other_dataset``,
        ``k``, ``max_real`` and ``seed``.

    Returns a dict of floats/ints/lists: ``fid``, ``fid_floor`` (as many real training images as
    samples vs the same test images), ``precision``, ``recall``, ``precision_floor``,
    ``recall_floor``, ``classes_covered``, ``num_classes_produced``, ``label_entropy``,
    ``label_entropy_normalized``, ``label_histogram``, ``real_label_entropy`` (the test images' own),
    ``conditional_accuracy`` (with ``labels``), ``classifier_test_accuracy`` (when ``real_test``
    has labels), ``num_samples``, ``num_real``, ``classifier`` (the judge's name) and
    ``classifier_dataset`` (what it was trained on, where known).
    """
    if reference is None:
        if real_train is None or real_test is None:
            raise ValueError("pass real_train and real_test, or a RealReference")
        reference = RealReference(classifier, real_train, real_test, dataset=dataset,
                                  allow_other_dataset=allow_other_dataset, k=k,
                                  max_real=max_real, seed=seed)
    real = reference
    gen = _images(samples, like=real.test)
    if len(gen) < real.k + 1:
        raise ValueError(f"need more than k={real.k} samples; got {len(gen)}")
    report: dict[str, Any] = {"num_samples": int(len(gen)), "num_real": int(len(real.test)),
                              "classifier": real.classifier.name}
    if real.classifier.dataset is not None:
        report["classifier_dataset"] = real.classifier.dataset
    scores, floor = real.score(real.classifier.features(gen)), real.floor(len(gen))
    report.update(fid=scores["fid"], fid_floor=floor["fid"], precision=scores["precision"],
                  recall=scores["recall"], precision_floor=floor["precision"],
                  recall_floor=floor["recall"])
    logits_gen = real.classifier.logits(gen)
    report.update(M.mode_coverage(logits_gen, real.num_classes))
    report["real_label_entropy"] = real.label_entropy
    if real.classifier_accuracy is not None:
        report["classifier_test_accuracy"] = real.classifier_accuracy
    if labels is not None:
        report["conditional_accuracy"] = M.conditional_accuracy(logits_gen, labels)
    if speed:
        report.update({k_: float(v) for k_, v in speed.items()})
    return report


def text_quality_report(samples: Sequence[Any], *, mean_nll: float | None = None,
                        unit: str = "char", reference: Sequence[Any] | str | None = None,
                        ns: Sequence[int] = (1, 2, 3, 4), seed: int = 0,
                        speed: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Likelihood, diversity and speed of a text model.

    Args:
      samples: generated texts (strings, or token-id sequences).
      mean_nll: the model's mean negative log-likelihood per ``unit`` on held-out text, in nats
        (e.g. the validation loss); gives ``perplexity`` and, for characters, ``bits_per_char``.
      unit: what the tokens are, one of :data:`zoo.models.language.UNITS` (``char``, ``word``,
        ``token``).
      reference: real text (one string, or a list of texts); ``distinct_n_reference`` is computed on
        pieces of it with the samples' lengths (drawn with ``seed``), so the two compare directly.
      speed: e.g. :func:`zoo.metrics.generation_speed`'s result (``samples_per_s``,
        ``tokens_per_s``), copied into the report.
    """
    language.check_unit(unit)
    samples = list(samples)
    report: dict[str, Any] = {"num_samples": len(samples),
                              "mean_sample_length": float(np.mean([len(s) for s in samples]))
                              if samples else 0.0}
    if mean_nll is not None:
        report["nll_per_" + unit] = float(mean_nll)
        report["perplexity"] = M.perplexity(mean_nll)
        if unit == "char":
            report["bits_per_char"] = M.bits_per_char(mean_nll)
    for n in ns:
        report[f"distinct_{n}"] = M.distinct_n(samples, n)
    if reference is not None and samples:
        pieces = _reference_pieces(reference, [len(s) for s in samples], seed)
        for n in ns:
            report[f"distinct_{n}_reference"] = M.distinct_n(pieces, n)
    if speed:
        report.update({k: float(v) for k, v in speed.items()})
    return report


def _reference_pieces(reference, lengths: Sequence[int], seed: int) -> list:
    """Random contiguous pieces of the reference text, one per sample, of the samples' lengths."""
    if isinstance(reference, str) or (isinstance(reference, np.ndarray) and reference.ndim == 1):
        reference = [reference]
    reference = [r for r in reference if len(r)]
    rng = np.random.default_rng(seed)
    pieces = []
    for n in lengths:
        r = reference[int(rng.integers(len(reference)))]
        n = min(n, len(r))
        start = int(rng.integers(len(r) - n + 1))
        pieces.append(r[start:start + n])
    return pieces


def load_classifier(path: str | Path, step: int | None = None) -> classifier_lib.FeatureClassifier:
    """A trained zoo run (or checkpoint) of a family that can be a feature extractor, as the
    judge of image quality (``zoo eval --classifier``), with the dataset its config trained on."""
    run = checkpoint.load_run(path, step=step)
    extract = run.family.require("feature_extractor", "judge image quality (it classifies no "
                                 "images; train a classifier, e.g. configs/classifier_mnist_cnn.py)")
    dataset = run.config.get("data", {}).get("dataset")
    if dataset not in data_lib.IMAGE_DATASETS:
        raise ValueError(f"the classifier at {path} was trained on {dataset or 'no recorded dataset'}"
                         f"; a judge of image quality must be trained on one of "
                         f"{', '.join(data_lib.IMAGE_DATASETS)}")
    return classifier_lib.FeatureClassifier(extract(run.params), dataset,
                                            f"the classifier at {path}")


def run_quality_report(family, params: Mapping, model_state: Mapping, config, *, data=None,
                       metrics: Mapping[str, float] | None = None, num_samples: int = 10_000,
                       iwae_k: int = 0, seed: int = 0, sampling_steps: Sequence[int] = (),
                       guidances: Sequence[float] = (),
                       classifier: classifier_lib.FeatureClassifier | None = None,
                       log=print) -> dict[str, Any]:
    """The quality report of a trained run (what ``zoo eval`` adds to the eval metrics), by what
    the family can do:

    * draws images (``image_sampler``): :func:`image_quality_report` of ``num_samples`` samples
      judged by ``classifier`` (default: the one zoo ships for the run's dataset; none shipped:
      no report) against the run's dataset (one class in turn for conditional models), with the generation
      speed; with a ``log_likelihood`` and ``iwae_k > 0`` also ``test_nll_iwae`` (-log p(x) in
      nats, IWAE-k, test images). A diffusion model given ``sampling_steps`` (and/or
      ``guidances``) reports one row per step count and guidance instead,
      :func:`sampling_table`.
    * generates text (``text_decoder``): :func:`text_quality_report` of samples continuing
      prompts from ``data.eval_text``, with perplexity or bits per character from
      ``metrics["loss"]``.
    * neither: an empty dict (its eval metrics say it all).

    ``params`` are a state's (keyed by player; a LoRA run's adapters are merged here, as the
    capabilities take plain params: ``Family.plain_params``). ``data`` is the run's
    :class:`zoo.input_pipeline.RunData`; ``config`` the run's config or its
    :class:`zoo.core.settings.RunSettings`.
    """
    run = settings.RunSettings.parse(config)
    params = family.plain_params(params)
    rng = jax.random.PRNGKey(seed)
    dataset = run.data.dataset
    if family.image_sampler is not None and family.image_sampler.generates:
        if classifier is None and dataset not in classifier_lib.SHIPPED:
            log(f"zoo eval: no quality metrics for {dataset!r}: zoo ships a feature classifier for "
                f"{', '.join(classifier_lib.SHIPPED)} only (--classifier RUN names another)")
            return {}
        judge = judge_for(classifier, dataset)  # refuses one trained on another dataset
        real = {split: data_lib.load_tfds(dataset, split, data_dir=run.data.tfds_data_dir or None,
                                          download_dir=run.data.download_dir or None)
                for split in ("train", "test")}
        if family.denoiser is not None and (sampling_steps or guidances):
            return {"sampling": sampling_table(family, params, model_state, real, num_samples,
                                               sampling_steps, guidances, classifier=judge,
                                               dataset=dataset, seed=seed, log=log)}
        labels = _each_class_in_turn(family, num_samples)
        make = lambda: sample.generate_images(family, params, model_state, rng, num_samples,
                                              labels)
        speed = M.generation_speed(make, num_samples, warmup=1, repeats=1)
        report = image_quality_report(judge, make(), real["train"], real["test"], labels,
                                      dataset=dataset, seed=seed, speed=speed)
        if family.log_likelihood is not None and iwae_k:
            test = real["test"]
            report["test_nll_iwae"] = -family.log_likelihood(params, test["image"], test["label"],
                                                             k=iwae_k, seed=seed)
            report["iwae_k"] = iwae_k
            report["iwae_images"] = len(test["image"])
        return report
    if family.text_decoder is not None and data is not None and data.tokenizer is not None:
        gen = generate.Generator(family.text_decoder, params[family.text_player],
                                 data.tokenizer)
        n, length = 20, 200
        if gen.max_len:
            length = min(length, gen.max_len // 2)
        reference = np.asarray(data.tokenizer.encode(data.eval_text))
        # Prompts: n pieces of 8 held-out tokens at random places.
        starts = np.random.default_rng(seed).integers(0, max(len(reference) - 8, 1), n)
        prompts = [reference[s:s + 8].tolist() for s in starts]
        make = lambda: gen.generate_tokens(prompts, length, temperature=1.0, seed=seed)
        speed = M.generation_speed(make, n, length, warmup=1, repeats=1)
        samples = [row.tolist() for row in make()]  # distinct-n over tokens: chars, words, BPE
        report = text_quality_report(samples, unit=family.text_unit, reference=reference,
                                     speed=speed, mean_nll=(metrics or {}).get("loss"), seed=seed)
        report["temperature"] = 1.0
        report["example"] = data.tokenizer.decode(prompts[0] + samples[0])
        return report
    return {}


def _each_class_in_turn(family, n: int) -> np.ndarray | None:
    """Labels 0, 1, ..., k-1, 0, ... for n samples of a k-class conditional model; else None."""
    k = family.image_sampler.num_classes
    return np.arange(n, dtype=np.int32) % k if k else None


def sampling_table(family, params: Mapping, model_state: Mapping, real: Mapping,
                   num_samples: int, sampling_steps: Sequence[int], guidances: Sequence[float],
                   *, classifier: classifier_lib.FeatureClassifier | Mapping | None,
                   dataset: str | None = None, allow_other_dataset: bool = False,
                   seed: int = 0, batch_size: int = 100, log=print) -> list[dict[str, Any]]:
    """What each sampling step buys: for every DDIM step count (and guidance, conditional
    models: each class in turn), :func:`image_quality_report` of ``num_samples`` samples with
    their samples/s (timed after one batch that compiles), judged by ``classifier`` (``None``:
    the one zoo ships for ``dataset``; one of another dataset is refused unless
    ``allow_other_dataset``, as in :func:`image_quality_report`). ``real``: the train and test
    splits."""
    labels = _each_class_in_turn(family, num_samples)
    reference = RealReference(classifier, real["train"], real["test"], dataset=dataset,
                              allow_other_dataset=allow_other_dataset, seed=seed)
    rows = []
    for steps in (list(sampling_steps) or [None]):
        for w in (list(guidances) or [None]):
            fam = sample.with_sampling(family, steps=steps, guidance=w)
            gen = lambda m: sample.generate_images(fam, params, model_state,
                                                   jax.random.PRNGKey(seed), m,
                                                   None if labels is None else labels[:m],
                                                   batch_size=min(batch_size, m))
            jax.block_until_ready(gen(min(batch_size, num_samples)))  # compiles
            t0 = time.perf_counter()
            images = gen(num_samples)
            seconds = time.perf_counter() - t0
            row = image_quality_report(None, images, labels=labels, reference=reference,
                                       speed={"samples_per_s": num_samples / seconds,
                                              "seconds": seconds})
            row = {"sampling_steps": fam.denoiser.sampling_steps,
                   **({"guidance": fam.denoiser.guidance} if fam.denoiser.num_classes else {}),
                   **row}
            log("zoo eval: " + "  ".join(
                f"{key} {row[key]:.4g}" for key in ("sampling_steps", "guidance", "fid",
                                                    "fid_floor", "precision", "recall",
                                                    "conditional_accuracy", "samples_per_s")
                if key in row))
            rows.append(row)
    return rows


def plot_sampling_table(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """FID (left axis) and samples/s (right axis, log) against sampling steps, one line per
    guidance: the picture of what each sampling step buys."""
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # after choosing the backend: no display needed

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    speed_ax = ax.twinx()
    for w in sorted({r.get("guidance") for r in rows}, key=lambda v: -1 if v is None else v):
        sel = sorted((r for r in rows if r.get("guidance") == w), key=lambda r: r["sampling_steps"])
        steps = [r["sampling_steps"] for r in sel]
        label = "" if w is None else f" (guidance {w:g})"
        ax.plot(steps, [r["fid"] for r in sel], "o-", label="FID" + label)
        speed_ax.plot(steps, [r["samples_per_s"] for r in sel], "s--", alpha=0.6,
                      label="samples/s" + label)
    ax.axhline(rows[0]["fid_floor"], color="grey", lw=0.8, ls=":", label="FID floor (real data)")
    ax.set_xscale("log")
    speed_ax.set_yscale("log")
    all_steps = sorted({r["sampling_steps"] for r in rows})
    ax.xaxis.set_major_locator(ticker.FixedLocator(all_steps))
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%d"))
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    speed_ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%.3g"))
    speed_ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%.3g"))
    ax.set_xlabel("DDIM sampling steps")
    ax.set_ylabel("classifier-FID (lower is better)")
    speed_ax.set_ylabel("samples / s")
    lines = ax.get_legend_handles_labels()
    more = speed_ax.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="upper center")
    ax.set_title("Diffusion: quality and speed against sampling steps")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def evaluate_checkpoint(path: str | Path, *, config=None, overrides: list[str] = (),
                        step: int | None = None, split: str = "test", quality: bool = True,
                        num_samples: int = 10_000, iwae_k: int = 0,
                        sampling_steps: Sequence[int] = (), guidances: Sequence[float] = (),
                        classifier: str | Path | None = None,
                        log: Callable[[str], None] = print) -> dict[str, Any]:
    """What ``zoo eval`` runs: a run's eval metrics on ``split``
    (:func:`zoo.evaluate.checkpoint_metrics`) and, with ``quality``, its
    :func:`run_quality_report` (``num_samples`` samples; ``iwae_k > 0`` adds the IWAE-k test
    log-likelihood where the family has one; ``sampling_steps``/``guidances``: a diffusion
    model's table of quality and speed by sampling steps, also drawn to ``eval_sampling.png``;
    ``classifier``: a classifier run judging the images instead of the one zoo ships,
    :func:`load_classifier`). Returns the results and writes them to ``eval.json`` in the run
    directory."""
    judge = None
    if quality and num_samples < 1:
        raise ValueError(f"--num-samples={num_samples} must be >= 1")
    if iwae_k < 0:
        raise ValueError(f"--iwae-k={iwae_k} must be >= 0 (0: no IWAE-k likelihood)")
    if quality and (iwae_k or sampling_steps or guidances or classifier is not None):
        # Options the run must be able to take, refused before anything compiles.
        run_config = evaluate.saved_config(path, step, log=log) if config is None else config
        run_config = config_lib.apply_overrides(run_config, overrides)
        family = make_family(run_config.model)
        if iwae_k:
            family.require("log_likelihood", "report an IWAE-k likelihood (--iwae-k)")
        if sampling_steps or guidances:
            den = family.require("denoiser", "take --sampling-steps or --guidance")
            for steps in (list(sampling_steps) or [None]):
                for w in (list(guidances) or [None]):
                    den.check("ddim", steps, w)
    if quality and classifier is not None:  # a judge that does not fit
        sampler = family.image_sampler
        if sampler is None or not sampler.generates:
            raise ValueError(f"--classifier judges generated images, and the {run_config.model.family}"
                             f" run at {path} draws none")
        if run_config.data.dataset not in data_lib.IMAGE_DATASETS:
            raise ValueError(f"--classifier compares samples with real images of "
                             f"{', '.join(data_lib.IMAGE_DATASETS)}; the run at {path} trained on "
                             f"{run_config.data.dataset}")
        judge = load_classifier(classifier)
        judge_for(judge, run_config.data.dataset)
    result, run, state = evaluate.checkpoint_metrics(path, config=config, overrides=overrides,
                                                     step=step, split=split, log=log)
    if quality:
        report = run_quality_report(
            run.family, run.strategy.to_host(sampling_params(state)),
            run.strategy.to_host(state.model_state),
            run.settings, data=run.data, metrics=result["metrics"], num_samples=num_samples,
            iwae_k=iwae_k, sampling_steps=sampling_steps, guidances=guidances,
            classifier=judge, log=log)
        if report:
            result["quality"] = report
    path = Path(path)
    run_dir = path.parent if path.name == "checkpoints" else path
    out = run_dir / "eval.json"
    if "sampling" in result.get("quality", {}) and jax.process_index() == 0:
        result["plot"] = str(plot_sampling_table(result["quality"]["sampling"],
                                                 run_dir / "eval_sampling.png"))
    if jax.process_index() == 0:
        out.write_text(json.dumps(result, indent=2))
    log(json.dumps(result, indent=2))
    return result


def is_json_able(report: Mapping[str, Any]) -> bool:
    """True if every value is a finite float, an int, a str or a list of those (what JSON keeps)."""
    def ok(v):
        if isinstance(v, bool) or isinstance(v, (int, str)):
            return True
        if isinstance(v, float):
            return math.isfinite(v)
        if isinstance(v, list):
            return all(ok(x) for x in v)
        return False
    return all(isinstance(k, str) and ok(v) for k, v in report.items())
