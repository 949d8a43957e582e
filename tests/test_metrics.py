"""Classification metrics and ranking curves, checked against scikit-learn and by hand."""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable

import numpy as np
import pytest
from sklearn import metrics as sk

from mritumor.core.errors import UsageError
from mritumor.stats.metrics import (
    average_precision,
    bootstrap_interval,
    classification_metrics,
    classification_report_text,
    confusion_matrix,
    normalise_rows,
    one_vs_rest_curves,
    precision_recall_curve,
    roc_auc,
    roc_curve,
)

NAMES = ("glioma", "meningioma", "no_tumor", "pituitary")


def _random_predictions(seed: int, n: int = 120) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 4, size=n)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, 4, size=n))
    return y_true, y_pred


def _sklearn_summary(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    labels = list(range(len(NAMES)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = {
            "accuracy": sk.accuracy_score(y_true, y_pred),
            "balanced_accuracy": sk.balanced_accuracy_score(y_true, y_pred),
            "cohen_kappa": sk.cohen_kappa_score(y_true, y_pred, labels=labels),
        }
        for average in ("macro", "weighted"):
            p, r, f, _ = sk.precision_recall_fscore_support(
                y_true, y_pred, labels=labels, average=average, zero_division=0
            )
            summary |= {f"{average}_precision": p, f"{average}_recall": r, f"{average}_f1": f}
    return summary


# --- confusion matrix and classification metrics --------------------------------------------


def test_confusion_matrix_by_hand_and_against_sklearn() -> None:
    # true 0 predicted 0, true 0 predicted 1, true 2 predicted 2 twice; class 1 never true.
    assert confusion_matrix([0, 0, 2, 2], [0, 1, 2, 2], 3).tolist() == [
        [1, 1, 0],
        [0, 0, 0],
        [0, 0, 2],
    ]
    y_true, y_pred = _random_predictions(0)
    expected = sk.confusion_matrix(y_true, y_pred, labels=range(4))
    assert np.array_equal(confusion_matrix(y_true, y_pred, 4), expected)


def test_normalise_rows_keeps_an_empty_row_zero() -> None:
    matrix = np.array([[1, 3], [0, 0], [2, 2]])
    assert normalise_rows(matrix).tolist() == [[0.25, 0.75], [0.0, 0.0], [0.5, 0.5]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_match_sklearn(seed: int) -> None:
    y_true, y_pred = _random_predictions(seed)
    summary = classification_metrics(y_true, y_pred, NAMES).to_dict()
    for key, value in _sklearn_summary(y_true, y_pred).items():
        assert summary[key] == pytest.approx(value), key
    p, r, f, support = sk.precision_recall_fscore_support(
        y_true, y_pred, labels=range(4), zero_division=0
    )
    for index, name in enumerate(NAMES):
        row = summary["per_class"][name]
        assert row["precision"] == pytest.approx(p[index])
        assert row["recall"] == pytest.approx(r[index])
        assert row["f1"] == pytest.approx(f[index])
        assert row["support"] == support[index]


def test_classification_metrics_with_absent_classes_match_sklearn() -> None:
    # pituitary is never true (recall 0/0 -> 0) and never predicted (precision 0/0 -> 0);
    # meningioma is predicted but never true; balanced accuracy averages glioma and no_tumor.
    y_true = np.array([0, 0, 0, 2, 2, 2, 2])
    y_pred = np.array([0, 1, 0, 2, 2, 1, 0])
    metrics = classification_metrics(y_true, y_pred, NAMES)
    for key, value in _sklearn_summary(y_true, y_pred).items():
        assert getattr(metrics, key) == pytest.approx(value), key
    # glioma recall 2/3, no_tumor recall 2/4 -> balanced accuracy (2/3 + 1/2) / 2.
    assert metrics.balanced_accuracy == pytest.approx((2 / 3 + 1 / 2) / 2)
    pituitary = metrics.per_class[3]
    assert (pituitary.precision, pituitary.recall, pituitary.f1, pituitary.support) == (
        0.0,
        0.0,
        0.0,
        0,
    )


def test_cohen_kappa_by_hand() -> None:
    # Observed agreement 3/4. Chance: true (2, 2)/4, predicted (1, 3)/4
    # -> 2/4 * 1/4 + 2/4 * 3/4 = 1/2. kappa = (3/4 - 1/2) / (1 - 1/2) = 0.5.
    metrics = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], ("a", "b"))
    assert metrics.cohen_kappa == pytest.approx(0.5)


def test_undefined_kappa_is_nan_and_null_in_json() -> None:
    # One class everywhere: chance agreement is 1, kappa is 0/0 (scikit-learn: NaN).
    metrics = classification_metrics([1, 1, 1], [1, 1, 1], ("a", "b"))
    assert math.isnan(metrics.cohen_kappa)
    summary = json.loads(json.dumps(metrics.to_dict(), allow_nan=False))
    assert summary["cohen_kappa"] is None
    assert summary["accuracy"] == 1.0
    assert summary["per_class"]["a"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


@pytest.mark.parametrize("seed", [0, 5])
def test_report_text_is_laid_out_as_sklearn(seed: int) -> None:
    y_true, y_pred = _random_predictions(seed)
    y_pred[y_pred == 3] = 0  # pituitary never predicted: zero division in its row
    text = classification_report_text(y_true, y_pred, NAMES)
    expected = sk.classification_report(
        y_true, y_pred, labels=range(4), target_names=NAMES, digits=4, zero_division=0
    )
    assert text == expected


def test_report_text_holds_each_class_numbers() -> None:
    # glioma: 2 true, both predicted, plus one no_tumor predicted glioma
    #   -> precision 2/3 = 0.6667, recall 1.0000, F1 = 2 * 2 / (2 * 2 + 1 + 0) = 0.8000
    # no_tumor: 2 true, 1 found, no false positives -> precision 1, recall 0.5, F1 0.6667
    text = classification_report_text([0, 0, 1, 1], [0, 0, 0, 1], ("glioma", "no_tumor"), digits=4)
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.strip()}
    assert rows["glioma"] == ["0.6667", "1.0000", "0.8000", "2"]
    assert rows["no_tumor"] == ["1.0000", "0.5000", "0.6667", "2"]
    assert rows["accuracy"] == ["0.7500", "4"]
    assert rows["macro"] == ["avg", "0.8333", "0.7500", "0.7333", "4"]


# --- ranking curves ---------------------------------------------------------------------------


def test_curves_by_hand() -> None:
    # scores (desc) 0.8(+) 0.4(-) 0.35(+) 0.1(-); P = N = 2.
    #   threshold  tp fp  tpr  fpr  precision
    #   inf         0  0  0    0    -
    #   0.8         1  0  0.5  0    1
    #   0.4         1  1  0.5  0.5  1/2
    #   0.35        2  1  1    0.5  2/3
    #   0.1         2  2  1    1    1/2
    # AUC = 0.5 * 0.5 (from fpr 0 to 0.5 at tpr 0.5) + 0.5 * 1 = 0.75
    # AP = (0.5 - 0) * 1 + (1 - 0.5) * 2/3 = 5/6
    labels, scores = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    fpr, tpr, thresholds = roc_curve(labels, scores)
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert thresholds.tolist() == [math.inf, 0.8, 0.4, 0.35, 0.1]
    assert roc_auc(fpr, tpr) == pytest.approx(0.75)
    precision, recall, pr_thresholds = precision_recall_curve(labels, scores)
    assert precision == pytest.approx([0.5, 2 / 3, 0.5, 1.0, 1.0])
    assert recall.tolist() == [1.0, 1.0, 0.5, 0.5, 0.0]
    assert pr_thresholds.tolist() == [0.1, 0.35, 0.4, 0.8]
    assert average_precision(precision, recall) == pytest.approx(5 / 6)


def test_tied_scores_count_half_in_the_auc() -> None:
    # One positive and one negative at the same score: one diagonal step, AUC 0.5.
    fpr, tpr, _ = roc_curve([1, 0], [0.3, 0.3])
    assert (fpr.tolist(), tpr.tolist()) == ([0.0, 1.0], [0.0, 1.0])
    assert roc_auc(fpr, tpr) == 0.5


@pytest.mark.parametrize("seed", range(5))
def test_curves_match_sklearn_on_tied_scores(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=300)
    scores = np.round(np.clip(rng.normal(0.5 + 0.2 * labels, 0.25), 0, 1), 1)
    fpr, tpr, thresholds = roc_curve(labels, scores)
    expected = sk.roc_curve(labels, scores, drop_intermediate=False)
    for ours, theirs in zip((fpr, tpr, thresholds), expected, strict=True):
        assert np.array_equal(ours, theirs)
    assert roc_auc(fpr, tpr) == pytest.approx(sk.roc_auc_score(labels, scores), abs=1e-12)
    precision, recall, pr_thresholds = precision_recall_curve(labels, scores)
    expected_pr = sk.precision_recall_curve(labels, scores, drop_intermediate=False)
    for ours, theirs in zip((precision, recall, pr_thresholds), expected_pr, strict=True):
        assert ours == pytest.approx(theirs, abs=1e-15)
    assert average_precision(precision, recall) == pytest.approx(
        sk.average_precision_score(labels, scores), abs=1e-12
    )


def test_one_vs_rest_curves_match_sklearn_and_leave_absent_classes_nan() -> None:
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(200, 4))
    probs = np.round(np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True), 2)
    probs /= probs.sum(axis=1, keepdims=True)
    y_true = rng.choice([0, 1, 3], size=200)  # no_tumor (2) absent
    curves = one_vs_rest_curves(y_true, probs, NAMES)
    assert [curve.class_name for curve in curves] == list(NAMES)
    for index in (0, 1, 3):
        curve = curves[index]
        is_class = y_true == index
        assert curve.support == is_class.sum()
        assert curve.auc == pytest.approx(sk.roc_auc_score(is_class, probs[:, index]))
        assert curve.ap == pytest.approx(sk.average_precision_score(is_class, probs[:, index]))
        assert curve.fpr[0] == 0.0 and curve.tpr[-1] == 1.0
    absent = curves[2]
    assert absent.support == 0
    assert math.isnan(absent.auc) and math.isnan(absent.ap)
    assert absent.fpr.size == absent.tpr.size == absent.precision.size == absent.recall.size == 0


def test_a_class_that_is_every_sample_has_no_auc_but_an_ap_of_one() -> None:
    curves = one_vs_rest_curves([0, 0, 0], [[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]], ("a", "b"))
    assert math.isnan(curves[0].auc)
    assert curves[0].ap == 1.0
    assert math.isnan(curves[1].auc) and math.isnan(curves[1].ap)


# --- bootstrap --------------------------------------------------------------------------------


def test_bootstrap_is_deterministic_and_covers_the_estimate() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(loc=3.0, size=400)
    interval = bootstrap_interval(np.mean, values, n_samples=500, seed=11)
    assert interval == bootstrap_interval(np.mean, values, n_samples=500, seed=11)
    assert interval != bootstrap_interval(np.mean, values, n_samples=500, seed=12)
    low, high = interval
    assert low < values.mean() < high
    # The standard error is about 1/sqrt(400) = 0.05, so the 95% interval is about +-0.1.
    assert high - low == pytest.approx(2 * 1.96 * values.std() / 20, rel=0.2)


def test_bootstrap_resamples_rows_of_all_arrays_together() -> None:
    # Accuracy of y_pred against y_true: pairs must stay aligned for it to stay 1.
    y = np.arange(50) % 3
    assert bootstrap_interval(lambda a, b: float(np.mean(a == b)), y, y.copy(), n_samples=100) == (
        1.0,
        1.0,
    )


def test_bootstrap_skips_nan_statistics_and_zero_samples_give_nan() -> None:
    labels = np.array([1, 0, 0, 0, 0, 0, 0, 0])
    scores = np.linspace(0.9, 0.1, 8)

    def auc_or_nan(y: np.ndarray, s: np.ndarray) -> float:
        if y.min() == y.max():
            return math.nan
        return roc_auc(*roc_curve(y, s)[:2])

    # The positive has the top score, so every resample that holds it has AUC 1.
    assert bootstrap_interval(auc_or_nan, labels, scores, n_samples=200) == (1.0, 1.0)
    low, high = bootstrap_interval(np.mean, scores, n_samples=0)
    assert math.isnan(low) and math.isnan(high)


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: roc_curve([1, 1, 1], [0.1, 0.2, 0.3]),
            "needs both positive and negative samples; found only positive",
        ),
        (lambda: roc_curve([0, 0], [0.1, 0.2]), "found only negative"),
        (lambda: precision_recall_curve([0, 0], [0.1, 0.2]), "needs positive samples"),
        (
            lambda: roc_curve([0, 2], [0.1, 0.2]),
            "binary_labels holds 2 but class indices run from 0 to 1",
        ),
        (lambda: roc_curve([0, 1], [0.1, np.nan]), "NaN or infinite"),
        (lambda: roc_curve([0, 1], [0.1]), "mismatched lengths: binary_labels has 2, scores has 1"),
        (lambda: roc_curve([], []), "binary_labels is empty"),
        (
            lambda: confusion_matrix([0, 4], [0, 1], 4),
            "y_true holds 4 but class indices run from 0 to 3",
        ),
        (lambda: confusion_matrix([[0, 1]], [[0, 1]], 4), "y_true must be 1-D"),
        (lambda: classification_metrics(["a"], ["a"], NAMES), "must hold class indices"),
        (lambda: one_vs_rest_curves([0], [[0.5, 0.5]], NAMES), "2 columns but there are 4 classes"),
        (lambda: one_vs_rest_curves([0], [0.5, 0.5], ("a", "b")), "must be 2-D"),
        (lambda: roc_auc([0.0], [0.0]), "at least two points"),
        (lambda: bootstrap_interval(np.mean, [1.0], n_samples=-1), "n_samples must be 0 or more"),
        (
            lambda: bootstrap_interval(np.mean, [1.0], confidence=1.0),
            "confidence must be between 0 and 1",
        ),
        (lambda: bootstrap_interval(np.mean, [1.0], [1.0, 2.0]), "mismatched lengths"),
        (lambda: bootstrap_interval(np.mean, []), "cannot bootstrap empty arrays"),
    ],
)
def test_bad_inputs_raise_usage_errors(call: Callable[[], object], message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        call()
