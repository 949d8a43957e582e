"""Fit orchestration: two stages, checkpoints, history, resume and Ctrl-C.

Stage ``frozen`` trains the head with the backbone frozen (its BatchNorm in
inference mode) at ``train.lr``; stage ``full`` trains the whole network at
``train.finetune_lr`` (or at ``train.lr`` when there was no frozen stage).
Each stage gets a fresh optimizer whose warm-up + cosine schedule spans that
stage. Early stopping ends the stage it fires in.

After every epoch, in this order: ``last.keras`` (weights and optimizer state)
is written atomically, ``model.keras`` too when the monitored value improved,
then the history files and ``bundle.json``. So ``epochs_completed`` in the
bundle never runs ahead of ``last.keras``, and ``--resume`` continues from the
next epoch with the optimizer's step counter, hence the schedule position.

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
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal, Protocol

from mritumor.core.environment import import_tensorflow

if TYPE_CHECKING:
    import tensorflow as tf
else:
    tf = import_tensorflow()

import keras

from mritumor.config.settings import Settings, TrainSettings
from mritumor.core.errors import ConfigError, MritumorError, UsageError
from mritumor.data.input_pipeline import InputPipeline, PipelineOptions, build_pipeline
from mritumor.data.splits import SplitFiles, carve_calibration_split, load_split, split_exists
from mritumor.engine.losses import make_loss, make_optimizer
from mritumor.engine.precision import PrecisionChoice, resolve_precision
from mritumor.models.classifier import (
    backbone_layers,
    build_classifier,
    load_model,
    set_backbone_trainable,
)
from mritumor.run import bundle as bundles

StageName = Literal["frozen", "full"]
UNFREEZE_KEY = "unfreeze_epoch"
PRECISION_KEY = "precision"
RECIPE_KEY = "recipe"
BEST_VALUE_KEY = "best_value"


@dataclass(frozen=True)
class Stage:
    """Epochs ``[start, end)`` (0-based) trained with one optimizer and one trainable state."""

    name: StageName
    start: int
    end: int
    peak_lr: float

    @property
    def backbone_trainable(self) -> bool:
        return self.name == "full"


def plan_stages(train: TrainSettings) -> list[Stage]:
    """The frozen stage (if any) then the full stage (if any epochs remain)."""
    frozen_epochs = min(train.freeze_backbone_epochs, train.epochs)
    stages = []
    if frozen_epochs:
        stages.append(Stage("frozen", 0, frozen_epochs, train.lr))
    if frozen_epochs < train.epochs:
        full_lr = train.finetune_lr if frozen_epochs else train.lr
        stages.append(Stage("full", frozen_epochs, train.epochs, full_lr))
    return stages


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


@dataclass
class TrainResult:
    run_dir: Path
    epochs_completed: int
    best_epoch: int | None
    best_value: float | None
    interrupted: bool
    precision: str = ""
    """The policy trained with and why, e.g. ``float32 (auto: CPU without native bfloat16)``."""
    decode_failures: dict[str, str] = field(default_factory=dict)


def train(
    settings: Settings,
    run_dir: Path,
    *,
    resume: bool = False,
    observer: TrainingObserver | None = None,
) -> TrainResult:
    """Train into ``run_dir`` (fresh: an empty new run directory; resume: an existing run)."""
    _check_compatible(settings)
    precision = configure_runtime(settings)
    splits = _splits(settings, run_dir, resume=resume)
    train_split, val_split = splits[:2]
    compiled_for: StageName | None
    if resume:
        model = load_model(_resumable_state(run_dir), compile=True)
        compiled_for = _stage_of(model)
        precision = _kept_precision(model, precision)
    else:
        # Built before anything is written: a bad backbone or weights leaves no half-made run.
        model, compiled_for = build_classifier(settings), None
        _start_run(settings, run_dir, splits)
    if observer is not None:
        observer.on_note(f"precision {precision.describe()}")
    book = Bookkeeping(run_dir, settings.train.monitor, resume=resume)
    book.record_runtime(settings, precision)
    train_data = build_pipeline(train_split, PipelineOptions.from_settings(settings, training=True))
    val_data = build_pipeline(val_split, PipelineOptions.from_settings(settings, training=False))
    interrupted = False
    with stop_on_sigint() as stop_requested:
        run = _Run(settings, train_data, val_data, book, stop_requested, observer)
        try:
            for stage in _remaining_stages(settings.train, book):
                if stage.name != compiled_for:
                    _compile_for(stage, model, settings, train_data.steps_per_epoch)
                    compiled_for = stage.name
                _run_stage(stage, model, run)
                if book.stopped_early and stage.name == "full":
                    break
        except TrainingInterruptedError:
            interrupted = True
            book.save_last(model)
    write_curves(run_dir, book)
    return TrainResult(
        run_dir=run_dir,
        epochs_completed=len(book.history),
        best_epoch=book.best_epoch,
        best_value=book.best_value,
        interrupted=interrupted,
        precision=precision.describe(),
        decode_failures={**train_data.failures.items(), **val_data.failures.items()},
    )


def _resumable_state(run_dir: Path) -> Path:
    """``last.keras``; a run stopped before its first checkpoint has none, and is incomplete."""
    last = run_dir / bundles.LAST_FILE
    if last.exists():
        return last
    if bundles.read_bundle(run_dir).epochs_completed:
        raise UsageError(
            f"{run_dir} has no {bundles.LAST_FILE} to resume from (it was moved or deleted); "
            f"its {bundles.MODEL_FILE} still holds the best epoch, for eval and infer; "
            "to train further, start a new run"
        )
    raise UsageError(
        f"{run_dir} is incomplete: it stopped before its first epoch ended, so there is no "
        f"{bundles.LAST_FILE} to resume from; start a new run (remove {run_dir} or choose "
        "another --name)"
    )


def _check_compatible(settings: Settings) -> None:
    train = settings.train
    if train.reduce_lr_on_plateau and train.cosine_decay:
        raise ConfigError(
            "train.reduce_lr_on_plateau needs a constant learning rate: "
            "set train.cosine_decay to false, or turn reduce_lr_on_plateau off"
        )
    if settings.model.weights.lower() == "none" and train.freeze_backbone_epochs:
        warnings.warn(
            f"the backbone starts from random weights, so the {train.freeze_backbone_epochs} "
            "frozen epoch(s) train the head on random features; consider "
            "train.freeze_backbone_epochs: 0 (--freeze-epochs 0)",
            UserWarning,
            stacklevel=3,
        )


def configure_runtime(settings: Settings) -> PrecisionChoice:
    """Seed, determinism and the precision policy; the policy chosen (and why) is returned."""
    keras.utils.set_random_seed(settings.seed)
    if settings.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    choice = resolve_precision(settings.train.precision)
    if choice.warning is not None:
        warnings.warn(choice.warning, UserWarning, stacklevel=2)
    keras.mixed_precision.set_global_policy(choice.policy)
    return choice


def _kept_precision(model: Any, chosen: PrecisionChoice) -> PrecisionChoice:
    """A resumed model trains in the policy saved with its layers, whatever was chosen now."""
    from mritumor.engine.precision import detect_hardware, saved_precision

    # Keras keeps each layer's policy in its config, not the model's: ask a backbone layer.
    policy = next(
        (layer.dtype_policy.name for layer in backbone_layers(model) if layer.weights),
        chosen.policy,
    )
    if policy == chosen.policy:
        return chosen
    kept = saved_precision(policy, detect_hardware())
    if kept.warning is not None:
        warnings.warn(kept.warning, UserWarning, stacklevel=3)
    return kept


def _splits(settings: Settings, run_dir: Path, *, resume: bool) -> tuple[SplitFiles, ...]:
    """``(train, val)``, then ``cal`` and ``test`` when there are, for the run to persist.

    Fresh runs read the data root and carve ``cal`` from train when
    ``data.cal_size`` asks for it; a resumed run reuses its persisted train and val.
    """
    names = settings.data.class_names
    root = settings.paths.data_dir
    if resume:
        return (
            bundles.read_split(run_dir, "train", names, data_root=root),
            bundles.read_split(run_dir, "val", names, data_root=root),
        )
    train_split = load_split(root, "train", names)
    try:
        val_split = load_split(root, "val", names)
    except UsageError as error:
        raise UsageError(
            f"{error}; training selects its checkpoint on a val split "
            "(`mritumor data prepare` carves one)"
        ) from None
    held_out: list[SplitFiles] = []
    if settings.data.cal_size > 0:
        train_split, cal_split = carve_calibration_split(
            train_split, settings.data.cal_size, settings.seed
        )
        held_out.append(cal_split)
    if split_exists(root, "test"):
        held_out.append(load_split(root, "test", names))
    return (train_split, val_split, *held_out)


def _start_run(settings: Settings, run_dir: Path, splits: tuple[SplitFiles, ...]) -> None:
    bundles.write_config(run_dir, settings)
    bundles.write_splits(run_dir, settings.paths.data_dir, splits)
    fingerprint = bundles.dataset_fingerprint(splits)
    bundles.write_bundle(
        run_dir, bundles.new_bundle(settings, "train", dataset_fingerprint=fingerprint)
    )


def _stage_of(model: Any) -> StageName:
    """The stage a saved model was compiled for, read from its backbone's trainable flags.

    Not from the bundle's ``unfreeze_epoch``: that is written when the full stage
    begins, before ``last.keras`` is first saved in it, so a run that crashed in
    its first full epoch has a frozen ``last.keras`` (and the frozen stage's
    optimizer) although the bundle says the backbone was unfrozen.
    """
    return "full" if any(layer.trainable for layer in backbone_layers(model)) else "frozen"


def _remaining_stages(train: TrainSettings, book: Bookkeeping) -> Iterator[Stage]:
    """The stages still to run, each starting at the first epoch not yet completed.

    Evaluated lazily, so a frozen stage that stopped early hands over to the
    full stage at the epoch it stopped.
    """
    for stage in plan_stages(train):
        if stage.name == "frozen" and book.unfrozen_at is not None:
            continue
        start = len(book.history)
        if start < stage.end:
            yield Stage(stage.name, start, stage.end, stage.peak_lr)


def _compile_for(stage: Stage, model: Any, settings: Settings, steps_per_epoch: int) -> None:
    """A fresh optimizer for the stage; its schedule spans the stage's remaining epochs."""
    set_backbone_trainable(model, stage.backbone_trainable)
    model.compile(
        optimizer=make_optimizer(
            settings.train, stage.peak_lr, steps_per_epoch, stage.end - stage.start
        ),
        loss=make_loss(settings.train, len(settings.data.class_names)),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=settings.train.xla,
    )


@dataclass(frozen=True)
class _Run:
    """What every stage of one training run shares."""

    settings: Settings
    train_data: InputPipeline
    val_data: InputPipeline
    book: Bookkeeping
    stop_requested: Callable[[], bool]
    observer: TrainingObserver | None


def _run_stage(stage: Stage, model: Any, run: _Run) -> None:
    settings, train_data, val_data, book = run.settings, run.train_data, run.val_data, run.book
    observer = run.observer
    book.begin_stage(stage)
    if observer is not None:
        observer.on_stage_begin(stage, settings.train.epochs)
    with expected_end_of_data():
        model.fit(
            # Repeated with a fixed number of steps: Keras counts one optimizer step too
            # many per epoch on a dataset of unknown length, which moves the schedule.
            train_data.dataset.repeat(),
            steps_per_epoch=train_data.steps_per_epoch,
            validation_data=val_data.dataset,
            initial_epoch=stage.start,
            epochs=stage.end,
            callbacks=_callbacks(run),
            shuffle=False,  # the input pipeline shuffles, seeded
            verbose=0,
        )


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


def _callbacks(run: _Run) -> list[Any]:
    settings, book, observer = run.settings, run.book, run.observer
    callbacks: list[Any] = [StopOnRequest(run.stop_requested), EpochEnd(book)]
    patience = settings.train.early_stopping_patience
    if patience:
        callbacks.append(early_stopping(settings.train.monitor, patience, book))
    if settings.train.reduce_lr_on_plateau:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=settings.train.monitor, factor=0.5, patience=max(patience // 2, 1)
            )
        )
    if settings.train.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(book.run_dir / "tensorboard")))
    if observer is not None:
        callbacks.append(
            ObserverCallback(
                observer, settings.train.batch_size, run.train_data, run.val_data, book
            )
        )
    return callbacks


def _mode(monitor: str) -> Literal["min", "max"]:
    return "min" if monitor.endswith("loss") else "max"


class Bookkeeping:
    """Checkpoints, history and bundle updates: the state that makes a run resumable."""

    def __init__(self, run_dir: Path, monitor: str, *, resume: bool) -> None:
        self.run_dir = run_dir
        self.monitor = monitor
        self.history: list[dict[str, Any]] = bundles.read_history(run_dir) if resume else []
        self.bundle = bundles.read_bundle(run_dir)
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

    def record_runtime(self, settings: Settings, precision: PrecisionChoice) -> None:
        """The recipe and the resolved precision, in bundle.json's ``extra``.

        A resumed run may resume on other hardware: the precision of each
        session is kept, the first one under ``precision``, later ones appended.
        """
        chosen = {
            "policy": precision.policy,
            "requested": precision.requested,
            "reason": precision.reason,
        }
        extra = dict(self.bundle.extra)
        extra.setdefault(RECIPE_KEY, settings.recipe)
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
            _save_atomically(model, self.run_dir / bundles.MODEL_FILE)
        row = {"epoch": epoch + 1, "stage": self.stage, "lr": _current_lr(model), **logs}
        self.history.append(row)
        bundles.write_history(self.run_dir, self.history)
        self._update(
            epochs_completed=len(self.history),
            best_epoch=self.best_epoch,
            extra={**self.bundle.extra, BEST_VALUE_KEY: self.best_value},
        )
        return row

    def save_last(self, model: Any) -> None:
        _save_atomically(model, self.run_dir / bundles.LAST_FILE)

    def _improves(self, value: float) -> bool:
        if self.best_value is None:
            return True
        if _mode(self.monitor) == "min":
            return value < self.best_value
        return value > self.best_value

    def _update(self, **changes: Any) -> None:
        self.bundle = bundles.update_bundle(self.run_dir, **changes)


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


def early_stopping(monitor: str, patience: int, book: Bookkeeping) -> Any:
    class _EarlyStopping(keras.callbacks.EarlyStopping):  # type: ignore[misc]
        def on_train_end(self, logs: Mapping[str, float] | None = None) -> None:
            super().on_train_end(logs)
            book.stopped_early = self.stopped_epoch > 0

    return _EarlyStopping(monitor=monitor, patience=patience, mode=_mode(monitor))


class EpochEnd(keras.callbacks.Callback):  # type: ignore[misc]
    def __init__(self, book: Bookkeeping) -> None:
        super().__init__()
        self.book = book

    def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
        self.book.end_epoch(self.model, epoch, dict(logs or {}))


class StopOnRequest(keras.callbacks.Callback):  # type: ignore[misc]
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


def write_curves(run_dir: Path, book: Bookkeeping) -> None:
    from mritumor.plots import plot_training_curves

    if book.history:
        plot_training_curves(
            book.history,
            run_dir / bundles.REPORTS_DIR,
            unfreeze_epoch=book.unfrozen_at or None,
            best_epoch=book.best_epoch,
        )
