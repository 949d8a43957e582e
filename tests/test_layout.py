"""Layout detection and folder-name mapping (mritumor.data.layout)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fixtures_kaggle import (
    NAVONEEL_NO,
    NAVONEEL_YES,
    build_masoud,
    build_navoneel,
    build_sartaj,
    write_class_tree,
    write_image,
)
from mritumor.core.classes import CLASS_NAMES
from mritumor.core.errors import UsageError
from mritumor.data.layout import (
    Destination,
    detect_layout,
    normalise_binary_label,
    normalise_class_name,
    normalise_split_name,
)


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("notumor", "no_tumor"),
        ("no tumor", "no_tumor"),
        ("No Tumor", "no_tumor"),
        ("no_tumor", "no_tumor"),
        ("no-tumor", "no_tumor"),
        ("no", "no_tumor"),
        ("Normal", "no_tumor"),
        ("glioma", "glioma"),
        ("glioma_tumor", "glioma"),
        ("Glioma Tumor", "glioma"),
        ("meningioma_tumor", "meningioma"),
        ("MENINGIOMA", "meningioma"),
        ("pituitary_tumor", "pituitary"),
        ("pituitary", "pituitary"),
        ("yes", None),
        ("cats", None),
    ],
)
def test_normalise_class_name(folder: str, expected: str | None) -> None:
    assert normalise_class_name(folder) == expected


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("yes", "yes"),
        ("YES", "yes"),
        ("Y", "yes"),
        ("tumor", "yes"),
        ("Tumour", "yes"),
        ("no", "no"),
        ("N", "no"),
        ("normal", "no"),
        ("glioma", None),
    ],
)
def test_normalise_binary_label(folder: str, expected: str | None) -> None:
    assert normalise_binary_label(folder) == expected


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("Training", "train"),
        ("train", "train"),
        ("VAL", "val"),
        ("validation", "val"),
        ("Valid", "val"),
        ("Testing", "test"),
        ("test", "test"),
        ("holdout", None),
    ],
)
def test_normalise_split_name(folder: str, expected: str | None) -> None:
    assert normalise_split_name(folder) == expected


def test_masoud_is_split_class(tmp_path: Path) -> None:
    root = build_masoud(tmp_path / "masoud")
    layout = detect_layout(root)
    assert layout.kind == "split_class"
    assert layout.root == root.resolve()
    assert layout.splits == {"train", "test"}
    assert layout.labels == CLASS_NAMES
    assert layout.folders[root / "Training" / "notumor"] == Destination("train", "no_tumor")
    assert layout.folders[root / "Testing" / "glioma"] == Destination("test", "glioma")
    assert layout.duplicates == ()


def test_sartaj_class_names_are_mapped(tmp_path: Path) -> None:
    root = build_sartaj(tmp_path / "sartaj")
    layout = detect_layout(root)
    assert layout.kind == "split_class"
    assert layout.folders[root / "Training" / "glioma_tumor"] == Destination("train", "glioma")
    assert layout.folders[root / "Testing" / "no_tumor"] == Destination("test", "no_tumor")
    assert layout.labels == CLASS_NAMES


def test_navoneel_nested_copy_is_a_duplicate(tmp_path: Path) -> None:
    root = build_navoneel(tmp_path / "navoneel")
    layout = detect_layout(root)
    assert layout.kind == "binary"
    assert layout.root == root
    assert layout.folders == {
        root / "yes": Destination("external", "yes"),
        root / "no": Destination("external", "no"),
    }
    assert layout.duplicates == (root / "brain_tumor_dataset",)


def test_every_image_extension_is_found(tmp_path: Path) -> None:
    root = build_navoneel(tmp_path / "navoneel", nested_copy=False)
    names = {path.name for path, _ in detect_layout(root).image_files()}
    assert names == {*NAVONEEL_YES, *NAVONEEL_NO}


def test_wrapper_folders_are_descended(tmp_path: Path) -> None:
    build_navoneel(tmp_path / "download" / "brain_tumor_dataset", nested_copy=False)
    layout = detect_layout(tmp_path / "download")
    assert layout.kind == "binary"
    assert layout.root == tmp_path / "download" / "brain_tumor_dataset"


def test_a_different_second_copy_is_refused(tmp_path: Path) -> None:
    root = build_navoneel(tmp_path / "navoneel")
    write_image(root / "brain_tumor_dataset" / "yes" / "extra.jpg")
    with pytest.raises(UsageError, match="'brain_tumor_dataset'"):
        detect_layout(root)


def test_class_only_tree(tmp_path: Path) -> None:
    root = write_class_tree(tmp_path / "flat", {"Glioma": 2, "no tumor": 2, "Pituitary_Tumor": 1})
    layout = detect_layout(root)
    assert layout.kind == "class_only"
    assert layout.splits == frozenset()
    assert layout.labels == ("glioma", "no_tumor", "pituitary")
    assert layout.folders[root / "no tumor"] == Destination(None, "no_tumor")


def test_generic_split_names_are_case_insensitive(tmp_path: Path) -> None:
    root = tmp_path / "generic"
    write_class_tree(root / "TRAIN", {"glioma": 1, "no": 1})
    write_class_tree(root / "Valid", {"glioma": 1})
    write_class_tree(root / "testing", {"Meningioma": 1})
    layout = detect_layout(root)
    assert layout.kind == "split_class"
    assert layout.splits == {"train", "val", "test"}
    assert layout.folders[root / "TRAIN" / "no"] == Destination("train", "no_tumor")


def test_unknown_class_folder_is_named(tmp_path: Path) -> None:
    root = build_masoud(tmp_path / "masoud")
    shutil.move(root / "Training" / "pituitary", root / "Training" / "adenoma")
    with pytest.raises(UsageError, match=r"unknown class folder 'adenoma'.*pituitary_tumor"):
        detect_layout(root)


def test_unknown_folder_next_to_classes_is_named(tmp_path: Path) -> None:
    root = write_class_tree(tmp_path / "flat", {"glioma": 1, "meningioma": 1, "scans": 1})
    with pytest.raises(UsageError, match=r"unknown folder 'scans'.*accepted: classes glioma"):
        detect_layout(root)


def test_unrecognisable_tree(tmp_path: Path) -> None:
    root = write_class_tree(tmp_path / "odd", {"a": 1, "b": 1})
    with pytest.raises(UsageError, match="cannot recognise the layout"):
        detect_layout(root)


def test_a_file_is_not_a_layout(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is not a folder"):
        detect_layout(write_image(tmp_path / "x.jpg"))
