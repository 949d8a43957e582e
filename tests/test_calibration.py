"""Temperature scaling and calibration metrics, checked against hand computations."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.metrics import brier_score_loss

from mritumor.core.errors import UsageError
from mritumor.stats.calibration import (
    PROBABILITY_FLOOR,
    brier_score,
    calibration_metrics,
    expected_calibration_error,
    fit_temperature,
    logits_nll,
    maximum_calibration_error,
    negative_log_likelihood,
    reliability_bins,
    softmax,
    tumour_score,
)

# Four samples, three classes, two bins: (0, 0.5] and (0.5, 1].
#   sample  probabilities       label  confidence  predicted  correct  bin
#   1       [0.40, 0.30, 0.30]  0      0.40        0          yes      0
#   2       [0.45, 0.35, 0.20]  1      0.45        0          no       0
#   3       [0.90, 0.05, 0.05]  0      0.90        0          yes      1
#   4       [0.20, 0.70, 0.10]  0      0.70        1          no       1
# bin 0: accuracy 1/2, confidence (0.40 + 0.45) / 2 = 0.425, gap 0.075
# bin 1: accuracy 1/2, confidence (0.90 + 0.70) / 2 = 0.800, gap 0.300
# ECE = 2/4 * 0.075 + 2/4 * 0.300 = 0.1875; MCE = 0.3
# Brier, per sample sum_k (p_k - [y = k])^2:
#   1: 0.6^2 + 0.3^2 + 0.3^2 = 0.54      2: 0.45^2 + 0.65^2 + 0.2^2 = 0.665
#   3: 0.1^2 + 0.05^2 + 0.05^2 = 0.015   4: 0.8^2 + 0.7^2 + 0.1^2 = 1.14
#   mean = 2.36 / 4 = 0.59
# NLL = -(ln 0.40 + ln 0.35 + ln 0.90 + ln 0.20) / 4
PROBS = np.array([[0.40, 0.30, 0.30], [0.45, 0.35, 0.20], [0.90, 0.05, 0.05], [0.20, 0.70, 0.10]])
LABELS = np.array([0, 1, 0, 0])
NLL_BY_HAND = -(math.log(0.40) + math.log(0.35) + math.log(0.90) + math.log(0.20)) / 4


def test_softmax_by_hand_and_with_temperature() -> None:
    # softmax(0, ln 3) = (1, 3) / 4; at T = 2 the logits become (0, ln 3 / 2) = (1, sqrt 3).
    logits = np.array([[0.0, math.log(3.0)]])
    assert softmax(logits) == pytest.approx(np.array([[0.25, 0.75]]))
    root3 = math.sqrt(3.0)
    expected = np.array([[1.0, root3]]) / (1.0 + root3)
    assert softmax(logits, temperature=2.0) == pytest.approx(expected)


def test_softmax_is_stable_for_huge_logits() -> None:
    probs = softmax(np.array([[1000.0, 0.0], [1e300, 1e300], [-1000.0, -1001.0]]))
    assert np.all(np.isfinite(probs))
    assert probs[0] == pytest.approx([1.0, 0.0])
    assert probs[1] == pytest.approx([0.5, 0.5])
    assert probs[2] == pytest.approx([1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1))])


def test_tumour_score_is_one_minus_the_negative_column() -> None:
    probs = np.array([[0.1, 0.2, 0.7, 0.0], [0.0, 0.0, 0.0, 1.0]])
    assert tumour_score(probs, negative_index=2) == pytest.approx([0.3, 1.0])


def test_metrics_of_the_hand_computed_example() -> None:
    assert expected_calibration_error(PROBS, LABELS, n_bins=2) == pytest.approx(0.1875)
    assert maximum_calibration_error(PROBS, LABELS, n_bins=2) == pytest.approx(0.3)
    assert brier_score(PROBS, LABELS) == pytest.approx(0.59)
    assert negative_log_likelihood(PROBS, LABELS) == pytest.approx(NLL_BY_HAND)
    assert calibration_metrics(PROBS, LABELS, n_bins=2) == pytest.approx(
        {"ECE": 0.1875, "MCE": 0.3, "BrierScore": 0.59, "NLL": NLL_BY_HAND}
    )


def test_reliability_bins_of_the_hand_computed_example() -> None:
    bins = reliability_bins(PROBS, LABELS, n_bins=2)
    assert bins.edges == pytest.approx([0.0, 0.5, 1.0])
    assert bins.counts.tolist() == [2, 2]
    assert bins.accuracy == pytest.approx([0.5, 0.5])
    assert bins.confidence == pytest.approx([0.425, 0.8])


def test_ece_weights_bins_by_their_counts() -> None:
    # Two classes, two bins:
    #   [0.5, 0.5] label 0 -> confidence 0.5, predicted 0 (first on the tie), correct, bin 0
    #   [0.6, 0.4] label 0 -> confidence 0.6, correct, bin 1
    #   [0.2, 0.8] label 0 -> confidence 0.8, wrong, bin 1
    # bin 0: 1 sample, gap |1 - 0.5| = 0.5; bin 1: 2 samples, gap |1/2 - 0.7| = 0.2
    # ECE = 1/3 * 0.5 + 2/3 * 0.2 = 0.3 (an unweighted mean would give 0.35); MCE = 0.5
    probs = np.array([[0.5, 0.5], [0.6, 0.4], [0.2, 0.8]])
    assert expected_calibration_error(probs, [0, 0, 0], n_bins=2) == pytest.approx(0.3)
    assert maximum_calibration_error(probs, [0, 0, 0], n_bins=2) == pytest.approx(0.5)


def test_reliability_bins_are_closed_on_the_right_and_empty_bins_are_nan() -> None:
    # Confidences 0.5 and 1.0 sit on the upper edges of bins 0 and 1 of 2: (lower, upper].
    # With 4 bins (0, .25], (.25, .5], (.5, .75], (.75, 1]: 0.5 -> bin 1, 1.0 -> bin 3.
    probs = np.array([[0.5, 0.5], [1.0, 0.0]])
    assert reliability_bins(probs, [1, 0], n_bins=2).counts.tolist() == [1, 1]
    bins = reliability_bins(probs, [1, 0], n_bins=4)
    assert bins.counts.tolist() == [0, 1, 0, 1]
    assert np.isnan(bins.accuracy[[0, 2]]).all() and np.isnan(bins.confidence[[0, 2]]).all()
    # Bin 1: predicted class 0 (first on the tie), label 1 -> accuracy 0, gap 0.5.
    # Bin 3: correct at confidence 1 -> gap 0. ECE = 1/2 * 0.5 = 0.25, MCE = 0.5.
    assert bins.accuracy[[1, 3]] == pytest.approx([0.0, 1.0])
    assert expected_calibration_error(probs, [1, 0], n_bins=4) == pytest.approx(0.25)
    assert maximum_calibration_error(probs, [1, 0], n_bins=4) == pytest.approx(0.5)


def test_a_perfectly_confident_correct_model_has_zero_error() -> None:
    probs = np.eye(3)[[0, 1, 2, 1]]
    metrics = calibration_metrics(probs, [0, 1, 2, 1])
    assert metrics["ECE"] == 0.0
    assert metrics["MCE"] == 0.0
    assert metrics["BrierScore"] == 0.0
    assert metrics["NLL"] == pytest.approx(0.0, abs=1e-12)


def test_brier_equals_the_sum_of_one_vs_rest_sklearn_brier_losses() -> None:
    rng = np.random.default_rng(3)
    probs = softmax(rng.normal(size=(200, 4)) * 2)
    labels = rng.integers(0, 4, size=200)
    by_class = sum(brier_score_loss(labels == k, probs[:, k]) for k in range(4))
    assert brier_score(probs, labels) == pytest.approx(by_class)


def test_nll_clips_probabilities_at_the_floor() -> None:
    # The true class has probability 0 -> -ln(1e-12) = 27.631..., not infinity.
    probs = np.array([[1.0, 0.0], [0.5, 0.5]])
    expected = (-math.log(PROBABILITY_FLOOR) - math.log(0.5)) / 2
    assert negative_log_likelihood(probs, [1, 0]) == pytest.approx(expected)
    assert -math.log(PROBABILITY_FLOOR) == pytest.approx(27.6310211)


def test_logits_nll_uses_log_softmax_not_clipping() -> None:
    # -log softmax(0, 1000)[0] = logsumexp(0, 1000) - 0 = 1000 (+ e^-1000); clipping would give 27.6.
    assert logits_nll(np.array([[0.0, 1000.0]]), [0]) == pytest.approx(1000.0)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 3))
    labels = rng.integers(0, 3, size=50)
    assert logits_nll(logits, labels, 2.0) == pytest.approx(logits_nll(logits / 2.0, labels))
    assert logits_nll(logits, labels, 2.0) == pytest.approx(
        negative_log_likelihood(softmax(logits, 2.0), labels)
    )


def _calibrated_sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits z and labels drawn from Categorical(softmax(z)): calibrated at T = 1."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, 4))
    cumulative = np.cumsum(softmax(logits), axis=1)
    labels = (rng.random((n, 1)) > cumulative).sum(axis=1)
    return logits, np.minimum(labels, 3)


@pytest.mark.parametrize("true_temperature", [2.5, 0.5])
def test_fit_temperature_recovers_the_temperature(true_temperature: float) -> None:
    logits, labels = _calibrated_sample(20_000, seed=1)
    fit = fit_temperature(logits * true_temperature, labels)
    assert fit.temperature == pytest.approx(true_temperature, rel=0.05)
    assert not fit.at_bound
    assert fit.iterations > 0
    assert fit.nll_before == pytest.approx(logits_nll(logits * true_temperature, labels))
    assert fit.nll_after == pytest.approx(
        logits_nll(logits * true_temperature, labels, fit.temperature)
    )
    assert fit.nll_after < fit.nll_before


def test_fit_temperature_finds_the_minimum_to_high_precision() -> None:
    logits, labels = _calibrated_sample(2_000, seed=2)
    fit = fit_temperature(logits * 1.7, labels)
    for nudge in (0.999, 1.001):
        assert logits_nll(logits * 1.7, labels, fit.temperature * nudge) > fit.nll_after


def test_fit_temperature_reports_an_optimum_at_the_bound() -> None:
    # Every sample correct: the NLL keeps falling as T -> 0, so the search stops at 0.05.
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    fit = fit_temperature(logits, [0, 1, 0])
    assert fit.at_bound
    assert fit.temperature == pytest.approx(0.05, rel=1e-4)
    assert fit.nll_after == pytest.approx(logits_nll(logits, [0, 1, 0], 0.05), rel=1e-3)
    assert fit.nll_after < fit.nll_before == logits_nll(logits, [0, 1, 0])


def test_fit_temperature_never_returns_a_worse_nll_than_t_one() -> None:
    # Every sample correct wants T < 1, but the bounds start at 1: the search stops just
    # above 1, where the NLL is higher than at 1, so the fit falls back to exactly T = 1.
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    fit = fit_temperature(logits, [0, 1, 0], bounds=(1.0, 20.0))
    assert fit.temperature == 1.0
    assert fit.nll_after == fit.nll_before
    assert fit.at_bound


# --- properties ------------------------------------------------------------------------------

_logit_arrays = st.tuples(st.integers(1, 30), st.integers(2, 5)).flatmap(
    lambda shape: hnp.arrays(np.float64, shape, elements=st.floats(-30, 30))
)


@st.composite
def _logits_and_labels(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    logits = draw(_logit_arrays)
    n, k = logits.shape
    labels = draw(hnp.arrays(np.int64, n, elements=st.integers(0, k - 1)))
    return logits, labels


@settings(max_examples=50, deadline=None)
@given(_logits_and_labels(), st.integers(1, 20))
def test_calibration_metrics_stay_in_range(
    data: tuple[np.ndarray, np.ndarray], n_bins: int
) -> None:
    logits, labels = data
    probs = softmax(logits)
    ece = expected_calibration_error(probs, labels, n_bins)
    mce = maximum_calibration_error(probs, labels, n_bins)
    assert 0.0 <= ece <= 1.0
    assert 0.0 <= mce <= 1.0
    assert mce >= ece - 1e-12
    assert 0.0 <= brier_score(probs, labels) <= 2.0
    assert reliability_bins(probs, labels, n_bins).counts.sum() == len(labels)


@settings(max_examples=50, deadline=None)
@given(_logits_and_labels())
def test_fitting_never_raises_the_nll(data: tuple[np.ndarray, np.ndarray]) -> None:
    logits, labels = data
    fit = fit_temperature(logits, labels)
    assert fit.temperature > 0.0
    assert fit.nll_before == logits_nll(logits, labels)
    assert fit.nll_after <= fit.nll_before
    assert fit.nll_after == pytest.approx(logits_nll(logits, labels, fit.temperature))


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: brier_score(np.empty((0, 3)), []), "probabilities is empty"),
        (lambda: brier_score(PROBS, [0, 1]), "mismatched lengths"),
        (
            lambda: brier_score(PROBS, [0, 1, 3, 0]),
            "labels holds 3 but class indices run from 0 to 2",
        ),
        (lambda: brier_score(PROBS, [0, 1, -1, 0]), "cannot be negative"),
        (lambda: brier_score(PROBS, [0, 1, 0.5, 0]), "whole class indices"),
        (lambda: brier_score(PROBS[0], [0]), "must be 2-D"),
        (lambda: brier_score(PROBS * 0.5, LABELS), "rows must sum to 1"),
        (lambda: negative_log_likelihood([[1.5, -0.5]], [0]), "must lie in [0, 1]"),
        (lambda: expected_calibration_error(PROBS, LABELS, n_bins=0), "n_bins must be at least 1"),
        (lambda: softmax([[0.0, np.nan]]), "NaN or infinite"),
        (lambda: softmax([[0.0, 1.0]], temperature=0.0), "temperature must be a positive"),
        (lambda: logits_nll([[0.0, np.inf]], [0]), "NaN or infinite"),
        (lambda: fit_temperature([[0.0, np.inf]], [0]), "NaN or infinite"),
        (lambda: fit_temperature([[0.0, 1.0]], [0], bounds=(2.0, 5.0)), "0 < low <= 1 <= high"),
        (lambda: fit_temperature([[0.0, 1.0]], [0, 1]), "mismatched lengths"),
        (lambda: tumour_score(PROBS, negative_index=3), "not a column of 3 classes"),
    ],
)
def test_bad_inputs_raise_usage_errors(call: Callable[[], object], message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        call()


def test_the_binary_fit_recovers_a_temperature_from_tumour_labels_alone() -> None:
    """Labels drawn from softmax(z); only tumour / no tumour is kept; logits scaled by 1/T."""
    from mritumor.stats.calibration import fit_temperature_binary

    rng = np.random.default_rng(11)
    logits = rng.normal(0.0, 2.0, size=(20_000, 4))
    probabilities = softmax(logits)
    labels = np.array([rng.choice(4, p=row) for row in probabilities])
    tumour = (labels != 2).astype(int)
    for true_t in (2.5, 0.5):
        fit = fit_temperature_binary(logits * true_t, tumour, 2)
        assert fit.temperature == pytest.approx(true_t, rel=0.08)
        assert fit.nll_after <= fit.nll_before
