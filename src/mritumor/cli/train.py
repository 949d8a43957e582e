"""``mritumor train``: two-stage training into a new run directory, or ``--resume`` one."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mritumor.cli.options import (
    BackboneOption,
    BatchSizeOption,
    ExistOkOption,
    ImageSizeOption,
    QuietOption,
    RecipeOption,
    SeedOption,
    WeightsOption,
)
from mritumor.cli.state import SetOption, resolve_settings, resumed_settings
from mritumor.cli.ui import console, err_console, status_progress
from mritumor.core.errors import EXIT_INTERRUPTED

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from mritumor.config.settings import Settings
    from mritumor.engine.training import Stage, TrainResult


def train(
    ctx: typer.Context,
    recipe: RecipeOption = None,
    backbone: BackboneOption = None,
    weights: WeightsOption = None,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Total epochs [default: train.epochs].")
    ] = None,
    freeze_epochs: Annotated[
        int | None,
        typer.Option(
            min=0, help="Epochs with the backbone frozen [default: train.freeze_backbone_epochs]."
        ),
    ] = None,
    batch_size: BatchSizeOption = None,
    lr: Annotated[
        float | None, typer.Option(help="Learning rate of the frozen stage [default: train.lr].")
    ] = None,
    image_size: ImageSizeOption = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help="auto, float32, mixed_float16 or mixed_bfloat16 [default: train.precision]."
        ),
    ] = None,
    seed: SeedOption = None,
    deterministic: Annotated[
        bool | None,
        typer.Option("--deterministic/--no-deterministic", help="Deterministic ops (slower)."),
    ] = None,
    xla: Annotated[
        bool | None, typer.Option("--xla/--no-xla", help="Compile the step with XLA.")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Data root [default: paths.data_dir]; with --resume, where it moved."),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(help="Run directory name under paths.runs_dir [default: train-<n>]."),
    ] = None,
    exist_ok: ExistOkOption = False,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue this run from its last.keras, with its own settings."),
    ] = None,
    quiet: QuietOption = False,
    assignments: SetOption = None,
) -> None:
    """Train a classifier: the backbone frozen first, then the whole network at a lower rate.

    Writes a new run directory (runs/train-<n>) with model.keras (best on
    train.monitor), last.keras, bundle.json, config.yaml, splits/, history and
    curves. Ctrl-C saves last.keras and prints how to resume.
    """
    flags = {
        "recipe": recipe,
        "model.backbone": backbone,
        "model.weights": weights,
        "train.epochs": epochs,
        "train.freeze_backbone_epochs": freeze_epochs,
        "train.batch_size": batch_size,
        "train.lr": lr,
        "data.image_size": image_size,
        "train.precision": precision,
        "seed": seed,
        "train.deterministic": deterministic,
        "train.xla": xla,
        "paths.data_dir": data,
    }
    if resume is not None:
        from mritumor.run.bundle import read_bundle

        read_bundle(resume)  # a clear error for a folder that is not a run
        settings = resumed_settings(
            ctx,
            resume,
            flags,
            assignments,
            changeable=frozenset({"train.epochs", "paths.data_dir"}),
            hint=" (only --epochs may extend it, and --data point at moved data)",
        )
        run_dir = resume
        created = False
    else:
        settings = resolve_settings(ctx, flags, assignments or ()).settings
        run_dir, created = create_run_dir(settings, name, exist_ok)
    result = _fit(settings, run_dir, resume=resume is not None, created=created, quiet=quiet)
    _report(result, failures_shown=not quiet)


def create_run_dir(
    settings: Settings, name: str | None, exist_ok: bool, command: str = "train"
) -> tuple[Path, bool]:
    """The run directory, and whether this call created it (so only then may it go again)."""
    from mritumor.run.bundle import new_run_dir

    existed = name is not None and (settings.paths.runs_dir / name).exists()
    run_dir = new_run_dir(settings.paths.runs_dir, command, name=name, exist_ok=exist_ok)
    return run_dir, not existed


def _fit(
    settings: Settings, run_dir: Path, *, resume: bool, created: bool, quiet: bool
) -> TrainResult:
    from mritumor.engine.training import train as train_model
    from mritumor.run.lock import claimed_run

    with (
        claimed_run(run_dir, fresh=not resume),
        removed_unless_started(run_dir, keep=not created),
        training_observer(quiet) as observer,
    ):
        return train_model(settings, run_dir, resume=resume, observer=observer)


@contextmanager
def removed_unless_started(run_dir: Path, *, keep: bool) -> Iterator[None]:
    """A run directory this command created is removed again if it failed before its bundle.

    A directory the user already had (``--name X --exist-ok``) is never removed.
    """
    import shutil

    from mritumor.run.bundle import BUNDLE_FILE

    try:
        yield
    except BaseException:
        if not keep and not (run_dir / BUNDLE_FILE).exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


@contextmanager
def training_observer(quiet: bool) -> Iterator[Any]:
    if quiet:
        yield None
        return
    observer = RichTrainingObserver()
    try:
        yield observer
    finally:
        observer.close()


class RichTrainingObserver:
    """An epoch bar and a step bar with images/s and live metrics, on stderr.

    Each finished epoch is also printed as one line, which is what a non-TTY
    log (CI) keeps.
    """

    def __init__(self) -> None:
        self.progress: Progress = status_progress()
        self.epochs: TaskID | None = None
        self.steps: TaskID | None = None
        self.total_epochs = 0

    def on_stage_begin(self, stage: Stage, total_epochs: int) -> None:
        if self.epochs is None:
            self.progress.start()
            self.total_epochs = total_epochs
            self.epochs = self.progress.add_task("epochs", total=total_epochs, status="")
            self.steps = self.progress.add_task("steps", total=None, status="")
        self.progress.update(self.epochs, completed=stage.start, status=f"stage {stage.name}")

    def on_epoch_begin(self, epoch: int, steps: int) -> None:
        assert self.steps is not None
        self.progress.reset(self.steps, total=steps, status="")

    def on_batch_end(self, step: int, images_per_second: float, logs: Mapping[str, float]) -> None:
        assert self.steps is not None
        metrics = "  ".join(
            f"{key} {value:.4f}" for key, value in logs.items() if key in ("loss", "accuracy")
        )
        self.progress.update(
            self.steps, completed=step + 1, status=f"{images_per_second:.0f} img/s  {metrics}"
        )

    def on_epoch_end(self, row: Mapping[str, Any]) -> None:
        assert self.epochs is not None
        self.progress.update(self.epochs, completed=row["epoch"])
        self.progress.console.print(
            format_epoch(row, self.total_epochs), soft_wrap=True, markup=False, highlight=False
        )

    def on_warning(self, message: str) -> None:
        from rich.markup import escape

        # File names may hold brackets, which rich would read as markup.
        self.progress.console.print(
            f"[yellow]warning:[/] {escape(message)}", soft_wrap=True, markup=True
        )

    def on_note(self, message: str) -> None:
        self.progress.console.print(message, soft_wrap=True, markup=False, highlight=False)

    def close(self) -> None:
        if self.epochs is not None:
            self.progress.stop()


def format_epoch(row: Mapping[str, Any], total_epochs: int) -> str:
    """``epoch 3/10 [full] loss 0.8123 accuracy 0.7100 val_loss ... lr 1.0e-04``."""
    parts = [f"epoch {row['epoch']}/{total_epochs} [{row['stage']}]"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if key in row:
            parts.append(f"{key} {float(row[key]):.4f}")
    parts.append(f"lr {float(row['lr']):.1e}")
    return " ".join(parts)


def _report(result: TrainResult, *, failures_shown: bool) -> None:
    """The summary; unreadable images too unless the progress display already named them."""
    from rich.markup import escape
    from rich.table import Table

    from mritumor.run.bundle import LAST_FILE, MODEL_FILE

    if not failures_shown:
        for reason in result.decode_failures.values():  # each reason names its file
            err_console.print(
                f"[yellow]warning:[/] skipped unreadable image: {escape(reason)}", soft_wrap=True
            )
    if result.interrupted:
        console.print(
            f"Interrupted after {result.epochs_completed} complete epoch(s); the state is in "
            f"{result.run_dir / LAST_FILE}. Resume with:\n  mritumor train --resume {result.run_dir}",
            soft_wrap=True,
            markup=False,
            highlight=False,
        )
        raise typer.Exit(EXIT_INTERRUPTED)
    table = Table(title=f"Run {result.run_dir}", title_justify="left", show_header=False)
    table.add_row("epochs completed", str(result.epochs_completed))
    table.add_row("precision", result.precision)
    table.add_row("best epoch", str(result.best_epoch))
    table.add_row(
        "best monitor value", f"{result.best_value:.4f}" if result.best_value is not None else "-"
    )
    table.add_row("model", str(result.run_dir / MODEL_FILE))
    console.print(table)
