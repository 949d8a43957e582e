"""Domain adaptation: fine-tune a trained run on an external tumour / no-tumour set.

The external ``yes/no`` folder is split once into ``ext_train``, ``ext_val`` and
``ext_holdout`` (:mod:`mritumor.engine.finetune_data`). ``ext_train`` trains,
``ext_val`` selects the checkpoint, stops early and chooses the thresholds the
report compares at (:mod:`mritumor.engine.finetune_report`), and ``ext_holdout``
is only ever scored.

Each batch mixes external images with images replayed from the parent's
4-class ``train`` split (``finetune.replay_fraction`` of the batch), under a
masked hybrid loss (:class:`~mritumor.engine.finetune_loss.HybridLoss`): binary cross-entropy on the tumour
score for external images, categorical cross-entropy for replayed ones, so the
model gains sensitivity on the new domain without losing its four classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mritumor.core.environment import import_tensorflow

if not TYPE_CHECKING:
    import_tensorflow()  # quietly, before Keras imports it

import keras

from mritumor.config.schema import Settings
from mritumor.core.errors import UsageError
from mritumor.data.input_pipeline import InputPipeline
from mritumor.data.splits import EXTERNAL_SPLITS, SplitFiles
from mritumor.engine.callbacks import (
    ObserverCallback,
    TrainingInterruptedError,
    TrainingObserver,
    run_callbacks,
    stop_on_sigint,
)
from mritumor.engine.checkpoints import Bookkeeping, write_curves
from mritumor.engine.distribution import (
    check_same_global_batch,
    fit_epochs,
    resolve_distribution,
)
from mritumor.engine.finetune_data import (
    TRAINING_DUPLICATES_KEY,
    MixedBatches,
    mixed_batches,
    read_finetune_split,
    split_external,
)
from mritumor.engine.finetune_loss import HybridLoss
from mritumor.engine.finetune_report import write_report
from mritumor.engine.losses import make_optimizer
from mritumor.engine.stages import Stage
from mritumor.engine.training import configure_runtime
from mritumor.models.classifier import backbone_layers
from mritumor.run.bundle import Bundle, read_bundle, write_bundle, write_config
from mritumor.run.layout import RunLayout
from mritumor.run.model_file import load_model
from mritumor.run.splits import dataset_fingerprint, list_splits, read_split, write_splits


@dataclass
class FinetuneResult:
    run_dir: Path
    epochs_completed: int
    best_epoch: int | None
    interrupted: bool
    report: dict[str, Any] = field(default_factory=dict)
    distribution: str = "1 replica (one device)"
    chief: bool = True


def finetune(
    settings: Settings,
    parent_dir: Path,
    run_dir: Path,
    *,
    resume: bool = False,
    observer: TrainingObserver | None = None,
) -> FinetuneResult:
    """Adapt ``parent_dir``'s model to ``settings.finetune.external`` into ``run_dir``.

    A fresh ``run_dir`` is an empty new run directory; with ``resume`` it is an
    interrupted finetune run, continued from its ``last.keras``.
    """
    parent = read_bundle(parent_dir)
    settings = _with_parent_preprocessing(settings, parent)
    classes = len(parent.class_names)
    distribution = resolve_distribution(settings.train)  # before TensorFlow runs anything
    precision = configure_runtime(settings)
    bundle: Bundle | None = None
    with distribution.scope():
        if resume:
            check_same_global_batch(read_bundle(run_dir), distribution, settings.train)
            splits = {
                name: read_finetune_split(run_dir, name, parent.class_names)
                for name in ("train", *EXTERNAL_SPLITS)
            }
            model = load_model(RunLayout(run_dir).last, compile=True)
        else:
            splits, bundle = _start(
                settings, parent_dir, parent, run_dir, writes=distribution.chief
            )
            model = load_model(RunLayout(parent_dir).model)
            _set_trainable(model, settings.finetune.unfreeze_blocks)
        data = mixed_batches(settings, splits, classes, replicas=distribution.replicas)
        if not resume:
            model.compile(
                optimizer=make_optimizer(
                    settings.train,
                    settings.finetune.lr * distribution.lr_scale(settings.train),
                    data.steps_per_epoch,
                    settings.finetune.epochs,
                ),
                loss=HybridLoss(parent.negative_index, settings.finetune.pos_weight),
                jit_compile=settings.train.xla,
            )
    book = Bookkeeping(run_dir, "val_loss", resume=resume, writes=distribution.chief, bundle=bundle)
    book.record_runtime(settings, precision, distribution.record(settings.train))
    book.stage = "full"
    interrupted = False
    with stop_on_sigint() as stop_requested:
        callbacks = run_callbacks(stop_requested, book, settings.finetune.early_stopping_patience)
        if observer is not None:
            observer.on_stage_begin(
                Stage("full", len(book.history), settings.finetune.epochs, settings.finetune.lr),
                settings.finetune.epochs,
            )
            callbacks.append(
                _observe(observer, distribution.global_batch(settings.train.batch_size), data, book)
            )
        try:
            if len(book.history) < settings.finetune.epochs:
                fit_epochs(
                    model,
                    distribution,
                    data.train,
                    data.val,
                    steps_per_epoch=data.steps_per_epoch,
                    initial_epoch=len(book.history),
                    epochs=settings.finetune.epochs,
                    callbacks=callbacks,
                )
        except TrainingInterruptedError:
            interrupted = True
            book.save_last(model)
    write_curves(run_dir, book)
    finished = not interrupted and distribution.chief
    report = write_report(settings, parent_dir, run_dir) if finished else {}
    return FinetuneResult(
        run_dir,
        len(book.history),
        book.best_epoch,
        interrupted,
        report,
        distribution=distribution.describe(),
        chief=distribution.chief,
    )


def _with_parent_preprocessing(settings: Settings, parent: Bundle) -> Settings:
    """The parent's classes and input (size, channels, resize), whatever the settings say."""
    data = settings.data.model_copy(
        update={
            "class_names": list(parent.class_names),
            "negative_class": parent.negative_class,
            **parent.preprocessing.model_dump(),
        }
    )
    return settings.model_copy(update={"data": data})


def _observe(observer: Any, global_batch: int, data: MixedBatches, book: Any) -> Any:
    pipeline = data.pipelines[0]
    proxy = InputPipeline(
        dataset=data.train,
        split=pipeline.split,
        steps_per_epoch=data.steps_per_epoch,
        class_weights=None,
        failures=pipeline.failures,
    )
    return ObserverCallback(observer, global_batch, proxy, data.pipelines[-1], book)


def _start(
    settings: Settings, parent_dir: Path, parent: Bundle, run_dir: Path, *, writes: bool
) -> tuple[dict[str, SplitFiles], Bundle]:
    """The splits and a bundle that names its parent; persisted with the config unless
    ``writes`` is False (a multiworker run's other workers)."""
    external = settings.finetune.external
    if external is None:
        raise UsageError("finetune needs the external yes/no folder: --external DIR")
    parent_splits = {
        name: read_split(parent_dir, name, parent.class_names, data_root=settings.paths.data_dir)
        for name in ("train", "val", "cal", "test")
        if name in list_splits(parent_dir)
    }
    if "train" not in parent_splits:
        raise UsageError(f"{parent_dir} has no train split to replay")
    seen = [path for name in ("train", "val", "cal") for path in _paths(parent_splits.get(name))]
    external_splits = split_external(external, settings, seen)
    splits: dict[str, SplitFiles] = dict(external_splits.splits)
    splits.update((n, parent_splits[n]) for n in ("train", "val", "test") if n in parent_splits)
    bundle = Bundle(
        command="finetune",
        class_names=list(parent.class_names),
        negative_class=parent.negative_class,
        **parent.preprocessing.model_dump(),
        backbone=parent.backbone,
        parent=str(parent_dir),
        monitor="val_loss",
        dataset_fingerprint=dataset_fingerprint(splits.values()),
        extra={
            TRAINING_DUPLICATES_KEY: _relative_to(external, external_splits.training_duplicates)
        },
    )
    if writes:
        write_config(run_dir, settings)
        write_splits(run_dir, external, [splits[n] for n in EXTERNAL_SPLITS])
        parent_parts = [s for n, s in splits.items() if n not in EXTERNAL_SPLITS]
        write_splits(run_dir, settings.paths.data_dir, parent_parts)
        write_bundle(run_dir, bundle)
    return splits, bundle


def _paths(split: SplitFiles | None) -> tuple[Path, ...]:
    return split.paths if split is not None else ()


def _relative_to(root: Path, paths: Sequence[Path]) -> list[str]:
    return [path.relative_to(root).as_posix() for path in paths]


def _set_trainable(model: Any, unfreeze_blocks: int | None) -> None:
    """Train the last ``unfreeze_blocks`` blocks (all with None); BatchNorm stays frozen.

    A block is a run of consecutive backbone layers whose names share the prefix
    before the first ``_`` (``block6a_...``, ``top_...``) and that has weights
    besides BatchNorm's. BatchNorm layers keep
    the parent's statistics: a small external set would otherwise shift them.
    """
    layers = backbone_layers(model)
    # Only blocks with weights to train count: BatchNorm stays frozen, and an
    # activation or pooling layer has none.
    prefixes = list(
        dict.fromkeys(
            _block_of(layer)
            for layer in layers
            if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
        )
    )
    if unfreeze_blocks is not None:
        prefixes = prefixes[len(prefixes) - unfreeze_blocks :] if unfreeze_blocks else []
    for layer in model.layers:
        layer.trainable = layer not in layers or _block_of(layer) in prefixes
    for layer in layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def _block_of(layer: Any) -> str:
    return str(layer.name).split("_", 1)[0]
