"""The files a run keeps beside its bundle (mritumor.run.splits, .history) and where it came
from (mritumor.run.provenance)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mritumor import __version__
from mritumor.data.splits import SplitFiles
from mritumor.run import provenance
from mritumor.run.history import read_history, write_history
from mritumor.run.layout import BundleError
from mritumor.run.provenance import environment_versions, git_commit
from mritumor.run.splits import dataset_fingerprint, list_splits, read_split, write_splits

CLASSES = ("glioma", "meningioma", "no_tumor", "pituitary")


def make_files(root: Path, layout: dict[str, dict[str, int]]) -> list[SplitFiles]:
    """Files ``root/<split>/<class>/img_<i>.png`` of distinct sizes; the splits that list them."""
    splits = []
    for split, counts in layout.items():
        paths, labels = [], []
        for class_name, count in counts.items():
            for number in range(count):
                path = root / split / class_name / f"img {number}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"x" * (10 + number))
                paths.append(path)
                labels.append(CLASSES.index(class_name))
        splits.append(SplitFiles(split, tuple(paths), tuple(labels), CLASSES))
    return splits


LAYOUT = {"train": {"glioma": 2, "no_tumor": 2}, "val": {"glioma": 1, "no_tumor": 1}}


def temporary_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))


# --------------------------------------------------------------------------- splits


def test_splits_round_trip(tmp_path: Path) -> None:
    splits = make_files(tmp_path / "data", LAYOUT)
    written = write_splits(tmp_path / "run", tmp_path / "data", splits)
    assert [p.name for p in written] == ["train.csv", "val.csv"]
    for split in splits:
        again = read_split(tmp_path / "run", split.name, CLASSES)
        assert again == split
    assert list_splits(tmp_path / "run") == ["train", "val"]


def test_split_csv_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    splits = make_files(Path("data"), {"test": {"no_tumor": 1}})  # relative paths
    write_splits(tmp_path / "run", Path("data"), splits)
    with (tmp_path / "run" / "splits" / "test.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows == [
        ["path", "label", "relpath"],
        [
            (tmp_path / "data/test/no_tumor/img 0.png").as_posix(),
            "no_tumor",
            "test/no_tumor/img 0.png",
        ],
    ]


def test_symlinked_layout_files_are_recorded_as_links(tmp_path: Path) -> None:
    original = tmp_path / "download" / "Training" / "glioma_tumor" / "a.png"
    original.parent.mkdir(parents=True)
    original.write_bytes(b"png")
    link = tmp_path / "data" / "train" / "glioma" / "a.png"
    link.parent.mkdir(parents=True)
    link.symlink_to(original)
    split = SplitFiles("train", (link,), (0,), CLASSES)
    write_splits(tmp_path / "run", tmp_path / "data", [split])
    row = (tmp_path / "run" / "splits" / "train.csv").read_text().splitlines()[1]
    assert row == f"{link.as_posix()},glioma,train/glioma/a.png"


def test_read_split_errors(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(BundleError, match=r"has no test split .*; it has no splits/ folder"):
        read_split(run, "test", CLASSES)
    splits = make_files(tmp_path / "data", LAYOUT)
    write_splits(run, tmp_path / "data", splits)
    with pytest.raises(
        BundleError, match=r"has no test split \(.*test.csv not found\); it has train, val"
    ):
        read_split(run, "test", CLASSES)
    with pytest.raises(BundleError, match="line 2: label 'glioma' is not one of the classes"):
        read_split(run, "train", ["a", "b"])
    splits[0].paths[0].unlink()
    with pytest.raises(
        BundleError, match=r"lists 1 file\(s\) that no longer exist, first .*img 0.png"
    ):
        read_split(run, "train", CLASSES)
    (run / "splits" / "bad.csv").write_text("file,label\nx,glioma\n")
    with pytest.raises(BundleError, match="lacks column"):
        read_split(run, "bad", CLASSES)
    (run / "splits" / "empty.csv").write_text("path,label,relpath\n")
    with pytest.raises(BundleError, match="lists no files"):
        read_split(run, "empty", CLASSES)


def test_read_split_finds_a_moved_data_folder(tmp_path: Path) -> None:
    splits = make_files(tmp_path / "data", LAYOUT)
    write_splits(tmp_path / "run", tmp_path / "data", splits)
    (tmp_path / "data").rename(tmp_path / "moved")
    with pytest.raises(BundleError, match="no longer exist"):
        read_split(tmp_path / "run", "val", CLASSES)
    again = read_split(tmp_path / "run", "val", CLASSES, data_root=tmp_path / "moved")
    assert again.paths == tuple(
        tmp_path / "moved" / p.relative_to(tmp_path / "data") for p in splits[1].paths
    )
    assert again.labels == splits[1].labels


def test_list_splits_orders_the_usual_names_first(tmp_path: Path) -> None:
    folder = tmp_path / "splits"
    folder.mkdir()
    for name in ("test", "ext_holdout", "cal", "train", "val", "ext_train"):
        (folder / f"{name}.csv").write_text("path,label\n")
    (folder / ".test.csv.abc.tmp").write_text("")
    assert list_splits(tmp_path) == ["train", "val", "cal", "test", "ext_holdout", "ext_train"]


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_is_stable_and_tracks_changes(tmp_path: Path) -> None:
    splits = make_files(tmp_path / "data", LAYOUT)
    fingerprint = dataset_fingerprint(splits)
    assert fingerprint.startswith("sha256:")
    assert len(fingerprint) == len("sha256:") + 64
    assert dataset_fingerprint(splits) == fingerprint
    assert dataset_fingerprint(list(reversed(splits))) == fingerprint
    train, val = splits
    shuffled = SplitFiles("train", train.paths[::-1], train.labels[::-1], CLASSES)
    assert dataset_fingerprint([shuffled, val]) == fingerprint

    relabelled = SplitFiles("train", train.paths, (1, *train.labels[1:]), CLASSES)
    assert dataset_fingerprint([relabelled, val]) != fingerprint

    extra = tmp_path / "data" / "train" / "glioma" / "new.png"
    extra.write_bytes(b"new")
    added = SplitFiles("train", (*train.paths, extra), (*train.labels, 0), CLASSES)
    assert dataset_fingerprint([added, val]) != fingerprint

    removed = SplitFiles("train", train.paths[1:], train.labels[1:], CLASSES)
    assert dataset_fingerprint([removed, val]) != fingerprint

    moved = SplitFiles("val", (*val.paths, train.paths[0]), (*val.labels, train.labels[0]), CLASSES)
    assert dataset_fingerprint([removed, moved]) != fingerprint

    train.paths[0].write_bytes(b"a different size")
    assert dataset_fingerprint(splits) != fingerprint


def test_fingerprint_survives_moving_the_data_folder(tmp_path: Path) -> None:
    splits = make_files(tmp_path / "data", LAYOUT)
    fingerprint = dataset_fingerprint(splits)
    shutil.copytree(tmp_path / "data", tmp_path / "elsewhere" / "data")
    copied = [
        SplitFiles(
            s.name,
            tuple(tmp_path / "elsewhere" / p.relative_to(tmp_path) for p in s.paths),
            s.labels,
            CLASSES,
        )
        for s in splits
    ]
    assert dataset_fingerprint(copied) == fingerprint


def test_fingerprint_of_a_missing_file_names_it(tmp_path: Path) -> None:
    splits = make_files(tmp_path / "data", LAYOUT)
    splits[1].paths[0].unlink()
    with pytest.raises(BundleError, match=r"cannot fingerprint the dataset: .*val.*img 0.png"):
        dataset_fingerprint(splits)


# --------------------------------------------------------------------------- history

ROWS: list[dict[str, object]] = [
    {
        "epoch": 1,
        "stage": "frozen",
        "lr": 0.001,
        "loss": 1.25,
        "accuracy": 0.5,
        "val_loss": 1.0,
        "val_accuracy": 0.625,
    },
    {
        "epoch": 2,
        "stage": "full",
        "lr": 0.0001,
        "loss": 0.75,
        "accuracy": 0.75,
        "val_loss": 0.5,
        "val_accuracy": 0.875,
    },
]


def test_history_csv_and_reference_json(tmp_path: Path) -> None:
    csv_path, json_path = write_history(tmp_path, ROWS)  # type: ignore[arg-type]
    assert csv_path.read_text() == (
        "epoch,stage,lr,loss,accuracy,val_loss,val_accuracy\n"
        "1,frozen,0.001,1.25,0.5,1.0,0.625\n"
        "2,full,0.0001,0.75,0.75,0.5,0.875\n"
    )
    assert json.loads(json_path.read_text()) == {
        "epoch": [1, 2],
        "stage": ["frozen", "full"],
        "lr": [0.001, 0.0001],
        "loss": [1.25, 0.75],
        "accuracy": [0.5, 0.75],
        "val_loss": [1.0, 0.5],
        "val_accuracy": [0.625, 0.875],
    }
    assert read_history(tmp_path) == ROWS
    assert temporary_files(tmp_path) == []


def test_history_extra_metrics_missing_values_and_numpy_scalars(tmp_path: Path) -> None:
    rows = [
        {
            "loss": np.float32(0.5),
            "val_auc": 0.9,
            "auc": 0.8,
            "val_loss": float("nan"),
            "stage": np.int64(1),
        },
        {"loss": np.array(0.25), "auc": 0.85},
    ]
    write_history(tmp_path, rows)  # type: ignore[arg-type]
    assert (tmp_path / "history.csv").read_text() == (
        "epoch,stage,loss,val_loss,auc,val_auc\n1,1,0.5,nan,0.8,0.9\n2,,0.25,,0.85,\n"
    )
    assert json.loads((tmp_path / "training_history.json").read_text()) == {
        "epoch": [1, 2],
        "stage": [1, None],
        "loss": [0.5, 0.25],
        "val_loss": [None, None],
        "auc": [0.8, 0.85],
        "val_auc": [0.9, None],
    }
    again = read_history(tmp_path)
    assert again[1] == {"epoch": 2, "loss": 0.25, "auc": 0.85}
    assert again[0]["stage"] == 1
    assert isinstance(again[0]["stage"], int)
    assert np.isnan(again[0]["val_loss"])


def test_history_resume_appends(tmp_path: Path) -> None:
    assert read_history(tmp_path) == []
    write_history(tmp_path, ROWS[:1])  # type: ignore[arg-type]
    resumed = read_history(tmp_path)
    resumed.append(dict(ROWS[1]))  # type: ignore[arg-type]
    write_history(tmp_path, resumed)
    assert read_history(tmp_path) == ROWS


def test_history_rejects_values_that_are_not_numbers_or_text(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="history value for 'loss'"):
        write_history(tmp_path, [{"loss": [1.0]}])  # type: ignore[list-item]
    assert not (tmp_path / "history.csv").exists()


# --------------------------------------------------------------------------- provenance


def test_environment_versions() -> None:
    versions = environment_versions()
    assert list(versions) == ["mritumor", "tensorflow", "keras", "python", "numpy"]
    assert versions["mritumor"] == __version__
    assert versions["numpy"] == np.__version__
    assert versions["python"] == ".".join(map(str, sys.version_info[:3]))


def test_git_commit_outside_a_repository_is_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    (tmp_path / "project").mkdir()
    assert git_commit(tmp_path / "project") is None
    assert git_commit(tmp_path / "does-not-exist") is None
    assert capfd.readouterr() == ("", "")


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_commit_in_a_repository(tmp_path: Path) -> None:
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path.parent)}
    git = [
        "git",
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.org",
        "-c",
        "commit.gpgsign=false",
    ]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, env=env, check=True)
    subprocess.run(
        [*git, "commit", "-q", "--allow-empty", "-m", "x"], cwd=tmp_path, env=env, check=True
    )
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert git_commit(tmp_path) == head


def test_git_commit_without_git_or_on_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    def hang(*args: object, **kwargs: object) -> None:
        assert kwargs["timeout"] == 2.0
        raise subprocess.TimeoutExpired("git", 2.0)

    monkeypatch.setattr(provenance.subprocess, "run", hang)
    assert git_commit() is None

    def missing(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError("git")

    monkeypatch.setattr(provenance.subprocess, "run", missing)
    assert git_commit() is None
