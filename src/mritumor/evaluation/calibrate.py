"""``calibrate``: fit the temperature on held-out logits, report before and after, store T.

The maths (the NLL fit, ECE, MCE, Brier) is :mod:`mritumor.stats.calibration`; this step
chooses the images, writes ``reports/calibration/`` and updates ``bundle.json``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mritumor.core.fsutil import atomic_write_json
from mritumor.core.progress import ProgressCallback
from mritumor.evaluation.eval_sets import resolve_eval_set, score
from mritumor.evaluation.reports import (
    CALIBRATION_DIR,
    CALIBRATION_METRICS_FILE,
    RELIABILITY_BEFORE_FILE,
    StepReport,
    write_calibration_figures,
)
from mritumor.run.bundle import update_bundle
from mritumor.run.layout import RunLayout
from mritumor.run.provenance import utc_now
from mritumor.stats.calibration import (
    binary_probabilities,
    calibration_metrics,
    fit_temperature,
    fit_temperature_binary,
    softmax,
)

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from mritumor.config.schema import Settings
    from mritumor.predict.predictor import Predictor


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
    report_dir = RunLayout(run_dir).reports / CALIBRATION_DIR
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
        "created": utc_now(),
    }
    write_calibration_figures(
        report_dir,
        probabilities(1.0),
        scored.labels,
        n_bins,
        reliability_file=RELIABILITY_BEFORE_FILE,
        title="Before calibration (T = 1)",
        histogram=False,
    )
    write_calibration_figures(
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
    predictor.bundle = update_bundle(run_dir, **changes)
    return StepReport(report_dir, summary, tuple(notes), scored.failures)
