"""The synthetic phantom dataset: layout, masks, determinism, safety, and that it is a fair task."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from helpers import SyntheticData
from mritumor.core.classes import CLASS_NAMES
from mritumor.core.errors import UsageError
from mritumor.data.files import SPLITS, iter_image_files
from mritumor.data.images import read_image
from mritumor.data.synth.lesions import NO_TUMOR, TUMOUR_CLASSES
from mritumor.data.synth.render import render_slice
from mritumor.data.synth.writer import (
    MANIFEST_NAME,
    MASKS_DIR,
    SynthConfig,
    SynthSummary,
    mask_path,
    write_synthetic_dataset,
)

SMALL = SynthConfig(train=3, val=2, test=2, image_size=64, seed=3, external=2, png_fraction=0.3)


@pytest.fixture(scope="module")
def small_set(synthetic_data: SyntheticData) -> tuple[Path, SynthSummary]:
    """Written by the shared factory (with one worker): the root and what the writer returned."""
    return synthetic_data(SMALL), synthetic_data.summary(SMALL)


def images_under(root: Path) -> list[Path]:
    """Every image in the class and external folders (not the masks)."""
    folders = [root / split for split in SPLITS] + [root / "external"]
    return [path for folder in folders if folder.is_dir() for path in iter_image_files(folder)]


def file_bytes(root: Path) -> dict[str, bytes]:
    """Every file's bytes except the manifest, which records the elapsed time."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != MANIFEST_NAME
    }


# --------------------------------------------------------------------------- layout


def test_writes_the_standard_layout_with_the_configured_counts(
    small_set: tuple[Path, SynthSummary],
) -> None:
    root, summary = small_set
    for split, count in SMALL.split_counts().items():
        assert summary.counts[split] == dict.fromkeys(CLASS_NAMES, count)
        for class_name in CLASS_NAMES:
            assert len(list(iter_image_files(root / split / class_name))) == count
    for label in ("yes", "no"):
        assert len(list(iter_image_files(root / "external" / "synthetic" / label))) == 2
    assert summary.external == {"yes": 2, "no": 2}
    assert summary.total == len(images_under(root)) == 4 * 7 + 4
    assert summary.seconds > 0


def test_every_image_has_a_binary_mask_with_its_stem_and_size(
    small_set: tuple[Path, SynthSummary],
) -> None:
    root, _ = small_set
    images = images_under(root)
    masks = list(iter_image_files(root / MASKS_DIR))
    assert len(masks) == len(images)
    for image_path in images:
        mask_file = mask_path(root, image_path)
        assert mask_file.stem == image_path.stem
        with Image.open(image_path) as image, Image.open(mask_file) as mask:
            assert mask.size == image.size
            assert set(np.unique(np.asarray(mask))) <= {0, 255}


def test_mask_is_empty_exactly_for_images_without_a_tumour(
    small_set: tuple[Path, SynthSummary],
) -> None:
    root, _ = small_set
    for image_path in images_under(root):
        has_lesion = read_image(mask_path(root, image_path), channels=1).any()
        tumour_expected = image_path.parent.name in (*TUMOUR_CLASSES, "yes")
        assert has_lesion == tumour_expected, image_path


def test_files_mix_grey_and_rgb_modes_sizes_and_formats(
    small_set: tuple[Path, SynthSummary],
) -> None:
    root, _ = small_set
    images = images_under(root)
    modes, sizes = set(), set()
    for path in images:
        with Image.open(path) as image:
            modes.add(image.mode)
            sizes.add(image.size)
    assert modes == {"L", "RGB"}
    assert len(sizes) > len(images) // 2
    assert {path.suffix for path in images} == {".jpg", ".png"}


def test_leaves_no_temporary_files_and_a_complete_manifest(
    small_set: tuple[Path, SynthSummary],
) -> None:
    root, _ = small_set
    assert not list(root.rglob(".*"))
    manifest = (root / MANIFEST_NAME).read_text(encoding="utf-8")
    assert '"complete": true' in manifest


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes_with_one_or_two_workers(tmp_path: Path) -> None:
    config = SynthConfig(train=2, val=1, test=1, image_size=48, seed=5)
    write_synthetic_dataset(tmp_path / "one", config, workers=1)
    write_synthetic_dataset(tmp_path / "two", config, workers=2)
    assert file_bytes(tmp_path / "one") == file_bytes(tmp_path / "two")


def test_another_seed_gives_other_images(tmp_path: Path) -> None:
    config = SynthConfig(train=1, val=0, test=0, image_size=48, seed=5)
    write_synthetic_dataset(tmp_path / "a", config, workers=1)
    write_synthetic_dataset(tmp_path / "b", SynthConfig(**{**vars(config), "seed": 6}), workers=1)
    first, second = images_under(tmp_path / "a"), images_under(tmp_path / "b")
    assert [path.stem for path in first] == [path.stem for path in second]
    assert all(a.read_bytes() != b.read_bytes() for a, b in zip(first, second, strict=True))


def test_an_image_does_not_depend_on_the_counts_of_other_splits(tmp_path: Path) -> None:
    base = {"train": 1, "test": 0, "image_size": 48}
    write_synthetic_dataset(tmp_path / "a", SynthConfig(val=0, **base), workers=1)
    write_synthetic_dataset(tmp_path / "b", SynthConfig(val=2, **base), workers=1)
    a, b = file_bytes(tmp_path / "a"), file_bytes(tmp_path / "b")
    assert a == {name: data for name, data in b.items() if "val" not in name.split("/")}


def test_render_slice_is_a_pure_function_of_the_generator_state() -> None:
    first = render_slice(np.random.default_rng(9), "glioma", (40, 56))
    second = render_slice(np.random.default_rng(9), "glioma", (40, 56))
    assert first[0].shape == first[1].shape == (40, 56)
    assert first[0].dtype == np.float32 and first[1].dtype == np.bool_
    assert first[0].min() >= 0.0 and first[0].max() <= 1.0
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


@pytest.mark.parametrize("class_name", ["glioma", "meningioma", "pituitary"])
def test_lesion_scale_grows_the_lesion_and_leaves_the_head(class_name: str) -> None:
    image, mask = render_slice(np.random.default_rng(4), class_name, 128)
    larger_image, larger_mask = render_slice(
        np.random.default_rng(4), class_name, 128, lesion_scale=2.0
    )
    assert larger_mask.sum() > 2.5 * mask.sum()
    outside = ~(mask | larger_mask)
    np.testing.assert_allclose(image[outside], larger_image[outside], atol=0.05)


# --------------------------------------------------------------------------- safety and validation


def test_refuses_a_non_empty_root_and_touches_nothing(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not empty") as raised:
        write_synthetic_dataset(tmp_path, SynthConfig(train=1, val=0, test=0, image_size=32))
    assert "\n" not in str(raised.value)
    assert [path.name for path in tmp_path.iterdir()] == ["mine.txt"]


def test_refuses_a_root_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "data"
    target.write_text("")
    with pytest.raises(UsageError, match="is a file"):
        write_synthetic_dataset(target, SynthConfig(train=1, val=0, test=0, image_size=32))


def test_force_replaces_a_previous_run_and_keeps_other_files(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path, SynthConfig(train=2, val=1, test=0, image_size=32), workers=1)
    (tmp_path / "notes.txt").write_text("mine")
    smaller = SynthConfig(train=1, val=0, test=0, image_size=32)
    write_synthetic_dataset(tmp_path, smaller, workers=1, force=True)
    assert len(images_under(tmp_path)) == len(CLASS_NAMES)
    assert not (tmp_path / "val").exists()
    assert len(list(iter_image_files(tmp_path / MASKS_DIR))) == len(CLASS_NAMES)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "overrides",
    [
        {"train": -1},
        {"val": 1.5},
        {"image_size": 16},
        {"seed": -3},
        {"class_names": ("glioma",)},
        {"class_names": ("glioma", "glioma")},
        {"class_names": ("glioma", "astrocytoma")},
        {"external": -2},
        {"external_name": "a/b"},
        {"external_name": ""},
        {"external_name": ".hidden"},
        {"rgb_fraction": 1.5},
        {"png_fraction": -0.1},
        {"jpeg_quality": (90, 80)},
        {"jpeg_quality": (0, 50)},
        {"lesion_scale": 0.1},
        {"lesion_scale": 4.0},
    ],
)
def test_bad_config_is_a_value_error(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(overrides))):
        SynthConfig(**overrides)  # type: ignore[arg-type]


def test_class_names_may_be_a_list_and_a_subset() -> None:
    config = SynthConfig(class_names=["no_tumor", "glioma"])  # type: ignore[arg-type]
    assert config.class_names == ("no_tumor", "glioma")


def test_render_slice_rejects_unknown_class_and_domain() -> None:
    with pytest.raises(ValueError, match="unknown class"):
        render_slice(np.random.default_rng(0), "astrocytoma", 32)
    with pytest.raises(ValueError, match="domain"):
        render_slice(np.random.default_rng(0), "glioma", 32, domain="mars")  # type: ignore[arg-type]


def test_progress_counts_up_to_the_total(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    config = SynthConfig(train=2, val=0, test=1, image_size=32)
    write_synthetic_dataset(tmp_path / "d", config, workers=1, progress=lambda *a: calls.append(a))
    done = [completed for completed, _ in calls]
    assert done == sorted(done) and calls[-1] == (12, 12)


# --------------------------------------------------------------------------- a fair task


def global_statistics(path: Path) -> list[float]:
    """What a shortcut learner could use without looking at the lesion."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
        return [
            pixels.mean(),
            pixels.std(),
            image.width,
            image.height,
            path.stat().st_size,
            float(image.mode == "RGB"),
            float(path.suffix == ".png"),
        ]


def test_global_image_statistics_do_not_reveal_the_class(tmp_path: Path) -> None:
    config = SynthConfig(train=40, val=0, test=0, image_size=64, seed=11)
    write_synthetic_dataset(tmp_path, config, workers=1)
    features, labels = [], []
    for label, class_name in enumerate(config.class_names):
        for path in iter_image_files(tmp_path / "train" / class_name):
            features.append(global_statistics(path))
            labels.append(label)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    accuracy = cross_val_score(probe, np.array(features), np.array(labels), cv=folds).mean()
    assert accuracy < 0.40  # chance is 0.25; measured 0.26 (docs/data/synth.md)


def render_pair(
    seed: int, class_name: str
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]]:
    """The same head, contrast and noise with and without the lesion, and the lesion mask."""
    image, mask = render_slice(np.random.default_rng(seed), class_name, 96)
    healthy, no_mask = render_slice(np.random.default_rng(seed), NO_TUMOR, 96)
    assert not no_mask.any()
    return image, healthy, mask


@pytest.mark.parametrize("class_name", TUMOUR_CLASSES)
def test_the_lesion_is_exactly_where_the_mask_is(class_name: str) -> None:
    blur_reach = np.ones((3, 3), dtype=bool)  # the blur kernel reaches 4 pixels
    for seed in range(6):
        image, healthy, mask = render_pair(seed, class_name)
        change = np.abs(image - healthy)
        assert mask.any()
        assert change[ndimage.binary_erosion(mask)].mean() > 0.03
        outside = ~ndimage.binary_dilation(mask, blur_reach, iterations=4)
        assert change[outside].max() == 0.0


def test_a_lesion_barely_moves_the_global_mean() -> None:
    for class_name in TUMOUR_CLASSES:
        for seed in range(8):
            image, healthy, _ = render_pair(seed, class_name)
            # Means of different phantoms spread by about 0.04; a lesion moves its own far less.
            assert abs(float(image.mean() - healthy.mean())) < 0.01


def head_frame(
    image: NDArray[np.float32],
) -> Callable[[NDArray[np.bool_]], tuple[NDArray[np.float64], NDArray[np.float64], float]]:
    """From the head's silhouette, a map from a mask to head-frame coordinates.

    The silhouette's principal axes give the midline (the long, anterior-
    posterior axis) and the half-lengths; coordinates are in units of them, so
    the skin sits at elliptic radius 1 whatever the pose. Returns, for a mask,
    the left-right and anterior-posterior coordinates of its pixels and its
    area relative to the head's.
    """
    silhouette = ndimage.binary_fill_holes(ndimage.gaussian_filter(image, 1.0) > 0.15)
    rows_cols = np.argwhere(silhouette).astype(np.float64)
    centre = rows_cols.mean(axis=0)
    variances, axes = np.linalg.eigh(np.cov(rows_cols.T))
    half_lengths = 2.0 * np.sqrt(variances)  # a uniform ellipse's variance is half-length² / 4

    def locate(mask: NDArray[np.bool_]) -> tuple[NDArray[np.float64], NDArray[np.float64], float]:
        offsets = np.argwhere(mask) - centre
        across = offsets @ axes[:, 0] / half_lengths[0]
        along = offsets @ axes[:, 1] / half_lengths[1]
        return across, along, float(mask.sum() / silhouette.sum())

    return locate


def test_glioma_sits_in_one_hemisphere_away_from_the_midline() -> None:
    for seed in range(8):
        image, _, mask = render_pair(seed, "glioma")
        across, _, _ = head_frame(image)(mask)
        assert abs(across.mean()) > 0.15
        assert np.mean(np.sign(across) == np.sign(across.mean())) > 0.95


def test_meningioma_is_based_on_the_inner_skull() -> None:
    for seed in range(8):
        image, _, mask = render_pair(seed, "meningioma")
        across, along, _ = head_frame(image)(mask)
        radius = np.hypot(across, along)
        assert radius.max() > 0.75  # the inner table is at 0.85-0.91 of the skin's radius
        assert np.hypot(across.mean(), along.mean()) > 0.6


def test_pituitary_lesion_is_small_on_the_midline_and_off_centre() -> None:
    for seed in range(8):
        image, _, mask = render_pair(seed, "pituitary")
        across, along, area = head_frame(image)(mask)
        assert area < 0.02
        assert abs(across.mean()) < 0.1
        assert 0.15 < abs(along.mean()) < 0.6
