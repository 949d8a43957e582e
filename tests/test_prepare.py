"""Preparing local folders and zips into the standard layout (mritumor.data.prepare.plan)."""

from __future__ import annotations

import csv
import shutil
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fixtures_kaggle import (
    MASOUD_TEST,
    MASOUD_TRAIN,
    NAVONEEL_DEBRIS,
    NAVONEEL_NO,
    NAVONEEL_YES,
    build_masoud,
    build_navoneel,
    build_sartaj,
    files_under,
    snapshot,
    write_class_tree,
    write_image,
    zip_folder,
)
from helpers import write_bomb
from mritumor.cli.main import app
from mritumor.core.classes import CLASS_NAMES
from mritumor.core.errors import UsageError
from mritumor.data.carve import FilesByLabel, carve_splits
from mritumor.data.duplicates.groups import duplicate_groups
from mritumor.data.duplicates.hashing import image_hashes
from mritumor.data.files import iter_image_files
from mritumor.data.images import read_image
from mritumor.data.layout import normalise_class_name
from mritumor.data.prepare.plan import prepare
from mritumor.data.splits import load_split

MASOUD_TRAIN_COUNTS = {normalise_class_name(k): v for k, v in MASOUD_TRAIN.items()}
MASOUD_TEST_COUNTS = {normalise_class_name(k): v for k, v in MASOUD_TEST.items()}


def write_distinct_tree(
    root: Path, counts: Mapping[str, int], name: str = "img_{:03d}.jpg", first: int = 0
) -> Path:
    """:func:`write_class_tree` with a different picture in every file.

    ``write_class_tree`` draws picture ``n`` for file ``n`` of every folder, so its
    classes share their pictures: to a duplicate-aware carve those are label
    conflicts (test_a_picture_under_several_classes_stays_in_train).
    """
    for offset, (folder, count) in enumerate(counts.items()):
        for number in range(count):
            write_image(root / folder / name.format(number), index=first + 100 * offset + number)
    return root


def build_distinct_masoud(root: Path) -> Path:
    """:func:`build_masoud` with a different picture in every file."""
    write_distinct_tree(root / "Training", MASOUD_TRAIN, "Tr-{:04d}.jpg")
    write_distinct_tree(root / "Testing", MASOUD_TEST, "Te-{:04d}.jpg", first=1000)
    return root


@pytest.fixture(scope="module")
def masoud(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once: prepare never writes to its source (test_source_is_left_untouched)."""
    return build_distinct_masoud(tmp_path_factory.mktemp("source") / "masoud")


def manifest(target: Path, split: str) -> list[dict[str, str]]:
    with (target / "manifests" / f"{split}.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def assert_manifests_match_disk(target: Path, splits: list[str]) -> None:
    for split in splits:
        rows = manifest(target, split)
        assert list(rows[0]) == ["path", "label", "source"]
        assert {row["path"] for row in rows} == {
            f"{split}/{f}" for f in files_under(target / split)
        }
        for row in rows:
            assert Path(row["path"]).parent.name == row["label"]
            assert (target / row["path"]).read_bytes() == Path(row["source"]).read_bytes()


def val_names(target: Path) -> set[str]:
    return {row["path"] for row in manifest(target, "val")}


def test_masoud_training_is_split_into_train_and_val(masoud: Path, tmp_path: Path) -> None:
    summary = prepare(masoud, tmp_path / "data")
    assert summary.kind == "split_class"
    assert summary.carved == ("val",)
    assert list(summary.counts) == ["train", "val", "test"]
    assert summary.counts["test"] == MASOUD_TEST_COUNTS
    for label, total in MASOUD_TRAIN_COUNTS.items():
        val = summary.counts["val"][label]
        assert val + summary.counts["train"][label] == total
        assert abs(val - total * 0.15) <= 1
    assert summary.total == sum(MASOUD_TRAIN.values()) + sum(MASOUD_TEST.values())
    assert summary.skipped == ()
    assert_manifests_match_disk(tmp_path / "data", ["train", "val", "test"])


def test_the_input_pipeline_reads_the_manifests(masoud: Path, tmp_path: Path) -> None:
    summary = prepare(masoud, tmp_path / "data")
    for split, counts in summary.counts.items():
        assert load_split(tmp_path / "data", split, CLASS_NAMES).counts() == counts


@pytest.mark.parametrize("copy", [False, True])
def test_source_is_left_untouched(masoud: Path, tmp_path: Path, copy: bool) -> None:
    before = snapshot(masoud)
    prepare(masoud, tmp_path / "data", copy=copy)
    prepare(masoud, tmp_path / "data", copy=copy, force=True)
    assert snapshot(masoud) == before


def test_symlinks_have_absolute_targets_in_the_source(masoud: Path, tmp_path: Path) -> None:
    summary = prepare(masoud, tmp_path / "data")
    assert summary.linked
    for path in (tmp_path / "data" / "test").rglob("*.jpg"):
        assert path.is_symlink()
        assert path.readlink().is_absolute()
        assert path.readlink().is_relative_to(masoud)


def test_copy_writes_regular_files(masoud: Path, tmp_path: Path) -> None:
    summary = prepare(masoud, tmp_path / "data", copy=True)
    assert not summary.linked
    prepared = list((tmp_path / "data").rglob("*.jpg"))
    assert len(prepared) == summary.total
    assert not any(path.is_symlink() for path in prepared)
    assert_manifests_match_disk(tmp_path / "data", ["train", "val", "test"])


def test_every_prepared_image_decodes(masoud: Path, tmp_path: Path) -> None:
    prepare(masoud, tmp_path / "data")
    prepared = list((tmp_path / "data").rglob("*.jpg"))
    assert any(path.read_bytes().startswith(b"\x89PNG") for path in prepared)
    for path in prepared:
        assert read_image(path).shape[-1] == 3


def test_same_seed_same_split_other_seed_other_split(masoud: Path, tmp_path: Path) -> None:
    prepare(masoud, tmp_path / "a", seed=7)
    prepare(masoud, tmp_path / "b", seed=7)
    prepare(masoud, tmp_path / "c", seed=8)
    assert val_names(tmp_path / "a") == val_names(tmp_path / "b")
    assert val_names(tmp_path / "a") != val_names(tmp_path / "c")


def test_class_only_tree_gets_val_and_test(tmp_path: Path) -> None:
    counts = {"glioma": 20, "meningioma": 13, "notumor": 7, "pituitary": 4}
    source = write_distinct_tree(tmp_path / "flat", counts)
    summary = prepare(source, tmp_path / "data", val_size=0.2)
    assert summary.kind == "class_only"
    assert summary.carved == ("val", "test")
    for folder, total in counts.items():
        label = normalise_class_name(folder)
        assert label is not None
        per_split = [summary.counts[split][label] for split in ("train", "val", "test")]
        assert sum(per_split) == total
        assert all(abs(n - total * 0.2) <= 1 for n in per_split[1:])
    assert_manifests_match_disk(tmp_path / "data", ["train", "val", "test"])


def test_carve_splits_is_disjoint_and_stratified(tmp_path: Path) -> None:
    files = {
        "glioma": [tmp_path / f"g{i}.jpg" for i in range(33)],
        "pituitary": [tmp_path / f"p{i}.jpg" for i in range(9)],
    }
    splits = carve_splits(files, ("val", "test"), 0.15, seed=1)
    for label, members in files.items():
        parts = [set(splits[split][label]) for split in ("train", "val", "test")]
        assert set.union(*parts) == set(members)
        assert sum(map(len, parts)) == len(members)
        assert all(abs(len(part) - len(members) * 0.15) <= 1 for part in parts[1:])


def test_navoneel_goes_to_external(tmp_path: Path) -> None:
    source = build_navoneel(tmp_path / "navoneel")
    summary = prepare(source, tmp_path / "data")
    assert summary.kind == "binary"
    assert summary.counts == {"external/navoneel": {"yes": 6, "no": 5}}
    assert summary.carved == ()
    assert summary.duplicates == (source / "brain_tumor_dataset",)
    assert {p.name for p in summary.skipped} == set(NAVONEEL_DEBRIS)
    external = tmp_path / "data" / "external" / "navoneel"
    assert files_under(external / "yes") == set(NAVONEEL_YES)
    assert files_under(external / "no") == set(NAVONEEL_NO)
    assert_manifests_match_disk(tmp_path / "data", ["external/navoneel"])


def test_external_name_can_be_given(tmp_path: Path) -> None:
    source = build_navoneel(tmp_path / "download", nested_copy=False)
    summary = prepare(source, tmp_path / "data", external_name="br35h")
    assert list(summary.counts) == ["external/br35h"]
    assert (tmp_path / "data" / "manifests" / "external" / "br35h.csv").is_file()
    with pytest.raises(UsageError, match="external name"):
        prepare(source, tmp_path / "data2", external_name="../up")


def test_sartaj_classes_are_normalised(tmp_path: Path) -> None:
    summary = prepare(build_sartaj(tmp_path / "sartaj"), tmp_path / "data")
    assert summary.counts["test"] == {"glioma": 2, "meningioma": 2, "no_tumor": 2, "pituitary": 2}
    assert sorted(files_under(tmp_path / "data" / "test" / "glioma")) == [
        "image(0).jpg",
        "image(1).jpg",
    ]


def test_zip_members_are_copied(masoud: Path, tmp_path: Path) -> None:
    archive = zip_folder(masoud, tmp_path / "masoud.zip", prefix="archive/")
    before = snapshot(archive)
    from_folder = prepare(masoud, tmp_path / "a")
    from_zip = prepare(archive, tmp_path / "b")
    assert from_zip.counts == from_folder.counts
    assert not from_zip.linked
    assert not any(p.is_symlink() for p in (tmp_path / "b").rglob("*"))
    assert [p.name for p in (tmp_path / "b").iterdir()] != []
    assert not list((tmp_path / "b").glob(".*"))
    source = manifest(tmp_path / "b", "test")[0]["source"]
    assert source.startswith(f"{archive}/archive/Testing/")
    assert snapshot(archive) == before


@pytest.mark.parametrize(
    "member", ["../evil.jpg", "/tmp/evil.jpg", "a/../../evil.jpg", "C:/evil.jpg"]
)
def test_zip_slip_is_refused(tmp_path: Path, member: str) -> None:
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("glioma/ok.jpg", write_image(tmp_path / "ok.jpg").read_bytes())
        bundle.writestr(member, b"payload")
    with pytest.raises(UsageError, match="outside the target"):
        prepare(archive, tmp_path / "out" / "data")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil.jpg").exists()


def test_existing_splits_are_not_overwritten_without_force(masoud: Path, tmp_path: Path) -> None:
    target = tmp_path / "data"
    prepare(masoud, target)
    with pytest.raises(UsageError, match=r"already holds train, val, test.*--force") as error:
        prepare(masoud, target)
    assert "\n" not in str(error.value)


def test_force_replaces_only_the_splits_written(masoud: Path, tmp_path: Path) -> None:
    target = tmp_path / "data"
    prepare(masoud, target)
    stale = write_image(target / "train" / "glioma" / "stale.jpg")
    keep = write_image(target / "external" / "other" / "yes" / "keep.jpg")
    mine = write_image(target / "my-notes" / "keep.jpg")
    prepare(masoud, target, force=True)
    assert not stale.exists()
    assert keep.exists()
    assert mine.exists()


def test_a_second_dataset_can_join_the_target(masoud: Path, tmp_path: Path) -> None:
    target = tmp_path / "data"
    prepare(masoud, target)
    prepare(build_navoneel(tmp_path / "navoneel"), target)
    assert {p.name for p in target.iterdir()} == {"train", "val", "test", "external", "manifests"}


def test_clashing_names_are_made_unique(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for folder in ("train/no", "train/notumor", "val/no_tumor"):
        write_image(source / folder / "a.jpg")
    write_image(source / "train" / "no" / "A.JPG")
    prepare(source, tmp_path / "data")
    assert files_under(tmp_path / "data" / "train" / "no_tumor") == {"A.JPG", "a-2.jpg", "a-3.jpg"}
    assert_manifests_match_disk(tmp_path / "data", ["train", "val"])


def test_progress_counts_hashing_then_placing(masoud: Path, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    summary = prepare(
        masoud, tmp_path / "data", progress=lambda done, total: calls.append((done, total))
    )
    assert summary.grouping is not None
    hashed = summary.grouping.hashed
    assert hashed == sum(MASOUD_TRAIN.values()) + sum(MASOUD_TEST.values())
    total = hashed + summary.total
    assert {t for _, t in calls} == {total}
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == total
    assert done[-summary.total :] == list(range(hashed + 1, total + 1))


def test_progress_without_grouping_still_counts_the_verifying_hash(
    masoud: Path, tmp_path: Path
) -> None:
    calls: list[tuple[int, int]] = []
    summary = prepare(
        masoud,
        tmp_path / "data",
        group_duplicates=False,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert summary.grouping is None
    total = 2 * summary.total  # every image hashed, then every image placed
    assert calls[-summary.total :] == [(n, total) for n in range(summary.total + 1, total + 1)]
    assert {t for _, t in calls} == {total}


def test_a_source_without_images_is_refused(tmp_path: Path) -> None:
    (tmp_path / "src" / "glioma").mkdir(parents=True)
    (tmp_path / "src" / "glioma" / "readme.txt").write_text("no scans", encoding="utf-8")
    with pytest.raises(UsageError, match="no images"):
        prepare(tmp_path / "src", tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_files_that_are_not_usable_images_are_left_out_and_listed(tmp_path: Path) -> None:
    source = write_distinct_tree(tmp_path.resolve() / "src", {"glioma": 8, "pituitary": 8})
    (source / "glioma" / "fake.jpg").write_text("not a scan\n", encoding="utf-8")
    (source / "glioma" / "empty.png").touch()
    write_bomb(source / "pituitary" / "bomb.png")
    Image.new("L", (1, 1)).save(source / "pituitary" / "tiny.png")
    (source / "pituitary" / "notes.txt").write_text("read me\n", encoding="utf-8")

    summary = prepare(source, tmp_path / "data")

    assert {(entry.path, entry.kind) for entry in summary.left_out} == {
        (source / "glioma" / "fake.jpg", "not_an_image"),
        (source / "glioma" / "empty.png", "zero_bytes"),
        (source / "pituitary" / "bomb.png", "too_large"),
        (source / "pituitary" / "tiny.png", "too_small"),
    }
    reasons = {entry.path.name: entry.reason for entry in summary.left_out}
    assert reasons["tiny.png"] == "1x1 pixels, smaller than the 32-pixel minimum side"
    assert summary.skipped == (source / "pituitary" / "notes.txt",)
    assert summary.total == 16 and summary.warnings == ()
    placed = {
        Path(row["source"]).relative_to(source).as_posix()
        for split in summary.counts
        for row in manifest(tmp_path / "data", split)
    }
    assert placed == {f"glioma/img_{n:03d}.jpg" for n in range(8)} | {
        f"pituitary/img_{n:03d}.jpg" for n in range(8)
    }
    assert_manifests_match_disk(tmp_path / "data", ["train", "val", "test"])


def test_a_class_without_usable_images_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    source = write_distinct_tree(tmp_path.resolve() / "src", {"glioma": 4})
    (source / "pituitary").mkdir()
    Image.new("L", (20, 20)).save(source / "pituitary" / "a.png")
    message = (
        f"no usable images of pituitary in {source} (1 file(s) left out, such as "
        "pituitary/a.png: 20x20 pixels, smaller than the 32-pixel minimum side); "
        "add readable images or remove the class folder"
    )
    with pytest.raises(UsageError) as raised:
        prepare(source, tmp_path / "data")
    assert str(raised.value) == message
    assert not (tmp_path / "data").exists()


def test_a_class_too_small_to_carve_is_a_warning(tmp_path: Path) -> None:
    source = write_distinct_tree(tmp_path / "src", {"glioma": 10, "pituitary": 3})

    summary = prepare(source, tmp_path / "data")

    assert summary.counts["val"] == summary.counts["test"] == {"glioma": 2, "pituitary": 0}
    assert summary.warnings == (
        "val has no images of pituitary: a carve at val_size 0.15 needs 4 usable images of a class",
        "test has no images of pituitary: a carve at val_size 0.15 needs 4 usable images of a class",
    )
    with_four = write_distinct_tree(tmp_path / "four", {"glioma": 10, "pituitary": 4})
    assert prepare(with_four, tmp_path / "data4").warnings == ()


def test_a_class_missing_from_a_split_the_source_gave_is_a_warning(tmp_path: Path) -> None:
    source = tmp_path / "src"
    write_distinct_tree(source / "Training", {"glioma": 8, "pituitary": 8})
    write_distinct_tree(source / "Testing", {"glioma": 2}, first=500)

    summary = prepare(source, tmp_path / "data")

    assert summary.warnings == ("test has no images of pituitary",)


@pytest.mark.parametrize("val_size", [0.0, 1.0, -0.1])
def test_val_size_must_be_a_fraction(masoud: Path, tmp_path: Path, val_size: float) -> None:
    with pytest.raises(UsageError, match="val_size"):
        prepare(masoud, tmp_path / "data", val_size=val_size)


def test_target_inside_the_source_is_refused(masoud: Path) -> None:
    with pytest.raises(UsageError, match="inside the source"):
        prepare(masoud, masoud / "prepared")
    assert not (masoud / "prepared").exists()


def test_source_inside_a_target_split_is_refused(tmp_path: Path) -> None:
    source = write_class_tree(tmp_path / "data" / "train" / "raw", {"glioma": 2, "no": 2})
    with pytest.raises(UsageError, match="inside the target's splits"):
        prepare(source, tmp_path / "data", force=True)
    assert files_under(source) == {
        "glioma/img_000.jpg",
        "glioma/img_001.jpg",
        "no/img_000.jpg",
        "no/img_001.jpg",
    }


def test_a_broken_zip_is_refused(tmp_path: Path) -> None:
    (tmp_path / "broken.zip").write_bytes(b"not a zip")
    with pytest.raises(UsageError, match="cannot read the zip"):
        prepare(tmp_path / "broken.zip", tmp_path / "data")


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        prepare(tmp_path / "nowhere", tmp_path / "data")


# --- Duplicate-aware carving -------------------------------------------------------------

SCAN_COUNTS = {"glioma": 14, "meningioma": 12, "notumor": 10, "pituitary": 8}


def write_scan(path: Path, index: int, quality: int = 95) -> Path:
    """A 64 px grayscale JPEG of smooth structure (16x16 noise, upsampled), picture ``index``.

    Unlike the fixtures' pixel noise, its perceptual hash survives re-encoding:
    quality 95 and 60 of one picture lie at most 2 bits apart, two pictures at
    least 14 (measured over 300 pictures), well either side of the 4-bit radius.
    """
    coarse = np.random.default_rng([7, index]).integers(0, 256, (16, 16), dtype=np.uint8)
    image = Image.fromarray(coarse, "L").resize((64, 64), Image.Resampling.BICUBIC)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=quality)
    return path


def scan_index(folder: str, number: int, first: int = 0) -> int:
    return first + 100 * list(SCAN_COUNTS).index(folder) + number


def write_scan_tree(root: Path, first: int = 0) -> Path:
    """``root/<class>/scan_NNN.jpg``, :data:`SCAN_COUNTS` of them, every one a different picture."""
    for folder, count in SCAN_COUNTS.items():
        for number in range(count):
            write_scan(root / folder / f"scan_{number:03d}.jpg", scan_index(folder, number, first))
    return root


def plant_duplicates(root: Path, classes: Path) -> list[set[str]]:
    """Exact copies and JPEG re-saves next to scans under ``classes``; the groups, relative to root."""

    def exact(folder: str, number: int, name: str) -> Path:
        return Path(
            shutil.copyfile(classes / folder / f"scan_{number:03d}.jpg", classes / folder / name)
        )

    def resaved(folder: str, number: int, name: str) -> Path:
        return write_scan(classes / folder / name, scan_index(folder, number), quality=60)

    planted = [
        [exact("glioma", 3, "scan_003 copy.jpg")],
        [resaved("glioma", 10, "scan_010 q60.jpg")],
        [exact("meningioma", 5, "scan_005 (1).jpg"), resaved("meningioma", 5, "q60.jpg")],
        [resaved("notumor", 2, "again.jpg")],
        [exact("pituitary", 1, "scan_001.JPG.jpg")],
    ]
    originals = [("glioma", 3), ("glioma", 10), ("meningioma", 5), ("notumor", 2), ("pituitary", 1)]
    return [
        {(classes / f / f"scan_{n:03d}.jpg").relative_to(root).as_posix()}
        | {copy.relative_to(root).as_posix() for copy in copies}
        for (f, n), copies in zip(originals, planted, strict=True)
    ]


def placement(target: Path, source: Path) -> dict[str, str]:
    """Each source file, relative to ``source`` (POSIX), with the split it was placed in."""
    return {
        Path(row["source"]).relative_to(source).as_posix(): split
        for split in ("train", "val", "test")
        if (target / "manifests" / f"{split}.csv").is_file()
        for row in manifest(target, split)
    }


def plain_carve(
    files_by_label: Mapping[str, Sequence[Path]],
    held_out: Sequence[str],
    fraction: float,
    seed: int,
) -> dict[str, FilesByLabel]:
    """The file-by-file carve as it was before duplicate grouping: the reference for the opt-out."""
    splits: dict[str, FilesByLabel] = {split: {} for split in ("train", *held_out)}
    for label, files in files_by_label.items():
        ordered = sorted(files)
        rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
        shuffled = [ordered[i] for i in rng.permutation(len(ordered))]
        size = int(len(ordered) * fraction + 0.5)
        for index, split in enumerate(held_out):
            splits[split][label] = sorted(shuffled[index * size : (index + 1) * size])
        splits["train"][label] = sorted(shuffled[len(held_out) * size :])
    return splits


def as_placement(splits: Mapping[str, FilesByLabel], root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): split
        for split, by_label in splits.items()
        for files in by_label.values()
        for path in files
    }


@pytest.fixture(scope="module")
def planted_flat(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[set[str]]]:
    """A class-only tree of scans with five planted duplicate groups (exact and re-saved)."""
    root = write_scan_tree(tmp_path_factory.mktemp("planted") / "flat")
    return root, plant_duplicates(root, root)


@pytest.fixture(scope="module")
def planted_split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[set[str]]]:
    """Training/ with the planted groups, Testing/ with one copy of a Training scan."""
    root = tmp_path_factory.mktemp("planted") / "split"
    write_scan_tree(root / "Training")
    groups = plant_duplicates(root, root / "Training")
    for number, folder in enumerate(SCAN_COUNTS):
        write_scan(root / "Testing" / folder / f"te_{number}.jpg", 5000 + number)
    shutil.copyfile(root / "Training/glioma/scan_004.jpg", root / "Testing/glioma/leaked.jpg")
    return root, groups


def test_planted_copies_are_duplicates_to_the_hasher(
    planted_flat: tuple[Path, list[set[str]]],
) -> None:
    root, groups = planted_flat
    paths = sorted(iter_image_files(root))
    ids = duplicate_groups(image_hashes(paths, workers=1))
    group_of = {
        path.relative_to(root).as_posix(): group for path, group in zip(paths, ids, strict=True)
    }
    for planted in groups:
        assert len({group_of[name] for name in planted}) == 1
    assert len(set(ids)) == len(paths) - sum(len(planted) - 1 for planted in groups)


@pytest.mark.parametrize("layout", ["class_only", "split_class"])
def test_duplicates_land_in_one_split_for_every_seed(
    planted_flat: tuple[Path, list[set[str]]],
    planted_split: tuple[Path, list[set[str]]],
    tmp_path: Path,
    layout: str,
) -> None:
    source, groups = planted_flat if layout == "class_only" else planted_split
    held_out = ("val", "test") if layout == "class_only" else ("val",)
    for seed in range(10):
        summary = prepare(source, tmp_path / str(seed), seed=seed)
        where = placement(tmp_path / str(seed), source)
        for planted in groups:
            assert len({where[name] for name in planted}) == 1, (seed, planted)
        assert summary.grouping is not None
        assert summary.grouping.kept_together == len(groups)
        assert summary.grouping.grouped_images == sum(map(len, groups))
        assert summary.grouping.label_conflicts == ()
        for label in summary.counts["train"]:
            total = sum(summary.counts[split][label] for split in ("train", *held_out))
            for split in held_out:  # stratified: singletons fill the share exactly
                assert summary.counts[split][label] == int(total * 0.15 + 0.5)


def test_without_grouping_duplicates_straddle_splits_as_before(
    planted_flat: tuple[Path, list[set[str]]], tmp_path: Path
) -> None:
    source, groups = planted_flat
    by_label = {
        normalise_class_name(folder.name) or "": sorted(iter_image_files(folder))
        for folder in sorted(source.iterdir())
    }
    straddling = 0
    for seed in range(10):
        summary = prepare(source, tmp_path / str(seed), seed=seed, group_duplicates=False)
        assert summary.grouping is None
        where = placement(tmp_path / str(seed), source)
        assert where == as_placement(plain_carve(by_label, ("val", "test"), 0.15, seed), source)
        straddling += sum(len({where[name] for name in planted}) > 1 for planted in groups)
    assert straddling > 0


def test_without_duplicates_the_grouped_carve_is_the_plain_carve(
    masoud: Path, tmp_path: Path
) -> None:
    for seed in (0, 1, 42):
        grouped = prepare(masoud, tmp_path / f"g{seed}", seed=seed)
        prepare(masoud, tmp_path / f"p{seed}", seed=seed, group_duplicates=False)
        assert grouped.grouping is not None and grouped.grouping.kept_together == 0
        assert placement(tmp_path / f"g{seed}", masoud) == placement(tmp_path / f"p{seed}", masoud)


def test_grouped_carve_is_reproducible_and_independent_of_the_path(
    planted_flat: tuple[Path, list[set[str]]], tmp_path: Path
) -> None:
    source, _ = planted_flat
    moved = shutil.copytree(source, tmp_path / "elsewhere" / "other name")
    archive = zip_folder(source, tmp_path / "scans.zip", prefix="download/")
    prepare(source, tmp_path / "a", seed=3)
    prepare(source, tmp_path / "b", seed=3)
    prepare(moved, tmp_path / "c", seed=3)
    prepare(archive, tmp_path / "d", seed=3)
    prepare(source, tmp_path / "e", seed=4)
    first = placement(tmp_path / "a", source)
    assert placement(tmp_path / "b", source) == first
    assert placement(tmp_path / "c", moved) == first
    assert placement(tmp_path / "d", archive / "download") == first
    assert placement(tmp_path / "e", source) != first


def test_a_class_split_survives_changes_to_other_classes(
    planted_flat: tuple[Path, list[set[str]]], tmp_path: Path
) -> None:
    source, _ = planted_flat
    changed = shutil.copytree(source, tmp_path / "changed")
    write_scan(changed / "pituitary" / "new.jpg", 9000)
    (changed / "notumor" / "scan_000.jpg").unlink()
    prepare(source, tmp_path / "a")
    prepare(changed, tmp_path / "b")
    before, after = placement(tmp_path / "a", source), placement(tmp_path / "b", changed)
    for folder in ("glioma", "meningioma"):
        assert {k: v for k, v in before.items() if k.startswith(folder)} == {
            k: v for k, v in after.items() if k.startswith(folder)
        }


def test_a_label_conflict_stays_in_train_and_is_reported(tmp_path: Path) -> None:
    source = write_scan_tree(tmp_path / "flat")
    shutil.copyfile(source / "glioma/scan_001.jpg", source / "meningioma/looks like glioma.jpg")
    write_scan(source / "pituitary" / "same scan.jpg", scan_index("glioma", 1), quality=60)
    conflict = (
        source / "glioma/scan_001.jpg",
        source / "meningioma/looks like glioma.jpg",
        source / "pituitary/same scan.jpg",
    )
    for seed in range(8):
        summary = prepare(source, tmp_path / str(seed), seed=seed)
        assert summary.grouping is not None
        assert summary.grouping.label_conflicts == (conflict,)
        assert summary.grouping.kept_together == 0
        where = placement(tmp_path / str(seed), source)
        assert {where[path.relative_to(source).as_posix()] for path in conflict} == {"train"}
    archive = zip_folder(source, tmp_path / "flat.zip")
    from_zip = prepare(archive, tmp_path / "zip")
    assert from_zip.grouping is not None
    assert from_zip.grouping.label_conflicts == (
        tuple(archive / path.relative_to(source) for path in conflict),
    )


def test_a_picture_under_several_classes_stays_in_train(tmp_path: Path) -> None:
    """fixtures_kaggle's masoud reuses picture n in every class and in Testing."""
    source = build_masoud(tmp_path / "masoud")
    summary = prepare(source, tmp_path / "data")
    assert summary.grouping is not None
    shared = [
        n
        for n in range(max(MASOUD_TRAIN.values()))
        if sum(count > n for count in MASOUD_TRAIN.values()) > 1
    ]
    assert len(summary.grouping.label_conflicts) == len(shared)
    where = placement(tmp_path / "data", source)
    for group in summary.grouping.label_conflicts:
        assert len({path.name for path in group}) == 1
        assert {where[path.relative_to(source).as_posix()] for path in group} == {"train"}
    # Testing's pictures 0..2 are Training's too: groups across the source's own splits.
    assert summary.grouping.cross_split_groups == max(MASOUD_TEST.values())


def test_duplicates_across_the_source_splits_are_counted(
    planted_split: tuple[Path, list[set[str]]], tmp_path: Path
) -> None:
    source, _ = planted_split
    summary = prepare(source, tmp_path / "data")
    assert summary.grouping is not None
    assert summary.grouping.cross_split_groups == 1
    assert summary.grouping.hashed == len(list(iter_image_files(source)))
    assert prepare(source, tmp_path / "plain", group_duplicates=False).grouping is None


def test_nothing_is_grouped_when_nothing_is_carved(tmp_path: Path) -> None:
    summary = prepare(build_navoneel(tmp_path / "navoneel"), tmp_path / "data")
    assert summary.grouping is None


def test_carve_splits_keeps_groups_whole_and_stratified(tmp_path: Path) -> None:
    files = {
        "glioma": [tmp_path / f"g{i:02d}.jpg" for i in range(40)],
        "pituitary": [tmp_path / f"p{i:02d}.jpg" for i in range(20)],
    }
    groups: dict[Path, int] = {}
    for group, members in enumerate(
        [
            files["glioma"][0:2],
            files["glioma"][5:8],
            files["glioma"][30:32],
            files["pituitary"][3:5],
        ]
    ):
        groups.update(dict.fromkeys(members, group))
    conflict = [files["glioma"][20], files["pituitary"][10]]
    groups.update(dict.fromkeys(conflict, 99))
    for seed in range(50):
        splits = carve_splits(files, ("val", "test"), 0.15, seed, groups=groups)
        where = {path: split for split, by in splits.items() for f in by.values() for path in f}
        assert len(where) == sum(map(len, files.values()))
        for group in set(groups.values()):
            assert len({where[path] for path, g in groups.items() if g == group}) == 1
        assert {where[path] for path in conflict} == {"train"}
        for label, members in files.items():
            for split in ("val", "test"):
                assert len(splits[split][label]) == int(len(members) * 0.15 + 0.5)


def test_carve_splits_without_duplicates_is_the_plain_carve(tmp_path: Path) -> None:
    files = {
        label: [tmp_path / f"{label}{i}.jpg" for i in range(n)]
        for label, n in (("glioma", 33), ("pituitary", 9), ("no_tumor", 1))
    }
    singletons = {
        path: index for index, path in enumerate(path for paths in files.values() for path in paths)
    }
    for seed in range(20):
        expected = plain_carve(files, ("val", "test"), 0.15, seed)
        assert carve_splits(files, ("val", "test"), 0.15, seed) == expected
        assert carve_splits(files, ("val", "test"), 0.15, seed, groups=singletons) == expected


def test_carve_splits_comes_as_close_as_groups_allow(tmp_path: Path) -> None:
    files = [tmp_path / f"{i}.jpg" for i in range(10)]
    pairs = {path: index // 2 for index, path in enumerate(files)}
    splits = carve_splits({"glioma": files}, ("val", "test"), 0.15, 0, groups=pairs)
    assert [len(splits[s]["glioma"]) for s in ("train", "val", "test")] == [6, 2, 2]
    # Two triples and a target of 2: no group fits, one triple (3) is closer than none (0).
    triples = {path: index // 3 for index, path in enumerate(files[:6])}
    splits = carve_splits({"glioma": files[:6]}, ("val",), 0.3, 0, groups=triples)
    assert [len(splits[s]["glioma"]) for s in ("train", "val")] == [3, 3]


def test_cli_reports_the_grouping_and_can_turn_it_off(runner: CliRunner, tmp_path: Path) -> None:
    source = build_masoud(tmp_path / "masoud")
    env = {"COLUMNS": "300"}
    result = runner.invoke(
        app, ["data", "prepare", str(source), "--out", str(tmp_path / "a")], env=env
    )
    assert result.exit_code == 0, result.output
    assert (
        "Kept 0 duplicate group(s) (0 images) whole in one split; hashed 59 images" in result.stdout
    )
    assert (
        "Label conflicts (one image under several classes), kept in train: 14 group(s)"
        in result.stdout
    )
    assert "3 duplicate group(s) span the splits the source gave" in result.stdout
    assert "--fix" in result.stdout
    args = ["data", "prepare", str(source), "--out", str(tmp_path / "b"), "--no-group-duplicates"]
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    assert "Duplicates were not grouped" in result.stdout
    assert "hashed" not in result.stdout
