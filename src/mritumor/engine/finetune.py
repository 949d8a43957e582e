"""Domain adaptation: fine-tune a trained run on an external tumour / no-tumour set.

The external ``yes/no`` folder is split once (stratified, seeded, exact and near
duplicates kept together) into ``ext_train``, ``ext_val`` and ``ext_holdout``,
persisted in the new run's ``splits/``. ``ext_train`` trains, ``ext_val``
selects the checkpoint, stops early and chooses the thresholds the report
compares at, and ``ext_holdout`` is only ever scored.

Each batch mixes external images with images replayed from the parent's
4-class ``train`` split (``finetune.replay_fraction`` of the batch), under a
masked hybrid loss (:class:`HybridLoss`): binary cross-entropy on the tumour
score for external images, categorical cross-entropy for replayed ones, so the
model gains sensitivity on the new domain without losing its four classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mritumor.core.environment import import_tensorflow

if TYPE_CHECKING:
    import tensorflow as tf
else:
    tf = import_tensorflow()

import keras

from mritumor.config.settings import Settings
from mritumor.core.errors import UsageError
from mritumor.core.fsutil import atomic_write_json
from mritumor.data.input_pipeline import InputPipeline, PipelineOptions, build_pipeline
from mritumor.data.splits import BINARY_CLASSES, EXTERNAL_SPLITS, SplitFiles, load_binary_folder
from mritumor.engine import training
from mritumor.engine.losses import make_optimizer
from mritumor.models.classifier import backbone_layers, load_model
from mritumor.run import bundle as bundles

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from mritumor.predict.inference import Predictor

REPORT_FILE = "finetune_report.json"
#: bundle.json ``extra`` key: external images left out as copies of the parent's training images.
TRAINING_DUPLICATES_KEY = "external_training_duplicates"
FIGURE_FILE = "finetune_comparison.png"


# --------------------------------------------------------------------------- the loss


@keras.saving.register_keras_serializable(package="mritumor")
class HybridLoss(keras.losses.Loss):  # type: ignore[misc]
    """Masked hybrid loss over targets ``[one-hot class (K), is_external, is_tumour]``.

    Replayed 4-class images (``is_external = 0``) get categorical cross-entropy
    ``-log p_y``. External images get binary cross-entropy on the tumour score
    ``p_t = 1 - p_neg`` (the statistic inference thresholds), with the tumour
    images weighted by ``pos_weight``:
    ``-(pos_weight * t * log p_t + (1 - t) * log(1 - p_t))``. Both are computed
    from log-sum-exps of the logits, so they stay finite for confident outputs.
    """

    def __init__(
        self,
        negative_index: int,
        pos_weight: float = 1.0,
        name: str = "hybrid_loss",
        reduction: str = "sum_over_batch_size",
    ) -> None:
        super().__init__(name=name, reduction=reduction)
        self.negative_index = int(negative_index)
        self.pos_weight = float(pos_weight)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        logits = tf.cast(y_pred, tf.float32)
        targets = tf.cast(y_true, tf.float32)
        classes = logits.shape[-1]
        one_hot, external, tumour = (
            targets[:, :classes],
            targets[:, classes],
            targets[:, classes + 1],
        )
        log_total = tf.reduce_logsumexp(logits, axis=-1)
        log_probabilities = logits - log_total[:, None]
        crossentropy = -tf.reduce_sum(one_hot * log_probabilities, axis=-1)
        is_negative = tf.one_hot(self.negative_index, classes, dtype=tf.float32)
        log_tumour = tf.reduce_logsumexp(logits - 1e9 * is_negative, axis=-1) - log_total
        log_no_tumour = log_probabilities[:, self.negative_index]
        binary = -(self.pos_weight * tumour * log_tumour + (1.0 - tumour) * log_no_tumour)
        return external * binary + (1.0 - external) * crossentropy

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "negative_index": self.negative_index,
            "pos_weight": self.pos_weight,
        }


def hybrid_targets(labels: Any, classes: int, *, external: bool) -> Any:
    """Targets ``[one-hot (K), is_external, is_tumour]`` from class or binary labels (tensors)."""
    count = tf.shape(labels)[0]
    if external:
        one_hot = tf.zeros([count, classes], tf.float32)
        tumour = tf.cast(labels, tf.float32)
        flag = tf.ones([count], tf.float32)
    else:
        one_hot = tf.one_hot(labels, classes, dtype=tf.float32)
        tumour = tf.zeros([count], tf.float32)
        flag = tf.zeros([count], tf.float32)
    return tf.concat([one_hot, flag[:, None], tumour[:, None]], axis=1)


# --------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class ExternalSplits:
    """The external splits, and the external images left out as copies of training images."""

    splits: dict[str, SplitFiles]
    training_duplicates: tuple[Path, ...]


def split_external(
    folder: Path, settings: Settings, training_images: Sequence[Path] = ()
) -> ExternalSplits:
    """``ext_train``, ``ext_val`` and ``ext_holdout`` of a yes/no folder: stratified, seeded,
    duplicates kept together (holdout first, then val from the rest).

    External images that are exact or near copies of ``training_images`` (the
    images the 4-class model learnt from or was selected on) are dropped first:
    the public Navoneel yes/no set shares many no-tumour slices with the masoud
    Training folder, and scoring a model on images it trained on is not
    external validation.
    """
    from mritumor.data.hashing import duplicate_groups, image_hashes
    from mritumor.data.prepare import carve_splits

    all_paths, all_labels = load_binary_folder(folder)
    group_of = duplicate_groups(image_hashes([*all_paths, *training_images]))
    seen_in_training = set(group_of[len(all_paths) :])
    kept = [i for i in range(len(all_paths)) if group_of[i] not in seen_in_training]
    paths = [all_paths[i] for i in kept]
    labels = [all_labels[i] for i in kept]
    dropped = tuple(all_paths[i] for i in range(len(all_paths)) if group_of[i] in seen_in_training)
    options = settings.finetune
    groups = {all_paths[i]: group_of[i] for i in kept}
    by_label = {
        name: [p for p, label in zip(paths, labels, strict=True) if label == index]
        for index, name in enumerate(BINARY_CLASSES)
    }
    missing = [name for name, files in by_label.items() if not files]
    if missing:
        copies = f" once {len(dropped)} copies of training images are left out" if dropped else ""
        raise UsageError(
            f"{folder} has no images in {'/'.join(missing)}/{copies}: finetuning needs tumour "
            "(yes/) and no-tumour (no/) images"
        )
    first = carve_splits(
        by_label, ("ext_holdout",), options.holdout_size, settings.seed, groups=groups
    )
    val_share = options.val_size / (1.0 - options.holdout_size)
    second = carve_splits(first["train"], ("ext_val",), val_share, settings.seed + 1, groups=groups)
    carved = {
        "ext_train": second["train"],
        "ext_val": second["ext_val"],
        "ext_holdout": first["ext_holdout"],
    }
    splits = {name: _binary_split(name, files) for name, files in carved.items()}
    for name, split in splits.items():
        if len(set(split.labels)) < 2:
            raise UsageError(
                f"{folder} is too small to split: {name} would lack tumour or no-tumour images; "
                "add images or change finetune.val_size / finetune.holdout_size"
            )
    return ExternalSplits(splits, dropped)


def _binary_split(name: str, files: Mapping[str, Sequence[Path]]) -> SplitFiles:
    pairs = sorted(
        (path, BINARY_CLASSES.index(label)) for label, paths in files.items() for path in paths
    )
    return SplitFiles(
        name=name,
        paths=tuple(path for path, _ in pairs),
        labels=tuple(label for _, label in pairs),
        class_names=BINARY_CLASSES,
    )


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class _Data:
    train: Any
    val: Any
    steps_per_epoch: int
    pipelines: tuple[InputPipeline, ...]


def _mixed_batches(settings: Settings, splits: Mapping[str, SplitFiles], classes: int) -> _Data:
    """Training batches of ``b_e`` external plus ``b_r`` replayed images; val: ext_val only."""
    batch = settings.train.batch_size
    replayed = round(batch * settings.finetune.replay_fraction)
    external = max(batch - replayed, 1)
    base = PipelineOptions.from_settings(settings, training=True)
    # MixUp would blend external and replayed targets; class weights are for 4-class training.
    base = replace(base, use_class_weights=False, oversample=False)
    augment = None if base.augment is None else base.augment.model_copy(update={"mixup_alpha": 0.0})
    external_pipeline = build_pipeline(
        splits["ext_train"], replace(base, batch_size=external, augment=augment)
    )
    parts = [
        external_pipeline.dataset.map(
            lambda x, y: (x, hybrid_targets(tf.argmax(y, -1), classes, external=True))
        ).repeat()
    ]
    pipelines = [external_pipeline]
    if replayed:
        replay_pipeline = build_pipeline(
            splits["train"], replace(base, batch_size=replayed, augment=augment)
        )
        parts.append(
            replay_pipeline.dataset.map(
                lambda x, y: (x, hybrid_targets(tf.argmax(y, -1), classes, external=False))
            ).repeat()
        )
        pipelines.append(replay_pipeline)
    train = tf.data.Dataset.zip(tuple(parts)).map(_concatenated) if replayed else parts[0]
    evaluation = PipelineOptions.from_settings(settings, training=False)
    val_pipeline = build_pipeline(splits["ext_val"], evaluation)
    val = val_pipeline.dataset.map(
        lambda x, y: (x, hybrid_targets(tf.argmax(y, -1), classes, external=True))
    )
    return _Data(
        train=train.prefetch(tf.data.AUTOTUNE),
        val=val,
        steps_per_epoch=math.ceil(len(splits["ext_train"]) / external),
        pipelines=(*pipelines, val_pipeline),
    )


def _concatenated(*pairs: Any) -> Any:
    return tf.concat([p[0] for p in pairs], axis=0), tf.concat([p[1] for p in pairs], axis=0)


# --------------------------------------------------------------------------- fitting


@dataclass
class FinetuneResult:
    run_dir: Path
    epochs_completed: int
    best_epoch: int | None
    interrupted: bool
    report: dict[str, Any] = field(default_factory=dict)


def finetune(
    settings: Settings,
    parent_dir: Path,
    run_dir: Path,
    *,
    resume: bool = False,
    observer: training.TrainingObserver | None = None,
) -> FinetuneResult:
    """Adapt ``parent_dir``'s model to ``settings.finetune.external`` into ``run_dir``.

    A fresh ``run_dir`` is an empty new run directory; with ``resume`` it is an
    interrupted finetune run, continued from its ``last.keras``.
    """
    parent = bundles.read_bundle(parent_dir)
    settings = _with_parent_preprocessing(settings, parent)
    classes = len(parent.class_names)
    training.configure_runtime(settings)
    if resume:
        splits = {
            name: _read_split(run_dir, name, parent.class_names)
            for name in ("train", *EXTERNAL_SPLITS)
        }
        model = load_model(run_dir / bundles.LAST_FILE, compile=True)
    else:
        splits = _start(settings, parent_dir, parent, run_dir)
        model = load_model(parent_dir / bundles.MODEL_FILE)
        _set_trainable(model, settings.finetune.unfreeze_blocks)
    data = _mixed_batches(settings, splits, classes)
    if not resume:
        model.compile(
            optimizer=make_optimizer(
                settings.train, settings.finetune.lr, data.steps_per_epoch, settings.finetune.epochs
            ),
            loss=HybridLoss(parent.negative_index, settings.finetune.pos_weight),
            jit_compile=settings.train.xla,
        )
    book = training.Bookkeeping(run_dir, "val_loss", resume=resume)
    book.stage = "full"
    interrupted = False
    with training.stop_on_sigint() as stop_requested:
        callbacks: list[Any] = [training.StopOnRequest(stop_requested), training.EpochEnd(book)]
        if settings.finetune.early_stopping_patience:
            callbacks.append(
                training.early_stopping("val_loss", settings.finetune.early_stopping_patience, book)
            )
        if observer is not None:
            observer.on_stage_begin(
                training.Stage(
                    "full", len(book.history), settings.finetune.epochs, settings.finetune.lr
                ),
                settings.finetune.epochs,
            )
            callbacks.append(_observe(observer, settings, data, book))
        try:
            if len(book.history) < settings.finetune.epochs:
                with training.expected_end_of_data():
                    model.fit(
                        data.train,
                        steps_per_epoch=data.steps_per_epoch,
                        validation_data=data.val,
                        initial_epoch=len(book.history),
                        epochs=settings.finetune.epochs,
                        callbacks=callbacks,
                        shuffle=False,  # the input pipelines shuffle, seeded
                        verbose=0,
                    )
        except training.TrainingInterruptedError:
            interrupted = True
            book.save_last(model)
    training.write_curves(run_dir, book)
    report = {} if interrupted else write_report(settings, parent_dir, run_dir)
    return FinetuneResult(run_dir, len(book.history), book.best_epoch, interrupted, report)


def _with_parent_preprocessing(settings: Settings, parent: bundles.Bundle) -> Settings:
    """The parent's classes and input (size, channels, resize), whatever the settings say."""
    data = settings.data.model_copy(
        update={
            "class_names": list(parent.class_names),
            "negative_class": parent.negative_class,
            "image_size": parent.image_size,
            "channels": parent.channels,
            "resize": parent.resize,
        }
    )
    return settings.model_copy(update={"data": data})


def _observe(observer: Any, settings: Settings, data: _Data, book: Any) -> Any:
    pipeline = data.pipelines[0]
    proxy = InputPipeline(
        dataset=data.train,
        split=pipeline.split,
        steps_per_epoch=data.steps_per_epoch,
        class_weights=None,
        failures=pipeline.failures,
    )
    return training.ObserverCallback(
        observer, settings.train.batch_size, proxy, data.pipelines[-1], book
    )


def _start(
    settings: Settings, parent_dir: Path, parent: bundles.Bundle, run_dir: Path
) -> dict[str, SplitFiles]:
    """Persist the splits, the config and a bundle that names its parent."""
    external = settings.finetune.external
    if external is None:
        raise UsageError("finetune needs the external yes/no folder: --external DIR")
    parent_splits = {
        name: bundles.read_split(
            parent_dir, name, parent.class_names, data_root=settings.paths.data_dir
        )
        for name in ("train", "val", "cal", "test")
        if name in bundles.list_splits(parent_dir)
    }
    if "train" not in parent_splits:
        raise UsageError(f"{parent_dir} has no train split to replay")
    seen = [path for name in ("train", "val", "cal") for path in _paths(parent_splits.get(name))]
    external_splits = split_external(external, settings, seen)
    splits: dict[str, SplitFiles] = dict(external_splits.splits)
    splits.update((n, parent_splits[n]) for n in ("train", "val", "test") if n in parent_splits)
    bundles.write_config(run_dir, settings)
    bundles.write_splits(run_dir, external, [splits[n] for n in EXTERNAL_SPLITS])
    bundles.write_splits(
        run_dir, settings.paths.data_dir, [s for n, s in splits.items() if n not in EXTERNAL_SPLITS]
    )
    bundle = bundles.Bundle(
        command="finetune",
        class_names=list(parent.class_names),
        negative_class=parent.negative_class,
        image_size=parent.image_size,
        channels=parent.channels,
        resize=parent.resize,
        backbone=parent.backbone,
        parent=str(parent_dir),
        monitor="val_loss",
        dataset_fingerprint=bundles.dataset_fingerprint(splits.values()),
        extra={
            TRAINING_DUPLICATES_KEY: _relative_to(external, external_splits.training_duplicates)
        },
    )
    bundles.write_bundle(run_dir, bundle)
    return splits


def _paths(split: SplitFiles | None) -> tuple[Path, ...]:
    return split.paths if split is not None else ()


def _relative_to(root: Path, paths: Sequence[Path]) -> list[str]:
    return [path.relative_to(root).as_posix() for path in paths]


def training_duplicates(run_dir: Path) -> list[str]:
    """External images a finetune run left out as copies of its parent's training images."""
    return list(bundles.read_bundle(run_dir).extra.get(TRAINING_DUPLICATES_KEY, []))


def _read_split(run_dir: Path, name: str, class_names: Sequence[str]) -> SplitFiles:
    names = BINARY_CLASSES if name in EXTERNAL_SPLITS else class_names
    return bundles.read_split(run_dir, name, names)


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


# --------------------------------------------------------------------------- report


def write_report(settings: Settings, parent_dir: Path, run_dir: Path) -> dict[str, Any]:
    """Before (the parent) and after (the adapted model) on ext_holdout and the 4-class test.

    Each model's threshold is chosen on ext_val with ``threshold.strategy``
    (holdout never takes part in any choice); sensitivity, specificity, FN and
    FP on ext_holdout are reported at it, with bootstrap intervals, plus AUC.
    """
    from mritumor import plots
    from mritumor.predict.inference import Predictor

    bundle = bundles.read_bundle(run_dir)
    splits = {
        name: _read_split(run_dir, name, bundle.class_names)
        for name in bundles.list_splits(run_dir)
    }
    models = {"before": Predictor(parent_dir), "after": Predictor(run_dir)}
    report: dict[str, Any] = {
        "parent": str(parent_dir),
        "threshold_strategy": settings.threshold.strategy,
        "threshold_chosen_on": "ext_val",
        "n": {name: len(split) for name, split in splits.items()},
        "external_training_duplicates_dropped": len(training_duplicates(run_dir)),
    }
    for when, predictor in models.items():
        report[when] = _scores(predictor, splits, settings)
    atomic_write_json(run_dir / bundles.REPORTS_DIR / REPORT_FILE, report)
    plots.plot_finetune_comparison(report, run_dir / bundles.REPORTS_DIR / FIGURE_FILE)
    return report


def _scores(
    predictor: Predictor, splits: Mapping[str, SplitFiles], settings: Settings
) -> dict[str, Any]:
    from mritumor.evaluation.steps import operating_point
    from mritumor.stats.metrics import classification_metrics, roc_auc, roc_curve
    from mritumor.stats.threshold import bootstrap_rates, confusion_at

    options = settings.threshold
    batch = settings.inference.batch_size
    val_labels, val_scores = _binary_scores(predictor, splits["ext_val"], batch)
    point = operating_point(val_labels, val_scores, options)
    labels, scores = _binary_scores(predictor, splits["ext_holdout"], batch)
    tp, fp, tn, fn = confusion_at(labels, scores, point.threshold)
    fpr, tpr, _ = roc_curve(labels, scores)
    intervals = bootstrap_rates(
        labels, scores, point.threshold, n_samples=options.bootstrap_samples, seed=settings.seed
    )
    result: dict[str, Any] = {
        "threshold": point.threshold,
        "ext_holdout": {
            "sensitivity": tp / (tp + fn),
            "specificity": tn / (tn + fp),
            "tp": tp,
            "fp": fp,
            "tn": tn,
            "fn": fn,
            "auc": roc_auc(fpr, tpr),
            "ci95": {key: list(value) for key, value in intervals.items()},
        },
    }
    if "test" in splits:
        test = splits["test"]
        logits = predictor.logits(test.paths, batch_size=batch)
        predicted = logits.logits.argmax(axis=1)
        true = np.asarray(test.labels)[logits.kept]
        metrics = classification_metrics(true, predicted, predictor.class_names)
        result["test"] = {
            "accuracy": metrics.accuracy,
            "macro_f1": metrics.macro_f1,
            "n": len(true),
        }
    return result


def _binary_scores(
    predictor: Predictor, split: SplitFiles, batch_size: int
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    logits = predictor.logits(split.paths, batch_size=batch_size)
    labels = np.asarray(split.labels, dtype=np.int64)[logits.kept]
    return labels, predictor.tumour_scores(logits.logits)
