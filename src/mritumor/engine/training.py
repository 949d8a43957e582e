"""Fit orchestration: train a run from its settings, stage by stage, or resume it.

The stages and their optimizers are :mod:`mritumor.engine.stages`; what is saved
after every epoch, and why a run can resume, is :mod:`mritumor.engine.checkpoints`;
early stopping, progress and Ctrl-C are :mod:`mritumor.engine.callbacks`. Early
stopping ends the stage it fires in.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mritumor.core.environment import import_tensorflow

if TYPE_CHECKING:
    import tensorflow as tf
else:
    tf = import_tensorflow()

import keras

from mritumor.config.schema import Settings, TrainSettings
from mritumor.core.errors import ConfigError, UsageError
from mritumor.data.input_pipeline import InputPipeline, PipelineOptions, build_pipeline
from mritumor.data.splits import SplitFiles, carve_calibration_split, load_split, split_exists
from mritumor.engine.callbacks import (
    ObserverCallback,
    TrainingInterruptedError,
    TrainingObserver,
    run_callbacks,
    stop_on_sigint,
)
from mritumor.engine.checkpoints import Bookkeeping, write_curves
from mritumor.engine.distribution import (
    Distribution,
    check_same_global_batch,
    fit_epochs,
    resolve_distribution,
)
from mritumor.engine.precision import (
    PrecisionChoice,
    detect_hardware,
    resolve_precision,
    saved_precision,
)
from mritumor.engine.stages import Stage, StageName, compile_for, plan_stages
from mritumor.models.classifier import backbone_layers, build_classifier
from mritumor.run.bundle import Bundle, new_bundle, read_bundle, write_bundle, write_config
from mritumor.run.layout import LAST_FILE, MODEL_FILE, RunLayout
from mritumor.run.model_file import load_model
from mritumor.run.splits import dataset_fingerprint, read_split, write_splits


@dataclass
class TrainResult:
    run_dir: Path
    epochs_completed: int
    best_epoch: int | None
    best_value: float | None
    interrupted: bool
    precision: str = ""
    """The policy trained with and why, e.g. ``float32 (auto: CPU without native bfloat16)``."""
    distribution: str = "1 replica (one device)"
    """How many replicas trained, and on what (:meth:`Distribution.describe`)."""
    chief: bool = True
    """False on a multiworker run's other workers, which wrote nothing."""
    decode_failures: dict[str, str] = field(default_factory=dict)


def train(
    settings: Settings,
    run_dir: Path,
    *,
    resume: bool = False,
    observer: TrainingObserver | None = None,
) -> TrainResult:
    """Train into ``run_dir`` (fresh: an empty new run directory; resume: an existing run).

    Under ``train.strategy`` (:mod:`mritumor.engine.distribution`); on a multiworker
    run's other workers ``run_dir`` is only read (to resume), never written.
    """
    _check_compatible(settings)
    distribution = resolve_distribution(settings.train)  # before TensorFlow runs anything
    precision = configure_runtime(settings)
    splits = _splits(settings, run_dir, resume=resume)
    train_split, val_split = splits[:2]
    compiled_for: StageName | None
    bundle: Bundle | None = None
    with distribution.scope():
        if resume:
            check_same_global_batch(read_bundle(run_dir), distribution, settings.train)
            model = load_model(_resumable_state(run_dir), compile=True)
            compiled_for = _stage_of(model)
            precision = _kept_precision(model, precision)
        else:
            # Built before anything is written: a bad backbone or weights leaves no half-made run.
            model, compiled_for = build_classifier(settings), None
            bundle = _start_run(settings, run_dir, splits, writes=distribution.chief)
    if observer is not None:
        observer.on_note(f"precision {precision.describe()}")
        observer.on_note(f"training on {distribution.describe()}")
    book = Bookkeeping(
        run_dir, settings.train.monitor, resume=resume, writes=distribution.chief, bundle=bundle
    )
    book.record_runtime(settings, precision, distribution.record(settings.train))
    train_data = build_pipeline(
        train_split,
        PipelineOptions.from_settings(settings, training=True, replicas=distribution.replicas),
    )
    val_data = build_pipeline(
        val_split,
        PipelineOptions.from_settings(settings, training=False, replicas=distribution.replicas),
    )
    interrupted = False
    with stop_on_sigint() as stop_requested:
        run = _Run(settings, distribution, train_data, val_data, book, stop_requested, observer)
        try:
            for stage in _remaining_stages(settings.train, book):
                if stage.name != compiled_for:
                    with distribution.scope():
                        compile_for(
                            stage,
                            model,
                            settings,
                            train_data.steps_per_epoch,
                            lr_scale=distribution.lr_scale(settings.train),
                        )
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
        distribution=distribution.describe(),
        chief=distribution.chief,
        decode_failures={**train_data.failures.items(), **val_data.failures.items()},
    )


def _resumable_state(run_dir: Path) -> Path:
    """``last.keras``; a run stopped before its first checkpoint has none, and is incomplete."""
    last = RunLayout(run_dir).last
    if last.exists():
        return last
    if read_bundle(run_dir).epochs_completed:
        raise UsageError(
            f"{run_dir} has no {LAST_FILE} to resume from (it was moved or deleted); "
            f"its {MODEL_FILE} still holds the best epoch, for eval and infer; "
            "to train further, start a new run"
        )
    raise UsageError(
        f"{run_dir} is incomplete: it stopped before its first epoch ended, so there is no "
        f"{LAST_FILE} to resume from; start a new run (remove {run_dir} or choose "
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
            read_split(run_dir, "train", names, data_root=root),
            read_split(run_dir, "val", names, data_root=root),
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


def _start_run(
    settings: Settings, run_dir: Path, splits: tuple[SplitFiles, ...], *, writes: bool
) -> Bundle:
    """The new run's bundle; written, with its config and splits, unless ``writes`` is False."""
    bundle = new_bundle(settings, "train", dataset_fingerprint=dataset_fingerprint(splits))
    if writes:
        write_config(run_dir, settings)
        write_splits(run_dir, settings.paths.data_dir, splits)
        write_bundle(run_dir, bundle)
    return bundle


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


@dataclass(frozen=True)
class _Run:
    """What every stage of one training run shares."""

    settings: Settings
    distribution: Distribution
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
    fit_epochs(
        model,
        run.distribution,
        # Repeated with a fixed number of steps: Keras counts one optimizer step too
        # many per epoch on a dataset of unknown length, which moves the schedule.
        train_data.dataset.repeat(),
        val_data.dataset,
        steps_per_epoch=train_data.steps_per_epoch,
        initial_epoch=stage.start,
        epochs=stage.end,
        callbacks=_callbacks(run),
    )


def _callbacks(run: _Run) -> list[Any]:
    settings, book, observer = run.settings, run.book, run.observer
    patience = settings.train.early_stopping_patience
    callbacks = run_callbacks(run.stop_requested, book, patience)
    if settings.train.reduce_lr_on_plateau:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=settings.train.monitor, factor=0.5, patience=max(patience // 2, 1)
            )
        )
    if settings.train.tensorboard and book.writes:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(book.run_dir / "tensorboard")))
    if observer is not None:
        callbacks.append(
            ObserverCallback(
                observer,
                run.distribution.global_batch(settings.train.batch_size),
                run.train_data,
                run.val_data,
                book,
            )
        )
    return callbacks
