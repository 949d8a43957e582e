"""The binary operating point: which tumour score to call "tumour".

Labels are 1 for tumour and 0 for no tumour; scores are tumour scores
(:func:`mritumor.stats.calibration.tumour_score`); an image is called tumour when
``score >= threshold``.

The search runs over the exact ROC thresholds, every distinct score plus one
just above the maximum (call nothing tumour), from one sort and cumulative sums,
so a million scores take a fraction of a second. Two candidates never share both
their true and false positive counts (each lower threshold takes in at least one
more image), so the tie rules below always leave exactly one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, NamedTuple, get_args

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mritumor.core.errors import UsageError
from mritumor.stats.metrics import (
    as_labels,
    as_scores,
    check_bootstrap_settings,
    counts_at_thresholds,
    percentile_interval,
    require_both_classes,
    require_same_length,
)

Strategy = Literal["min_fpr_at_recall", "max_recall_at_fpr", "youden", "max_fbeta"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)

#: Rates closer than this count as equal, so 19/20 meets a recall target of 0.95
#: whatever the rounding, and rounding never decides a tie.
_RATE_TOLERANCE = 1e-13


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold on the tumour score and what it does on the labelled set."""

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    sensitivity: float
    """Recall, TPR: tumours called tumour."""
    specificity: float
    """1 - FPR: no-tumour images called no tumour."""
    precision: float
    """0.0 when nothing is called tumour."""
    f_beta: float
    """F-beta with the ``beta`` passed to :func:`choose_threshold`."""
    youden_j: float
    """Sensitivity + specificity - 1."""
    strategy: str
    reason: str
    """One sentence saying why this threshold won."""
    feasible: bool
    """False when the constraint is met only by a useless extreme; see :func:`choose_threshold`."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _checked(
    labels: ArrayLike, scores: ArrayLike, purpose: str
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    label_array = as_labels(labels, 2)
    score_array = as_scores(scores)
    require_same_length(labels=label_array, scores=score_array)
    require_both_classes(
        label_array, purpose, positive="tumour", negative="no-tumour", noun="images"
    )
    return label_array, score_array


def confusion_at(
    labels: ArrayLike, scores: ArrayLike, threshold: float
) -> tuple[int, int, int, int]:
    """``(tp, fp, tn, fn)`` when ``score >= threshold`` is called tumour."""
    label_array = as_labels(labels, 2)
    score_array = as_scores(scores)
    require_same_length(labels=label_array, scores=score_array)
    called = score_array >= threshold
    is_tumour = label_array == 1
    return (
        int(np.sum(called & is_tumour)),
        int(np.sum(called & ~is_tumour)),
        int(np.sum(~called & ~is_tumour)),
        int(np.sum(~called & is_tumour)),
    )


@dataclass(frozen=True)
class _Candidates:
    """Every candidate threshold, highest first, with its counts and rates."""

    thresholds: NDArray[np.float64]
    tp: NDArray[np.int64]
    fp: NDArray[np.int64]
    n_positive: int
    n_negative: int

    @property
    def tpr(self) -> NDArray[np.float64]:
        return self.tp / self.n_positive

    @property
    def fpr(self) -> NDArray[np.float64]:
        return self.fp / self.n_negative

    def f_beta(self, beta: float) -> NDArray[np.float64]:
        """``(1 + b^2) tp / ((1 + b^2) tp + b^2 fn + fp) = (1 + b^2) tp / (tp + fp + b^2 P)``."""
        beta2 = beta * beta
        return (1.0 + beta2) * self.tp / (self.tp + self.fp + beta2 * self.n_positive)


def _candidates(labels: NDArray[np.int64], scores: NDArray[np.float64]) -> _Candidates:
    counts = counts_at_thresholds(labels, scores)
    above_all = np.nextafter(counts.thresholds[0], np.inf)
    return _Candidates(
        thresholds=np.r_[above_all, counts.thresholds],
        tp=np.r_[0, counts.true_positives],
        fp=np.r_[0, counts.false_positives],
        n_positive=counts.n_positive,
        n_negative=counts.n_negative,
    )


def _pick(
    primary: NDArray[np.float64],
    tiebreak: NDArray[np.float64],
    allowed: NDArray[np.bool_] | None = None,
) -> int:
    """The allowed candidate with the largest ``primary``; ties go to the largest ``tiebreak``.

    ``allowed`` defaults to every candidate; it always admits at least one.
    """
    if allowed is None:
        allowed = np.ones(len(primary), dtype=bool)
    best = primary[allowed].max()
    tied = allowed & (primary >= best - _RATE_TOLERANCE)
    tied_indices = np.flatnonzero(tied)
    return int(tied_indices[np.argmax(tiebreak[tied_indices])])


def _check_rate(name: str, value: float, *, allow_zero: bool) -> None:
    low_ok = value >= 0.0 if allow_zero else value > 0.0
    if not (low_ok and value <= 1.0):
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise UsageError(f"{name} must be in {interval}, got {value}")


class _Choice(NamedTuple):
    candidate: int
    reason: str
    feasible: bool = True


def _min_fpr_at_recall(c: _Candidates, target_recall: float) -> _Choice:
    _check_rate("target_recall", target_recall, allow_zero=False)
    index = _pick(-c.fpr, c.tpr, c.tpr >= target_recall - _RATE_TOLERANCE)
    fpr = c.fpr[index]
    if fpr >= 1.0:
        reason = (
            f"recall >= {target_recall:g} is reached only by calling every no-tumour image tumour"
        )
        return _Choice(index, reason, feasible=False)
    return _Choice(
        index, f"lowest FPR ({fpr:.3f}) among thresholds with recall >= {target_recall:g}"
    )


def _max_recall_at_fpr(c: _Candidates, max_fp_rate: float) -> _Choice:
    _check_rate("max_fp_rate", max_fp_rate, allow_zero=True)
    index = _pick(c.tpr, -c.fpr, c.fpr <= max_fp_rate + _RATE_TOLERANCE)
    recall = c.tpr[index]
    if recall <= 0.0:
        reason = (
            f"no threshold with FPR <= {max_fp_rate:g} detects any tumour; "
            "this one calls nothing tumour"
        )
        return _Choice(index, reason, feasible=False)
    return _Choice(
        index, f"highest recall ({recall:.3f}) among thresholds with FPR <= {max_fp_rate:g}"
    )


def _youden(c: _Candidates) -> _Choice:
    j = c.tpr - c.fpr
    index = _pick(j, c.tpr)
    return _Choice(index, f"largest Youden's J = sensitivity + specificity - 1 ({j[index]:.3f})")


def _max_fbeta(c: _Candidates, beta: float) -> _Choice:
    if not (math.isfinite(beta) and beta > 0.0):
        raise UsageError(f"beta must be a positive number, got {beta}")
    f = c.f_beta(beta)
    index = _pick(f, c.tpr)
    return _Choice(index, f"largest F{beta:g} score ({f[index]:.3f})")


def choose_threshold(
    labels: ArrayLike,
    scores: ArrayLike,
    strategy: str,
    *,
    target_recall: float = 0.95,
    max_fp_rate: float = 0.1,
    beta: float = 2.0,
) -> OperatingPoint:
    """The operating point that ``strategy`` prefers among all exact ROC thresholds.

    * ``min_fpr_at_recall``: lowest FPR with recall >= ``target_recall``; ties go
      to the higher recall.
    * ``max_recall_at_fpr``: highest recall with FPR <= ``max_fp_rate``; ties go
      to the lower FPR (the higher threshold).
    * ``youden``: largest sensitivity - FPR; ties go to the higher sensitivity.
    * ``max_fbeta``: largest F-beta; ties go to the higher sensitivity.

    Both constraints can always be met at an extreme (call everything or nothing
    tumour). ``feasible`` is False when only that extreme meets them: every
    threshold with enough recall has FPR 1, or none within the FPR cap detects a
    single tumour. The reason then says so.
    """
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    label_array, score_array = _checked(labels, scores, "choosing a threshold")
    candidates = _candidates(label_array, score_array)
    if strategy == "min_fpr_at_recall":
        choice = _min_fpr_at_recall(candidates, target_recall)
    elif strategy == "max_recall_at_fpr":
        choice = _max_recall_at_fpr(candidates, max_fp_rate)
    elif strategy == "youden":
        choice = _youden(candidates)
    else:
        choice = _max_fbeta(candidates, beta)
    return _operating_point(candidates, choice, beta, strategy)


def _operating_point(c: _Candidates, choice: _Choice, beta: float, strategy: str) -> OperatingPoint:
    tp, fp = int(c.tp[choice.candidate]), int(c.fp[choice.candidate])
    sensitivity = tp / c.n_positive
    false_positive_rate = fp / c.n_negative
    return OperatingPoint(
        threshold=float(c.thresholds[choice.candidate]),
        tp=tp,
        fp=fp,
        tn=c.n_negative - fp,
        fn=c.n_positive - tp,
        sensitivity=sensitivity,
        specificity=1.0 - false_positive_rate,
        precision=tp / (tp + fp) if tp + fp else 0.0,
        f_beta=float(c.f_beta(beta)[choice.candidate]),
        youden_j=sensitivity - false_positive_rate,
        strategy=strategy,
        reason=choice.reason,
        feasible=choice.feasible,
    )


def bootstrap_rates(
    labels: ArrayLike,
    scores: ArrayLike,
    threshold: float,
    *,
    n_samples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of sensitivity and specificity at a fixed threshold.

    Tumour and no-tumour images are resampled separately (a stratified
    bootstrap), so every resample has both. At a fixed threshold the number of
    tumours called tumour in a resample of the P tumours is Binomial(P, tp / P),
    exactly, so the resamples are drawn as binomial counts: the same distribution
    as resampling rows, in O(n_samples) time. Deterministic for a seed;
    ``n_samples=0`` gives (nan, nan).
    """
    check_bootstrap_settings(n_samples, confidence)
    if not math.isfinite(threshold):
        raise UsageError(f"threshold must be a finite number, got {threshold}")
    label_array, score_array = _checked(labels, scores, "bootstrapping sensitivity and specificity")
    tp, fp, tn, fn = confusion_at(label_array, score_array, threshold)
    rng = np.random.default_rng(seed)
    n_positive, n_negative = tp + fn, tn + fp
    sensitivity = rng.binomial(n_positive, tp / n_positive, size=n_samples) / n_positive
    specificity = rng.binomial(n_negative, tn / n_negative, size=n_samples) / n_negative
    return {
        "sensitivity": percentile_interval(sensitivity, confidence),
        "specificity": percentile_interval(specificity, confidence),
    }
