"""The external data of a finetune run: which external images it uses, split how, and the
mixed batches that feed the fit.

The external ``yes/no`` folder is split once (stratified, seeded, exact and near
duplicates kept together) into ``ext_train``, ``ext_val`` and ``ext_holdout``,
persisted in the new run's ``splits/``; images that copy the parent's training
images are left out first. Each training batch mixes ``ext_train`` images with
images replayed from the parent's 4-class ``train`` split
(``finetune.replay_fraction`` of the batch).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mritumor.core.environment import import_tensorflow

if TYPE_CHECKING:
    import tensorflow as tf
else:
    tf = import_tensorflow()

from mritumor.config.schema import Settings
from mritumor.core.errors import UsageError
from mritumor.data.carve import carve_splits
from mritumor.data.duplicates.groups import duplicate_groups
from mritumor.data.duplicates.hashing import image_hashes
from mritumor.data.input_pipeline import InputPipeline, PipelineOptions, build_pipeline
from mritumor.data.splits import BINARY_CLASSES, EXTERNAL_SPLITS, SplitFiles, load_binary_folder
from mritumor.engine.finetune_loss import hybrid_targets
from mritumor.run.bundle import read_bundle
from mritumor.run.splits import read_split

#: bundle.json ``extra`` key: external images left out as copies of the parent's training images.
TRAINING_DUPLICATES_KEY = "external_training_duplicates"


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


def training_duplicates(run_dir: Path) -> list[str]:
    """External images a finetune run left out as copies of its parent's training images."""
    return list(read_bundle(run_dir).extra.get(TRAINING_DUPLICATES_KEY, []))


def read_finetune_split(run_dir: Path, name: str, class_names: Sequence[str]) -> SplitFiles:
    """A split of a finetune run: ``ext_*`` with the yes/no classes, the others with ``class_names``."""
    names = BINARY_CLASSES if name in EXTERNAL_SPLITS else class_names
    return read_split(run_dir, name, names)


@dataclass(frozen=True)
class MixedBatches:
    """The training and validation datasets of a finetune fit, and the pipelines under them."""

    train: Any
    val: Any
    steps_per_epoch: int
    pipelines: tuple[InputPipeline, ...]


def mixed_batches(
    settings: Settings, splits: Mapping[str, SplitFiles], classes: int, *, replicas: int = 1
) -> MixedBatches:
    """Training batches of ``b_e`` external plus ``b_r`` replayed images; val: ext_val only.

    The batch is the global one, ``train.batch_size x replicas``, mixed in the same shares.
    """
    batch = settings.train.batch_size * replicas
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
    evaluation = PipelineOptions.from_settings(settings, training=False, replicas=replicas)
    val_pipeline = build_pipeline(splits["ext_val"], evaluation)
    val = val_pipeline.dataset.map(
        lambda x, y: (x, hybrid_targets(tf.argmax(y, -1), classes, external=True))
    )
    return MixedBatches(
        train=train.prefetch(tf.data.AUTOTUNE),
        val=val,
        steps_per_epoch=math.ceil(len(splits["ext_train"]) / external),
        pipelines=(*pipelines, val_pipeline),
    )


def _concatenated(*pairs: Any) -> Any:
    return tf.concat([p[0] for p in pairs], axis=0), tf.concat([p[1] for p in pairs], axis=0)
