"""Classification metrics, one-vs-rest ROC and precision-recall curves, bootstrap intervals.

Everything here is plain NumPy and matches scikit-learn number for number (the
tests compare against it), so the evaluation code does not need scikit-learn.

Zero division follows scikit-learn's default ``zero_division`` behaviour with the
warning left out: a precision with no predicted samples, a recall with no true
samples and an F1 with neither are 0.0. Macro averages run over every class in
``class_names``, so a class absent from both ``y_true`` and ``y_pred`` pulls them
down, as scikit-learn's do when given ``labels=range(n_classes)``.

The input checks at the top are shared with :mod:`mritumor.stats.calibration` and
:mod:`mritumor.stats.threshold`; they raise :class:`~mritumor.core.errors.UsageError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mritumor.core.errors import UsageError

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


# --- input checks ---------------------------------------------------------------------------


def as_labels(labels: ArrayLike, n_classes: int | None = None, *, name: str = "labels") -> IntArray:
    """A non-empty 1-D array of whole class indices in ``0 .. n_classes - 1``."""
    array = np.asarray(labels)
    if array.ndim != 1:
        raise UsageError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size == 0:
        raise UsageError(f"{name} is empty")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise UsageError(f"{name} must hold class indices, got dtype {array.dtype}")
    as_float = array.astype(np.float64)
    if not np.all(np.isfinite(as_float)) or np.any(as_float != np.round(as_float)):
        raise UsageError(f"{name} must hold whole class indices")
    indices = as_float.astype(np.int64)
    if np.any(indices < 0):
        raise UsageError(f"{name} holds {indices.min()} but class indices cannot be negative")
    if n_classes is not None and np.any(indices >= n_classes):
        raise UsageError(
            f"{name} holds {indices.max()} but class indices run from 0 to {n_classes - 1}"
        )
    return indices


def as_scores(scores: ArrayLike, *, name: str = "scores") -> FloatArray:
    """A non-empty 1-D array of finite floats."""
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 1:
        raise UsageError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size == 0:
        raise UsageError(f"{name} is empty")
    if not np.all(np.isfinite(array)):
        raise UsageError(f"{name} holds NaN or infinite values")
    return array


def as_probabilities(probabilities: ArrayLike, *, name: str = "probabilities") -> FloatArray:
    """A non-empty ``(n_samples, n_classes)`` array of rows in [0, 1] that sum to 1.

    The sum is checked to 1e-3 so float32 softmax outputs pass and logits do not.
    """
    array = np.asarray(probabilities, dtype=np.float64)
    if array.ndim != 2:
        raise UsageError(f"{name} must be 2-D (samples x classes), got shape {array.shape}")
    if array.size == 0:
        raise UsageError(f"{name} is empty")
    if not np.all(np.isfinite(array)) or np.any(array < 0.0) or np.any(array > 1.0):
        raise UsageError(f"{name} must lie in [0, 1]")
    if not np.allclose(array.sum(axis=1), 1.0, rtol=0.0, atol=1e-3):
        raise UsageError(f"{name} rows must sum to 1 (were logits passed instead?)")
    return array


def require_same_length(**arrays: NDArray[Any]) -> None:
    """Raise when the arrays, named by keyword, do not all have the same number of rows."""
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        described = ", ".join(f"{name} has {length}" for name, length in lengths.items())
        raise UsageError(f"mismatched lengths: {described}")


def require_both_classes(
    binary_labels: IntArray,
    purpose: str,
    *,
    positive: str = "positive",
    negative: str = "negative",
    noun: str = "samples",
) -> None:
    """Raise, naming the missing class, when ``binary_labels`` lacks 1s or 0s."""
    has_positive = bool(np.any(binary_labels == 1))
    has_negative = bool(np.any(binary_labels == 0))
    if has_positive and has_negative:
        return
    present = positive if has_positive else negative
    raise UsageError(f"{purpose} needs both {positive} and {negative} {noun}; found only {present}")


# --- confusion matrix and per-class metrics -------------------------------------------------


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> IntArray:
    """Counts with true classes in rows and predicted classes in columns."""
    true = as_labels(y_true, n_classes, name="y_true")
    pred = as_labels(y_pred, n_classes, name="y_pred")
    require_same_length(y_true=true, y_pred=pred)
    flat = np.bincount(true * n_classes + pred, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes).astype(np.int64)


def normalise_rows(matrix: ArrayLike) -> FloatArray:
    """Each row divided by its sum, so rows sum to 1; an all-zero row stays zero."""
    array = np.asarray(matrix, dtype=np.float64)
    return _ratio(array, array.sum(axis=1, keepdims=True))


def _ratio(numerator: NDArray[Any], denominator: NDArray[Any]) -> FloatArray:
    """Element-wise division that gives 0.0 where the denominator is 0."""
    result: FloatArray = np.zeros(np.broadcast_shapes(numerator.shape, denominator.shape))
    np.divide(numerator, denominator, out=result, where=denominator != 0)
    return result


@dataclass(frozen=True)
class ClassScores:
    """Precision, recall, F1 and support (number of true samples) of one class."""

    name: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ClassificationMetrics:
    """Summary metrics of hard predictions; see the module docstring for zero division."""

    accuracy: float
    balanced_accuracy: float
    """Mean recall over the classes present in ``y_true`` (scikit-learn's definition)."""
    macro_precision: float
    macro_recall: float
    macro_f1: float
    weighted_precision: float
    weighted_recall: float
    weighted_f1: float
    cohen_kappa: float
    """NaN when undefined (chance agreement is 1), as scikit-learn returns."""
    per_class: tuple[ClassScores, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain types for JSON; an undefined kappa becomes None (null)."""
        summary = asdict(self)
        summary["cohen_kappa"] = None if math.isnan(self.cohen_kappa) else self.cohen_kappa
        summary["per_class"] = {
            scores.name: {key: value for key, value in asdict(scores).items() if key != "name"}
            for scores in self.per_class
        }
        return summary


def _cohen_kappa(matrix: IntArray) -> float:
    """Agreement beyond chance, ``1 - observed disagreement / expected disagreement``."""
    counts = matrix.astype(np.float64)
    expected = np.outer(counts.sum(axis=1), counts.sum(axis=0)) / counts.sum()
    disagreement = 1.0 - np.eye(len(counts))
    expected_disagreement = float(np.sum(disagreement * expected))
    if expected_disagreement == 0.0:
        return math.nan
    return 1.0 - float(np.sum(disagreement * counts)) / expected_disagreement


def classification_metrics(
    y_true: ArrayLike, y_pred: ArrayLike, class_names: Sequence[str]
) -> ClassificationMetrics:
    """Accuracy, balanced accuracy, macro/weighted precision, recall and F1, Cohen's kappa."""
    matrix = confusion_matrix(y_true, y_pred, len(class_names))
    true_positives = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    precision = _ratio(true_positives, predicted)
    recall = _ratio(true_positives, support)
    f1 = _ratio(2 * true_positives, support + predicted)
    weights = support / support.sum()
    return ClassificationMetrics(
        accuracy=float(true_positives.sum() / support.sum()),
        balanced_accuracy=float(recall[support > 0].mean()),
        macro_precision=float(precision.mean()),
        macro_recall=float(recall.mean()),
        macro_f1=float(f1.mean()),
        weighted_precision=float(precision @ weights),
        weighted_recall=float(recall @ weights),
        weighted_f1=float(f1 @ weights),
        cohen_kappa=_cohen_kappa(matrix),
        per_class=tuple(
            ClassScores(name, float(p), float(r), float(f), int(s))
            for name, p, r, f, s in zip(class_names, precision, recall, f1, support, strict=True)
        ),
    )


def classification_report_text(
    y_true: ArrayLike, y_pred: ArrayLike, class_names: Sequence[str], digits: int = 4
) -> str:
    """A table laid out as scikit-learn's ``classification_report`` (same widths, same rows)."""
    scores = classification_metrics(y_true, y_pred, class_names)
    total = sum(row.support for row in scores.per_class)
    width = max(*(len(name) for name in class_names), len("weighted avg"), digits)
    headers = ("precision", "recall", "f1-score", "support")
    row_format = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"
    lines = ["{:>{width}s} ".format("", width=width) + "".join(f" {h:>9}" for h in headers)]
    lines.append("\n\n")
    for row in scores.per_class:
        lines.append(
            row_format.format(
                row.name, row.precision, row.recall, row.f1, row.support, width=width, digits=digits
            )
        )
    lines.append("\n")
    accuracy_format = "{:>{width}s} " + " {:>9}" * 2 + " {:>9.{digits}f} {:>9}\n"
    lines.append(
        accuracy_format.format(
            "accuracy", "", "", scores.accuracy, total, width=width, digits=digits
        )
    )
    for heading, averages in (
        ("macro avg", (scores.macro_precision, scores.macro_recall, scores.macro_f1)),
        ("weighted avg", (scores.weighted_precision, scores.weighted_recall, scores.weighted_f1)),
    ):
        lines.append(row_format.format(heading, *averages, total, width=width, digits=digits))
    return "".join(lines)


# --- ranking curves -------------------------------------------------------------------------


@dataclass(frozen=True)
class ThresholdCounts:
    """Confusion counts at every distinct score, for the rule ``score >= threshold``."""

    thresholds: FloatArray
    """The distinct scores, highest first."""
    true_positives: IntArray
    """Positives scoring at least the threshold (non-decreasing)."""
    false_positives: IntArray
    """Negatives scoring at least the threshold (non-decreasing)."""
    n_positive: int
    n_negative: int


def counts_at_thresholds(binary_labels: ArrayLike, scores: ArrayLike) -> ThresholdCounts:
    """Sort once and take cumulative sums: O(n log n) for all thresholds at once.

    ``binary_labels`` are 1 for the positive class and 0 otherwise.
    """
    labels = as_labels(binary_labels, 2, name="binary_labels")
    values = as_scores(scores)
    require_same_length(binary_labels=labels, scores=values)
    order = np.argsort(-values)
    sorted_scores = values[order]
    cumulative_positives = np.cumsum(labels[order])
    # The last position of each run of equal scores closes that threshold.
    last_of_run = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(values) - 1]
    true_positives = cumulative_positives[last_of_run]
    return ThresholdCounts(
        thresholds=sorted_scores[last_of_run],
        true_positives=true_positives,
        false_positives=last_of_run + 1 - true_positives,
        n_positive=int(cumulative_positives[-1]),
        n_negative=len(values) - int(cumulative_positives[-1]),
    )


def roc_curve(
    binary_labels: ArrayLike, scores: ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``(fpr, tpr, thresholds)`` at every distinct score, as scikit-learn's
    ``roc_curve(..., drop_intermediate=False)``.

    The first threshold is +inf (nothing called positive, the point (0, 0)); the
    others are the distinct scores in decreasing order, with ``score >= threshold``
    called positive.
    """
    labels = as_labels(binary_labels, 2, name="binary_labels")
    require_both_classes(labels, "a ROC curve")
    counts = counts_at_thresholds(labels, scores)
    fpr = np.r_[0, counts.false_positives] / counts.n_negative
    tpr = np.r_[0, counts.true_positives] / counts.n_positive
    return fpr, tpr, np.r_[np.inf, counts.thresholds]


def roc_auc(fpr: ArrayLike, tpr: ArrayLike) -> float:
    """Area under the ROC curve by the trapezoid rule (ties count half, as in scikit-learn)."""
    x = np.asarray(fpr, dtype=np.float64)
    y = np.asarray(tpr, dtype=np.float64)
    require_same_length(fpr=x, tpr=y)
    if x.ndim != 1 or len(x) < 2:
        raise UsageError("a ROC curve needs at least two points")
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def precision_recall_curve(
    binary_labels: ArrayLike, scores: ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``(precision, recall, thresholds)`` as scikit-learn's
    ``precision_recall_curve(..., drop_intermediate=False)``.

    Thresholds are the distinct scores in increasing order; ``precision`` and
    ``recall`` have one more entry, the final point (1, 0) with nothing called positive.
    """
    labels = as_labels(binary_labels, 2, name="binary_labels")
    if not np.any(labels == 1):
        raise UsageError("a precision-recall curve needs positive samples; found only negative")
    counts = counts_at_thresholds(labels, scores)
    called_positive = counts.true_positives + counts.false_positives
    precision = counts.true_positives / called_positive
    recall = counts.true_positives / counts.n_positive
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], counts.thresholds[::-1]


def average_precision(precision: ArrayLike, recall: ArrayLike) -> float:
    """Step-wise area ``sum_k (R_k - R_{k+1}) P_k`` of a :func:`precision_recall_curve`.

    This is scikit-learn's ``average_precision_score``: no interpolation between
    points, which the trapezoid rule would add and which overstates the area.
    """
    p = np.asarray(precision, dtype=np.float64)
    r = np.asarray(recall, dtype=np.float64)
    require_same_length(precision=p, recall=r)
    return max(0.0, float(-np.sum(np.diff(r) * p[:-1])))


@dataclass(frozen=True)
class OneVsRestCurves:
    """ROC and precision-recall curves of one class against all the others.

    ``auc`` is NaN (and ``fpr``, ``tpr`` are empty) when the class is absent from
    ``y_true`` or is all of it; ``ap`` is NaN (and ``precision``, ``recall`` are
    empty) when the class is absent.
    """

    class_name: str
    support: int
    fpr: FloatArray
    tpr: FloatArray
    auc: float
    precision: FloatArray
    recall: FloatArray
    ap: float


def _curves_for_class(name: str, is_class: IntArray, scores: FloatArray) -> OneVsRestCurves:
    empty = np.empty(0, dtype=np.float64)
    support = int(is_class.sum())
    fpr, tpr, auc = empty, empty, math.nan
    if 0 < support < len(is_class):
        fpr, tpr, _ = roc_curve(is_class, scores)
        auc = roc_auc(fpr, tpr)
    precision, recall, ap = empty, empty, math.nan
    if support > 0:
        precision, recall, _ = precision_recall_curve(is_class, scores)
        ap = average_precision(precision, recall)
    return OneVsRestCurves(name, support, fpr, tpr, auc, precision, recall, ap)


def one_vs_rest_curves(
    y_true: ArrayLike, probabilities: ArrayLike, class_names: Sequence[str]
) -> list[OneVsRestCurves]:
    """Per class, its probability column scored against ``y_true == class``."""
    probs = as_probabilities(probabilities)
    if probs.shape[1] != len(class_names):
        raise UsageError(
            f"probabilities have {probs.shape[1]} columns but there are {len(class_names)} classes"
        )
    labels = as_labels(y_true, len(class_names), name="y_true")
    require_same_length(y_true=labels, probabilities=probs)
    return [
        _curves_for_class(name, (labels == index).astype(np.int64), probs[:, index])
        for index, name in enumerate(class_names)
    ]


# --- bootstrap ------------------------------------------------------------------------------


def check_bootstrap_settings(n_samples: int, confidence: float) -> None:
    """Raise unless ``n_samples >= 0`` and ``0 < confidence < 1``."""
    if n_samples < 0:
        raise UsageError(f"n_samples must be 0 or more, got {n_samples}")
    if not 0.0 < confidence < 1.0:
        raise UsageError(f"confidence must be between 0 and 1, got {confidence}")


def percentile_interval(samples: ArrayLike, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` share of the finite samples; (nan, nan) when there are none."""
    values = np.asarray(samples, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (math.nan, math.nan)
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return (float(low), float(high))


def bootstrap_interval(
    statistic: Callable[..., float],
    *arrays: ArrayLike,
    n_samples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*arrays)``.

    Each resample draws rows with replacement, the same rows from every array,
    from ``np.random.default_rng(seed)``, so a seed gives the same interval.
    Resamples where the statistic is NaN (an AUC with one class drawn, say) are
    left out. ``n_samples=0`` returns (nan, nan).
    """
    check_bootstrap_settings(n_samples, confidence)
    if not arrays:
        raise UsageError("bootstrap_interval needs at least one array")
    columns = [np.atleast_1d(np.asarray(array)) for array in arrays]
    require_same_length(**{f"array {index}": column for index, column in enumerate(columns)})
    n_rows = len(columns[0])
    if n_rows == 0:
        raise UsageError("cannot bootstrap empty arrays")
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_samples):
        rows = rng.integers(0, n_rows, size=n_rows)
        draws.append(statistic(*(column[rows] for column in columns)))
    return percentile_interval(draws, confidence)
