"""The tf.data input pipeline: shapes, labels, augmentation, MixUp, weights, failures, cache keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.utils.class_weight import compute_class_weight

from helpers import write_bomb
from mritumor.config.schema import AugmentSettings
from mritumor.core.environment import import_tensorflow
from mritumor.core.errors import UsageError
from mritumor.core.preprocessing import Preprocessing
from mritumor.data.balance import class_weights, oversample_indices
from mritumor.data.images import read_image
from mritumor.data.splits import SplitFiles, load_split

tf = import_tensorflow()

from mritumor.data.input_pipeline import (  # noqa: E402  (TensorFlow must be imported quietly first)
    PipelineOptions,
    augment_image,
    build_pipeline,
    cache_key,
    mixup,
    resize_image,
)

CLASSES = ("glioma", "meningioma", "no_tumor", "pituitary")
COUNTS = {"glioma": 5, "meningioma": 3, "no_tumor": 2, "pituitary": 2}


def _write_tree(root: Path, counts: dict[str, int]) -> None:
    """Tiny images in every mode and extension spelling real data has."""
    rng = np.random.default_rng(7)
    for class_name, count in counts.items():
        folder = root / "train" / class_name
        folder.mkdir(parents=True)
        for index in range(count):
            pixels = rng.integers(0, 256, (20 + index, 30), dtype=np.uint8)
            image = Image.fromarray(pixels)
            if index % 3 == 1:
                image.convert("RGB").save(folder / f"scan {index}.JPG", format="JPEG")
            elif index % 3 == 2:
                image.convert("RGBA").save(folder / f"scan{index}.jpg", format="PNG")
            else:
                image.save(folder / f"scan{index}.png")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "data with spaces"
    _write_tree(root, COUNTS)
    return root


def _options(**changes: object) -> PipelineOptions:
    """Options for 16 px RGB, stretched; ``image_size``, ``channels`` and ``resize`` change that."""
    shape: dict[str, object] = {"image_size": 16, "channels": 3, "resize": "plain"}
    shape.update((key, changes.pop(key)) for key in list(changes) if key in shape)
    base: dict[str, object] = {
        "preprocessing": Preprocessing.model_validate(shape),
        "batch_size": 4,
        "seed": 3,
        "cache": "memory",
    }
    base.update(changes)
    return PipelineOptions(**base)  # type: ignore[arg-type]


def _collect(dataset: tf.data.Dataset) -> list[np.ndarray]:
    parts = [list(element) for element in dataset]
    return [np.concatenate([np.asarray(batch[i]) for batch in parts]) for i in range(len(parts[0]))]


def test_load_split_scans_layout_with_labels_in_class_order(tree: Path) -> None:
    split = load_split(tree, "train", CLASSES)
    assert split.counts() == COUNTS
    assert all(
        path.parent.name == CLASSES[label]
        for path, label in zip(split.paths, split.labels, strict=True)
    )


def test_manifest_decides_the_files_over_the_folders(tree: Path) -> None:
    manifest = tree / "manifests" / "train.csv"
    manifest.parent.mkdir()
    manifest.write_text(
        "path,label,source\ntrain/glioma/scan0.png,glioma,x\ntrain/pituitary/scan 1.JPG,pituitary,y\n"
    )
    split = load_split(tree, "train", CLASSES)
    assert split.paths == (tree / "train/glioma/scan0.png", tree / "train/pituitary/scan 1.JPG")
    assert split.labels == (0, 3)
    (tree / "train/glioma/scan0.png").unlink()
    with pytest.raises(UsageError, match="no longer exist"):
        load_split(tree, "train", CLASSES)


def test_unknown_class_folder_and_missing_split_are_usage_errors(tree: Path) -> None:
    with pytest.raises(UsageError, match="glioma"):
        load_split(tree, "train", ("meningioma", "no_tumor", "pituitary"))
    with pytest.raises(UsageError, match="no test split"):
        load_split(tree, "test", CLASSES)


def test_eval_pipeline_yields_resized_float_images_and_one_hot_labels_in_order(tree: Path) -> None:
    split = load_split(tree, "train", CLASSES)
    pipeline = build_pipeline(split, _options())
    images, labels = _collect(pipeline.dataset)
    assert images.shape == (len(split), 16, 16, 3)
    assert images.dtype == np.float32
    np.testing.assert_array_equal(labels.argmax(axis=1), split.labels)
    np.testing.assert_array_equal(labels.sum(axis=1), 1.0)
    expected = resize_image(read_image(split.paths[0], 3), 16, "plain").numpy()
    np.testing.assert_array_equal(images[0], expected.astype(np.float32))
    assert pipeline.steps_per_epoch == 3


def test_eval_pipeline_has_no_augmentation(tree: Path) -> None:
    pipeline = build_pipeline(load_split(tree, "train", CLASSES), _options())
    first, _ = _collect(pipeline.dataset)
    second, _ = _collect(pipeline.dataset)
    np.testing.assert_array_equal(first, second)


def test_grayscale_channels(tree: Path) -> None:
    pipeline = build_pipeline(load_split(tree, "train", CLASSES), _options(channels=1))
    images, _ = _collect(pipeline.dataset)
    assert images.shape[1:] == (16, 16, 1)


def test_training_pipeline_is_seeded_and_redraws_each_epoch(tree: Path) -> None:
    split = load_split(tree, "train", CLASSES)
    options = _options(augment=AugmentSettings())
    first_run = build_pipeline(split, options).dataset
    second_run = build_pipeline(split, options).dataset
    epoch_one, labels_one = _collect(first_run)
    np.testing.assert_array_equal(epoch_one, _collect(second_run)[0])
    epoch_two, labels_two = _collect(first_run)
    assert not np.array_equal(epoch_one, epoch_two)
    assert sorted(labels_one.argmax(1)) == sorted(labels_two.argmax(1)) == sorted(split.labels)


def test_training_order_is_shuffled_even_without_augmentation(tree: Path) -> None:
    """Class-sorted batches (the folder order) would train on one class at a time."""
    split = load_split(tree, "train", CLASSES)
    dataset = build_pipeline(split, _options(shuffle=True)).dataset
    _, first = _collect(dataset)
    _, second = _collect(dataset)
    assert list(first.argmax(1)) != list(split.labels)
    assert list(first.argmax(1)) != list(second.argmax(1))
    assert sorted(first.argmax(1)) == sorted(split.labels)


def test_only_training_options_shuffle() -> None:
    from mritumor.config.schema import Settings

    settings = Settings(augment=AugmentSettings(enabled=False))
    assert PipelineOptions.from_settings(settings, training=True).shuffle
    assert PipelineOptions.from_settings(settings, training=True).augment is None
    assert not PipelineOptions.from_settings(settings, training=False).shuffle


def test_mixup_labels_are_convex_combinations_summing_to_one(tree: Path) -> None:
    split = load_split(tree, "train", CLASSES)
    options = _options(augment=AugmentSettings(mixup_alpha=0.4))
    _, labels = _collect(build_pipeline(split, options).dataset)
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, rtol=1e-6)
    assert labels.min() >= 0.0
    assert np.any((labels > 0.01) & (labels < 0.99)), "MixUp produced no soft label"


def test_mixup_mixes_images_with_the_same_weights_as_labels() -> None:
    images = tf.constant([[[[0.0]]], [[[100.0]]]])
    labels = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    mixed_images, mixed_labels = mixup(images, labels, tf.constant([1, 2], tf.int64), 1.0)
    # Each image is lam*own + (1-lam)*partner, so pixel/100 equals the weight on class 1.
    np.testing.assert_allclose(
        mixed_images.numpy().reshape(-1) / 100.0, mixed_labels.numpy()[:, 1], rtol=1e-5
    )


def test_class_weights_match_formula_and_sklearn() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 3, 3, 3])
    weights = class_weights(labels, 4)
    np.testing.assert_allclose(weights, [10 / (4 * 4), 10 / (4 * 2), 10 / (4 * 1), 10 / (4 * 3)])
    expected = compute_class_weight("balanced", classes=np.arange(4), y=labels)
    np.testing.assert_allclose(weights, expected)
    assert class_weights([0, 0, 1], 3)[2] == 0.0


def test_sample_weights_follow_class_weights(tree: Path) -> None:
    split = load_split(tree, "train", CLASSES)
    pipeline = build_pipeline(split, _options(use_class_weights=True))
    _, labels, weights = _collect(pipeline.dataset)
    expected = class_weights(split.labels, 4)[labels.argmax(axis=1)]
    np.testing.assert_allclose(weights, expected, rtol=1e-6)


def test_oversampling_balances_classes_and_keeps_every_sample() -> None:
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 2])
    indices = oversample_indices(labels, seed=0)
    assert np.bincount(labels[indices]).tolist() == [5, 5, 5]
    assert set(range(len(labels))) <= set(indices.tolist())
    np.testing.assert_array_equal(indices, oversample_indices(labels, seed=0))


def test_unreadable_file_is_skipped_and_reported(tree: Path) -> None:
    broken = tree / "train" / "glioma" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    split = load_split(tree, "train", CLASSES)
    pipeline = build_pipeline(split, _options())
    images, _ = _collect(pipeline.dataset)
    assert len(images) == len(split) - 1
    assert list(pipeline.failures.items()) == [str(broken)]


def test_a_decompression_bomb_in_the_training_set_is_skipped_and_reported(tree: Path) -> None:
    bomb = write_bomb(tree / "train" / "glioma" / "bomb.png")
    split = load_split(tree, "train", CLASSES)
    pipeline = build_pipeline(split, _options())
    images, _ = _collect(pipeline.dataset)
    assert len(images) == len(split) - 1
    assert pipeline.failures.items() == {
        str(bomb): f"cannot read image {bomb}: over the 89478485-pixel limit "
        "(decompression-bomb guard)"
    }


def test_pad_resize_keeps_aspect_ratio() -> None:
    wide = np.full((10, 40, 1), 255, np.uint8)
    padded = resize_image(wide, 20, "pad").numpy()
    assert padded[0].max() == 0 and padded[-1].max() == 0, "pad rows must be black"
    assert padded[10].min() == 255
    assert resize_image(wide, 20, "plain").numpy().min() == 255


def test_augment_is_identity_when_everything_is_off_and_seeded_otherwise() -> None:
    image = tf.constant(np.random.default_rng(1).integers(0, 256, (12, 12, 3)), tf.uint8)
    off = AugmentSettings(horizontal_flip=False, rotation=0, zoom=0, brightness=0, contrast=0)
    seed = tf.constant([4, 2], tf.int64)
    np.testing.assert_array_equal(augment_image(image, seed, off).numpy(), image.numpy())
    on = AugmentSettings(rotation=0.2, zoom=0.2, brightness=0.2, contrast=0.2)
    np.testing.assert_array_equal(
        augment_image(image, seed, on).numpy(), augment_image(image, seed, on).numpy()
    )
    assert not np.array_equal(augment_image(image, seed, on).numpy(), image.numpy())


def test_cache_key_changes_with_shape_settings_and_file_contents(tree: Path) -> None:
    paths = [str(path) for path in load_split(tree, "train", CLASSES).paths]
    key = cache_key(paths, _options())
    assert cache_key(paths, _options()) == key
    assert cache_key(paths, _options(image_size=32)) != key
    assert cache_key(paths, _options(resize="pad")) != key
    Path(paths[0]).write_bytes(Path(paths[1]).read_bytes() + b"\0")
    assert cache_key(paths, _options()) != key


def test_file_cache_is_written_under_cache_dir(tree: Path, tmp_path: Path) -> None:
    split = load_split(tree, "train", CLASSES)
    cache_dir = tmp_path / "cache dir"
    pipeline = build_pipeline(split, _options(cache="file", cache_dir=cache_dir))
    first, _ = _collect(pipeline.dataset)
    assert any(cache_dir.iterdir())
    second, _ = _collect(build_pipeline(split, _options(cache="file", cache_dir=cache_dir)).dataset)
    np.testing.assert_array_equal(first, second)


def test_split_files_counts_every_class() -> None:
    split = SplitFiles("x", (Path("a"), Path("b")), (0, 0), ("a", "b"))
    assert split.counts() == {"a": 2, "b": 0}


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"path,label\ntrain/glioma/scan0.png\n", "line 2 lacks a path or a label"),
        (b"path,label\n\xff\xfe not text\n", "not a readable CSV manifest"),
    ],
)
def test_a_damaged_manifest_is_one_clear_error(tree: Path, content: bytes, fragment: str) -> None:
    manifest = tree / "manifests" / "train.csv"
    manifest.parent.mkdir()
    manifest.write_bytes(content)
    with pytest.raises(UsageError, match=fragment):
        load_split(tree, "train", CLASSES)


def test_mac_zip_debris_is_not_a_class(tree: Path) -> None:
    debris = tree / "train" / "__MACOSX" / "glioma"
    debris.mkdir(parents=True)
    (debris / "._scan0.png").write_bytes(b"\0\5\26\7 resource fork")
    assert load_split(tree, "train", CLASSES).counts() == COUNTS
