"""``eval``, ``calibrate`` and ``threshold``: the numbers a user puts in a paper.

Each step scores one labelled set with the run's :class:`~mritumor.predict.inference.Predictor`
and writes its reports into the run directory; ``calibrate`` and ``threshold``
also write what they fitted into ``bundle.json`` (never into the user's config).

Which images each step uses, and why (the reference framework tuned and
reported on the same images):

* ``eval`` reports on ``test`` by default: images that neither trained the
  model nor selected its checkpoint.
* ``calibrate`` and ``threshold`` fit on ``cal`` when the run has one (carved
  from train by ``data.cal_size``; nothing else ever saw it), otherwise on
  ``val``, which also selected the checkpoint: a smaller set spent twice, but no
  training image and no test image.
* Every report lists in ``notes`` the ways its images were used before: scoring
  ``val`` (it picked the checkpoint), scoring the split T or the threshold was
  fitted on (those numbers are then optimistic), or fitting on ``test``.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mritumor import __version__
from mritumor.core.errors import MritumorError, UsageError
from mritumor.core.fsutil import atomic_write_json, atomic_write_text
from mritumor.core.progress import ProgressCallback
from mritumor.run import bundle as bundles
from mritumor.stats.calibration import (
    binary_probabilities,
    calibration_metrics,
    fit_temperature,
    fit_temperature_binary,
    reliability_bins,
    softmax,
    tumour_score,
)

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from mritumor.config.settings import Settings, ThresholdSettings
    from mritumor.predict.inference import Predictor
    from mritumor.run.bundle import Bundle
    from mritumor.stats.threshold import OperatingPoint

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
TUMOUR, NO_TUMOUR = "tumour", "no tumour"


@dataclass(frozen=True)
class EvalSet:
    """Labelled images to score a run on, and how they were used before."""

    name: str
    """A split name (``test``, ``cal``, ...) or the folder the images came from."""
    paths: tuple[Path, ...]
    labels: NDArray[np.int64]
    """Class indices, or 1 = tumour / 0 = no tumour when :attr:`binary`."""
    binary: bool = False
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Scored:
    """An :class:`EvalSet` with the logits of its readable images."""

    eval_set: EvalSet
    paths: tuple[Path, ...]
    labels: NDArray[np.int64]
    logits: NDArray[np.float64]
    failures: dict[str, str]


@dataclass(frozen=True)
class StepReport:
    """What a step wrote and what the terminal shows."""

    report_dir: Path
    summary: dict[str, Any]
    notes: tuple[str, ...]
    failures: dict[str, str] = field(default_factory=dict)


Purpose = str  # "eval", "calibrate" or "threshold"


# --------------------------------------------------------------------------- which images


def default_split(run_dir: Path, purpose: Purpose) -> str:
    """``test`` for eval. For fitting: ``ext_val`` in a finetune run (the adapted model is
    used on the external domain), else ``cal`` when the run has one, else ``val``."""
    if purpose == "eval":
        return "test"
    stored = bundles.list_splits(run_dir)
    return next(name for name in ("ext_val", "cal", "val") if name in stored or name == "val")


def resolve_eval_set(
    run_dir: Path,
    bundle: Bundle,
    spec: str | None,
    data_root: Path,
    *,
    purpose: Purpose,
    allow_binary: bool = False,
) -> EvalSet:
    """The images named by ``spec``: a split of the run, ``test`` of the data root, or a folder.

    A folder holds class sub-folders, or (``allow_binary``) ``yes/`` and ``no/``.
    """
    from mritumor.data.splits import (
        BINARY_CLASSES,
        EXTERNAL_SPLITS,
        load_binary_folder,
        load_class_folder,
        load_split,
    )

    name = spec or default_split(run_dir, purpose)
    names = bundle.class_names
    if name in EXTERNAL_SPLITS and name in bundles.list_splits(run_dir):
        if not allow_binary:
            raise UsageError(f"{name} is a tumour / no-tumour split; this step needs 4 classes")
        split = bundles.read_split(run_dir, name, BINARY_CLASSES)
        binary = np.asarray(split.labels, np.int64)
        return EvalSet(name, split.paths, binary, True, _notes(bundle, name, purpose))
    if name in bundles.list_splits(run_dir):
        split = bundles.read_split(run_dir, name, names, data_root=data_root)
    elif name == "test":
        split = load_split(data_root, "test", names)
    elif Path(name).expanduser().is_dir():
        folder = Path(name).expanduser().resolve()
        if allow_binary and _is_binary_folder(folder):
            paths, labels = load_binary_folder(folder)
            return EvalSet(
                str(folder), paths, np.asarray(labels, np.int64), True, _notes(bundle, "", purpose)
            )
        split = load_class_folder(folder, names)
        name = str(folder)
    else:
        stored = ", ".join(bundles.list_splits(run_dir)) or "none"
        raise UsageError(
            f"--split {name!r} is neither a split of {run_dir} (it has: {stored}), "
            "nor test, nor an existing folder"
        )
    return EvalSet(
        name, split.paths, np.asarray(split.labels, np.int64), False, _notes(bundle, name, purpose)
    )


def _is_binary_folder(folder: Path) -> bool:
    from mritumor.data.files import subfolders
    from mritumor.data.layout import normalise_binary_label

    # Every sub-folder must be a yes/no label: "no_tumor" alone also reads as "no".
    found = subfolders(folder)
    return bool(found) and all(normalise_binary_label(sub.name) is not None for sub in found)


_TRAINED_ON = ("train", "ext_train")
_SELECTED_ON = ("val", "ext_val")


def _notes(bundle: Bundle, name: str, purpose: Purpose) -> tuple[str, ...]:
    """How the images of split ``name`` were used before, as warnings for the report.

    Raises for fitting on ``ext_holdout``: a finetune run keeps it for reported
    numbers only.
    """
    if purpose != "eval" and name == "ext_holdout":
        raise UsageError(
            f"ext_holdout is kept for reported numbers only; {purpose} on ext_val (the default)"
        )
    notes: list[str] = []
    if name in _TRAINED_ON:
        notes.append("the model was trained on these images: every number here is optimistic")
    if name in _SELECTED_ON and purpose == "eval":
        notes.append(
            f"{name} selected the checkpoint (best {bundle.monitor}) and stopped training early, "
            "so numbers on it are optimistic; report the held-out split"
        )
    elif name in _SELECTED_ON:
        notes.append(
            f"{purpose} fits on {name}, which also selected the checkpoint: one small set used "
            "twice (data.cal_size carves a cal split that nothing else sees)"
        )
    if purpose == "eval":
        if _fitted_on(bundle.temperature_source, name):
            notes.append(
                "the temperature was fitted on these images: calibration metrics are optimistic"
            )
        if _fitted_on(bundle.threshold_info, name):
            notes.append(
                "the threshold was chosen on these images: sensitivity and specificity at it "
                "are optimistic"
            )
    elif name == "test":
        notes.append(
            f"{purpose} fits on test: numbers reported on test afterwards are no longer held out"
        )
    return tuple(notes)


def _fitted_on(info: dict[str, Any] | None, name: str) -> bool:
    return bool(info) and info is not None and info.get("split") == name


def score(
    predictor: Predictor,
    eval_set: EvalSet,
    *,
    batch_size: int,
    progress: ProgressCallback | None = None,
) -> Scored:
    """Logits of every readable image of ``eval_set``; unreadable ones are reported, not fatal."""
    result = predictor.logits(eval_set.paths, batch_size=batch_size, progress=progress)
    if not len(result.kept):
        raise MritumorError(
            f"none of the {len(eval_set.paths)} images of {eval_set.name} is readable"
        )
    return Scored(
        eval_set=eval_set,
        paths=tuple(eval_set.paths[i] for i in result.kept),
        labels=eval_set.labels[result.kept],
        logits=result.logits,
        failures=result.failures,
    )


# --------------------------------------------------------------------------- eval


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
    report_dir = run_dir / bundles.REPORTS_DIR / f"{EVAL_DIR_PREFIX}{_folder_name(eval_set.name)}"
    copies = (
        training_copies(run_dir, bundle, scored, settings.paths.data_dir)
        if settings.evaluation.training_copies
        else None
    )
    if eval_set.binary:
        summary = _binary_report(report_dir, predictor, scored, settings)
        if copies is not None:
            summary[TRAINING_COPIES_KEY] = _binary_without(predictor, scored, copies)
            _write_copies(report_dir, scored, copies)
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
        _write_copies(report_dir, scored, copies)
    if settings.evaluation.localisation:
        summary["localisation"] = _localisation(predictor, scored)
    _write_eval_tables(report_dir, bundle, scored, probabilities, predicted)
    _write_eval_figures(report_dir, bundle, scored, probabilities, predicted, settings)
    atomic_write_json(report_dir / SUMMARY_FILE, summary)
    return StepReport(report_dir, summary, eval_set.notes, scored.failures)


#: The splits whose images a run learnt from or was selected and calibrated on.
TRAINING_SPLITS = (*_TRAINED_ON, *_SELECTED_ON, "cal")
TRAINING_COPIES_KEY = "without_training_copies"
TRAINING_COPIES_FILE = "training_copies.csv"


def training_copies(
    run_dir: Path, bundle: Bundle, scored: Scored, data_root: Path
) -> NDArray[np.bool_] | None:
    """Which scored images are exact or near copies of the run's training images.

    Training images are those of :data:`TRAINING_SPLITS` (a finetune run's
    ``ext_train`` and ``ext_val`` too). Copies form connected groups, as in
    ``data check``: an image that is a near copy of another scored image that
    copies a training image counts as well.

    None for those splits themselves, and when the run's split lists cannot be
    read (its data moved without ``--data``). The public Kaggle Training and
    Testing folders share 344 such groups, so a test accuracy with them in
    measures memory as much as generalisation: ``eval`` reports both.
    """
    from mritumor.data.hashing import duplicate_groups, image_hashes
    from mritumor.data.splits import BINARY_CLASSES, EXTERNAL_SPLITS

    if scored.eval_set.name in TRAINING_SPLITS or not scored.paths:
        return None
    seen: list[Path] = []
    try:
        for name in TRAINING_SPLITS:
            if name in bundles.list_splits(run_dir):
                names = BINARY_CLASSES if name in EXTERNAL_SPLITS else bundle.class_names
                split = bundles.read_split(run_dir, name, names, data_root=data_root)
                seen.extend(split.paths)
    except MritumorError:
        return None
    if not seen:
        return None
    count = len(scored.paths)
    groups = duplicate_groups(image_hashes([*scored.paths, *seen]))
    in_training = set(groups[count:])
    return np.array([group in in_training for group in groups[:count]], dtype=bool)


def _multiclass_without(
    labels: NDArray[np.int64],
    predicted: NDArray[np.int64],
    copies: NDArray[np.bool_],
    n_classes: int,
    settings: Settings,
) -> dict[str, Any]:
    """Accuracy and macro-F1, with 95% intervals, on the images that copy no training image."""
    from mritumor.stats.metrics import bootstrap_interval

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
    from mritumor.stats.metrics import roc_auc, roc_curve

    kept = ~copies
    labels = scored.labels[kept]
    result: dict[str, Any] = {"n_copies": int(copies.sum()), "n_images": int(kept.sum())}
    if len(set(labels.tolist())) == 2:
        fpr, tpr, _ = roc_curve(labels, predictor.tumour_scores(scored.logits[kept]))
        result["auc"] = float(roc_auc(fpr, tpr))
    return result


def _write_copies(report_dir: Path, scored: Scored, copies: NDArray[np.bool_]) -> None:
    rows = [["path"]] + [
        [str(path)] for path, copy in zip(scored.paths, copies, strict=True) if copy
    ]
    atomic_write_text(report_dir / TRAINING_COPIES_FILE, _csv_text(rows))


def _binary_report(
    report_dir: Path, predictor: Predictor, scored: Scored, settings: Settings
) -> dict[str, Any]:
    """A yes/no set: tumour-score AUC, ROC, counts and rates at the bundle's threshold."""
    from mritumor import plots
    from mritumor.stats.metrics import roc_auc, roc_curve
    from mritumor.stats.threshold import bootstrap_rates, confusion_at

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
        "created": bundles.utc_now(),
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
    rows = [["path", "tumour", "tumour_score"]]
    rows += [
        [path.as_posix(), str(int(label)), f"{value:.6f}"]
        for path, label, value in zip(scored.paths, tumour, scores, strict=True)
    ]
    atomic_write_text(report_dir / PREDICTIONS_FILE, _csv_text(rows))
    plots.plot_threshold_roc(
        fpr,
        tpr,
        *(point or (float("nan"), float("nan"))),
        report_dir / plots.THRESHOLD_ROC_FILE,
        auc=auc,
        label="" if point is None else f"t = {bundle.threshold:.3f}",
    )
    atomic_write_json(report_dir / SUMMARY_FILE, summary)
    return summary


def _eval_summary(
    bundle: Bundle,
    scored: Scored,
    probabilities: NDArray[np.float64],
    predicted: NDArray[np.int64],
    settings: Settings,
) -> dict[str, Any]:
    from mritumor.stats.metrics import (
        bootstrap_interval,
        classification_metrics,
        one_vs_rest_curves,
    )

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
        "created": bundles.utc_now(),
    }


def _localisation(predictor: Predictor, scored: Scored) -> dict[str, Any] | None:
    """Grad-CAM pointing game and energy inside the lesion mask, for tumour images with masks."""
    from mritumor.data.synth import find_mask
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
    from mritumor.stats.metrics import confusion_matrix

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
    from mritumor.stats.metrics import roc_auc, roc_curve
    from mritumor.stats.threshold import confusion_at

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


def _write_eval_tables(
    report_dir: Path,
    bundle: Bundle,
    scored: Scored,
    probabilities: NDArray[np.float64],
    predicted: NDArray[np.int64],
) -> None:
    from mritumor.stats.metrics import classification_report_text, confusion_matrix

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


def _write_eval_figures(
    report_dir: Path,
    bundle: Bundle,
    scored: Scored,
    probabilities: NDArray[np.float64],
    predicted: NDArray[np.int64],
    settings: Settings,
) -> None:
    from mritumor import plots
    from mritumor.stats.metrics import confusion_matrix, normalise_rows, one_vs_rest_curves

    names = bundle.class_names
    matrix = confusion_matrix(scored.labels, predicted, len(names))
    plots.plot_confusion_matrix(matrix, names, report_dir / plots.CM_FILE, normalised=False)
    plots.plot_confusion_matrix(
        normalise_rows(matrix), names, report_dir / plots.CM_NORM_FILE, normalised=True
    )
    curves = one_vs_rest_curves(scored.labels, probabilities, names)
    plots.plot_roc_curves(curves, report_dir / plots.ROC_FILE)
    plots.plot_pr_curves(curves, report_dir / plots.PR_FILE)
    _write_calibration_figures(
        report_dir, probabilities, scored.labels, settings.calibration.n_bins
    )
    _write_error_gallery(report_dir, bundle, scored, probabilities, predicted, settings)


def _write_calibration_figures(
    report_dir: Path,
    probabilities: NDArray[np.float64],
    labels: NDArray[np.int64],
    n_bins: int,
    *,
    reliability_file: str | None = None,
    title: str | None = None,
    histogram: bool = True,
) -> None:
    from mritumor import plots

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
    from mritumor import plots

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

    from mritumor.data.files import read_image

    image = Image.fromarray(read_image(path, channels).squeeze())
    image.thumbnail((side, side))
    return np.asarray(image, dtype=np.uint8)


# --------------------------------------------------------------------------- calibrate


def calibrate(
    predictor: Predictor,
    settings: Settings,
    spec: str | None,
    *,
    progress: ProgressCallback | None = None,
) -> StepReport:
    """Fit the temperature on held-out logits; write the reports and T into bundle.json.

    A yes/no set (a finetune run's ``ext_val``) fits T to the tumour score's
    binary NLL, and its metrics are those of the two-column [no tumour, tumour]
    probabilities. A threshold chosen at the old temperature no longer means
    what it meant, so it is cleared (its report stays in ``reports/threshold/``).
    """
    run_dir, bundle = predictor.run_dir, predictor.bundle
    eval_set = resolve_eval_set(
        run_dir, bundle, spec, settings.paths.data_dir, purpose="calibrate", allow_binary=True
    )
    scored = score(predictor, eval_set, batch_size=settings.inference.batch_size, progress=progress)
    n_bins, negative = settings.calibration.n_bins, bundle.negative_index
    if eval_set.binary:
        fit = fit_temperature_binary(scored.logits, scored.labels, negative)
    else:
        fit = fit_temperature(scored.logits, scored.labels)

    def probabilities(temperature: float) -> NDArray[np.float64]:
        if eval_set.binary:
            return binary_probabilities(scored.logits, negative, temperature)
        return softmax(scored.logits, temperature)

    before = calibration_metrics(probabilities(1.0), scored.labels, n_bins)
    after = calibration_metrics(probabilities(fit.temperature), scored.labels, n_bins)
    report_dir = run_dir / bundles.REPORTS_DIR / CALIBRATION_DIR
    notes = list(eval_set.notes)
    if fit.at_bound:
        notes.append(
            f"the fitted temperature {fit.temperature:.3g} sits at the search bound: "
            "the model's logits are far from calibrated on this set"
        )
    changes: dict[str, Any] = {}
    if bundle.threshold is not None:
        changes.update(threshold=None, threshold_info=None)
        notes.append(
            f"the threshold {bundle.threshold:.4g} was chosen at T = {bundle.temperature:.4g} "
            "and was cleared: run `mritumor threshold` again"
        )
    target = "the tumour score (binary NLL)" if eval_set.binary else "the class (NLL)"
    summary = {
        **after,
        "T": fit.temperature,
        "n_bins": n_bins,
        "split": eval_set.name,
        "n_images": len(scored.labels),
        "before": {**before, "T": 1.0},
        "after": {**after, "T": fit.temperature},
        "method": f"NLL of {target} minimised over log T by a bounded 1-D search, to convergence",
        "notes": notes,
        "created": bundles.utc_now(),
    }
    _write_calibration_figures(
        report_dir,
        probabilities(1.0),
        scored.labels,
        n_bins,
        reliability_file=RELIABILITY_BEFORE_FILE,
        title="Before calibration (T = 1)",
        histogram=False,
    )
    _write_calibration_figures(
        report_dir,
        probabilities(fit.temperature),
        scored.labels,
        n_bins,
        title=f"After calibration (T = {fit.temperature:.3f})",
    )
    atomic_write_json(report_dir / CALIBRATION_METRICS_FILE, summary)
    changes.update(
        temperature=fit.temperature,
        temperature_source={
            "split": eval_set.name,
            "n_images": len(scored.labels),
            "target": target,
            "nll_before": fit.nll_before,
            "nll_after": fit.nll_after,
            "fitted": summary["created"],
        },
    )
    predictor.bundle = bundles.update_bundle(run_dir, **changes)
    return StepReport(report_dir, summary, tuple(notes), scored.failures)


# --------------------------------------------------------------------------- threshold


def choose_operating_point(
    predictor: Predictor,
    settings: Settings,
    spec: str | None,
    *,
    progress: ProgressCallback | None = None,
) -> StepReport:
    """Choose the tumour-score threshold on held-out images; write the report and the bundle.

    The score is the calibrated ``1 - p(negative_class)``, exactly what
    ``infer`` thresholds. An infeasible constraint writes the report but leaves
    the bundle alone and raises.
    """
    from mritumor import plots
    from mritumor.stats.metrics import roc_auc, roc_curve
    from mritumor.stats.threshold import bootstrap_rates

    run_dir, bundle = predictor.run_dir, predictor.bundle
    eval_set = resolve_eval_set(
        run_dir, bundle, spec, settings.paths.data_dir, purpose="threshold", allow_binary=True
    )
    scored = score(predictor, eval_set, batch_size=settings.inference.batch_size, progress=progress)
    tumour = (
        scored.labels
        if eval_set.binary
        else (scored.labels != bundle.negative_index).astype(np.int64)
    )
    scores = predictor.tumour_scores(scored.logits)
    options = settings.threshold
    point = operating_point(tumour, scores, options)
    intervals = bootstrap_rates(
        tumour, scores, point.threshold, n_samples=options.bootstrap_samples, seed=settings.seed
    )
    fpr, tpr, _ = roc_curve(tumour, scores)
    auc = float(roc_auc(fpr, tpr))
    report_dir = run_dir / bundles.REPORTS_DIR / THRESHOLD_DIR
    constraints = _constraints(settings)
    summary = {
        **point.to_dict(),
        "constraints": constraints,
        "ci95": {key: list(value) for key, value in intervals.items()},
        "auc": auc,
        "split": eval_set.name,
        "n_images": len(tumour),
        "n_tumour": int(tumour.sum()),
        "temperature": bundle.temperature,
        "score": f"1 - p({bundle.negative_class}) at T = {bundle.temperature:.4g}",
        "notes": list(eval_set.notes),
        "created": bundles.utc_now(),
    }
    atomic_write_json(report_dir / THRESHOLD_FILE, summary)
    plots.plot_threshold_roc(
        fpr,
        tpr,
        1.0 - point.specificity,
        point.sensitivity,
        report_dir / plots.THRESHOLD_ROC_FILE,
        auc=auc,
        label=(
            f"t = {point.threshold:.3f}\nsens {point.sensitivity:.2f}, spec {point.specificity:.2f}"
        ),
    )
    if not point.feasible:
        raise MritumorError(
            f"no threshold meets the constraint: {point.reason}; bundle.json is unchanged "
            f"(report: {report_dir / THRESHOLD_FILE})"
        )
    predictor.bundle = bundles.update_bundle(
        run_dir,
        threshold=point.threshold,
        threshold_info={
            "strategy": point.strategy,
            **constraints,
            "split": eval_set.name,
            "n_images": len(tumour),
            "temperature": bundle.temperature,
            "chosen": summary["created"],
        },
    )
    return StepReport(report_dir, summary, eval_set.notes, scored.failures)


def operating_point(
    labels: NDArray[np.int64], scores: NDArray[np.float64], options: ThresholdSettings
) -> OperatingPoint:
    """The threshold the ``threshold`` settings ask for, on binary labels and tumour scores."""
    from mritumor.stats.threshold import choose_threshold

    return choose_threshold(
        labels,
        scores,
        options.strategy,
        target_recall=options.target_recall,
        max_fp_rate=options.max_fp_rate,
        beta=options.beta,
    )


def _constraints(settings: Settings) -> dict[str, float]:
    options = settings.threshold
    return {
        "min_fpr_at_recall": {"target_recall": options.target_recall},
        "max_recall_at_fpr": {"max_fp_rate": options.max_fp_rate},
        "max_fbeta": {"beta": options.beta},
        "youden": {},
    }[options.strategy]


# --------------------------------------------------------------------------- helpers


def _folder_name(name: str) -> str:
    """A report folder name: the split's name, or for a folder its name and a hash of its
    full path, so ``--split /siteB/test`` never overwrites the run's own ``eval-test``."""
    if "/" not in name and "\\" not in name:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{Path(name).name or 'data'}-{digest}"


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _csv_text(rows: Sequence[Sequence[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()
