"""The state that makes a run resumable: checkpoints, history and bundle.json's progress.

After every epoch, in this order: ``last.keras`` (weights and optimizer state)
is written atomically, ``model.keras`` too when the monitored value improved,
then the history files and ``bundle.json``. So ``epochs_completed`` in the
bundle never runs ahead of ``last.keras``, and ``--resume`` continues from the
next epoch with the optimizer's step counter, hence the schedule position.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mritumor.core.errors import MritumorError
from mritumor.plots import plot_training_curves
from mritumor.run.bundle import Bundle, read_bundle, update_bundle
from mritumor.run.history import read_history, write_history
from mritumor.run.layout import RunLayout

if TYPE_CHECKING:
    from mritumor.config.schema import Settings
    from mritumor.engine.precision import PrecisionChoice
    from mritumor.engine.stages import Stage, StageName

UNFREEZE_KEY = "unfreeze_epoch"
PRECISION_KEY = "precision"
RECIPE_KEY = "recipe"
DISTRIBUTION_KEY = "distribution"
BEST_VALUE_KEY = "best_value"


def monitor_mode(monitor: str) -> Literal["min", "max"]:
    """Whether the monitored value improves downwards (a loss) or upwards."""
    return "min" if monitor.endswith("loss") else "max"


class Bookkeeping:
    """Checkpoints, history and bundle updates: the state that makes a run resumable.

    With ``writes`` False (a multiworker run's other workers) the same state is
    kept in memory only; ``bundle`` is then the new run's bundle, which the chief
    writes, or None to read the run's own (to resume).
    """

    def __init__(
        self,
        run_dir: Path,
        monitor: str,
        *,
        resume: bool,
        writes: bool = True,
        bundle: Bundle | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.monitor = monitor
        self.writes = writes
        self.history: list[dict[str, Any]] = read_history(run_dir) if resume else []
        self.bundle = bundle if bundle is not None else read_bundle(run_dir)
        self.stage: StageName = "frozen"
        self.stopped_early = False
        best = self.bundle.extra.get(BEST_VALUE_KEY)
        self.best_value: float | None = float(best) if best is not None else None
        self.best_epoch: int | None = self.bundle.best_epoch
        self.reported_failures: set[str] = set()
        """Unreadable files already passed to the observer (once per run, not per stage)."""

    @property
    def unfrozen_at(self) -> int | None:
        """The 0-based epoch the full stage began, or None while still frozen."""
        value = self.bundle.extra.get(UNFREEZE_KEY)
        return int(value) if value is not None else None

    def record_runtime(
        self, settings: Settings, precision: PrecisionChoice, distribution: Mapping[str, Any]
    ) -> None:
        """The recipe, the resolved precision and the distribution, in bundle.json's ``extra``.

        A resumed run may resume on other hardware: the precision of each
        session is kept, the first one under ``precision``, later ones appended.
        A resumed run keeps its replicas, so the distribution is recorded once.
        """
        chosen = {
            "policy": precision.policy,
            "requested": precision.requested,
            "reason": precision.reason,
        }
        extra = dict(self.bundle.extra)
        extra.setdefault(RECIPE_KEY, settings.recipe)
        extra.setdefault(DISTRIBUTION_KEY, dict(distribution))
        previous = extra.get(PRECISION_KEY)
        if previous is None:
            extra[PRECISION_KEY] = chosen
        elif previous != chosen:
            extra[PRECISION_KEY + "_resumed"] = [*extra.get(PRECISION_KEY + "_resumed", []), chosen]
        self._update(extra=extra)

    def begin_stage(self, stage: Stage) -> None:
        self.stage = stage.name
        self.stopped_early = False
        if stage.name == "full" and self.unfrozen_at is None:
            self._update(extra={**self.bundle.extra, UNFREEZE_KEY: stage.start})

    def end_epoch(self, model: Any, epoch: int, logs: Mapping[str, float]) -> dict[str, Any]:
        self.save_last(model)
        value = logs.get(self.monitor)
        if value is not None and self._improves(float(value)):
            self.best_value, self.best_epoch = float(value), epoch + 1
            if self.writes:
                _save_atomically(model, RunLayout(self.run_dir).model)
        row = {"epoch": epoch + 1, "stage": self.stage, "lr": _current_lr(model), **logs}
        self.history.append(row)
        if self.writes:
            write_history(self.run_dir, self.history)
        self._update(
            epochs_completed=len(self.history),
            best_epoch=self.best_epoch,
            extra={**self.bundle.extra, BEST_VALUE_KEY: self.best_value},
        )
        return row

    def save_last(self, model: Any) -> None:
        if self.writes:
            _save_atomically(model, RunLayout(self.run_dir).last)

    def _improves(self, value: float) -> bool:
        if self.best_value is None:
            return True
        if monitor_mode(self.monitor) == "min":
            return value < self.best_value
        return value > self.best_value

    def _update(self, **changes: Any) -> None:
        if self.writes:
            self.bundle = update_bundle(self.run_dir, **changes)
            return
        for name, value in changes.items():
            setattr(self.bundle, name, value)


def _save_atomically(model: Any, path: Path) -> None:
    """Save through a temporary file and a rename: a crash or a full disk keeps the old file."""
    temporary = path.with_name(f".{path.stem}.partial.keras")  # Keras wants the suffix
    try:
        model.save(temporary)
        temporary.replace(path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        kept = f"; the previous {path.name} is kept" if path.exists() else ""
        raise MritumorError(
            f"cannot write checkpoint {path}: {error.strerror or error}{kept}"
        ) from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _current_lr(model: Any) -> float:
    optimizer = model.optimizer
    rate = optimizer.learning_rate
    return float(rate.numpy() if hasattr(rate, "numpy") else rate)


def write_curves(run_dir: Path, book: Bookkeeping) -> None:
    """The accuracy and loss curves of the history so far, into ``reports/`` (by the chief)."""
    if book.history and book.writes:
        plot_training_curves(
            book.history,
            RunLayout(run_dir).reports,
            unfreeze_epoch=book.unfrozen_at or None,
            best_epoch=book.best_epoch,
        )
