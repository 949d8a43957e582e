"""``mritumor pipeline`` (the whole chain on your data) and ``mritumor demo`` (on synthetic data)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from mritumor.cli.options import QuietOption
from mritumor.cli.state import SetOption, app_state, resolve_settings
from mritumor.cli.ui import console, err_console, status_progress
from mritumor.core.errors import UsageError
from mritumor.run.layout import RunLayout

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from mritumor.engine.pipeline import Outcome, PipelineResult
    from mritumor.engine.stages import Stage

ForceOption = Annotated[
    bool, typer.Option("--force", help="Run every step again, even those that are up to date.")
]


def pipeline(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="YAML settings file (as the global --config).", dir_okay=False
        ),
    ] = None,
    force: ForceOption = False,
    quiet: QuietOption = False,
    assignments: SetOption = None,
) -> None:
    """Run check, train, calibrate, threshold, eval, finetune, infer, gradcam and report.

    On the data under paths.data_dir (after `data fetch` or `data prepare`);
    finetune runs when finetune.external is set. Stops at the first failure.
    Steps whose settings and outputs are unchanged since the last run are
    skipped (--force reruns them). Runs go to runs/pipeline-train and
    runs/pipeline-finetune.
    """
    if config is not None:
        app_state(ctx).config_file = config
        ctx.obj = app_state(ctx)
    settings = resolve_settings(ctx, {}, assignments or ()).settings
    _run_and_report(settings, force=force, quiet=quiet)


def demo(
    ctx: typer.Context,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the synthetic data and the runs.")
    ] = Path("mritumor-demo"),
    quick: Annotated[
        bool,
        typer.Option("--quick", help="A tiny version (seconds; for tests, numbers meaningless)."),
    ] = False,
    force: ForceOption = False,
    quiet: QuietOption = False,
) -> None:
    """The complete pipeline on built-in synthetic data: no download, no GPU, a few minutes.

    Synthesises phantoms (with a shifted external domain), then checks, trains the
    small CNN, calibrates, chooses the threshold, evaluates, fine-tunes on the
    external domain, predicts a few images and explains them with Grad-CAM, and writes
    the HTML report and MODEL_CARD.md. Every number printed is read from the reports it
    wrote.
    """
    from mritumor.data.synth.writer import MANIFEST_NAME, write_synthetic_dataset
    from mritumor.engine.pipeline import demo_settings

    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder for the demo's data and runs")
    base = resolve_settings(ctx, {}, ()).settings
    settings, synth = demo_settings(base, out, quick=quick)
    data = settings.paths.data_dir
    if force or not (data / MANIFEST_NAME).is_file() or _synth_changed(data, synth):
        with _status(quiet, "Synthesising data"):
            write_synthetic_dataset(data, synth, force=True)
    _run_and_report(settings, force=force, quiet=quiet)


def _synth_changed(data: Path, synth: Any) -> bool:
    from mritumor.data.synth.writer import MANIFEST_NAME

    try:
        manifest = json.loads((data / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True
    if not isinstance(manifest, dict) or manifest.get("complete") is not True:
        return True  # an interrupted synthesis
    return bool(manifest.get("config") != json.loads(json.dumps(asdict(synth), default=list)))


def _status(quiet: bool, text: str) -> Any:
    return nullcontext() if quiet else err_console.status(text)


def _run_and_report(settings: Any, *, force: bool, quiet: bool) -> None:
    from mritumor.engine.pipeline import run_pipeline

    display = None if quiet else PipelineDisplay()
    try:
        result = run_pipeline(settings, force=force, observer=display)
    finally:
        if display is not None:
            display.close()
    show_summary(result)
    if result.report is not None:
        console.print(f"Report: {result.report}", soft_wrap=True, highlight=False)


# --------------------------------------------------------------------------- display


class PipelineDisplay:
    """One progress display: a bar over the steps and one over a training step's epochs."""

    def __init__(self) -> None:
        self.progress: Progress = status_progress()
        self.steps: TaskID | None = None
        self.epochs: TaskID | None = None
        self.training = _EpochBar(self)

    def on_step_begin(self, name: str, index: int, total: int) -> None:
        if self.steps is None:
            self.progress.start()
            self.steps = self.progress.add_task("steps", total=total, status="")
        self.progress.update(self.steps, completed=index, status=name)

    def on_step_end(self, outcome: Outcome) -> None:
        assert self.steps is not None
        self.progress.advance(self.steps)
        note = "up to date" if outcome.status == "skipped" else f"{outcome.seconds:.1f} s"
        self.progress.console.print(f"{outcome.name}: {note}", highlight=False)

    def close(self) -> None:
        if self.steps is not None:
            self.progress.update(self.steps, status="done")
            self.progress.stop()


class _EpochBar:
    """The training observer of a pipeline: epochs on the shared display."""

    def __init__(self, display: PipelineDisplay) -> None:
        self.display = display

    def on_stage_begin(self, stage: Stage, total_epochs: int) -> None:
        progress = self.display.progress
        if self.display.epochs is None:
            self.display.epochs = progress.add_task("epochs", total=total_epochs, status="")
        progress.update(self.display.epochs, total=total_epochs, completed=stage.start, status="")

    def on_epoch_begin(self, epoch: int, steps: int) -> None:
        """Nothing to show before the epoch ends."""

    def on_batch_end(self, step: int, images_per_second: float, logs: Mapping[str, float]) -> None:
        """Batches are not shown: one line per step is enough here."""

    def on_epoch_end(self, row: Mapping[str, Any]) -> None:
        if self.display.epochs is not None:
            loss = row.get("val_loss")
            status = f"val_loss {loss:.4f}" if isinstance(loss, float) else ""
            self.display.progress.update(
                self.display.epochs, completed=int(row["epoch"]), status=status
            )

    def on_note(self, message: str) -> None:
        """Notes (the precision chosen) are in the run's bundle.json; the display stays compact."""

    def on_warning(self, message: str) -> None:
        self.display.progress.console.print(f"[yellow]warning:[/] {escape(message)}")


# --------------------------------------------------------------------------- summary


def summary_rows(result: PipelineResult) -> list[tuple[str, str]]:
    """The headline numbers, each read from the report file that holds it."""
    rows: list[tuple[str, str]] = []
    train = result.train_run
    if train is not None:
        rows += _train_rows(train)
    if result.finetune_run is not None:
        rows += _finetune_rows(result.finetune_run)
    return rows


def _train_rows(run: Path) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    summary = _json(RunLayout(run).reports / "eval-test" / "summary.json")
    calibration = _json(RunLayout(run).reports / "calibration" / "calibration_metrics.json")
    if summary:
        metrics = summary["metrics"]
        low, high = metrics["accuracy_ci95"]
        rows.append(
            ("test accuracy [95% CI]", f"{_f(metrics['accuracy'])} [{_f(low)}, {_f(high)}]")
        )
        rows.append(("test macro-F1", _f(metrics["macro_f1"])))
    if calibration:
        before, after = calibration["before"], calibration["after"]
        rows.append(
            (
                f"ECE on {calibration['split']}, before -> after",
                f"{_f(before['ECE'])} -> {_f(after['ECE'])}",
            )
        )
        rows.append(("temperature T", _f(calibration["T"])))
    if summary:
        binary = summary["tumour_vs_no_tumour"]
        at = binary.get("at_threshold")
        if at:
            rows.append(
                (
                    "test sensitivity / specificity",
                    f"{_f(at['sensitivity'])} / {_f(at['specificity'])}",
                )
            )
        found = summary.get("localisation")
        if found:
            rows.append(("Grad-CAM pointing game (test tumours)", _f(found["pointing_game"])))
    return rows


def _finetune_rows(run: Path) -> list[tuple[str, str]]:
    report = _json(RunLayout(run).reports / "finetune_report.json")
    if not report:
        return []
    before, after = report["before"], report["after"]
    rows = [
        (
            f"external holdout {name}, before -> after",
            f"{_f(before['ext_holdout'][key])} -> {_f(after['ext_holdout'][key])}",
        )
        for name, key in (
            ("sensitivity", "sensitivity"),
            ("specificity", "specificity"),
            ("AUC", "auc"),
        )
    ]
    if "test" in before and "test" in after:
        rows.append(
            (
                "4-class test accuracy, before -> after",
                f"{_f(before['test']['accuracy'])} -> {_f(after['test']['accuracy'])}",
            )
        )
    return rows


def show_summary(result: PipelineResult) -> None:
    table = Table(title="Results", title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    for name, value in summary_rows(result):
        table.add_row(name, value)
    console.print(table)
    reports = Table(title="Reports", title_justify="left")
    reports.add_column("step", style="bold")
    reports.add_column("status")
    reports.add_column("output", overflow="fold")
    for outcome in result.outcomes:
        first = escape(str(outcome.outputs[0])) if outcome.outputs else ""
        more = f" (+{len(outcome.outputs) - 1} more)" if len(outcome.outputs) > 1 else ""
        reports.add_row(outcome.name, outcome.status, first + more)
    console.print(reports)


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _f(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"
