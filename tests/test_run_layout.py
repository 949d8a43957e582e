"""The run folder (mritumor.run.layout and the run blocks of mritumor.run.lock): its paths,
names and numbers, creation, and which run is the newest."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers import make_bundle
from mritumor.run import layout as layout_module
from mritumor.run.bundle import read_bundle, write_bundle
from mritumor.run.layout import BUNDLE_FILE, LOCK_FILE, BundleError, RunLayout, latest_run
from mritumor.run.lock import new_run, renewed_run


def test_the_paths_inside_a_run() -> None:
    layout = RunLayout(Path("runs/train-3"))
    run = Path("runs/train-3")
    assert (layout.model, layout.last, layout.bundle, layout.config) == (
        run / "model.keras",
        run / "last.keras",
        run / "bundle.json",
        run / "config.yaml",
    )
    assert (layout.splits, layout.split("val"), layout.reports, layout.gradcam) == (
        run / "splits",
        run / "splits" / "val.csv",
        run / "reports",
        run / "reports" / "gradcam",
    )
    assert (layout.history, layout.history_json, layout.lock) == (
        run / "history.csv",
        run / "training_history.json",
        run / ".lock",
    )


# --------------------------------------------------------------------------- RunLayout.create


def test_run_dirs_are_numbered_per_command(tmp_path: Path) -> None:
    runs = tmp_path / "runs"

    def create(command: str) -> Path:
        return RunLayout.create(runs, command).root

    assert create("train") == runs / "train-1"
    assert create("train") == runs / "train-2"
    assert create("finetune") == runs / "finetune-1"
    assert create("train") == runs / "train-3"
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
    assert RunLayout.create(runs, "train").root == runs / "train-8"  # gaps are not refilled
    (runs / "eval-4").write_text("a file, not a run")
    assert RunLayout.create(runs, "eval").root == runs / "eval-5"


def test_a_number_taken_by_a_racing_process_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    (runs / "train-1").mkdir(parents=True)
    # Another process created train-2 and train-3 after this one scanned the folder.
    monkeypatch.setattr(layout_module, "_largest_run_number", lambda runs_dir, command: 1)
    for taken in ("train-2", "train-3"):
        (runs / taken).mkdir()
        (runs / taken / "marker").write_text(taken)
    assert RunLayout.create(runs, "train").root == runs / "train-4"
    assert (runs / "train-2" / "marker").read_text() == "train-2"
    assert list((runs / "train-4").iterdir()) == []


def test_named_run_dirs_never_overwrite_without_exist_ok(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    first = RunLayout.create(runs, "train", name="baseline").root
    assert first == runs / "baseline"
    assert first.is_dir()
    again = RunLayout.create(runs, "train", name="baseline").root
    assert again == first  # empty: nothing to lose
    (first / "model.keras").write_bytes(b"weights")
    with pytest.raises(BundleError, match=r"already exists and is not empty; .*--exist-ok"):
        RunLayout.create(runs, "train", name="baseline")
    assert RunLayout.create(runs, "train", name="baseline", exist_ok=True).root == first
    assert (first / "model.keras").read_bytes() == b"weights"


def test_a_folder_that_holds_a_run_is_never_reused(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_bundle(runs / "baseline", make_bundle())
    before = (runs / "baseline" / BUNDLE_FILE).read_bytes()
    with pytest.raises(BundleError, match=r"already holds a run; continue it with --resume"):
        RunLayout.create(runs, "train", name="baseline", exist_ok=True)
    assert (runs / "baseline" / BUNDLE_FILE).read_bytes() == before


def test_exist_ok_never_reuses_a_numbered_run(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    RunLayout.create(runs, "train")
    assert RunLayout.create(runs, "train", exist_ok=True).root == runs / "train-2"


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../escape", "a\\b", " padded"])
def test_invalid_run_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(BundleError, match="invalid run name"):
        RunLayout.create(tmp_path, "train", name=name)


def test_invalid_command_and_runs_dir_that_is_a_file(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="invalid command"):
        RunLayout.create(tmp_path, "a/b")
    runs = tmp_path / "runs"
    runs.write_text("not a folder")
    with pytest.raises(BundleError, match="exists and is not a directory"):
        RunLayout.create(runs, "train")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BundleError, match="exists and is not a directory"):
        RunLayout.create(tmp_path, "train", name="file")
    with pytest.raises(BundleError, match="exists and is not a directory"):
        RunLayout.ensured(tmp_path / "file")


# --------------------------------------------------------------------------- new_run, renewed_run


def test_a_new_run_that_fails_before_it_starts_leaves_nothing(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    with pytest.raises(RuntimeError, match="no data"), new_run(runs, "train") as run_dir:
        assert run_dir == runs / "train-1"
        assert (run_dir / LOCK_FILE).is_file()
        raise RuntimeError("no data")
    assert not (runs / "train-1").exists()


def test_a_new_run_that_started_is_kept_when_it_fails(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    with pytest.raises(KeyboardInterrupt), new_run(runs, "train") as run_dir:
        write_bundle(run_dir, make_bundle())
        raise KeyboardInterrupt
    assert read_bundle(runs / "train-1") == make_bundle()


def test_a_failed_run_keeps_the_folder_the_user_had(tmp_path: Path) -> None:
    mine = tmp_path / "runs" / "mine"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    with (
        pytest.raises(RuntimeError),
        new_run(mine.parent, "train", name="mine", exist_ok=True) as run_dir,
    ):
        assert run_dir == mine
        raise RuntimeError("failed")
    assert (mine / "notes.txt").read_text() == "keep me"


def test_a_run_started_by_another_file_is_kept(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    with pytest.raises(RuntimeError), new_run(runs, "kfold", started_by="folds.csv") as run_dir:
        (run_dir / "folds.csv").write_text("path,label,group,fold\n")
        raise RuntimeError("failed after drawing the folds")
    assert (runs / "kfold-1" / "folds.csv").is_file()
    again = new_run(runs, "kfold", name="kfold-1", exist_ok=True, started_by="folds.csv")
    with pytest.raises(BundleError, match="already holds a run"), again:
        pass
    assert (runs / "kfold-1" / "folds.csv").is_file()


def test_a_renewed_run_replaces_its_own_folder_and_refuses_any_other(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "pipeline-train"
    with renewed_run(run, "pipeline") as run_dir:
        (run_dir / "model.keras").write_bytes(b"old")
    with renewed_run(run, "pipeline") as run_dir:
        assert sorted(path.name for path in run_dir.iterdir()) == [
            ".lock",
            ".mritumor-pipeline",
        ]
    foreign = tmp_path / "runs" / "mine"
    foreign.mkdir()
    refused = renewed_run(foreign, "pipeline")
    with pytest.raises(BundleError, match=r"was not made by `mritumor pipeline`; move it"), refused:
        pass
    assert list(foreign.iterdir()) == []


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
