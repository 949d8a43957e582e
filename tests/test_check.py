"""The data check on small generated datasets: problems, duplicates, leakage, quarantine."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from helpers import SyntheticData, save, smooth_image, write_bomb
from mritumor.core.errors import MritumorError, UsageError
from mritumor.data.check.analysis import CheckReport, check_dataset, class_folders
from mritumor.data.check.quarantine import quarantine_leaks, restore_quarantine
from mritumor.data.check.report import leaks_path, report_json, write_leaks, write_report
from mritumor.data.duplicates import hashing
from mritumor.data.duplicates.groups import DEFAULT_RADIUS, MIN_SIMILARITY
from mritumor.data.splits import load_split
from mritumor.data.synth.render import render_slice


class Dataset:
    """A standard-layout tree under construction; every image gets its own seed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._seed = 100

    def image(self, relative: str, pixels: NDArray[np.uint8] | None = None) -> Path:
        if pixels is None:
            self._seed += 1
            pixels = smooth_image(self._seed)
        return save(self.root / relative, pixels)

    def balanced(self, per_class: int = 2) -> Dataset:
        for split in ("train", "val", "test"):
            for name in ("glioma", "no_tumor"):
                for index in range(per_class):
                    self.image(f"{split}/{name}/{name} {index}.png")
        return self

    def check(self) -> CheckReport:
        return check_dataset(self.root, workers=1)


@pytest.fixture
def dataset(tmp_path: Path) -> Dataset:
    return Dataset(tmp_path / "data set").balanced()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def relative_paths(report: CheckReport, paths: list[Path]) -> list[str]:
    return [path.relative_to(report.root).as_posix() for path in paths]


def test_a_clean_dataset_has_no_findings(dataset: Dataset) -> None:
    report = dataset.check()

    assert len(report.files) == 12
    assert not report.problems and not report.groups and not report.leaks
    assert not report.has_leakage
    assert report.class_counts["train"] == {"glioma": 2, "no_tumor": 2}
    assert report.imbalance_ratios == {"train": 1.0, "val": 1.0, "test": 1.0}
    assert report.modes == {"RGB": 12}
    assert report.widths is not None and report.widths.median == 64


def test_an_exact_copy_in_test_of_a_train_image_is_leakage(dataset: Dataset) -> None:
    pixels = smooth_image(1)
    train = dataset.image("train/glioma/original.png", pixels)
    test = dataset.image("test/glioma/copy.png", pixels)

    report = dataset.check()

    assert report.has_leakage
    [leak] = report.leaks
    assert (leak.kind, leak.distance, leak.similarity) == ("exact", 0, 1.0)
    assert (leak.a.path, leak.a.split, leak.b.path, leak.b.split) == (train, "train", test, "test")
    [group] = report.exact_groups
    assert group.crosses_splits and group.splits == ("train", "test")
    assert group.near_pairs == ()


def test_a_reencoded_copy_in_val_is_a_near_duplicate_and_leakage(dataset: Dataset) -> None:
    pixels = smooth_image(2)
    train = dataset.image("train/glioma/original.png", pixels)
    val = save(dataset.root / "val/glioma/recompressed.jpg", pixels, "JPEG", quality=60)

    report = dataset.check()

    [leak] = report.leaks
    assert leak.kind == "near" and leak.distance <= DEFAULT_RADIUS
    assert MIN_SIMILARITY <= leak.similarity < 1.0
    assert (leak.a.path, leak.b.path) == (train, val)
    [group] = report.groups
    assert group.kind == "near"
    [pair] = group.near_pairs
    assert (pair.a.path, pair.b.path, pair.similarity) == (train, val, leak.similarity)


def test_a_brighter_copy_in_val_is_found(dataset: Dataset) -> None:
    pixels = smooth_image(3)
    dataset.image("train/glioma/original.png", pixels)
    dataset.image("val/glioma/brighter.png", (pixels.astype(int) + 3).clip(0, 255).astype(np.uint8))

    assert [leak.b.path.name for leak in dataset.check().leaks] == ["brighter.png"]


def test_a_duplicate_within_one_split_is_reported_but_is_not_leakage(dataset: Dataset) -> None:
    pixels = smooth_image(4)
    dataset.image("train/glioma/a.png", pixels)
    dataset.image("train/glioma/b.png", pixels)

    report = dataset.check()

    [group] = report.groups
    assert group.kind == "exact" and not group.crosses_splits
    assert not report.has_leakage and not report.label_conflicts


def test_the_same_image_under_two_classes_is_a_label_conflict(dataset: Dataset) -> None:
    pixels = smooth_image(5)
    dataset.image("train/glioma/scan.png", pixels)
    dataset.image("train/no_tumor/scan.png", pixels)

    report = dataset.check()

    [conflict] = report.label_conflicts
    assert {file.class_name for file in conflict.files} == {"glioma", "no_tumor"}
    assert not report.has_leakage


def test_an_external_copy_is_leakage_and_compared_by_tumour_label(dataset: Dataset) -> None:
    pixels = smooth_image(6)
    dataset.image("test/no_tumor/scan.png", pixels)
    external = dataset.image("external/hospital b/yes/scan.png", pixels)

    report = dataset.check()

    [leak] = report.leaks
    assert (leak.a.split, leak.b.split, leak.b.path) == ("test", "external/hospital b", external)
    assert len(report.label_conflicts) == 1  # no_tumor in test, "yes" in the external set


def test_a_copy_shared_by_two_external_sets_is_not_leakage(dataset: Dataset) -> None:
    pixels = smooth_image(7)
    dataset.image("external/a/yes/scan.png", pixels)
    dataset.image("external/b/yes/scan.png", pixels)

    report = dataset.check()

    assert len(report.groups) == 1 and not report.has_leakage


def test_each_kind_of_problem_is_reported_and_png_named_jpg_is_not(dataset: Dataset) -> None:
    folder = dataset.root / "train/glioma"
    (folder / "empty.jpg").touch()
    jpeg = io.BytesIO()
    Image.fromarray(smooth_image(8, 128)).save(jpeg, format="JPEG")
    (folder / "cut.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) * 6 // 10])
    (folder / "notes.jpg").write_text("not an image\n")
    (folder / "Thumbs.db").write_bytes(bytes(range(256)))
    (folder / ".DS_Store").write_bytes(b"hidden, skipped like the pipeline does")
    save(folder / "png inside.jpg", smooth_image(9))
    write_bomb(folder / "bomb.png")
    save(folder / "tiny.png", smooth_image(10)[:8, :8])

    report = dataset.check()

    kinds = {problem.path.name: problem.kind for problem in report.problems}
    assert kinds == {
        "empty.jpg": "zero_bytes",
        "cut.jpg": "truncated",
        "notes.jpg": "not_an_image",
        "Thumbs.db": "not_an_image",
        "bomb.png": "too_large",
        "tiny.png": "too_small",
    }
    assert report.class_counts["train"]["glioma"] == 3  # two originals + the PNG named .jpg
    assert report_json(report)["summary"]["problems"] == {
        "unreadable": 0,
        "truncated": 1,
        "zero_bytes": 1,
        "not_an_image": 2,
        "too_large": 1,
        "too_small": 1,
    }
    messages = {problem.path.name: problem.message for problem in report.problems}
    assert messages["tiny.png"] == "8x8 pixels, smaller than the 32-pixel minimum side"
    assert messages["bomb.png"] == "over the 89478485-pixel limit (decompression-bomb guard)"


def test_empty_files_are_not_duplicates_of_each_other(dataset: Dataset) -> None:
    (dataset.root / "train/glioma/empty.png").touch()
    (dataset.root / "test/glioma/empty.png").touch()

    report = dataset.check()

    assert not report.groups and not report.has_leakage


def test_an_empty_class_folder_makes_the_imbalance_infinite(dataset: Dataset) -> None:
    (dataset.root / "train/meningioma").mkdir()

    report = dataset.check()

    assert report.class_counts["train"]["meningioma"] == 0
    assert report.imbalance_ratios["train"] == float("inf")
    assert report_json(report)["imbalance_ratio"]["train"] is None


def test_write_report_saves_the_leakage_table_as_json(dataset: Dataset, tmp_path: Path) -> None:
    pixels = smooth_image(10)
    dataset.image("train/glioma/a b.png", pixels)
    dataset.image("val/glioma/c d.png", pixels)
    report = dataset.check()

    write_report(report, tmp_path / "out" / "check.json")

    saved = json.loads((tmp_path / "out" / "check.json").read_text())
    assert saved["summary"]["has_leakage"] is True
    assert saved["leaks"] == [
        {
            "kind": "exact",
            "distance": 0,
            "similarity": 1.0,
            "path_a": "train/glioma/a b.png",
            "split_a": "train",
            "class_a": "glioma",
            "path_b": "val/glioma/c d.png",
            "split_b": "val",
            "class_b": "glioma",
        }
    ]
    assert len(saved["files"]) == 14
    assert saved["groups"][0]["files"] == ["train/glioma/a b.png", "val/glioma/c d.png"]
    assert saved["groups"][0]["near_pairs"] == []
    assert (saved["radius"], saved["min_similarity"]) == (DEFAULT_RADIUS, MIN_SIMILARITY)
    assert len(saved["files"][0]["phash"]) == 16


def test_every_leak_goes_to_a_csv_with_full_relative_paths(
    dataset: Dataset, tmp_path: Path
) -> None:
    for index in range(3):
        pixels = smooth_image(30 + index)
        dataset.image(f"train/glioma/a rather long scan name {index}.png", pixels)
        dataset.image(f"test/glioma/copy {index}.png", pixels)
    report = dataset.check()
    path = leaks_path(tmp_path / "out" / "check.json")

    write_leaks(report, path)

    assert path == tmp_path / "out" / "check-leaks.csv"
    assert path.read_text(encoding="utf-8").splitlines() == [
        "kind,distance,similarity,kept,leaking_copy",
        *(
            f"exact,0,1.0000,train/glioma/a rather long scan name {i}.png,test/glioma/copy {i}.png"
            for i in range(3)
        ),
    ]


def test_without_leaks_the_csv_is_a_header(dataset: Dataset, tmp_path: Path) -> None:
    write_leaks(dataset.check(), tmp_path / "leaks.csv")

    assert (tmp_path / "leaks.csv").read_text(encoding="utf-8") == (
        "kind,distance,similarity,kept,leaking_copy\n"
    )


def test_the_json_report_says_what_confirmed_a_near_pair(dataset: Dataset, tmp_path: Path) -> None:
    pixels = smooth_image(15)
    dataset.image("train/glioma/scan.png", pixels)
    save(dataset.root / "test/glioma/scan.jpg", pixels, "JPEG", quality=70)

    write_report(dataset.check(), tmp_path / "check.json")

    saved = json.loads((tmp_path / "check.json").read_text())
    [leak] = saved["leaks"]
    [pair] = saved["groups"][0]["near_pairs"]
    assert pair["path_a"] == "train/glioma/scan.png" and pair["path_b"] == "test/glioma/scan.jpg"
    assert (leak["distance"], leak["similarity"]) == (pair["distance"], pair["similarity"])
    assert MIN_SIMILARITY <= pair["similarity"] < 1.0
    assert saved["summary"]["near_pairs"] == 1
    assert saved["summary"]["near_candidates"] >= 1


PHANTOMS = {"train": 8, "val": 3, "test": 3, "external": 4, "image_size": 128, "seed": 42}


def test_distinct_synthetic_phantoms_are_neither_duplicates_nor_leakage(
    synthetic_data: SyntheticData,
) -> None:
    root = synthetic_data(**PHANTOMS)

    report = check_dataset(root, workers=1)
    unconfirmed = check_dataset(root, workers=1, min_similarity=-1.0)  # the pHash alone

    assert len(report.files) == 64 and report.near_candidates > 0
    assert not report.groups and not report.leaks and not report.label_conflicts
    assert unconfirmed.leaks and unconfirmed.label_conflicts


def phantom(seed: int) -> NDArray[np.uint8]:
    image, _ = render_slice(np.random.default_rng(seed), "meningioma", 256)
    return np.round(image * 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("name", "format", "options"),
    [("copy.jpg", "JPEG", {"quality": 50}), ("copy.png", "PNG", {}), ("copy.bmp", "BMP", {})],
)
def test_a_saved_again_phantom_in_test_leaks(
    synthetic_data: SyntheticData, tmp_path: Path, name: str, format: str, options: dict[str, int]
) -> None:
    root = synthetic_data.copy(tmp_path / "synthetic", **PHANTOMS)
    original = save(root / "train/meningioma/original.png", phantom(7))
    resized = Image.fromarray(phantom(7)).resize((200, 200))
    resized.save(root / "test/meningioma" / name, format=format, **options)

    [leak] = check_dataset(root, workers=1).leaks

    assert (leak.a.path, leak.b.path.name, leak.kind) == (original, name, "near")
    assert leak.similarity >= MIN_SIMILARITY


def test_quarantine_moves_only_the_leaking_copies_and_can_be_undone(dataset: Dataset) -> None:
    pixels = smooth_image(11)
    train = dataset.image("train/glioma/scan.png", pixels)
    val = dataset.image("val/glioma/scan copy.png", pixels)
    test = dataset.image("test/no_tumor/scan.png", pixels)
    external = dataset.image("external/site/no/scan.png", pixels)
    contents = {path: sha256(path) for path in (train, val, test, external)}
    report = dataset.check()

    moves = quarantine_leaks(report, dataset.root)

    quarantine = dataset.root / "quarantine"
    assert relative_paths(report, [move.destination for move in moves]) == [
        "quarantine/val/glioma/scan copy.png",
        "quarantine/test/no_tumor/scan.png",
        "quarantine/external/site/no/scan.png",
    ]
    assert train.exists() and not val.exists() and not test.exists() and not external.exists()
    for move in moves:
        assert sha256(move.destination) == contents[move.source] == move.sha256
        assert move.duplicate_of == train
        assert move.manifest_rows is None  # this dataset has no manifests, and gets none
    assert not (dataset.root / "manifests").exists()
    log = json.loads((quarantine / "moves.json").read_text())
    assert [entry["source"] for entry in log["moves"]] == [
        "val/glioma/scan copy.png",
        "test/no_tumor/scan.png",
        "external/site/no/scan.png",
    ]
    assert not dataset.check().has_leakage

    restored = restore_quarantine(dataset.root)

    assert {move.source for move in restored} == {val, test, external}
    assert all(sha256(path) == digest for path, digest in contents.items())
    assert json.loads((quarantine / "moves.json").read_text())["moves"] == []
    assert dataset.check().has_leakage


def test_quarantine_keeps_names_unique_and_appends_to_the_log(dataset: Dataset) -> None:
    pixels = smooth_image(12)
    dataset.image("train/glioma/scan.png", pixels)
    dataset.image("test/glioma/scan.png", pixels)
    quarantine_leaks(dataset.check(), dataset.root)
    dataset.image("test/glioma/scan.png", pixels)  # the same file turns up again

    [move] = quarantine_leaks(dataset.check(), dataset.root)

    assert move.destination.name == "scan_1.png"
    log = json.loads((dataset.root / "quarantine/moves.json").read_text())
    assert [entry["destination"] for entry in log["moves"]] == [
        "quarantine/test/glioma/scan.png",
        "quarantine/test/glioma/scan_1.png",
    ]


def test_quarantine_into_a_custom_folder(dataset: Dataset, tmp_path: Path) -> None:
    pixels = smooth_image(13)
    dataset.image("train/glioma/scan.png", pixels)
    dataset.image("val/glioma/scan.png", pixels)
    elsewhere = tmp_path / "held back"

    [move] = quarantine_leaks(dataset.check(), dataset.root, elsewhere)

    assert move.destination == elsewhere / "val/glioma/scan.png"
    assert [restored.source for restored in restore_quarantine(dataset.root, elsewhere)] == [
        dataset.root / "val/glioma/scan.png"
    ]


def test_quarantine_refuses_a_stale_report(dataset: Dataset) -> None:
    pixels = smooth_image(14)
    dataset.image("train/glioma/scan.png", pixels)
    test = dataset.image("test/glioma/scan.png", pixels)
    report = dataset.check()
    test.write_bytes(b"changed since the check")

    with pytest.raises(MritumorError, match="changed since the check"):
        quarantine_leaks(report, dataset.root)
    assert test.exists()


@pytest.mark.parametrize("inside", ["test", "external/site"])
def test_quarantine_refuses_a_folder_the_check_reads(dataset: Dataset, inside: str) -> None:
    with pytest.raises(UsageError, match="quarantine folder"):
        quarantine_leaks(dataset.check(), dataset.root, dataset.root / inside / "q")


def test_quarantine_refuses_a_report_of_another_root(dataset: Dataset, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="report was made for"):
        quarantine_leaks(dataset.check(), tmp_path)


def test_a_folder_without_the_layout_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "Training" / "glioma").mkdir(parents=True)

    with pytest.raises(UsageError, match="no train/"):
        class_folders(tmp_path)


def test_class_folders_include_external_sets_and_skip_hidden_ones(dataset: Dataset) -> None:
    (dataset.root / "external/site/yes").mkdir(parents=True)
    (dataset.root / "external/site/other").mkdir()
    (dataset.root / "train/.cache").mkdir()

    splits = {(folder.split, folder.class_name) for folder in class_folders(dataset.root)}

    assert ("external/site", "yes") in splits
    assert not any(name in {"other", ".cache"} for _, name in splits)
    assert len(splits) == 7


def test_check_reports_progress_and_runs_in_worker_processes(
    dataset: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hashing, "CHUNK_SIZE", 5)
    calls: list[tuple[int, int]] = []

    report = check_dataset(
        dataset.root, workers=2, progress=lambda done, total: calls.append((done, total))
    )

    assert calls == [(5, 12), (10, 12), (12, 12)]
    assert report.group_ids == list(range(12))


CLASSES = ("glioma", "no_tumor")


def write_manifests(root: Path) -> dict[str, str]:
    """Manifests as ``data prepare`` writes them, rows in reverse file order; their text by split."""
    texts = {}
    for split in ("train", "val", "test", "external/site"):
        files = sorted((root / split).glob("*/*"), reverse=True)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(("path", "label", "source"))
        writer.writerows(
            (path.relative_to(root).as_posix(), path.parent.name, f"/downloads/{path.name}")
            for path in files
        )
        manifest = root / "manifests" / f"{split}.csv"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text(buffer.getvalue(), encoding="utf-8")
        texts[split] = buffer.getvalue()
    return texts


def manifest_text(root: Path, split: str) -> str:
    return (root / "manifests" / f"{split}.csv").read_text(encoding="utf-8")


def test_quarantine_drops_manifest_rows_and_restore_puts_them_back(dataset: Dataset) -> None:
    pixels = smooth_image(16)
    dataset.image("train/glioma/scan.png", pixels)
    test = dataset.image("test/no_tumor/scan copy.png", pixels)
    dataset.image("external/site/yes/scan.png", pixels)
    dataset.image("external/site/no/other.png")
    original = write_manifests(dataset.root)
    report = dataset.check()

    moves = quarantine_leaks(report, dataset.root)

    split = load_split(dataset.root, "test", CLASSES)
    assert test not in split.paths and len(split) == 4
    lines = original["test"].splitlines(keepends=True)
    moved_line = next(line for line in lines if line.startswith("test/no_tumor/scan copy.png,"))
    assert manifest_text(dataset.root, "test") == "".join(
        line for line in lines if line != moved_line
    )
    assert "external/site/yes/scan.png" not in manifest_text(dataset.root, "external/site")
    assert manifest_text(dataset.root, "train") == original["train"]
    rows = moves[0].manifest_rows
    assert rows is not None and rows.manifest == dataset.root / "manifests/test.csv"
    [(index, values)] = rows.rows
    assert lines[index + 1] == moved_line  # the header is line 0
    assert values == {
        "path": "test/no_tumor/scan copy.png",
        "label": "no_tumor",
        "source": "/downloads/scan copy.png",
    }
    log = json.loads((dataset.root / "quarantine/moves.json").read_text())
    assert log["moves"][0]["manifest_rows"] == {
        "manifest": "manifests/test.csv",
        "rows": [{"index": index, "values": values}],
    }

    restore_quarantine(dataset.root)

    assert {split: manifest_text(dataset.root, split) for split in original} == original
    restored = load_split(dataset.root, "test", CLASSES)
    assert restored.labels[restored.paths.index(test)] == CLASSES.index("no_tumor")


def test_restore_puts_several_rows_back_in_their_old_order(dataset: Dataset) -> None:
    for index in range(3):
        pixels = smooth_image(20 + index)
        dataset.image(f"train/glioma/scan {index}.png", pixels)
        dataset.image(f"val/glioma/scan {index}.png", pixels)
    original = write_manifests(dataset.root)
    quarantine_leaks(dataset.check(), dataset.root)
    assert len(load_split(dataset.root, "val", CLASSES)) == 4

    assert len(restore_quarantine(dataset.root)) == 3

    assert manifest_text(dataset.root, "val") == original["val"]


def test_restore_does_not_list_a_file_twice(dataset: Dataset) -> None:
    pixels = smooth_image(18)
    dataset.image("train/glioma/scan.png", pixels)
    dataset.image("test/glioma/scan.png", pixels)
    write_manifests(dataset.root)
    quarantine_leaks(dataset.check(), dataset.root)
    with (dataset.root / "manifests/test.csv").open("a", encoding="utf-8") as manifest:
        manifest.write("test/glioma/scan.png,glioma,/listed/again.png\n")  # by hand

    restore_quarantine(dataset.root)

    listed = manifest_text(dataset.root, "test").count("test/glioma/scan.png,")
    assert listed == 1 and len(load_split(dataset.root, "test", CLASSES)) == 5


def test_a_manifest_that_does_not_list_the_file_is_left_alone(dataset: Dataset) -> None:
    pixels = smooth_image(17)
    dataset.image("train/glioma/scan.png", pixels)
    original = write_manifests(dataset.root)
    dataset.image("test/glioma/added later.png", pixels)

    [move] = quarantine_leaks(dataset.check(), dataset.root)

    assert move.manifest_rows is None
    assert manifest_text(dataset.root, "test") == original["test"]
