"""``mritumor eval``, ``calibrate`` and ``threshold``: score a run, fit T, choose the operating point."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from mritumor.cli.options import InferenceBatchOption, QuietOption, RunOption
from mritumor.cli.state import SetOption, resolve_settings
from mritumor.cli.ui import console, err_console, optional_progress, report_unreadable
from mritumor.core.errors import UsageError
from mritumor.run.layout import latest_run

if TYPE_CHECKING:
    from mritumor.config.schema import Settings
    from mritumor.evaluation.reports import StepReport
    from mritumor.predict.predictor import Predictor

FitSplitHelp = (
    "Split of the run (cal, val, ...) or a folder of class sub-folders "
    "[default: cal when the run has one, else val]."
)
Step = Callable[..., "StepReport"]


def evaluate(
    ctx: typer.Context,
    run: RunOption = None,
    split: Annotated[
        str | None,
        typer.Option(
            help="test, another split of the run, or a folder of class sub-folders [default: test]."
        ),
    ] = None,
    external: Annotated[
        Path | None,
        typer.Option(help="Evaluate on an external yes/no folder instead (tumour score, ROC)."),
    ] = None,
    batch_size: InferenceBatchOption = None,
    quiet: QuietOption = False,
    assignments: SetOption = None,
) -> None:
    """Score a run on a labelled set: metrics with 95% intervals, figures, predictions.

    Writes reports/eval-<split>/: summary.json, classification_report.txt,
    confusion_matrix.csv, predictions.csv, cm.png, cm_norm.png, roc_curves.png,
    pr_curves.png, reliability_diagram.png, confidence_hist.png, error_gallery.png.
    A yes/no set (--external, or a finetune run's ext_* splits) gets the tumour-score
    AUC, threshold_roc.png and the counts at the run's threshold.
    """
    from mritumor.evaluation.evaluate import evaluate as evaluate_run

    if external is not None:
        if split is not None:
            raise UsageError("give --split or --external, not both")
        if not external.is_dir():
            raise UsageError(f"--external {external} is not a folder")
        split = str(external)

    report = _run_step(ctx, evaluate_run, run, split, batch_size, quiet, assignments, {})
    _show_eval(report)


def calibrate(
    ctx: typer.Context,
    run: RunOption = None,
    split: Annotated[str | None, typer.Option(help=FitSplitHelp)] = None,
    bins: Annotated[
        int | None,
        typer.Option(min=2, help="Confidence bins for ECE and MCE [default: calibration.n_bins]."),
    ] = None,
    batch_size: InferenceBatchOption = None,
    quiet: QuietOption = False,
    assignments: SetOption = None,
) -> None:
    """Fit the temperature T of softmax(z / T) on held-out images; write T into bundle.json.

    Reports NLL, ECE, MCE and Brier before and after in
    reports/calibration/calibration_metrics.json with reliability diagrams.
    """
    from mritumor.evaluation.calibrate import calibrate as calibrate_run

    flags = {"calibration.n_bins": bins}
    report = _run_step(ctx, calibrate_run, run, split, batch_size, quiet, assignments, flags)
    _show_calibration(report)


def threshold(
    ctx: typer.Context,
    run: RunOption = None,
    split: Annotated[
        str | None,
        typer.Option(
            "--split",
            "--data",
            help=FitSplitHelp.replace("class sub-folders", "class or yes/no sub-folders"),
        ),
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option(
            help="min_fpr_at_recall, max_recall_at_fpr, youden or max_fbeta "
            "[default: threshold.strategy]."
        ),
    ] = None,
    target_recall: Annotated[
        float | None, typer.Option(help="For min_fpr_at_recall [default: threshold.target_recall].")
    ] = None,
    max_fpr: Annotated[
        float | None, typer.Option(help="For max_recall_at_fpr [default: threshold.max_fp_rate].")
    ] = None,
    beta: Annotated[
        float | None, typer.Option(help="For max_fbeta [default: threshold.beta].")
    ] = None,
    batch_size: InferenceBatchOption = None,
    quiet: QuietOption = False,
    assignments: SetOption = None,
) -> None:
    """Choose the operating point on the calibrated tumour score 1 - p(no_tumor).

    Searches the exact ROC thresholds; writes reports/threshold/threshold_optimization.json
    and threshold_roc.png, and the threshold into bundle.json (never into your config).
    """
    from mritumor.evaluation.operating_point import choose_operating_point

    flags = {
        "threshold.strategy": strategy,
        "threshold.target_recall": target_recall,
        "threshold.max_fp_rate": max_fpr,
        "threshold.beta": beta,
    }
    report = _run_step(
        ctx, choose_operating_point, run, split, batch_size, quiet, assignments, flags
    )
    _show_threshold(report)


# --------------------------------------------------------------------------- shared


def _run_step(
    ctx: typer.Context,
    step: Step,
    run: Path | None,
    split: str | None,
    batch_size: int | None,
    quiet: bool,
    assignments: list[str] | None,
    flags: Mapping[str, Any],
) -> StepReport:
    settings = resolve_settings(
        ctx, {**flags, "inference.batch_size": batch_size}, assignments or ()
    ).settings
    predictor = _predictor(settings, run)
    with optional_progress(quiet, "Predicting") as progress:
        report = step(predictor, settings, split, progress=progress)
    for note in report.notes:
        err_console.print(f"[yellow]note:[/] {note}", soft_wrap=True, markup=True)
    report_unreadable(report.failures)
    return report


def _predictor(settings: Settings, run: Path | None) -> Predictor:
    from mritumor.predict.predictor import Predictor

    run_dir = run if run is not None else latest_run(settings.paths.runs_dir)
    return Predictor(run_dir)


def _number(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _interval(value: Any, interval: Any) -> str:
    if not interval or interval[0] is None:
        return _number(value)
    return f"{_number(value)}  [{_number(interval[0])}, {_number(interval[1])}]"


def _table(title: str, rows: list[tuple[str, str]]) -> None:
    table = Table(title=title, title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


def _show_eval(report: StepReport) -> None:
    summary = report.summary
    if summary.get("binary"):
        _show_binary(report)
        return
    metrics, calibration = summary["metrics"], summary["calibration"]
    binary = summary["tumour_vs_no_tumour"]
    rows = [
        ("images", str(summary["n_images"])),
        ("accuracy [95% CI]", _interval(metrics["accuracy"], metrics["accuracy_ci95"])),
        ("balanced accuracy", _number(metrics["balanced_accuracy"])),
        ("macro F1 [95% CI]", _interval(metrics["macro_f1"], metrics["macro_f1_ci95"])),
        ("weighted F1", _number(metrics["weighted_f1"])),
        ("Cohen's kappa", _number(metrics["cohen_kappa"])),
        (f"ECE / MCE (T = {summary['temperature']:.3f})", _pair(calibration, "ECE", "MCE")),
        ("Brier / NLL", _pair(calibration, "BrierScore", "NLL")),
        ("tumour AUC", _number(binary.get("auc"))),
    ]
    at = binary.get("at_threshold")
    if at:
        rows.append(
            (
                f"sensitivity / specificity at {binary['threshold']:.3f}",
                f"{_number(at['sensitivity'])} / {_number(at['specificity'])}",
            )
        )
    found = summary.get("localisation")
    if found:
        rows.append(
            (
                f"pointing game / energy in mask ({found['images']} tumours)",
                f"{_number(found['pointing_game'])} / {_number(found['energy_inside'])}",
            )
        )
    without = summary.get("without_training_copies")
    if without and without.get("n_copies"):
        rows.append(
            (
                f"accuracy without {without['n_copies']} copies of training images",
                _interval(without.get("accuracy"), without.get("accuracy_ci95")),
            )
        )
    _table(f"{summary['split']}", rows)
    console.print(f"Reports in {report.report_dir}", soft_wrap=True)


def _show_binary(report: StepReport) -> None:
    summary = report.summary
    rows = [
        ("images (tumour)", f"{summary['n_images']} ({summary['n_tumour']})"),
        (f"tumour AUC (T = {summary['temperature']:.3f})", _number(summary["auc"])),
    ]
    at = summary.get("at_threshold")
    if at:
        ci = at["ci95"]
        rows += [
            ("threshold", _number(summary["threshold"])),
            ("sensitivity [95% CI]", _interval(at["sensitivity"], ci.get("sensitivity"))),
            ("specificity [95% CI]", _interval(at["specificity"], ci.get("specificity"))),
            ("TP / FP / TN / FN", "{tp} / {fp} / {tn} / {fn}".format(**at)),
        ]
    without = summary.get("without_training_copies")
    if without and without.get("n_copies"):
        rows.append(
            (
                f"tumour AUC without {without['n_copies']} copies of training images",
                _number(without.get("auc")),
            )
        )
    _table(f"{summary['split']} (tumour vs no tumour)", rows)
    console.print(f"Reports in {report.report_dir}", soft_wrap=True)


def _pair(values: Mapping[str, Any], first: str, second: str) -> str:
    return f"{_number(values.get(first))} / {_number(values.get(second))}"


def _show_calibration(report: StepReport) -> None:
    summary = report.summary
    before, after = summary["before"], summary["after"]
    rows = [
        ("images", str(summary["n_images"])),
        ("temperature T", _number(summary["T"])),
        *(
            (name, f"{_number(before[name])} -> {_number(after[name])}")
            for name in ("NLL", "ECE", "MCE", "BrierScore")
        ),
    ]
    _table(f"Calibration on {summary['split']}", rows)
    console.print(f"Reports in {report.report_dir}", soft_wrap=True)


def _show_threshold(report: StepReport) -> None:
    summary = report.summary
    ci = summary["ci95"]
    rows = [
        ("images (tumour)", f"{summary['n_images']} ({summary['n_tumour']})"),
        ("strategy", str(summary["strategy"])),
        ("threshold", _number(summary["threshold"])),
        ("sensitivity [95% CI]", _interval(summary["sensitivity"], ci.get("sensitivity"))),
        ("specificity [95% CI]", _interval(summary["specificity"], ci.get("specificity"))),
        ("TP / FP / TN / FN", "{tp} / {fp} / {tn} / {fn}".format(**summary)),
        ("AUC", _number(summary["auc"])),
    ]
    _table(f"Operating point on {summary['split']}", rows)
    console.print(summary["reason"], soft_wrap=True)
    console.print(f"Reports in {report.report_dir}", soft_wrap=True)
