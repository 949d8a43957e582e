"""Preparing local folders and zips into the standard layout (mritumor.data.prepare)."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import pytest

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
from mritumor.data.files import read_image
from mritumor.data.layout import CLASS_NAMES, normalise_class_name
from mritumor.data.prepare import carve_splits, prepare
from mritumor.data.splits import load_split
from mritumor.errors import UsageError

MASOUD_TRAIN_COUNTS = {normalise_class_name(k): v for k, v in MASOUD_TRAIN.items()}
MASOUD_TEST_COUNTS = {normalise_class_name(k): v for k, v in MASOUD_TEST.items()}


@pytest.fixture(scope="module")
def masoud(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built once: prepare never writes to its source (test_source_is_left_untouched)."""
    return build_masoud(tmp_path_factory.mktemp("source") / "masoud")


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
    source = write_class_tree(tmp_path / "flat", counts)
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


def test_progress_counts_every_file(masoud: Path, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    summary = prepare(
        masoud, tmp_path / "data", progress=lambda done, total: calls.append((done, total))
    )
    assert calls == [(n, summary.total) for n in range(1, summary.total + 1)]


def test_a_source_without_images_is_refused(tmp_path: Path) -> None:
    (tmp_path / "src" / "glioma").mkdir(parents=True)
    (tmp_path / "src" / "glioma" / "readme.txt").write_text("no scans", encoding="utf-8")
    with pytest.raises(UsageError, match="no images"):
        prepare(tmp_path / "src", tmp_path / "data")
    assert not (tmp_path / "data").exists()


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
