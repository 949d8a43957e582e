"""``mritumor train``: two-stage training into a new run directory, or ``--resume`` one."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from mritumor.cli.options import (
    BackboneOption,
    BatchSizeOption,
    DevicesOption,
    ExistOkOption,
    ImageSizeOption,
    QuietOption,
    RecipeOption,
    SeedOption,
    StrategyOption,
    WeightsOption,
    device_list,
)
from mritumor.cli.runs import exit_interrupted, report_worker_done, training_run
from mritumor.cli.state import SetOption, resolve_settings, resumed_settings
from mritumor.cli.ui import console, err_console
from mritumor.run.layout import LAST_FILE, MODEL_FILE

if TYPE_CHECKING:
    from mritumor.config.schema import Settings
    from mritumor.engine.training import TrainResult


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
    strategy: StrategyOption = None,
    devices: DevicesOption = None,
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
        "train.strategy": strategy,
        "train.devices": device_list(devices),
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
            changeable=frozenset(
                {"train.epochs", "paths.data_dir", "train.strategy", "train.devices"}
            ),
            hint=(
                " (only --epochs may extend it, --data point at moved data, and "
                "--strategy / --devices name the devices it resumes on)"
            ),
        )
    else:
        settings = resolve_settings(ctx, flags, assignments or ()).settings
    result = _fit(settings, resume=resume, name=name, exist_ok=exist_ok, quiet=quiet)
    _report(result, failures_shown=not quiet)


def _fit(
    settings: Settings, *, resume: Path | None, name: str | None, exist_ok: bool, quiet: bool
) -> TrainResult:
    from mritumor.engine.training import train as train_model

    with training_run(
        settings, "train", resume=resume, name=name, exist_ok=exist_ok, quiet=quiet
    ) as (run_dir, observer):
        return train_model(settings, run_dir, resume=resume is not None, observer=observer)


def _report(result: TrainResult, *, failures_shown: bool) -> None:
    """The summary; unreadable images too unless the progress display already named them."""
    if not failures_shown:
        for reason in result.decode_failures.values():  # each reason names its file
            err_console.print(
                f"[yellow]warning:[/] skipped unreadable image: {escape(reason)}", soft_wrap=True
            )
    if result.interrupted:
        exit_interrupted(
            f"Interrupted after {result.epochs_completed} complete epoch(s); "
            f"the state is in {result.run_dir / LAST_FILE}",
            "train",
            result.run_dir,
        )
    if not result.chief:
        report_worker_done("train", result.distribution)
        return
    table = Table(title=f"Run {result.run_dir}", title_justify="left", show_header=False)
    table.add_row("epochs completed", str(result.epochs_completed))
    table.add_row("precision", result.precision)
    table.add_row("replicas", result.distribution)
    table.add_row("best epoch", str(result.best_epoch))
    table.add_row(
        "best monitor value", f"{result.best_value:.4f}" if result.best_value is not None else "-"
    )
    table.add_row("model", str(result.run_dir / MODEL_FILE))
    console.print(table)
