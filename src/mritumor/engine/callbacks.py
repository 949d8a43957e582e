"""The Keras callbacks of a fit, and the :class:`TrainingObserver` they report to.

Training, k-fold and finetune share them: per-epoch bookkeeping, early stopping that
tells the bookkeeping it fired, progress for the CLI's display, and Ctrl-C.

Ctrl-C stops after the current batch: ``last.keras`` is saved with the state
reached, the interrupted epoch is not counted (a resumed run repeats it), and
a second Ctrl-C quits at once.
"""

from __future__ import annotations

import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from mritumor.core.environment import import_tensorflow

if not TYPE_CHECKING:
    import_tensorflow()  # quietly, before Keras imports it

import keras

from mritumor.core.errors import MritumorError
from mritumor.engine.checkpoints import Bookkeeping, monitor_mode

if TYPE_CHECKING:
    from mritumor.data.input_pipeline import InputPipeline
    from mritumor.engine.stages import Stage


class TrainingObserver(Protocol):
    """What the CLI's progress display hears about; library code never imports rich."""

    def on_stage_begin(self, stage: Stage, total_epochs: int) -> None: ...

    def on_epoch_begin(self, epoch: int, steps: int) -> None: ...

    def on_batch_end(
        self, step: int, images_per_second: float, logs: Mapping[str, float]
    ) -> None: ...

    def on_epoch_end(self, row: Mapping[str, Any]) -> None: ...

    def on_warning(self, message: str) -> None: ...

    def on_note(self, message: str) -> None: ...


class TrainingInterruptedError(MritumorError):
    """Ctrl-C during training; ``last.keras`` holds the state reached."""


@contextmanager
def expected_end_of_data() -> Iterator[None]:
    """Hide Keras's warning at the end of validation data of unknown length.

    Failed images are filtered out of a dataset, so its length is unknown and it
    ends with an end-of-data that Keras reports as if it were a mistake.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Your input ran out of data", category=UserWarning
        )
        yield


def early_stopping(monitor: str, patience: int, book: Bookkeeping) -> Any:
    """Keras's early stopping, telling ``book`` whether it fired (that ends the stage)."""

    class _EarlyStopping(keras.callbacks.EarlyStopping):  # type: ignore[misc]
        def on_train_end(self, logs: Mapping[str, float] | None = None) -> None:
            super().on_train_end(logs)
            book.stopped_early = self.stopped_epoch > 0

    return _EarlyStopping(monitor=monitor, patience=patience, mode=monitor_mode(monitor))


def run_callbacks(
    stop_requested: Callable[[], bool], book: Bookkeeping, patience: int
) -> list[Any]:
    """What every fit of a run starts with: Ctrl-C, the per-epoch bookkeeping, and early
    stopping on ``book.monitor`` when ``patience`` is set."""
    callbacks: list[Any] = [StopOnRequest(stop_requested), EpochEnd(book)]
    if patience:
        callbacks.append(early_stopping(book.monitor, patience, book))
    return callbacks


class EpochEnd(keras.callbacks.Callback):  # type: ignore[misc]
    """Checkpoints, history and bundle.json after every epoch (:meth:`Bookkeeping.end_epoch`)."""

    def __init__(self, book: Bookkeeping) -> None:
        super().__init__()
        self.book = book

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        self.book.end_epoch(self.model, epoch, dict(logs or {}))


class StopOnRequest(keras.callbacks.Callback):  # type: ignore[misc]
    """Raises :class:`TrainingInterruptedError` at the end of the batch Ctrl-C came in."""

    def __init__(self, stop_requested: Callable[[], bool]) -> None:
        super().__init__()
        self.stop_requested = stop_requested

    def on_train_batch_end(self, batch: int, logs: Mapping[str, float] | None = None) -> None:
        if self.stop_requested():
            raise TrainingInterruptedError("training interrupted")


class ObserverCallback(keras.callbacks.Callback):  # type: ignore[misc]
    """Forwards Keras events to the observer, with images per second."""

    def __init__(
        self,
        observer: TrainingObserver,
        batch_size: int,
        data: InputPipeline,
        val_data: InputPipeline,
        book: Bookkeeping,
    ) -> None:
        super().__init__()
        self.book = book
        self.observer = observer
        self.batch_size = batch_size
        self.steps = data.steps_per_epoch
        self.seen = book.reported_failures
        self.failures = (data.failures, val_data.failures)
        self.started = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        self.started = time.perf_counter()
        self.observer.on_epoch_begin(epoch, self.steps)

    def on_train_batch_end(self, batch: int, logs: Mapping[str, float] | None = None) -> None:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = (batch + 1) * self.batch_size / elapsed
        self.observer.on_batch_end(batch, rate, dict(logs or {}))

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        self.observer.on_epoch_end(self.book.history[-1])
        for failures in self.failures:
            for path, reason in failures.items().items():
                if path not in self.seen:
                    self.seen.add(path)
                    self.observer.on_warning(f"skipped unreadable image: {reason}")


@contextmanager
def stop_on_sigint() -> Iterator[Callable[[], bool]]:
    """A first Ctrl-C asks training to stop after the batch; a second one quits at once.

    Python lets only the main thread install signal handlers; training started
    from another thread (a GUI or web worker) keeps the process's Ctrl-C as it is.
    """
    requested = False
    if threading.current_thread() is not threading.main_thread():
        yield lambda: requested
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        nonlocal requested
        requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield lambda: requested
    finally:
        signal.signal(signal.SIGINT, previous)
