"""The finetune report: the parent (before) and the adapted model (after), side by side.

Both are scored on ``ext_holdout`` at a threshold each chose on ``ext_val``, and on the 4-class
``test`` split, into ``reports/finetune_report.json`` and its figure.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mritumor import plots
from mritumor.config.schema import Settings
from mritumor.core.fsutil import atomic_write_json
from mritumor.data.splits import SplitFiles
from mritumor.engine.finetune_data import read_finetune_split, training_duplicates
from mritumor.evaluation.operating_point import operating_point
from mritumor.evaluation.reports import FINETUNE_FIGURE_FILE, FINETUNE_REPORT_FILE
from mritumor.predict.predictor import Predictor
from mritumor.run.bundle import read_bundle
from mritumor.run.layout import RunLayout
from mritumor.run.splits import list_splits
from mritumor.stats.metrics import classification_metrics, roc_auc, roc_curve
from mritumor.stats.threshold import bootstrap_rates, confusion_at

if TYPE_CHECKING:
    from numpy.typing import NDArray


def write_report(settings: Settings, parent_dir: Path, run_dir: Path) -> dict[str, Any]:
    """Before (the parent) and after (the adapted model) on ext_holdout and the 4-class test.

    Each model's threshold is chosen on ext_val with ``threshold.strategy``
    (holdout never takes part in any choice); sensitivity, specificity, FN and
    FP on ext_holdout are reported at it, with bootstrap intervals, plus AUC.
    """
    bundle = read_bundle(run_dir)
    splits = {
        name: read_finetune_split(run_dir, name, bundle.class_names)
        for name in list_splits(run_dir)
    }
    models = {"before": Predictor(parent_dir), "after": Predictor(run_dir)}
    report: dict[str, Any] = {
        "parent": str(parent_dir),
        "threshold_strategy": settings.threshold.strategy,
        "threshold_chosen_on": "ext_val",
        "n": {name: len(split) for name, split in splits.items()},
        "external_training_duplicates_dropped": len(training_duplicates(run_dir)),
    }
    for when, predictor in models.items():
        report[when] = _scores(predictor, splits, settings)
    atomic_write_json(RunLayout(run_dir).reports / FINETUNE_REPORT_FILE, report)
    plots.plot_finetune_comparison(report, RunLayout(run_dir).reports / FINETUNE_FIGURE_FILE)
    return report


def _scores(
    predictor: Predictor, splits: Mapping[str, SplitFiles], settings: Settings
) -> dict[str, Any]:
    options = settings.threshold
    batch = settings.inference.batch_size
    val_labels, val_scores = _binary_scores(predictor, splits["ext_val"], batch)
    point = operating_point(val_labels, val_scores, options)
    labels, scores = _binary_scores(predictor, splits["ext_holdout"], batch)
    tp, fp, tn, fn = confusion_at(labels, scores, point.threshold)
    fpr, tpr, _ = roc_curve(labels, scores)
    intervals = bootstrap_rates(
        labels, scores, point.threshold, n_samples=options.bootstrap_samples, seed=settings.seed
    )
    result: dict[str, Any] = {
        "threshold": point.threshold,
        "ext_holdout": {
            "sensitivity": tp / (tp + fn),
            "specificity": tn / (tn + fp),
            "tp": tp,
            "fp": fp,
            "tn": tn,
            "fn": fn,
            "auc": roc_auc(fpr, tpr),
            "ci95": {key: list(value) for key, value in intervals.items()},
        },
    }
    if "test" in splits:
        test = splits["test"]
        logits = predictor.logits(test.paths, batch_size=batch)
        predicted = logits.logits.argmax(axis=1)
        true = np.asarray(test.labels)[logits.kept]
        metrics = classification_metrics(true, predicted, predictor.class_names)
        result["test"] = {
            "accuracy": metrics.accuracy,
            "macro_f1": metrics.macro_f1,
            "n": len(true),
        }
    return result


def _binary_scores(
    predictor: Predictor, split: SplitFiles, batch_size: int
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    logits = predictor.logits(split.paths, batch_size=batch_size)
    labels = np.asarray(split.labels, dtype=np.int64)[logits.kept]
    return labels, predictor.tumour_scores(logits.logits)
