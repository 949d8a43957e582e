"""``mritumor finetune``: adapt a trained run to an external yes/no set, keeping its 4 classes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from mritumor.cli.options import (
    DevicesOption,
    ExistOkOption,
    QuietOption,
    RunOption,
    SeedOption,
    StrategyOption,
    device_list,
)
from mritumor.cli.runs import exit_interrupted, report_worker_done, training_run
from mritumor.cli.state import SetOption, resolve_settings, resumed_settings
from mritumor.cli.ui import console
from mritumor.run.layout import RunLayout, latest_run

if TYPE_CHECKING:
    from mritumor.engine.finetune import FinetuneResult


def finetune(
    ctx: typer.Context,
    run: RunOption = None,
    external: Annotated[
        Path | None,
        typer.Option(help="External yes/no folder [default: finetune.external]."),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Epochs [default: finetune.epochs].")
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate [default: finetune.lr].")] = None,
    unfreeze_blocks: Annotated[
        int | None,
        typer.Option(min=0, help="Train only the last N backbone blocks [default: all]."),
    ] = None,
    pos_weight: Annotated[
        float | None,
        typer.Option(
            help="Weight of tumour images in the binary loss [default: finetune.pos_weight]."
        ),
    ] = None,
    replay_fraction: Annotated[
        float | None,
        typer.Option(
            help="Share of each batch replayed from the 4-class train split "
            "[default: finetune.replay_fraction]."
        ),
    ] = None,
    seed: SeedOption = None,
    strategy: StrategyOption = None,
    devices: DevicesOption = None,
    name: Annotated[
        str | None,
        typer.Option(help="Run directory name under paths.runs_dir [default: finetune-<n>]."),
    ] = None,
    exist_ok: ExistOkOption = False,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue this finetune run from its last.keras."),
    ] = None,
    quiet: QuietOption = False,
    assignments: SetOption = None,
) -> None:
    """Fine-tune a run on an external tumour / no-tumour set without losing its 4 classes.

    Splits the external set once into ext_train, ext_val and ext_holdout; trains
    on ext_train mixed with replayed 4-class images under a masked hybrid loss;
    selects and stops on ext_val; reports before/after on ext_holdout and on the
    4-class test split. Writes a new run (runs/finetune-<n>) that records its parent.
    """
    from mritumor.engine.finetune import finetune as finetune_run
    from mritumor.run.bundle import read_bundle

    flags = {
        "finetune.external": external,
        "finetune.epochs": epochs,
        "finetune.lr": lr,
        "finetune.unfreeze_blocks": unfreeze_blocks,
        "finetune.pos_weight": pos_weight,
        "finetune.replay_fraction": replay_fraction,
        "seed": seed,
        "train.strategy": strategy,
        "train.devices": device_list(devices),
    }
    if resume is not None:
        bundle = read_bundle(resume)
        settings = resumed_settings(
            ctx,
            resume,
            flags,
            assignments,
            changeable=frozenset({"finetune.epochs", "train.strategy", "train.devices"}),
        )
        parent = Path(bundle.parent or "")
    else:
        settings = resolve_settings(ctx, flags, assignments or ()).settings
        parent = run or latest_run(settings.paths.runs_dir, "train")
        read_bundle(parent)  # a clear error before a run directory is made
    with training_run(
        settings, "finetune", resume=resume, name=name, exist_ok=exist_ok, quiet=quiet
    ) as (run_dir, observer):
        result = finetune_run(
            settings, parent, run_dir, resume=resume is not None, observer=observer
        )
    _show(result)


def _show(result: FinetuneResult) -> None:
    if result.interrupted:
        exit_interrupted(
            f"Interrupted after {result.epochs_completed} epoch(s)", "finetune", result.run_dir
        )
    if not result.chief:
        report_worker_done("finetune", result.distribution)
        return
    report = result.report
    table = Table(title=f"Fine-tuned {result.run_dir}", title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    rows: list[tuple[str, str, str]] = [
        ("threshold (chosen on ext_val)", "threshold", ""),
        ("sensitivity (ext_holdout)", "ext_holdout", "sensitivity"),
        ("specificity (ext_holdout)", "ext_holdout", "specificity"),
        ("false negatives (ext_holdout)", "ext_holdout", "fn"),
        ("false positives (ext_holdout)", "ext_holdout", "fp"),
        ("AUC (ext_holdout)", "ext_holdout", "auc"),
        ("accuracy (4-class test)", "test", "accuracy"),
        ("macro-F1 (4-class test)", "test", "macro_f1"),
    ]
    for label, part, key in rows:
        values = [_value(report[when], part, key) for when in ("before", "after")]
        if any(value != "-" for value in values):
            table.add_row(label, *values)
    console.print(table)
    dropped = report.get("external_training_duplicates_dropped", 0)
    if dropped:
        console.print(
            f"Left out {dropped} external image(s) that copy the parent's training images "
            f"(listed in {RunLayout(result.run_dir).bundle}, extra.external_training_duplicates).",
            soft_wrap=True,
            markup=False,
            highlight=False,
        )
    console.print(
        f"Best epoch {result.best_epoch} of {result.epochs_completed} on "
        f"{result.distribution}; report in "
        f"{RunLayout(result.run_dir).reports}. Next: mritumor calibrate --run {result.run_dir}, "
        f"then mritumor threshold --run {result.run_dir} (both on ext_val).",
        soft_wrap=True,
        markup=False,
        highlight=False,
    )


def _value(scores: dict[str, Any], part: str, key: str) -> str:
    value = scores.get(part) if not key else scores.get(part, {}).get(key)
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.3f}"
