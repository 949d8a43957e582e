"""The run directory as the training commands (train, kfold, finetune) see it.

Which run a training command writes (``--resume``, ``--name``, ``--exist-ok``), the
rich display of the epochs, and the message and exit code of a run stopped by Ctrl-C.
The folder itself (creating it, its files, its lock) belongs to :mod:`mritumor.run`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.markup import escape

from mritumor.cli.ui import console, status_progress
from mritumor.core.errors import EXIT_INTERRUPTED
from mritumor.run.lock import claimed_run, new_run

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from mritumor.config.schema import Settings
    from mritumor.engine.stages import Stage


@contextmanager
def training_run(
    settings: Settings,
    command: str,
    *,
    resume: Path | None,
    name: str | None,
    exist_ok: bool,
    quiet: bool,
) -> Iterator[tuple[Path, RichTrainingObserver | None]]:
    """The run a training command writes, held for the block, and the epoch display unless quiet.

    ``--resume``'s run, or a new one from ``--name`` / ``--exist-ok`` that is removed again
    if the command fails before the run started (:func:`mritumor.run.lock.new_run`).
    A multiworker run's other workers (all but the chief) neither make nor lock a run: they
    only read ``--resume``'s, and the path they get for a new run is never written. Telling
    them apart makes ``train.strategy``'s strategy, before TensorFlow runs anything.
    """
    from mritumor.engine.distribution import resolve_distribution

    if not resolve_distribution(settings.train).chief:
        with _training_observer(quiet) as observer:
            yield resume or settings.paths.runs_dir / (name or command), observer
        return
    run = (
        claimed_run(resume, fresh=False)
        if resume is not None
        else new_run(settings.paths.runs_dir, command, name=name, exist_ok=exist_ok)
    )
    with run as run_dir, _training_observer(quiet) as observer:
        yield run_dir, observer


@contextmanager
def _training_observer(quiet: bool) -> Iterator[RichTrainingObserver | None]:
    """A :class:`RichTrainingObserver`, closed at the end; none with ``--quiet``."""
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
            _format_epoch(row, self.total_epochs), soft_wrap=True, markup=False, highlight=False
        )

    def on_warning(self, message: str) -> None:
        # File names may hold brackets, which rich would read as markup.
        self.progress.console.print(
            f"[yellow]warning:[/] {escape(message)}", soft_wrap=True, markup=True
        )

    def on_note(self, message: str) -> None:
        self.progress.console.print(message, soft_wrap=True, markup=False, highlight=False)

    def close(self) -> None:
        if self.epochs is not None:
            self.progress.stop()


def _format_epoch(row: Mapping[str, Any], total_epochs: int) -> str:
    """``epoch 3/10 [full] loss 0.8123 accuracy 0.7100 val_loss ... lr 1.0e-04``."""
    parts = [f"epoch {row['epoch']}/{total_epochs} [{row['stage']}]"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if key in row:
            parts.append(f"{key} {float(row[key]):.4f}")
    parts.append(f"lr {float(row['lr']):.1e}")
    return " ".join(parts)


def exit_interrupted(summary: str, command: str, run_dir: Path) -> NoReturn:
    """After Ctrl-C: ``summary``, the command that resumes the run, and exit code 130."""
    console.print(
        f"{summary}. Resume with:\n  mritumor {command} --resume {run_dir}",
        soft_wrap=True,
        markup=False,
        highlight=False,
    )
    raise typer.Exit(EXIT_INTERRUPTED)


def report_worker_done(command: str, distribution: str) -> None:
    """The summary of a multiworker run's other workers, which wrote nothing."""
    console.print(
        f"{command}: this worker's part is done ({distribution}); the chief wrote the run",
        highlight=False,
    )
