"""``mritumor kfold``: grouped, stratified k-fold cross-validation over train + val."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from mritumor.cli.options import (
    BackboneOption,
    BatchSizeOption,
    DevicesOption,
    ImageSizeOption,
    QuietOption,
    RecipeOption,
    SeedOption,
    StrategyOption,
    WeightsOption,
    device_list,
)
from mritumor.cli.runs import RichTrainingObserver, exit_interrupted
from mritumor.cli.state import SetOption, resolve_settings, resumed_settings
from mritumor.cli.ui import console, err_console
from mritumor.core.errors import UsageError
from mritumor.run.layout import BundleError
from mritumor.run.lock import new_run

if TYPE_CHECKING:
    from mritumor.config.schema import Settings
    from mritumor.engine.callbacks import TrainingObserver
    from mritumor.engine.kfold import KFoldResult, Pool
    from mritumor.engine.kfold_summary import FoldMetrics, Summary

#: How long ``kfold --name RUN --fold K`` waits for another host to draw RUN's folds.
JOIN_WAIT_SECONDS = 900.0
JOIN_POLL_SECONDS = 2.0


def kfold(
    ctx: typer.Context,
    folds: Annotated[
        int | None, typer.Option(help="Number of folds [default: 5; a resumed run keeps its own].")
    ] = None,
    fold: Annotated[
        int | None,
        typer.Option(
            help="Run this fold only (1..folds), e.g. one per host; with --name, hosts that "
            "start together share that run."
        ),
    ] = None,
    collect: Annotated[
        Path | None,
        typer.Option(help="Summarise this run once all its folds are scored (after --fold K)."),
    ] = None,
    recipe: RecipeOption = None,
    backbone: BackboneOption = None,
    weights: WeightsOption = None,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Epochs per fold [default: train.epochs].")
    ] = None,
    batch_size: BatchSizeOption = None,
    image_size: ImageSizeOption = None,
    seed: SeedOption = None,
    strategy: StrategyOption = None,
    devices: DevicesOption = None,
    data: Annotated[Path | None, typer.Option(help="Data root [default: paths.data_dir].")] = None,
    name: Annotated[
        str | None,
        typer.Option(help="Run directory name under paths.runs_dir [default: kfold-<n>]."),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue this kfold run: finished folds are skipped."),
    ] = None,
    quiet: QuietOption = False,
    assignments: SetOption = None,
) -> None:
    """Cross-validate: stratified folds of train + val, duplicates kept within one fold.

    Each fold trains a fresh model (checkpoint chosen on an inner val part carved
    from the fold's training portion) and is scored on its held-out fold. Writes
    runs/kfold-<n>/ with folds.csv, fold-<k>/ bundles, oof_predictions.csv,
    kfold_summary.json and reports/kfold_summary.png.
    """
    from mritumor.engine import kfold as library

    flags = {
        "recipe": recipe,
        "model.backbone": backbone,
        "model.weights": weights,
        "train.epochs": epochs,
        "train.batch_size": batch_size,
        "data.image_size": image_size,
        "seed": seed,
        "train.strategy": strategy,
        "train.devices": device_list(devices),
        "paths.data_dir": data,
    }
    if collect is not None:
        settings = resumed_settings(ctx, collect, flags, assignments)
        _report(library.collect(collect, settings.data.class_names))
        return
    if resume is not None:
        settings = resumed_settings(
            ctx,
            resume,
            flags,
            assignments,
            changeable=frozenset({"train.strategy", "train.devices"}),
        )
        library.check_strategy(settings)
        pool = library.read_folds(resume, settings.data.class_names)
        if folds is not None and folds != pool.fold_count:
            raise UsageError(f"run {resume} has {pool.fold_count} folds; drop --folds {folds}")
        library.check_fold_number(fold, pool.fold_count)
        run_dir = resume
    else:
        count = 5 if folds is None else folds
        if count < 2:
            raise UsageError(f"--folds must be at least 2, got {count}")
        library.check_fold_number(fold, count)
        settings = resolve_settings(ctx, flags, assignments or ()).settings
        library.check_strategy(settings)
        if fold is not None and name is not None:
            run_dir, pool = _shared_run(settings, name, count)
        else:
            with new_run(
                settings.paths.runs_dir, "kfold", name=name, started_by=library.FOLDS_FILE
            ) as run_dir:
                pool = library.start_run(settings, run_dir, count)
    result = library.run_folds(
        settings, run_dir, pool, only_fold=fold, observer=_FoldProgress(quiet)
    )
    _report(result)


def _shared_run(settings: Settings, name: str, folds: int) -> tuple[Path, Pool]:
    """Run ``name`` for ``--fold K`` on several hosts: the first host to get there draws the
    folds (holding the run's lock, as a new run does), the others wait for folds.csv and join.

    A host joins only with the settings the run started with (paths aside: each host
    may mount the data elsewhere), so every fold of one run trains the same way.
    """
    from mritumor.engine import kfold as library

    run_dir = settings.paths.runs_dir / name
    deadline = time.monotonic() + JOIN_WAIT_SECONDS
    told = False
    while not (run_dir / library.FOLDS_FILE).is_file():
        try:
            if not run_dir.exists():
                with new_run(
                    settings.paths.runs_dir, "kfold", name=name, started_by=library.FOLDS_FILE
                ) as created:
                    return created, library.start_run(settings, created, folds)
        except BundleError:
            if not run_dir.exists():
                raise
            # Another host made the folder first (it is locked, or not empty): wait for its folds.
        if time.monotonic() > deadline:
            raise UsageError(
                f"{run_dir} has no {library.FOLDS_FILE} after {JOIN_WAIT_SECONDS:.0f} s: the "
                "host drawing its folds stopped, or the folder is not a kfold run; remove it "
                "and start again"
            )
        if not told:
            err_console.print(f"waiting for another host to draw the folds of {run_dir}")
            told = True
        time.sleep(JOIN_POLL_SECONDS)
    _check_same_settings(settings, run_dir)
    pool = library.read_folds(run_dir, settings.data.class_names)
    if pool.fold_count != folds:
        raise UsageError(
            f"run {run_dir} has {pool.fold_count} folds; use --folds {pool.fold_count}"
        )
    return run_dir, pool


def _check_same_settings(settings: Settings, run_dir: Path) -> None:
    from mritumor.config.loading import load_settings
    from mritumor.run.layout import CONFIG_FILE

    started = load_settings(run_dir / CONFIG_FILE, apply_recipe=False).settings
    ours = dict(_dotted(settings.model_dump(mode="json", exclude={"paths"})))
    theirs = dict(_dotted(started.model_dump(mode="json", exclude={"paths"})))
    differing = [key for key, value in ours.items() if theirs.get(key) != value]
    if differing:
        raise UsageError(
            f"{run_dir} was started with other settings ({', '.join(differing[:5])}); "
            "every host of one kfold run must use the same settings"
        )


def _dotted(values: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``{"train": {"epochs": 5}}`` as ``("train.epochs", 5)``."""
    for key, value in values.items():
        if isinstance(value, dict):
            yield from _dotted(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


class _FoldProgress:
    """One line per fold; a fresh epoch/step display for each fold that trains."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.current: RichTrainingObserver | None = None

    def on_fold_begin(self, fold: int, folds: int, action: str) -> TrainingObserver | None:
        words = {
            "skip": "already scored, skipped",
            "score": "trained, scoring",
            "resume": "resuming training",
            "train": "training",
        }
        err_console.print(f"fold {fold}/{folds}: {words.get(action, action)}", highlight=False)
        self._close()
        if self.quiet or action not in ("train", "resume"):
            return None
        self.current = RichTrainingObserver()
        return self.current

    def on_fold_end(self, fold: int, metrics: FoldMetrics | None) -> None:
        self._close()

    def _close(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None


def _report(result: KFoldResult) -> None:
    from mritumor.engine.kfold_summary import METRICS, SUMMARY_FILE

    if result.interrupted:
        exit_interrupted("Interrupted; finished folds are kept", "kfold", result.run_dir)
    table = Table(
        title=f"k-fold run {result.run_dir} ({len(result.metrics)}/{result.fold_count} folds)",
        title_justify="left",
    )
    table.add_column("fold")
    for metric in METRICS:
        table.add_column(metric, justify="right")
    table.add_column("n", justify="right")
    for number, metrics in sorted(result.metrics.items()):
        table.add_row(
            str(number),
            *(f"{getattr(metrics, metric):.4f}" for metric in METRICS),
            str(metrics.n),
        )
    if result.summary:
        table.add_section()
        table.add_row("mean ± std [95% CI]", *(_cell(result.summary[m]) for m in METRICS), "")
    console.print(table)
    console.print(f"summary: {result.run_dir / SUMMARY_FILE}", highlight=False, markup=False)


def _cell(summary: Summary) -> str:
    if not math.isfinite(summary.std):
        return f"{summary.mean:.4f}"
    return f"{summary.mean:.4f} ± {summary.std:.4f} [{summary.ci_low:.4f}, {summary.ci_high:.4f}]"
