"""The scored folds of a k-fold run and their summary: per-fold metrics, then the mean, the
sample std (ddof=1) and a two-sided 95% t interval of the mean over the folds.

Each scored fold holds ``fold_result.json`` and ``oof_predictions.csv``; the run's
``oof_predictions.csv``, ``kfold_summary.json`` and ``reports/kfold_summary.png`` gather the
folds scored so far. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mritumor.core.fsutil import atomic_write_json, atomic_write_text
from mritumor.plots import plot_kfold_summary
from mritumor.run.layout import RunLayout

OOF_FILE = "oof_predictions.csv"
SUMMARY_FILE = "kfold_summary.json"
SUMMARY_FIGURE = "kfold_summary.png"
FOLD_RESULT_FILE = "fold_result.json"
METRICS = ("accuracy", "macro_f1", "balanced_accuracy", "loss")
CONFIDENCE = 0.95


@dataclass(frozen=True)
class FoldMetrics:
    accuracy: float
    macro_f1: float
    balanced_accuracy: float
    loss: float
    n: int


@dataclass(frozen=True)
class Summary:
    """Mean, sample std (ddof=1) and a two-sided t interval of the mean over folds."""

    mean: float
    std: float
    ci_low: float
    ci_high: float
    n: int


def fold_metrics(
    y_true: Sequence[int], probabilities: NDArray[np.floating[Any]], num_classes: int
) -> FoldMetrics:
    """Accuracy, macro-F1, balanced accuracy (sklearn) and the mean cross-entropy."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    truth = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probabilities, np.float64)
    predicted = probs.argmax(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # classes absent from a tiny fold
        balanced = float(balanced_accuracy_score(truth, predicted))
    p_true = np.clip(probs[np.arange(len(truth)), truth], 1e-12, 1.0)
    return FoldMetrics(
        accuracy=float(accuracy_score(truth, predicted)),
        macro_f1=float(
            f1_score(
                truth, predicted, labels=list(range(num_classes)), average="macro", zero_division=0
            )
        ),
        balanced_accuracy=balanced,
        loss=float(-np.log(p_true).mean()),
        n=len(truth),
    )


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    """``mean ± t_{(1+c)/2, n-1} · std / sqrt(n)``; std and interval are NaN for one value."""
    from scipy import stats

    data = np.asarray(values, np.float64)
    n = len(data)
    mean = float(data.mean()) if n else math.nan
    if n < 2:
        return Summary(mean, math.nan, math.nan, math.nan, n)
    std = float(data.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return Summary(mean, std, mean - half, mean + half, n)


def aggregate(per_fold: Mapping[int, FoldMetrics]) -> dict[str, Summary]:
    """A :class:`Summary` of each metric over the folds given."""
    ordered = [per_fold[fold] for fold in sorted(per_fold)]
    return {name: summarize([getattr(m, name) for m in ordered]) for name in METRICS}


def fold_dir(run_dir: Path, fold: int) -> Path:
    return run_dir / f"fold-{fold}"


def oof_header(class_names: Sequence[str]) -> list[str]:
    """The columns of ``oof_predictions.csv``."""
    return ["path", "fold", "true", "predicted", *(f"p_{name}" for name in class_names)]


def read_fold_metrics(run_dir: Path, folds: int) -> dict[int, FoldMetrics]:
    """The metrics of every scored fold present."""
    found: dict[int, FoldMetrics] = {}
    for fold in range(1, folds + 1):
        file = fold_dir(run_dir, fold) / FOLD_RESULT_FILE
        if file.is_file():
            data = json.loads(file.read_text(encoding="utf-8"))
            found[fold] = FoldMetrics(**{key: data[key] for key in (*METRICS, "n")})
    return found


def write_summary(run_dir: Path, class_names: Sequence[str], folds: int) -> dict[int, FoldMetrics]:
    """oof_predictions.csv, kfold_summary.json and the figure over the folds scored so far."""
    metrics = read_fold_metrics(run_dir, folds)
    lines = [",".join(oof_header(class_names))]
    for fold in sorted(metrics):
        text = (fold_dir(run_dir, fold) / OOF_FILE).read_text(encoding="utf-8")
        lines.extend(text.splitlines()[1:])
    atomic_write_text(run_dir / OOF_FILE, "\n".join(lines) + "\n")
    summary = aggregate(metrics) if metrics else {}
    payload = {
        "folds": folds,
        "folds_scored": sorted(metrics),
        "confidence": CONFIDENCE,
        "checkpoint_selection": "inner validation part carved from each fold's training portion",
        "per_fold": {str(fold): asdict(m) for fold, m in sorted(metrics.items())},
        "summary": {name: asdict(s) for name, s in summary.items()},
    }
    atomic_write_json(run_dir / SUMMARY_FILE, payload)
    if metrics:
        plot_kfold_summary(
            sorted(metrics),
            {name: [getattr(metrics[f], name) for f in sorted(metrics)] for name in METRICS[:2]},
            {
                name: (summary[name].mean, summary[name].ci_low, summary[name].ci_high)
                for name in METRICS[:2]
            },
            RunLayout(run_dir).reports / SUMMARY_FIGURE,
        )
    return metrics
