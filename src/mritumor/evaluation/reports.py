"""The files ``eval``, ``calibrate`` and ``threshold`` write into ``reports/``: names, tables,
figures.

The names are those of the reference framework, so its users find them. Figures are drawn by
:mod:`mritumor.plots`, which imports matplotlib only when a figure is drawn.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mritumor import plots
from mritumor.core.fsutil import atomic_write_text
from mritumor.data.images import read_image
from mritumor.predict.ensemble import NO_TUMOUR, TUMOUR
from mritumor.run.layout import RunLayout
from mritumor.stats.calibration import calibration_metrics, reliability_bins, tumour_score
from mritumor.stats.metrics import (
    classification_report_text,
    confusion_matrix,
    normalise_rows,
    one_vs_rest_curves,
)

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from mritumor.config.schema import Settings
    from mritumor.evaluation.eval_sets import Scored
    from mritumor.run.bundle import Bundle

EVAL_DIR_PREFIX = "eval-"
CALIBRATION_DIR = "calibration"
THRESHOLD_DIR = "threshold"
SUMMARY_FILE = "summary.json"
PREDICTIONS_FILE = "predictions.csv"
REPORT_FILE = "classification_report.txt"
CONFUSION_CSV = "confusion_matrix.csv"
CALIBRATION_METRICS_FILE = "calibration_metrics.json"
RELIABILITY_BEFORE_FILE = "reliability_diagram_before.png"
THRESHOLD_FILE = "threshold_optimization.json"
TRAINING_COPIES_FILE = "training_copies.csv"
FINETUNE_REPORT_FILE = "finetune_report.json"
FINETUNE_FIGURE_FILE = "finetune_comparison.png"


@dataclass(frozen=True)
class StepReport:
    """What a step wrote and what the terminal shows."""

    report_dir: Path
    summary: dict[str, Any]
    notes: tuple[str, ...]
    failures: dict[str, str] = field(default_factory=dict)


def eval_report_dir(run_dir: Path, set_name: str) -> Path:
    """``reports/eval-<split>/``; for a folder its name and a hash of its full path, so
    ``--split /siteB/test`` never overwrites the run's own ``eval-test``."""
    folder = set_name
    if "/" in set_name or "\\" in set_name:
        digest = hashlib.sha256(set_name.encode()).hexdigest()[:8]
        folder = f"{Path(set_name).name or 'data'}-{digest}"
    return RunLayout(run_dir).reports / f"{EVAL_DIR_PREFIX}{folder}"


def write_eval_tables(
    report_dir: Path,
    bundle: Bundle,
    scored: Scored,
    probabilities: NDArray[np.float64],
    predicted: NDArray[np.int64],
) -> None:
    """The classification report, the confusion matrix and the per-image predictions."""
    names = bundle.class_names
    atomic_write_text(
        report_dir / REPORT_FILE,
        classification_report_text(scored.labels, predicted, names) + "\n",
    )
    matrix = confusion_matrix(scored.labels, predicted, len(names))
    rows = [["true \\ predicted", *names]]
    rows += [[name, *map(str, row)] for name, row in zip(names, matrix.tolist(), strict=True)]
    atomic_write_text(report_dir / CONFUSION_CSV, _csv_text(rows))
    atomic_write_text(
        report_dir / PREDICTIONS_FILE, _predictions_csv(bundle, scored, probabilities, predicted)
    )


def _predictions_csv(
    bundle: Bundle,
    scored: Scored,
    probabilities: NDArray[np.float64],
    predicted: NDArray[np.int64],
) -> str:
    """path, true class, predicted class, calibrated probabilities, tumour score[, decision]."""
    names = bundle.class_names
    scores = tumour_score(probabilities, bundle.negative_index)
    header = ["path", "true_class", "predicted_class", *(f"p_{name}" for name in names)]
    header.append("tumour_score")
    if bundle.threshold is not None:
        header.append("decision")
    rows: list[list[str]] = [header]
    for path, label, guess, row, value in zip(
        scored.paths, scored.labels, predicted, probabilities, scores, strict=True
    ):
        line = [path.as_posix(), names[label], names[guess], *(f"{p:.6f}" for p in row)]
        line.append(f"{value:.6f}")
        if bundle.threshold is not None:
            line.append(TUMOUR if value >= bundle.threshold else NO_TUMOUR)
        rows.append(line)
    return _csv_text(rows)


def write_binary_predictions(report_dir: Path, scored: Scored, scores: NDArray[np.float64]) -> None:
    """A yes/no set's per-image table: path, tumour (1/0), tumour score."""
    rows = [["path", "tumour", "tumour_score"]]
    rows += [
        [path.as_posix(), str(int(label)), f"{value:.6f}"]
        for path, label, value in zip(scored.paths, scored.labels, scores, strict=True)
    ]
    atomic_write_text(report_dir / PREDICTIONS_FILE, _csv_text(rows))


def write_training_copies(report_dir: Path, scored: Scored, copies: NDArray[np.bool_]) -> None:
    """The scored images that copy a training image, one path a row."""
    rows = [["path"]] + [
        [str(path)] for path, copy in zip(scored.paths, copies, strict=True) if copy
    ]
    atomic_write_text(report_dir / TRAINING_COPIES_FILE, _csv_text(rows))


def write_eval_figures(
    report_dir: Path,
    bundle: Bundle,
    scored: Scored,
    probabilities: NDArray[np.float64],
    predicted: NDArray[np.int64],
    settings: Settings,
) -> None:
    """Confusion matrices, ROC and PR curves, calibration figures and the error gallery."""
    names = bundle.class_names
    matrix = confusion_matrix(scored.labels, predicted, len(names))
    plots.plot_confusion_matrix(matrix, names, report_dir / plots.CM_FILE, normalised=False)
    plots.plot_confusion_matrix(
        normalise_rows(matrix), names, report_dir / plots.CM_NORM_FILE, normalised=True
    )
    curves = one_vs_rest_curves(scored.labels, probabilities, names)
    plots.plot_roc_curves(curves, report_dir / plots.ROC_FILE)
    plots.plot_pr_curves(curves, report_dir / plots.PR_FILE)
    write_calibration_figures(report_dir, probabilities, scored.labels, settings.calibration.n_bins)
    _write_error_gallery(report_dir, bundle, scored, probabilities, predicted, settings)


def write_calibration_figures(
    report_dir: Path,
    probabilities: NDArray[np.float64],
    labels: NDArray[np.int64],
    n_bins: int,
    *,
    reliability_file: str | None = None,
    title: str | None = None,
    histogram: bool = True,
) -> None:
    """The reliability diagram (ECE and MCE in it) and, with ``histogram``, the confidences."""
    bins = reliability_bins(probabilities, labels, n_bins)
    metrics = calibration_metrics(probabilities, labels, n_bins)
    plots.plot_reliability_diagram(
        bins.edges,
        bins.counts,
        bins.accuracy,
        bins.confidence,
        report_dir / (reliability_file or plots.RELIABILITY_FILE),
        ece=metrics["ECE"],
        mce=metrics["MCE"],
        title=title,
    )
    if histogram:
        correct = probabilities.argmax(axis=1) == labels
        plots.plot_confidence_histogram(
            probabilities.max(axis=1),
            correct,
            report_dir / plots.CONFIDENCE_HIST_FILE,
            n_bins=n_bins,
        )


def _write_error_gallery(
    report_dir: Path,
    bundle: Bundle,
    scored: Scored,
    probabilities: NDArray[np.float64],
    predicted: NDArray[np.int64],
    settings: Settings,
) -> None:
    """The most confident mistakes: the images a reader should look at first."""
    wrong = np.flatnonzero(predicted != scored.labels)
    confidence = probabilities.max(axis=1)
    chosen = wrong[np.argsort(-confidence[wrong], kind="stable")][
        : settings.evaluation.error_gallery
    ]
    names = bundle.class_names
    images = [_thumbnail(scored.paths[i], bundle.channels) for i in chosen]
    captions = [
        f"{scored.paths[i].name}\ntrue {names[scored.labels[i]]}\n"
        f"pred {names[predicted[i]]} {confidence[i]:.2f}"
        for i in chosen
    ]
    plots.plot_error_gallery(images, captions, report_dir / plots.ERROR_GALLERY_FILE)


def _thumbnail(path: Path, channels: int, side: int = 160) -> NDArray[np.uint8]:
    from PIL import Image

    image = Image.fromarray(read_image(path, channels).squeeze())
    image.thumbnail((side, side))
    return np.asarray(image, dtype=np.uint8)


def _csv_text(rows: Sequence[Sequence[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()
