"""Metrics on inputs whose answers are known: Fréchet distance, precision/recall, labels, text."""

import json
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from zoo import eval_quality, metrics as M


def random_cov(rng, d, scale=1.0):
    a = rng.standard_normal((d, d))
    return scale * (a @ a.T / d + 0.1 * np.eye(d))


# ------------------------------------------------------------------------------------- Fréchet


@pytest.mark.parametrize("method", ["eigh", "scipy"])
def test_frechet_of_a_set_with_itself_is_zero(method):
    rng = np.random.default_rng(0)
    f = rng.standard_normal((2000, 64)) @ rng.standard_normal((64, 64)) + 3.0
    assert M.fid_from_features(f, f, method=method) == pytest.approx(0.0, abs=1e-6)
    # ... and clearly not zero for a shifted copy: |shift|^2 exactly (covariances equal).
    assert M.fid_from_features(f, f + 0.5, method=method) == pytest.approx(64 * 0.25, rel=1e-6)


def test_frechet_matches_closed_form_for_diagonal_and_commuting_covariances():
    rng = np.random.default_rng(1)
    d = 16
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    v1, v2 = rng.uniform(0.1, 4.0, d), rng.uniform(0.1, 4.0, d)
    # Diagonal: W2^2 = |mu1-mu2|^2 + sum_i (sqrt(v1_i) - sqrt(v2_i))^2.
    closed = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    for method in ("eigh", "scipy"):
        assert M.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2), method) == \
            pytest.approx(closed, rel=1e-9)
    # Rotating both covariances by the same orthogonal Q keeps the distance (they commute).
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    s1, s2 = q @ np.diag(v1) @ q.T, q @ np.diag(v2) @ q.T
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(closed, rel=1e-8)
    # 1-D: (mu1 - mu2)^2 + (sigma1 - sigma2)^2.
    assert M.frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0)


def test_frechet_general_covariances_agree_with_scipy_sqrtm_and_the_definition():
    rng = np.random.default_rng(2)
    d = 32
    s1, s2 = random_cov(rng, d), random_cov(rng, d, 2.0)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    ref = (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
           - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real)
    assert M.frechet_distance(mu1, s1, mu2, s2, "eigh") == pytest.approx(ref, rel=1e-8)
    assert M.frechet_distance(mu1, s1, mu2, s2, "scipy") == pytest.approx(ref, rel=1e-8)
    # The symmetric sqrt squares back to the matrix.
    r = M.sqrtm_psd(s1)
    np.testing.assert_allclose(r @ r, s1, rtol=1e-9, atol=1e-10)


def test_fid_of_samples_converges_to_the_gaussians_closed_form():
    rng = np.random.default_rng(3)
    d, n = 8, 200_000
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    v1, v2 = np.full(d, 1.0), np.full(d, 2.25)   # sqrt: 1 and 1.5
    x = mu1 + np.sqrt(v1) * rng.standard_normal((n, d))
    y = mu2 + np.sqrt(v2) * rng.standard_normal((n, d))
    closed = d * 0.25 + d * 0.25  # |dmu|^2 + sum (1 - 1.5)^2
    assert M.fid_from_features(x, y) == pytest.approx(closed, rel=0.03)


def test_frechet_is_stable_for_singular_covariances():
    # Rank-deficient features (D > N and a constant coordinate): the eigh form stays real, finite
    # and about zero for a set against itself.
    rng = np.random.default_rng(4)
    f = np.concatenate([rng.standard_normal((50, 80)), np.ones((50, 1))], axis=1)
    fd = M.fid_from_features(f, f)
    assert math.isfinite(fd) and fd == pytest.approx(0.0, abs=1e-6)


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes disagree"):
        M.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="N >= 2"):
        M.gaussian_stats(np.zeros((1, 3)))


# --------------------------------------------------------------------------- precision / recall


def test_precision_recall_of_a_set_against_itself_is_one():
    rng = np.random.default_rng(5)
    f = rng.standard_normal((1500, 32))
    assert M.precision_recall(f, f, k=3) == {"precision": 1.0, "recall": 1.0}
    # Duplicated points (k-NN radius 0) still count as inside their own ball.
    dup = np.repeat(f[:100], 5, axis=0)
    assert M.precision_recall(dup, dup, k=3) == {"precision": 1.0, "recall": 1.0}


def test_precision_recall_separate_quality_from_coverage():
    rng = np.random.default_rng(6)
    real = rng.standard_normal((2000, 2))
    far = rng.standard_normal((2000, 2)) + 100.0
    assert M.precision_recall(real, far) == {"precision": 0.0, "recall": 0.0}
    # A generator that produces only half of the real distribution (x > 0): high precision,
    # recall near one half.
    fresh = rng.standard_normal((4000, 2))
    half = fresh[fresh[:, 0] > 0][:2000]
    pr = M.precision_recall(real, half, k=3)
    assert pr["precision"] > 0.95
    assert 0.4 < pr["recall"] < 0.65
    # The k-th neighbour radius is what the definition says on a line: points 0,1,2,...
    line = np.arange(10.0)[:, None]
    np.testing.assert_allclose(M.knn_radii(line, k=2)[[0, 5, 9]], [4.0, 1.0, 4.0])


# ------------------------------------------------------------------------------ labels / modes


def test_conditional_accuracy_and_mode_coverage_on_known_labels():
    assert M.conditional_accuracy(np.array([7, 7, 1, 2]), np.array([7, 7, 7, 2])) == 0.75
    logits = np.eye(10)[[3, 3, 4]]
    assert M.conditional_accuracy(logits, np.array([3, 4, 4])) == pytest.approx(2 / 3)

    uniform = M.mode_coverage(np.arange(100) % 10, 10)
    assert uniform["classes_covered"] == 1.0 and uniform["num_classes_produced"] == 10
    assert uniform["label_entropy"] == pytest.approx(math.log(10))
    assert uniform["label_entropy_normalized"] == pytest.approx(1.0)

    collapsed = M.mode_coverage(np.full(50, 7), 10)
    assert collapsed["classes_covered"] == 0.1 and collapsed["label_entropy"] == 0.0

    two = M.mode_coverage(np.array([0, 0, 0, 1]), 10)
    assert two["label_entropy"] == pytest.approx(scipy.stats.entropy([0.75, 0.25]))
    assert two["label_histogram"][:2] == [0.75, 0.25]
    with pytest.raises(ValueError):
        M.mode_coverage(np.array([10]), 10)


# ------------------------------------------------------------------------------------- text


def test_distinct_n_on_known_inputs():
    assert M.distinct_n(["abab"], 1) == 0.5          # a,b,a,b -> 2 of 4
    assert M.distinct_n(["abab"], 2) == pytest.approx(2 / 3)  # ab,ba,ab
    assert M.distinct_n(["the cat sat".split(), "the cat ran".split()], 2) == 0.75
    assert M.distinct_n([[1, 2, 3], np.array([1, 2, 3])], 3) == 0.5
    assert M.distinct_n(["aaaa"], 2) == pytest.approx(1 / 3)
    assert M.distinct_n(["a"], 2) == 0.0


def test_perplexity_and_bits_per_char_on_known_inputs():
    # Uniform over V symbols: nll = log V, perplexity = V, bits per char = log2 V.
    assert M.perplexity(math.log(65)) == pytest.approx(65)
    assert M.bits_per_char(math.log(2)) == pytest.approx(1.0)
    assert M.bits_per_char(1.39) == pytest.approx(1.39 / math.log(2))  # char-rnn's 1.39 = 2.005 bpc
    logits = np.zeros((2, 5, 4))                      # uniform over 4
    total, count = M.sequence_nll(logits, np.zeros((2, 5), int))
    assert count == 10 and total / count == pytest.approx(math.log(4), rel=1e-6)
    assert M.bits_per_char(total / count) == pytest.approx(2.0, rel=1e-6)
    # A confident right prediction costs ~0; the mask drops positions.
    logits = np.full((1, 3, 4), -1e4)
    logits[0, :, 1] = 0.0
    total, count = M.sequence_nll(logits, np.array([[1, 1, 2]]), mask=np.array([[1, 1, 0]]))
    assert count == 2 and total == pytest.approx(0.0, abs=1e-5)


def test_text_quality_report_is_json_and_right():
    samples = ["abab", "abcd"]
    r = eval_quality.text_quality_report(samples, mean_nll=math.log(2), reference="xyzxyzxyz" * 3,
                                         ns=(1, 2), speed={"samples_per_s": 10.0})
    assert r["bits_per_char"] == pytest.approx(1.0) and r["perplexity"] == pytest.approx(2.0)
    assert r["distinct_1"] == 0.5           # a,b,c,d of 8
    assert r["distinct_1_reference"] == 3 / 8
    assert r["samples_per_s"] == 10.0
    assert eval_quality.is_json_able(r)
    json.dumps(r)
    # A word-level model's loss is nats per word: its perplexity, no bits per character.
    words = eval_quality.text_quality_report([[1, 2], [2, 3]], mean_nll=math.log(80), unit="word")
    assert words["nll_per_word"] == pytest.approx(math.log(80))
    assert words["perplexity"] == pytest.approx(80.0) and "bits_per_char" not in words
    with pytest.raises(ValueError, match="unknown unit 'byte'; choose one of char, word, token"):
        eval_quality.text_quality_report(samples, unit="byte")


def test_language_families_say_what_their_loss_counts():
    # zoo eval's text report reads the family's unit: the LSTM defaults to words, the
    # transformer to characters (a run's config takes its tokenizer's: zoo.input_pipeline).
    from zoo.models import make_family
    lstm = make_family(dict(family="lstm", vocab_size=30, hidden_size=8))
    gpt = make_family(dict(family="transformer", vocab_size=30, preset="tiny"))
    assert (lstm.text_unit, gpt.text_unit) == ("word", "char")
    assert make_family(dict(family="autoencoder")).text_unit is None
    # A family that generates text must say it (else zoo eval would fail after its evaluation).
    import dataclasses
    with pytest.raises(ValueError, match="has a text_decoder but no text_unit"):
        dataclasses.replace(gpt, text_unit=None)


def test_generation_speed_counts_samples_and_tokens():
    calls = []
    out = M.generation_speed(lambda: calls.append(1) or np.zeros(3), num_samples=8,
                             tokens_per_sample=100, warmup=1, repeats=3)
    assert len(calls) == 4
    assert out["samples_per_s"] == pytest.approx(8 / out["seconds_per_call"])
    assert out["tokens_per_s"] == pytest.approx(100 * out["samples_per_s"])
