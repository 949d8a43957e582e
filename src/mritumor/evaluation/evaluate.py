"""``eval``: score a labelled set and report on it, into ``reports/eval-<split>/``.

A 4-class set gets the full report: metrics with bootstrap intervals, calibration, one-vs-rest
ROC and PR, the tumour-vs-no-tumour view, the error gallery and (for synthetic images with
lesion masks) Grad-CAM localisation. A yes/no set gets the binary one. Both add the numbers
without the images that copy a training image when ``evaluation.training_copies`` asks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from mritumor import __version__, plots
from mritumor.core.fsutil import atomic_write_json
from mritumor.core.progress import ProgressCallback
from mritumor.evaluation.eval_sets import Scored, resolve_eval_set, score, training_copies
from mritumor.evaluation.reports import (
    SUMMARY_FILE,
    StepReport,
    eval_report_dir,
    write_binary_predictions,
    write_eval_figures,
    write_eval_tables,
    write_training_copies,
)
from mritumor.run.provenance import utc_now
from mritumor.stats.calibration import calibration_metrics, softmax, tumour_score
from mritumor.stats.metrics import (
    bootstrap_interval,
    classification_metrics,
    confusion_matrix,
    one_vs_rest_curves,
    roc_auc,
    roc_curve,
)
from mritumor.stats.threshold import bootstrap_rates, confusion_at

if TYPE_CHECKING:
    from pathlib import Path

    from numpy.typing import NDArray

    from mritumor.config.schema import Settings
    from mritumor.predict.predictor import Predictor
    from mritumor.run.bundle import Bundle

TRAINING_COPIES_KEY = "without_training_copies"


def evaluate(
    predictor: Predictor,
    settings: Settings,
    spec: str | None,
    *,
    progress: ProgressCallback | None = None,
) -> StepReport:
    """Score a labelled set and write every report into ``reports/eval-<split>/``.

    A 4-class set gets the full report; a yes/no set (``--external DIR``, or a
    finetune run's ``ext_*`` splits) the binary one: tumour-score AUC and ROC,
    and the counts at the bundle's threshold.
    """
    run_dir, bundle = predictor.run_dir, predictor.bundle
    eval_set = resolve_eval_set(
        run_dir, bundle, spec, settings.paths.data_dir, purpose="eval", allow_binary=True
    )
    scored = score(predictor, eval_set, batch_size=settings.inference.batch_size, progress=progress)
    report_dir = eval_report_dir(run_dir, eval_set.name)
    copies = (
        training_copies(run_dir, bundle, scored, settings.paths.data_dir)
        if settings.evaluation.training_copies
        else None
    )
    if eval_set.binary:
        summary = _binary_report(report_dir, predictor, scored, settings)
        if copies is not None:
            summary[TRAINING_COPIES_KEY] = _binary_without(predictor, scored, copies)
            write_training_copies(report_dir, scored, copies)
        atomic_write_json(report_dir / SUMMARY_FILE, summary)
        return StepReport(report_dir, summary, eval_set.notes, scored.failures)
    probabilities = softmax(scored.logits, bundle.temperature)
    predicted = probabilities.argmax(axis=1)
    summary = {
        "run": str(run_dir),
        **_eval_summary(bundle, scored, probabilities, predicted, settings),
    }
    if copies is not None:
        summary[TRAINING_COPIES_KEY] = _multiclass_without(
            scored.labels, predicted, copies, len(bundle.class_names), settings
        )
        write_training_copies(report_dir, scored, copies)
    if settings.evaluation.localisation:
        summary["localisation"] = _localisation(predictor, scored)
    write_eval_tables(report_dir, bundle, scored, probabilities, predicted)
    write_eval_figures(report_dir, bundle, scored, probabilities, predicted, settings)
    atomic_write_json(report_dir / SUMMARY_FILE, summary)
    return StepReport(report_dir, summary, eval_set.notes, scored.failures)


def _multiclass_without(
    labels: NDArray[np.int64],
    predicted: NDArray[np.int64],
    copies: NDArray[np.bool_],
    n_classes: int,
    settings: Settings,
) -> dict[str, Any]:
    """Accuracy and macro-F1, with 95% intervals, on the images that copy no training image."""
    kept_labels, kept_predicted = labels[~copies], predicted[~copies]
    result: dict[str, Any] = {"n_copies": int(copies.sum()), "n_images": len(kept_labels)}
    if len(kept_labels):
        samples, seed = settings.evaluation.bootstrap_samples, settings.seed
        macro_f1 = _macro_f1(n_classes)
        result |= {
            "accuracy": _accuracy(kept_labels, kept_predicted),
            "accuracy_ci95": list(
                bootstrap_interval(
                    _accuracy, kept_labels, kept_predicted, n_samples=samples, seed=seed
                )
            ),
            "macro_f1": macro_f1(kept_labels, kept_predicted),
        }
    return result


def _binary_without(
    predictor: Predictor, scored: Scored, copies: NDArray[np.bool_]
) -> dict[str, Any]:
    """Tumour-score AUC on the images that copy no training image."""
    kept = ~copies
    labels = scored.labels[kept]
    result: dict[str, Any] = {"n_copies": int(copies.sum()), "n_images": int(kept.sum())}
    if len(set(labels.tolist())) == 2:
        fpr, tpr, _ = roc_curve(labels, predictor.tumour_scores(scored.logits[kept]))
        result["auc"] = float(roc_auc(fpr, tpr))
    return result


def _binary_report(
    report_dir: Path, predictor: Predictor, scored: Scored, settings: Settings
) -> dict[str, Any]:
    """A yes/no set: tumour-score AUC, ROC, counts and rates at the bundle's threshold."""
    bundle = predictor.bundle
    tumour = scored.labels
    scores = predictor.tumour_scores(scored.logits)
    fpr, tpr, _ = roc_curve(tumour, scores)
    auc = float(roc_auc(fpr, tpr))
    summary: dict[str, Any] = {
        "split": scored.eval_set.name,
        "binary": True,
        "n_images": len(tumour),
        "n_tumour": int(tumour.sum()),
        "n_unreadable": len(scored.failures),
        "temperature": bundle.temperature,
        "score": f"1 - p({bundle.negative_class}) at T",
        "auc": auc,
        "threshold": bundle.threshold,
        "notes": list(scored.eval_set.notes),
        "mritumor_version": __version__,
        "created": utc_now(),
    }
    point: tuple[float, float] | None = None
    if bundle.threshold is not None:
        tp, fp, tn, fn = confusion_at(tumour, scores, bundle.threshold)
        intervals = bootstrap_rates(
            tumour,
            scores,
            bundle.threshold,
            n_samples=settings.evaluation.bootstrap_samples,
            seed=settings.seed,
        )
        sensitivity, specificity = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
        summary["at_threshold"] = {
            "tp": tp,
            "fp": fp,
            "tn": tn,
            "fn": fn,
            "sensitivity": sensitivity,
            "specificity": specificity,
            "ci95": {key: list(value) for key, value in intervals.items()},
        }
        point = (1.0 - (specificity or 0.0), sensitivity or 0.0)
    write_binary_predictions(report_dir, scored, scores)
    plots.plot_threshold_roc(
        fpr,
        tpr,
        *(point or (float("nan"), float("nan"))),
        report_dir / plots.THRESHOLD_ROC_FILE,
        auc=auc,
        label="" if point is None else f"t = {bundle.threshold:.3f}",
    )
    return summary


def _eval_summary(
    bundle: Bundle,
    scored: Scored,
    probabilities: NDArray[np.float64],
    predicted: NDArray[np.int64],
    settings: Settings,
) -> dict[str, Any]:
    names = bundle.class_names
    labels = scored.labels
    samples, seed = settings.evaluation.bootstrap_samples, settings.seed
    metrics = classification_metrics(labels, predicted, names).to_dict()
    metrics["accuracy_ci95"] = list(
        bootstrap_interval(_accuracy, labels, predicted, n_samples=samples, seed=seed)
    )
    metrics["macro_f1_ci95"] = list(
        bootstrap_interval(_macro_f1(len(names)), labels, predicted, n_samples=samples, seed=seed)
    )
    curves = one_vs_rest_curves(labels, probabilities, names)
    return {
        "split": scored.eval_set.name,
        "n_images": len(labels),
        "n_unreadable": len(scored.failures),
        "classes": list(names),
        "temperature": bundle.temperature,
        "temperature_source": bundle.temperature_source,
        "metrics": metrics,
        "calibration": {
            **calibration_metrics(probabilities, labels, settings.calibration.n_bins),
            "n_bins": settings.calibration.n_bins,
        },
        "roc_auc": {curve.class_name: _finite(curve.auc) for curve in curves},
        "average_precision": {curve.class_name: _finite(curve.ap) for curve in curves},
        "tumour_vs_no_tumour": _binary_summary(bundle, labels, probabilities),
        "notes": list(scored.eval_set.notes),
        "mritumor_version": __version__,
        "created": utc_now(),
    }


def _localisation(predictor: Predictor, scored: Scored) -> dict[str, Any] | None:
    """Grad-CAM pointing game and energy inside the lesion mask, for tumour images with masks."""
    from mritumor.data.synth.writer import find_mask
    from mritumor.predict.explanations import localisation

    negative = predictor.bundle.negative_index
    chosen = [
        (path, int(label), mask)
        for path, label in zip(scored.paths, scored.labels, strict=True)
        if label != negative and (mask := find_mask(path)) is not None
    ]
    if not chosen:
        return None
    paths, labels, masks = zip(*chosen, strict=True)
    return localisation(predictor, paths, labels, masks).to_dict()


def _accuracy(labels: NDArray[np.int64], predicted: NDArray[np.int64]) -> float:
    return float(np.mean(labels == predicted))


def _macro_f1(n_classes: int) -> Callable[[NDArray[np.int64], NDArray[np.int64]], float]:
    def macro_f1(labels: NDArray[np.int64], predicted: NDArray[np.int64]) -> float:
        matrix = confusion_matrix(labels, predicted, n_classes).astype(np.float64)
        true_positive = np.diag(matrix)
        denominator = matrix.sum(axis=0) + matrix.sum(axis=1)
        f1 = np.divide(
            2 * true_positive, denominator, out=np.zeros(n_classes), where=denominator > 0
        )
        return float(f1.mean())

    return macro_f1


def _binary_summary(
    bundle: Bundle, labels: NDArray[np.int64], probabilities: NDArray[np.float64]
) -> dict[str, Any]:
    """Tumour score AUC, and the counts at the bundle's threshold when it has one."""
    tumour = (labels != bundle.negative_index).astype(np.int64)
    scores = tumour_score(probabilities, bundle.negative_index)
    summary: dict[str, Any] = {"score": f"1 - p({bundle.negative_class}) at T"}
    if 0 < tumour.sum() < len(tumour):
        fpr, tpr, _ = roc_curve(tumour, scores)
        summary["auc"] = float(roc_auc(fpr, tpr))
    if bundle.threshold is not None:
        tp, fp, tn, fn = confusion_at(tumour, scores, bundle.threshold)
        summary["threshold"] = bundle.threshold
        summary["at_threshold"] = {
            "tp": tp,
            "fp": fp,
            "tn": tn,
            "fn": fn,
            "sensitivity": _ratio(tp, tp + fn),
            "specificity": _ratio(tn, tn + fp),
        }
    return summary


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
