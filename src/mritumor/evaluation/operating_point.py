"""``threshold``: choose the operating point on the tumour score, report it, store it.

The search and the bootstrap intervals are :mod:`mritumor.stats.threshold`; this step chooses
the images, scores them with the run's calibrated model, writes ``reports/threshold/`` and
updates ``bundle.json``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mritumor import plots
from mritumor.core.errors import MritumorError
from mritumor.core.fsutil import atomic_write_json
from mritumor.core.progress import ProgressCallback
from mritumor.evaluation.eval_sets import resolve_eval_set, score
from mritumor.evaluation.reports import THRESHOLD_DIR, THRESHOLD_FILE, StepReport
from mritumor.run.bundle import update_bundle
from mritumor.run.layout import RunLayout
from mritumor.run.provenance import utc_now
from mritumor.stats.metrics import roc_auc, roc_curve
from mritumor.stats.threshold import OperatingPoint, bootstrap_rates, choose_threshold

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from mritumor.config.schema import Settings, ThresholdSettings
    from mritumor.predict.predictor import Predictor


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
    report_dir = RunLayout(run_dir).reports / THRESHOLD_DIR
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
        "created": utc_now(),
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
    predictor.bundle = update_bundle(
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
