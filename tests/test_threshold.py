"""Operating-point search on the tumour score: hand-built ROC tables and a brute-force check."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mritumor.core.errors import UsageError
from mritumor.stats.threshold import (
    STRATEGIES,
    OperatingPoint,
    bootstrap_rates,
    choose_threshold,
    confusion_at,
)

# Four tumours (1) and five no-tumour images (0); by score, highest first:
#   0.9(1) 0.8(1) 0.7(0) 0.6(1) 0.5(0) 0.4(1) 0.3(0) 0.2(0) 0.1(0)
# The ROC table, P = 4, N = 5 ("above" = just above 0.9, nothing called tumour):
#   threshold  tp fp  tpr   fpr  J     F2 = 5tp/(tp+fp+16)  F0.5 = 1.25tp/(tp+fp+1)
#   above       0  0  0     0    0     0                    0
#   0.9         1  0  0.25  0    0.25  5/17  = 0.294        1.25/2 = 0.625
#   0.8         2  0  0.50  0    0.50  10/18 = 0.556        2.5/3  = 0.833
#   0.7         2  1  0.50  0.2  0.30  10/19 = 0.526        2.5/4  = 0.625
#   0.6         3  1  0.75  0.2  0.55  15/20 = 0.750        3.75/5 = 0.750
#   0.5         3  2  0.75  0.4  0.35  15/21 = 0.714        3.75/6 = 0.625
#   0.4         4  2  1     0.4  0.60  20/22 = 0.909        5/7    = 0.714
#   0.3         4  3  1     0.6  0.40  20/23 = 0.870        5/8    = 0.625
#   0.2         4  4  1     0.8  0.20  20/24 = 0.833        5/9    = 0.556
#   0.1         4  5  1     1    0     20/25 = 0.800        5/10   = 0.500
LABELS = np.array([1, 1, 0, 1, 0, 1, 0, 0, 0])
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])


@pytest.mark.parametrize(
    ("strategy", "options", "threshold", "tp", "fp"),
    [
        ("youden", {}, 0.4, 4, 2),
        ("min_fpr_at_recall", {"target_recall": 0.95}, 0.4, 4, 2),
        ("min_fpr_at_recall", {"target_recall": 0.75}, 0.6, 3, 1),
        ("min_fpr_at_recall", {"target_recall": 0.5}, 0.8, 2, 0),
        ("max_recall_at_fpr", {"max_fp_rate": 0.1}, 0.8, 2, 0),
        ("max_recall_at_fpr", {"max_fp_rate": 0.2}, 0.6, 3, 1),
        ("max_recall_at_fpr", {"max_fp_rate": 0.5}, 0.4, 4, 2),
        ("max_fbeta", {"beta": 2.0}, 0.4, 4, 2),
        ("max_fbeta", {"beta": 0.5}, 0.8, 2, 0),
    ],
)
def test_strategies_on_the_roc_table(
    strategy: str, options: dict[str, float], threshold: float, tp: int, fp: int
) -> None:
    point = choose_threshold(LABELS, SCORES, strategy, **options)
    assert (point.threshold, point.tp, point.fp) == (threshold, tp, fp)
    assert (point.tn, point.fn) == (5 - fp, 4 - tp)
    assert point.feasible
    assert point.strategy == strategy


def test_the_full_operating_point_and_its_json() -> None:
    point = choose_threshold(LABELS, SCORES, "min_fpr_at_recall", target_recall=0.95)
    assert point == OperatingPoint(
        threshold=0.4,
        tp=4,
        fp=2,
        tn=3,
        fn=0,
        sensitivity=1.0,
        specificity=0.6,
        precision=4 / 6,
        f_beta=20 / 22,
        youden_j=0.6,
        strategy="min_fpr_at_recall",
        reason="lowest FPR (0.400) among thresholds with recall >= 0.95",
        feasible=True,
    )
    assert json.loads(json.dumps(point.to_dict()))["threshold"] == 0.4


@pytest.mark.parametrize(
    ("strategy", "reason"),
    [
        ("youden", "largest Youden's J = sensitivity + specificity - 1 (0.600)"),
        ("max_fbeta", "largest F2 score (0.909)"),
        ("max_recall_at_fpr", "highest recall (0.500) among thresholds with FPR <= 0.1"),
    ],
)
def test_reasons_name_the_winning_value(strategy: str, reason: str) -> None:
    assert choose_threshold(LABELS, SCORES, strategy).reason == reason


def test_ties_go_to_the_higher_sensitivity_or_the_lower_fpr() -> None:
    # Tumours 0.8, 0.6; no tumour 0.8 (tied with a tumour), 0.2. P = N = 2.
    #   threshold  tp fp  tpr  fpr  J
    #   above       0  0  0    0    0
    #   0.8         1  1  0.5  0.5  0     (the tie moves both images at once)
    #   0.6         2  1  1    0.5  0.5
    #   0.2         2  2  1    1    0
    labels, scores = [1, 1, 0, 0], [0.8, 0.6, 0.8, 0.2]
    # recall >= 0.5: FPR 0.5 at both 0.8 and 0.6 -> the higher recall, 0.6.
    point = choose_threshold(labels, scores, "min_fpr_at_recall", target_recall=0.5)
    assert (point.threshold, point.tp, point.fp) == (0.6, 2, 1)
    # FPR <= 1: recall 1 at both 0.6 and 0.2 -> the lower FPR, 0.6.
    point = choose_threshold(labels, scores, "max_recall_at_fpr", max_fp_rate=1.0)
    assert (point.threshold, point.tp, point.fp) == (0.6, 2, 1)
    assert confusion_at(labels, scores, 0.8) == (1, 1, 1, 1)


def test_youden_and_fbeta_ties_go_to_the_higher_sensitivity() -> None:
    # Tumours 0.9, 0.4; no tumour 0.6, 0.5, 0.1. P = 2, N = 3; F1 = 2tp / (tp + fp + 2).
    #   threshold  tp fp  tpr  fpr  J     F1
    #   0.9         1  0  0.5  0    0.5   2/3
    #   0.6         1  1  0.5  1/3  1/6   1/2
    #   0.5         1  2  0.5  2/3  -1/6  2/5
    #   0.4         2  2  1    2/3  1/3   2/3
    #   0.1         2  3  1    1    0     4/7
    labels, scores = [1, 1, 0, 0, 0], [0.9, 0.4, 0.6, 0.5, 0.1]
    assert choose_threshold(labels, scores, "max_fbeta", beta=1.0).threshold == 0.4
    # Youden with tumours 0.9, 0.5 and no tumour 0.7, 0.3: J = 0.5 at 0.9 (tpr 0.5) and 0.5 (tpr 1).
    point = choose_threshold([1, 1, 0, 0], [0.9, 0.5, 0.7, 0.3], "youden")
    assert (point.threshold, point.sensitivity, point.youden_j) == (0.5, 1.0, 0.5)


def test_ties_are_found_through_rounding() -> None:
    # By score: 0.9(0) 0.8(0) 0.7(1) 0.6(0) 0.5(0) 0.4(0) 0.3(1) 0.2(0); P = 2, N = 6.
    # J = 1/2 - 2/6 = 1/6 at 0.7 and 1 - 5/6 = 1/6 at 0.3, the best two; in floats
    # 0.16666666666666669 and 0.16666666666666663, yet a tie: the higher sensitivity, 0.3.
    labels = [0, 0, 1, 0, 0, 0, 1, 0]
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    point = choose_threshold(labels, scores, "youden")
    assert (point.threshold, point.tp, point.fp) == (0.3, 2, 5)


def test_all_scores_equal_is_infeasible_for_both_constraints() -> None:
    # Candidates: above 0.5 (0, 0) and 0.5 (2, 2): any recall costs FPR 1.
    labels, scores = [1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]
    point = choose_threshold(labels, scores, "min_fpr_at_recall")
    assert (point.threshold, point.tp, point.fp, point.feasible) == (0.5, 2, 2, False)
    assert "only by calling every no-tumour image tumour" in point.reason
    point = choose_threshold(labels, scores, "max_recall_at_fpr")
    assert point.threshold == np.nextafter(0.5, np.inf)
    assert (point.tp, point.fp, point.feasible) == (0, 0, False)
    assert point.precision == 0.0
    assert point.reason == (
        "no threshold with FPR <= 0.1 detects any tumour; this one calls nothing tumour"
    )
    assert confusion_at(labels, scores, point.threshold) == (0, 0, 2, 2)
    point = choose_threshold(labels, scores, "youden")
    assert (point.threshold, point.youden_j, point.feasible) == (0.5, 0.0, True)


def test_perfect_and_inverted_rankings() -> None:
    labels = [1, 1, 0, 0]
    point = choose_threshold(labels, [0.9, 0.7, 0.3, 0.1], "youden")
    assert (point.threshold, point.youden_j) == (0.7, 1.0)
    # Every tumour below every no-tumour image: no threshold with FPR <= 0.1 finds one.
    inverted = [0.1, 0.3, 0.7, 0.9]
    assert not choose_threshold(labels, inverted, "max_recall_at_fpr").feasible
    assert not choose_threshold(labels, inverted, "min_fpr_at_recall").feasible


# --- brute force -------------------------------------------------------------------------------


# (threshold, tpr, fpr, F2) with exact rates.
Row = tuple[float, Fraction, Fraction, Fraction]
# Per strategy: which rows meet the constraint, and the key to maximise (primary, tie-break).
RULES: dict[str, tuple[Callable[[Row], bool], Callable[[Row], tuple[Fraction, Fraction]]]] = {
    "min_fpr_at_recall": (lambda r: r[1] >= Fraction(95, 100), lambda r: (-r[2], r[1])),
    "max_recall_at_fpr": (lambda r: r[2] <= Fraction(1, 10), lambda r: (r[1], -r[2])),
    "youden": (lambda r: True, lambda r: (r[1] - r[2], r[1])),
    "max_fbeta": (lambda r: True, lambda r: (r[3], r[1])),
}


def _brute_force(labels: np.ndarray, scores: np.ndarray, strategy: str) -> float:
    """Loop over every candidate threshold with exact fractions and explicit tie rules."""
    n_pos, n_neg = int(labels.sum()), int((1 - labels).sum())
    rows: list[Row] = []
    for threshold in [*np.unique(scores), np.nextafter(scores.max(), np.inf)]:
        tp, fp, _, _ = confusion_at(labels, scores, float(threshold))
        f2 = Fraction(5 * tp, 5 * tp + 4 * (n_pos - tp) + fp)
        rows.append((float(threshold), Fraction(tp, n_pos), Fraction(fp, n_neg), f2))
    allowed, key = RULES[strategy]
    return max((row for row in rows if allowed(row)), key=key)[0]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_search_agrees_with_brute_force(seed: int, strategy: str) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=150)
    scores = np.round(np.clip(rng.normal(0.4 + 0.3 * labels, 0.2), 0, 1), 2)
    point = choose_threshold(labels, scores, strategy)
    assert point.threshold == _brute_force(labels, scores, strategy)
    assert confusion_at(labels, scores, point.threshold) == (
        point.tp,
        point.fp,
        point.tn,
        point.fn,
    )


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1), st.sampled_from([0.0, 0.2, 0.5, 0.7, 1.0])), min_size=2),
    st.sampled_from(STRATEGIES),
)
def test_search_agrees_with_brute_force_on_any_small_set(
    pairs: list[tuple[int, float]], strategy: str
) -> None:
    labels = np.array([label for label, _ in pairs])
    scores = np.array([score for _, score in pairs])
    if labels.min() == labels.max():
        return
    assert choose_threshold(labels, scores, strategy).threshold == _brute_force(
        labels, scores, strategy
    )


def test_a_million_scores_take_well_under_a_second() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random(1_000_000)
    labels = (rng.random(1_000_000) < scores).astype(np.int64)
    start = time.perf_counter()
    point = choose_threshold(labels, scores, "youden")
    assert time.perf_counter() - start < 2.0  # about 0.3 s; slack for a busy machine
    # Scores uniform, P(tumour | s) = s: the Youden optimum is at s = 1/2.
    assert point.threshold == pytest.approx(0.5, abs=0.02)


# --- bootstrap ---------------------------------------------------------------------------------


def test_bootstrap_rates_are_deterministic_and_cover_the_point_estimate() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=400)
    scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1)
    intervals = bootstrap_rates(labels, scores, 0.5, seed=3)
    assert intervals == bootstrap_rates(labels, scores, 0.5, seed=3)
    assert intervals != bootstrap_rates(labels, scores, 0.5, seed=4)
    tp, fp, tn, fn = confusion_at(labels, scores, 0.5)
    low, high = intervals["sensitivity"]
    assert low < tp / (tp + fn) < high
    low, high = intervals["specificity"]
    assert low < tn / (tn + fp) < high


def test_bootstrap_rates_match_resampling_rows() -> None:
    # Resampling the P tumour rows and counting those >= threshold gives Binomial(P, tp/P).
    rng = np.random.default_rng(2)
    tumour_scores = rng.random(200)
    labels = np.r_[np.ones(200, dtype=int), np.zeros(50, dtype=int)]
    scores = np.r_[tumour_scores, rng.random(50)]
    called = tumour_scores >= 0.3
    resampled = [called[rng.integers(0, 200, 200)].mean() for _ in range(2000)]
    expected = np.percentile(resampled, [2.5, 97.5])
    got = bootstrap_rates(labels, scores, 0.3, n_samples=2000)["sensitivity"]
    assert got == pytest.approx(tuple(expected), abs=0.015)


def test_bootstrap_rates_with_zero_samples_are_nan() -> None:
    intervals = bootstrap_rates(LABELS, SCORES, 0.5, n_samples=0)
    assert set(intervals) == {"sensitivity", "specificity"}
    assert all(math.isnan(bound) for interval in intervals.values() for bound in interval)


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: choose_threshold([1, 1], [0.2, 0.3], "youden"),
            "choosing a threshold needs both tumour and no-tumour images; found only tumour",
        ),
        (lambda: choose_threshold([0, 0], [0.2, 0.3], "youden"), "found only no-tumour"),
        (
            lambda: choose_threshold(LABELS, SCORES, "best"),
            "unknown strategy 'best'; choose one of min_fpr_at_recall, max_recall_at_fpr, "
            "youden, max_fbeta",
        ),
        (lambda: choose_threshold([0, 2], [0.2, 0.3], "youden"), "labels holds 2"),
        (lambda: choose_threshold([0, 1], [0.2], "youden"), "mismatched lengths"),
        (lambda: choose_threshold([], [], "youden"), "labels is empty"),
        (lambda: choose_threshold([0, 1], [0.2, np.nan], "youden"), "NaN or infinite"),
        (
            lambda: choose_threshold(LABELS, SCORES, "min_fpr_at_recall", target_recall=1.5),
            "target_recall must be in (0, 1]",
        ),
        (
            lambda: choose_threshold(LABELS, SCORES, "max_recall_at_fpr", max_fp_rate=-0.1),
            "max_fp_rate must be in [0, 1]",
        ),
        (
            lambda: choose_threshold(LABELS, SCORES, "max_fbeta", beta=0.0),
            "beta must be a positive",
        ),
        (
            lambda: bootstrap_rates([1, 1], [0.2, 0.3], 0.5),
            "bootstrapping sensitivity and specificity needs both tumour and no-tumour images",
        ),
        (lambda: bootstrap_rates(LABELS, SCORES, math.inf), "threshold must be a finite number"),
        (lambda: bootstrap_rates(LABELS, SCORES, 0.5, confidence=0.0), "confidence must be"),
        (lambda: confusion_at([0, 1], [0.1, 0.2, 0.3], 0.5), "mismatched lengths"),
    ],
)
def test_bad_inputs_raise_usage_errors(call: Callable[[], object], message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        call()
