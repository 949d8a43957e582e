"""The run directory as the model bundle (mritumor.run.bundle)."""

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
from mritumor.config.settings import Settings, load_settings
from mritumor.core.errors import EXIT_USAGE, UsageError
from mritumor.data.splits import SplitFiles
from mritumor.run import bundle as bundles
from mritumor.run.bundle import (
    BUNDLE_FILE,
    SCHEMA_VERSION,
    Bundle,
    BundleError,
    check_class_names,
    dataset_fingerprint,
    environment_versions,
    git_commit,
    latest_run,
    list_splits,
    new_bundle,
    new_run_dir,
    read_bundle,
    read_history,
    read_split,
    update_bundle,
    write_bundle,
    write_config,
    write_history,
    write_splits,
)

CLASSES = ("glioma", "meningioma", "no_tumor", "pituitary")


def make_bundle(**changes: object) -> Bundle:
    values: dict[str, object] = {
        "command": "train",
        "class_names": list(CLASSES),
        "negative_class": "no_tumor",
        "image_size": 224,
        "channels": 3,
        "resize": "pad",
        "backbone": "v2b0",
        "created": "2025-01-02T03:04:05+00:00",
        "versions": {"mritumor": "0.1.0"},
        "git_commit": None,
    }
    values.update(changes)
    return Bundle(**values)  # type: ignore[arg-type]


def write_raw_bundle(run_dir: Path, data: object) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / BUNDLE_FILE
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def valid_dict(**changes: object) -> dict[str, object]:
    data = make_bundle().to_dict()
    data.update(changes)
    return data


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


# --------------------------------------------------------------------------- new_run_dir


def test_run_dirs_are_numbered_per_command(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert new_run_dir(runs, "train") == runs / "train-1"
    assert new_run_dir(runs, "train") == runs / "train-2"
    assert new_run_dir(runs, "finetune") == runs / "finetune-1"
    assert new_run_dir(runs, "train") == runs / "train-3"
    assert sorted(path.name for path in runs.iterdir()) == [
        "finetune-1",
        "train-1",
        "train-2",
        "train-3",
    ]


def test_numbering_continues_after_the_largest_and_ignores_lookalikes(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for name in ("train-1", "train-7", "train-x", "pretrain-20", "train-kfold-30", "mytrain-9"):
        (runs / name).mkdir(parents=True)
    assert new_run_dir(runs, "train") == runs / "train-8"  # gaps are not refilled
    (runs / "eval-4").write_text("a file, not a run")
    assert new_run_dir(runs, "eval") == runs / "eval-5"


def test_a_number_taken_by_a_racing_process_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    (runs / "train-1").mkdir(parents=True)
    # Another process created train-2 and train-3 after this one scanned the folder.
    monkeypatch.setattr(bundles, "_largest_run_number", lambda runs_dir, command: 1)
    for taken in ("train-2", "train-3"):
        (runs / taken).mkdir()
        (runs / taken / "marker").write_text(taken)
    assert new_run_dir(runs, "train") == runs / "train-4"
    assert (runs / "train-2" / "marker").read_text() == "train-2"
    assert list((runs / "train-4").iterdir()) == []


def test_named_run_dirs_never_overwrite_without_exist_ok(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    first = new_run_dir(runs, "train", name="baseline")
    assert first == runs / "baseline"
    assert first.is_dir()
    assert new_run_dir(runs, "train", name="baseline") == first  # empty: nothing to lose
    (first / "model.keras").write_bytes(b"weights")
    with pytest.raises(BundleError, match=r"already exists and is not empty; .*--exist-ok"):
        new_run_dir(runs, "train", name="baseline")
    assert new_run_dir(runs, "train", name="baseline", exist_ok=True) == first
    assert (first / "model.keras").read_bytes() == b"weights"


def test_exist_ok_never_reuses_a_numbered_run(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    new_run_dir(runs, "train")
    assert new_run_dir(runs, "train", exist_ok=True) == runs / "train-2"


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../escape", "a\\b", " padded"])
def test_invalid_run_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(BundleError, match="invalid run name"):
        new_run_dir(tmp_path, "train", name=name)


def test_invalid_command_and_runs_dir_that_is_a_file(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="invalid command"):
        new_run_dir(tmp_path, "a/b")
    runs = tmp_path / "runs"
    runs.write_text("not a folder")
    with pytest.raises(BundleError, match="exists and is not a directory"):
        new_run_dir(runs, "train")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BundleError, match="exists and is not a directory"):
        new_run_dir(tmp_path, "train", name="file")


# --------------------------------------------------------------------------- latest_run


def test_latest_run_without_runs_says_to_train_first(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"does not exist\); train a model first: mritumor train"):
        latest_run(tmp_path / "runs")
    (tmp_path / "runs" / "train-1").mkdir(parents=True)  # no bundle.json: not a run yet
    with pytest.raises(BundleError, match=r"no run with a bundle.json in .*mritumor train"):
        latest_run(tmp_path / "runs")


def test_latest_run_is_the_newest_created(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_bundle(runs / "train-1", make_bundle(created="2025-01-01T00:00:00+00:00"))
    write_bundle(runs / "train-2", make_bundle(created="2025-03-01T00:00:00+00:00"))
    write_bundle(runs / "train-10", make_bundle(created="2025-02-01T00:00:00+00:00"))
    write_bundle(
        runs / "finetune-1",
        make_bundle(command="finetune", created="2025-04-01T00:00:00Z"),
    )
    (runs / "train-99").mkdir()  # an interrupted run without bundle.json
    assert latest_run(runs) == runs / "finetune-1"
    assert latest_run(runs, "train") == runs / "train-2"
    with pytest.raises(BundleError, match="no kfold run"):
        latest_run(runs, "kfold")


def test_latest_run_breaks_ties_by_number(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for name in ("train-2", "train-10", "train-9"):
        write_bundle(runs / name, make_bundle())  # same created second
    assert latest_run(runs) == runs / "train-10"


def test_latest_run_keeps_a_damaged_newest_run_for_read_bundle_to_report(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_bundle(runs / "train-1", make_bundle())
    (runs / "train-2").mkdir()
    (runs / "train-2" / BUNDLE_FILE).write_text("{broken")
    # No created time: ordered below dated runs, but still found by folder name.
    assert latest_run(runs) == runs / "train-1"
    shutil.rmtree(runs / "train-1")
    assert latest_run(runs, "train") == runs / "train-2"
    with pytest.raises(BundleError, match="is not valid JSON"):
        read_bundle(latest_run(runs))


# --------------------------------------------------------------------------- Bundle


def test_bundle_round_trip(tmp_path: Path) -> None:
    bundle = make_bundle(
        temperature=1.7,
        temperature_source={"split": "cal", "n": 123, "nll_before": 0.6, "nll_after": 0.5},
        threshold=0.42,
        threshold_info={"strategy": "min_fpr_at_recall", "target_recall": 0.95, "split": "val"},
        dataset_fingerprint="sha256:abc",
        parent="runs/train-1",
        best_epoch=7,
        epochs_completed=9,
        extra={"unfreeze_epoch": 5},
    )
    assert Bundle.from_json(bundle.to_json()) == bundle
    path = write_bundle(tmp_path / "run", bundle)
    assert path == tmp_path / "run" / BUNDLE_FILE
    assert read_bundle(tmp_path / "run") == bundle
    data = json.loads(path.read_text())
    assert list(data)[:3] == ["schema_version", "command", "created"]
    assert data["schema_version"] == SCHEMA_VERSION
    assert set(data) == {f for f in Bundle.__dataclass_fields__ if not f.startswith("_")}
    assert temporary_files(tmp_path / "run") == []


def test_every_bundle_field_has_a_check() -> None:
    assert set(bundles._FIELD_CHECKS) == bundles._field_names()


def test_a_new_bundle_records_time_versions_and_commit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(bundles, "git_commit", lambda cwd=None: "a" * 40)
    bundle = Bundle(
        command="train",
        class_names=["a", "b"],
        negative_class="b",
        image_size=32,
        channels=1,
        resize="plain",
        backbone="small_cnn",
    )
    assert bundle.versions == environment_versions()
    assert bundle.created.endswith("+00:00")
    assert bundle.negative_index == 1
    assert bundle.input_shape == (32, 32, 1)
    # Reading never invents provenance: a file without it stays without it.
    data = bundle.to_dict()
    del data["versions"], data["git_commit"]
    loaded = Bundle.from_dict(data)
    assert loaded.versions == {}
    assert loaded.git_commit is None


def test_new_bundle_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundles, "git_commit", lambda cwd=None: None)
    settings = Settings.model_validate(
        {
            "data": {"image_size": 64, "channels": 1, "resize": "plain"},
            "model": {"backbone": "EfficientNetV2-B0"},
        }
    )
    bundle = new_bundle(settings, "train", dataset_fingerprint="sha256:1")
    assert bundle.backbone == "v2b0"
    assert (bundle.image_size, bundle.channels, bundle.resize) == (64, 1, "plain")
    assert bundle.class_names == list(CLASSES)
    assert bundle.monitor == "val_loss"
    assert bundle.dataset_fingerprint == "sha256:1"
    with pytest.raises(BundleError, match="unknown bundle field 'tempreature'"):
        new_bundle(settings, "train", tempreature=2.0)


def test_unknown_keys_survive_an_update(tmp_path: Path) -> None:
    write_raw_bundle(tmp_path, valid_dict(added_later={"x": 1}))
    updated = update_bundle(tmp_path, temperature=2.0)
    data = json.loads((tmp_path / BUNDLE_FILE).read_text())
    assert data["added_later"] == {"x": 1}
    assert data["temperature"] == 2.0
    assert updated.temperature == 2.0


def test_non_finite_numbers_are_written_as_null() -> None:
    bundle = make_bundle(temperature_source={"nll_before": float("nan"), "n": 3})
    assert json.loads(bundle.to_json())["temperature_source"] == {"nll_before": None, "n": 3}


def test_integer_temperature_reads_as_float(tmp_path: Path) -> None:
    write_raw_bundle(tmp_path, valid_dict(temperature=2))
    temperature = read_bundle(tmp_path).temperature
    assert isinstance(temperature, float)
    assert temperature == 2.0


def bad_bundle(case: str) -> object:
    """The content of a damaged bundle.json: text (written as is) or a JSON value."""
    cases: dict[str, object] = {
        "not-json": "{not json",
        "array": [1, 2],
        "schema-too-new": valid_dict(schema_version=SCHEMA_VERSION + 1),
        "schema-too-old": valid_dict(schema_version=0),
        "schema-not-int": valid_dict(schema_version="1"),
        "no-schema": {k: v for k, v in valid_dict().items() if k != "schema_version"},
        "missing-keys": {
            k: v for k, v in valid_dict().items() if k not in ("class_names", "image_size")
        },
        "bad-channels": valid_dict(channels=4),
        "bad-resize": valid_dict(resize="crop"),
        "bad-temperature": valid_dict(temperature=0),
        "bad-threshold": valid_dict(threshold=1.5),
        "bad-negative": valid_dict(negative_class="healthy"),
        "bad-classes": valid_dict(class_names=["a", "a"], negative_class="a"),
        "bad-created": valid_dict(created="yesterday"),
    }
    return cases[case]


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("not-json", "bundle.json is not valid JSON (line 1, column 2: "),
        ("array", "bundle.json: expected a JSON object, found an array"),
        ("schema-too-new", "was made by a newer mritumor (bundle schema 2; this mritumor"),
        ("schema-too-old", "has bundle schema 0, which this mritumor"),
        ("schema-not-int", "'schema_version' must be an integer, got '1'"),
        ("no-schema", "lacks required key(s) schema_version"),
        ("missing-keys", "lacks required key(s) class_names, image_size; the file is damaged"),
        ("bad-channels", "'channels' must be 1 or 3, got 4"),
        ("bad-resize", "'resize' must be one of plain, pad, got 'crop'"),
        ("bad-temperature", "'temperature' must be a positive number, got 0"),
        ("bad-threshold", "'threshold' must be a number in [0, 1] or null, got 1.5"),
        ("bad-negative", "'negative_class' 'healthy' is not one of class_names"),
        ("bad-classes", "'class_names' must not repeat a class"),
        ("bad-created", "'created' must be an ISO 8601 time, got 'yesterday'"),
    ],
)
def test_read_bundle_errors(tmp_path: Path, case: str, fragment: str) -> None:
    content = bad_bundle(case)
    if isinstance(content, str):
        (tmp_path / BUNDLE_FILE).write_text(content)
    else:
        write_raw_bundle(tmp_path, content)
    with pytest.raises(BundleError) as caught:
        read_bundle(tmp_path)
    message = str(caught.value)
    assert fragment in message
    assert str(tmp_path / BUNDLE_FILE) in message
    assert "\n" not in message


def test_newer_schema_says_upgrade(tmp_path: Path) -> None:
    write_raw_bundle(tmp_path, valid_dict(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(BundleError, match=r"made by a newer mritumor .*upgrade: pip install -U"):
        read_bundle(tmp_path)


def test_read_bundle_of_a_missing_or_foreign_folder(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist; train a model first: mritumor train"):
        read_bundle(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BundleError, match="is not a directory"):
        read_bundle(tmp_path / "file")
    with pytest.raises(
        BundleError, match=r"is not a mritumor run directory: it has no bundle.json;"
    ):
        read_bundle(tmp_path)
    (tmp_path / "last.keras").write_bytes(b"")
    with pytest.raises(BundleError, match="was the run interrupted"):
        read_bundle(tmp_path)


def test_bundle_errors_are_usage_errors() -> None:
    assert issubclass(BundleError, UsageError)
    assert BundleError("x").exit_code == EXIT_USAGE


def test_writing_an_invalid_bundle_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="'image_size' must be a positive integer"):
        write_bundle(tmp_path, make_bundle(image_size=0))
    assert not (tmp_path / BUNDLE_FILE).exists()


# --------------------------------------------------------------------------- update_bundle


def test_update_bundle_replaces_fields(tmp_path: Path) -> None:
    write_bundle(tmp_path, make_bundle())
    source = {"split": "cal", "n": 10, "nll_before": 0.9, "nll_after": 0.7}
    updated = update_bundle(tmp_path, temperature=1.5, temperature_source=source)
    assert updated.temperature == 1.5
    assert read_bundle(tmp_path) == updated
    assert read_bundle(tmp_path).temperature_source == source
    assert read_bundle(tmp_path).created == make_bundle().created


def test_update_bundle_rejects_unknown_fields_and_bad_values(tmp_path: Path) -> None:
    write_bundle(tmp_path, make_bundle())
    before = (tmp_path / BUNDLE_FILE).read_bytes()
    with pytest.raises(
        BundleError, match=r"unknown bundle field 'temprature' \(did you mean 'temperature'"
    ):
        update_bundle(tmp_path, temprature=2.0)
    with pytest.raises(BundleError, match="'temperature' must be a positive number"):
        update_bundle(tmp_path, temperature=-1.0)
    with pytest.raises(BundleError, match="schema_version is set by mritumor"):
        update_bundle(tmp_path, schema_version=2)
    with pytest.raises(BundleError, match="unknown bundle field '_unknown'"):
        update_bundle(tmp_path, _unknown={})
    assert (tmp_path / BUNDLE_FILE).read_bytes() == before


def test_update_bundle_failure_while_serialising_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_bundle(tmp_path, make_bundle())
    before = (tmp_path / BUNDLE_FILE).read_bytes()

    def broken_dumps(*args: object, **kwargs: object) -> str:
        raise RuntimeError("disk full")

    monkeypatch.setattr(bundles.json, "dumps", broken_dumps)
    with pytest.raises(RuntimeError, match="disk full"):
        update_bundle(tmp_path, temperature=3.0)
    monkeypatch.undo()
    assert (tmp_path / BUNDLE_FILE).read_bytes() == before
    assert temporary_files(tmp_path) == []


def test_update_bundle_failure_while_renaming_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_bundle(tmp_path, make_bundle())
    before = (tmp_path / BUNDLE_FILE).read_bytes()

    def broken_replace(self: Path, target: object) -> Path:
        raise OSError("rename failed")

    monkeypatch.setattr(Path, "replace", broken_replace)
    with pytest.raises(OSError, match="rename failed"):
        update_bundle(tmp_path, temperature=3.0)
    monkeypatch.undo()
    assert (tmp_path / BUNDLE_FILE).read_bytes() == before
    assert read_bundle(tmp_path).temperature == 1.0
    assert [p.name for p in tmp_path.iterdir()] == [BUNDLE_FILE]


# --------------------------------------------------------------------------- check_class_names


def test_check_class_names() -> None:
    bundle = make_bundle()
    check_class_names(bundle, CLASSES)
    with pytest.raises(
        BundleError, match=r"in the order \['meningioma', 'glioma'.*set data.class_names to"
    ):
        check_class_names(bundle, ["meningioma", "glioma", "no_tumor", "pituitary"])
    with pytest.raises(
        BundleError, match=r"missing pituitary; unknown to the model: healthy\); use data with"
    ):
        check_class_names(bundle, ["glioma", "meningioma", "no_tumor", "healthy"])
    with pytest.raises(BundleError, match=r"^the external set has classes \['yes', 'no'\]"):
        check_class_names(bundle, ["yes", "no"], what="the external set")


# --------------------------------------------------------------------------- config.yaml


def test_config_yaml_holds_the_resolved_settings(tmp_path: Path) -> None:
    user_config = tmp_path / "mine.yaml"
    user_config.write_text("train:\n  epochs: 3\n  lr: 0.01\n")
    settings = load_settings(user_config, {"data.image_size": 64}).settings
    path = write_config(tmp_path / "run", settings)
    assert path == tmp_path / "run" / "config.yaml"
    text = path.read_text()
    assert text.startswith(
        f"# The resolved settings of this run, written by mritumor {__version__}"
    )
    assert "  epochs: 3\n" in text
    assert "  image_size: 64\n" in text
    assert load_settings(path).settings == settings
    assert user_config.read_text() == "train:\n  epochs: 3\n  lr: 0.01\n"


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

    monkeypatch.setattr(bundles.subprocess, "run", hang)
    assert git_commit() is None

    def missing(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError("git")

    monkeypatch.setattr(bundles.subprocess, "run", missing)
    assert git_commit() is None


def test_bundle_and_plots_import_no_heavy_library(tmp_path: Path) -> None:
    code = (
        "import sys, mritumor.run.bundle, mritumor.plots; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'matplotlib') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
