"""``mritumor train``: new runs, refusals, a real Ctrl-C in a subprocess, and --resume.

Trainings are tiny (32 px, small_cnn, 8 train images per class, batches of 8)
and never overlap: the subprocess trains while this process only waits.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mritumor.cli.main import app
from mritumor.core.environment import ENV_PREFIX
from mritumor.models.classifier import backbone_layers
from mritumor.run.bundle import read_bundle
from mritumor.run.layout import HISTORY_FILE
from mritumor.run.model_file import load_model

STEPS = 4  # 32 train images in batches of 8
WIDE = {"COLUMNS": "200"}
TINY_FLAGS = (
    "--backbone",
    "small_cnn",
    "--weights",
    "none",
    "--freeze-epochs",
    "1",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--precision",
    "float32",
    "--set",
    "train.early_stopping_patience=0",
)
SUBPROCESS_TIMEOUT_S = 180


def invoke(runner: CliRunner, *args: str) -> object:
    return runner.invoke(app, list(args), env=WIDE)


def train_args(data: Path, runs: Path, epochs: int, *extra: str) -> list[str]:
    return [
        "train",
        *TINY_FLAGS,
        "--epochs",
        str(epochs),
        "--data",
        str(data),
        "--set",
        f"paths.runs_dir={runs}",
        *extra,
    ]


def history_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / HISTORY_FILE).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def one_error_line(stderr: str) -> str:
    assert stderr.startswith("error: "), stderr
    assert stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr
    return stderr


# --------------------------------------------------------------------------- a real Ctrl-C


@dataclass
class Interrupted:
    runs: Path
    run_dir: Path
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def interrupted(cli_data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Interrupted:
    """`python -m mritumor train --epochs 50`, sent SIGINT once its first epoch is recorded."""
    work = tmp_path_factory.mktemp("sigint")
    runs = work / "runs"
    run_dir = runs / "train-1"
    # Explicit environment: no MRITUMOR_* setting of the developer reaches the child.
    env = {
        name: value for name, value in os.environ.items() if not name.upper().startswith(ENV_PREFIX)
    }
    env.update(WIDE, PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "mritumor", *train_args(cli_data_root, runs, 50)]
    with (work / "stdout.txt").open("w") as stdout, (work / "stderr.txt").open("w") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, cwd=work)
        try:
            deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
            while not (run_dir / HISTORY_FILE).exists():
                if process.poll() is not None:
                    pytest.fail(f"training ended early: {(work / 'stderr.txt').read_text()}")
                if time.monotonic() > deadline:
                    pytest.fail("no epoch completed in time")
                time.sleep(0.1)
            process.send_signal(signal.SIGINT)
            returncode = process.wait(timeout=SUBPROCESS_TIMEOUT_S)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return Interrupted(
        runs=runs,
        run_dir=run_dir,
        returncode=returncode,
        stdout=(work / "stdout.txt").read_text(),
        stderr=(work / "stderr.txt").read_text(),
    )


def test_sigint_saves_last_keras_and_says_how_to_resume(interrupted: Interrupted) -> None:
    assert interrupted.returncode == 130, interrupted.stderr
    assert f"mritumor train --resume {interrupted.run_dir}" in interrupted.stdout
    assert "Traceback" not in interrupted.stderr
    assert "Your input ran out of data" not in interrupted.stderr
    run_dir = interrupted.run_dir
    last = load_model(run_dir / "last.keras", compile=True)
    assert int(last.optimizer.iterations.numpy()) >= 1
    bundle = read_bundle(run_dir)
    rows = history_rows(run_dir)
    assert bundle.epochs_completed == len(rows) >= 1
    assert [int(row["epoch"]) for row in rows] == list(range(1, len(rows) + 1))
    assert f"Interrupted after {len(rows)} complete epoch(s)" in interrupted.stdout
    assert (run_dir / "model.keras").is_file()
    assert not list(run_dir.glob(".*partial*"))
    # Each finished epoch was also printed as a line for logs.
    assert "epoch 1/50 [frozen]" in interrupted.stderr


def test_resume_with_more_epochs_continues_the_interrupted_run(
    runner: CliRunner, interrupted: Interrupted
) -> None:
    run_dir = interrupted.run_dir
    completed = read_bundle(run_dir).epochs_completed
    before = history_rows(run_dir)
    last = load_model(run_dir / "last.keras", compile=True)
    steps_before = int(last.optimizer.iterations.numpy())
    assert all(layer.trainable for layer in backbone_layers(last))  # stopped in the full stage

    result = invoke(runner, "train", "--resume", str(run_dir), "--epochs", str(completed + 1))
    assert result.exit_code == 0, result.output
    assert "epochs completed" in result.stdout and str(run_dir / "model.keras") in result.stdout
    assert f"epoch {completed + 1}/{completed + 1} [full]" in result.stderr

    rows = history_rows(run_dir)
    assert rows[:-1] == before
    assert [int(row["epoch"]) for row in rows] == list(range(1, completed + 2))
    assert rows[-1]["stage"] == "full"
    bundle = read_bundle(run_dir)
    assert bundle.epochs_completed == completed + 1
    assert bundle.extra["unfreeze_epoch"] == 1
    # The saved full-stage optimizer went on: one more epoch of steps.
    last = load_model(run_dir / "last.keras", compile=True)
    assert int(last.optimizer.iterations.numpy()) == steps_before + STEPS


# --------------------------------------------------------------------------- a fresh run


def test_a_second_run_gets_a_new_directory(
    runner: CliRunner, interrupted: Interrupted, cli_data_root: Path
) -> None:
    first_bundle = (interrupted.run_dir / "bundle.json").read_text(encoding="utf-8")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # One epoch (a linear probe, --freeze-epochs 1): the full stage is tested above.
        result = invoke(runner, *train_args(cli_data_root, interrupted.runs, 1))
    assert result.exit_code == 0, result.output
    run_dir = interrupted.runs / "train-2"
    assert (run_dir / "model.keras").is_file() and (run_dir / "last.keras").is_file()
    assert (interrupted.run_dir / "bundle.json").read_text(encoding="utf-8") == first_bundle

    assert f"Run {run_dir}" in result.stdout
    assert "epochs completed" in result.stdout and "best epoch" in result.stdout
    assert str(run_dir / "model.keras") in result.stdout
    assert "epoch 1/1 [frozen]" in result.stderr
    assert "warning" not in result.stderr
    assert not [w for w in caught if "ran out of data" in str(w.message)]
    # A frozen stage on a randomly initialised backbone trains the head on random features.
    assert [w for w in caught if "starts from random weights" in str(w.message)]
    bundle = read_bundle(run_dir)
    assert bundle.epochs_completed == 1 and "unfreeze_epoch" not in bundle.extra


# --------------------------------------------------------------------------- refusals


def test_a_data_root_without_val_exits_2_and_leaves_no_run(
    runner: CliRunner, cli_data_root: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(cli_data_root / "train", data / "train")
    runs = tmp_path / "runs"
    result = invoke(runner, *train_args(data, runs, 2))
    assert result.exit_code == 2
    assert "no val split" in one_error_line(result.stderr)
    assert not runs.exists() or list(runs.iterdir()) == []


def test_a_failed_run_never_removes_a_folder_the_user_had(
    runner: CliRunner, cli_data_root: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    shutil.copytree(cli_data_root / "train", data / "train")
    runs = tmp_path / "runs"
    mine = runs / "mine"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me", encoding="utf-8")
    result = invoke(runner, *train_args(data, runs, 1, "--name", "mine", "--exist-ok"))
    assert result.exit_code == 2
    assert (mine / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_a_name_that_holds_a_run_is_refused_even_with_exist_ok(
    runner: CliRunner, interrupted: Interrupted, cli_data_root: Path
) -> None:
    before = (interrupted.run_dir / "bundle.json").read_text(encoding="utf-8")
    name = interrupted.run_dir.name
    args = train_args(cli_data_root, interrupted.runs, 1, "--name", name, "--exist-ok")
    result = invoke(runner, *args)
    assert result.exit_code == 2
    assert "already holds a run" in one_error_line(result.stderr)
    assert (interrupted.run_dir / "bundle.json").read_text(encoding="utf-8") == before


def test_resume_refuses_changed_settings(runner: CliRunner, interrupted: Interrupted) -> None:
    before = (interrupted.run_dir / "history.csv").read_text(encoding="utf-8")
    result = invoke(runner, "train", "--resume", str(interrupted.run_dir), "--lr", "0.1")
    assert result.exit_code == 2
    message = one_error_line(result.stderr)
    assert "train.lr" in message and "only --epochs" in message
    result = invoke(
        runner, "train", "--resume", str(interrupted.run_dir), "--set", "train.epochs=9"
    )
    assert result.exit_code == 2
    one_error_line(result.stderr)
    assert (interrupted.run_dir / "history.csv").read_text(encoding="utf-8") == before


def test_resume_of_a_folder_without_bundle_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    result = invoke(runner, "train", "--resume", str(tmp_path))
    assert result.exit_code == 2
    assert "bundle.json" in one_error_line(result.stderr)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "hint"),
    [("nosuch", "`mritumor backbones list`"), ("small_cn", "did you mean 'small_cnn'?")],
)
def test_an_unknown_backbone_exits_2_with_a_suggestion(
    runner: CliRunner, cli_data_root: Path, tmp_path: Path, name: str, hint: str
) -> None:
    args = train_args(cli_data_root, tmp_path / "runs", 2)
    args[args.index("small_cnn")] = name
    result = invoke(runner, *args)
    assert result.exit_code == 2
    message = one_error_line(result.stderr)
    assert f"unknown backbone {name!r}" in message and hint in message
    assert list((tmp_path / "runs").iterdir()) == []


def test_imagenet_weights_offline_fail_in_one_line_and_leave_no_run(
    runner: CliRunner, cli_data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keras.src.utils import file_utils

    def no_network(*args: object, **kwargs: object) -> None:
        raise Exception(
            "URL fetch failure on https://storage.googleapis.com/b0.h5: None -- "
            "[Errno -3] Temporary failure in name resolution"
        )

    monkeypatch.setattr(file_utils, "get_file", no_network)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    runs = tmp_path / "runs"
    result = invoke(
        runner,
        "train",
        "--backbone",
        "b0",  # model.weights defaults to imagenet
        "--image-size",
        "32",
        "--data",
        str(cli_data_root),
        "--set",
        f"paths.runs_dir={runs}",
    )
    assert result.exit_code == 1
    message = one_error_line(result.stderr)
    assert message.startswith("error: could not download ImageNet weights for 'b0'")
    assert "train from scratch with --weights none or a recipe" in message
    assert "Traceback" not in result.output
    assert list(runs.iterdir()) == []


# --------------------------------------------------------------------------- output helpers


def test_unreadable_images_are_listed_once_at_the_end_only_when_quiet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mritumor.cli.train import _report
    from mritumor.engine.training import TrainResult

    reason = "cannot read image /d/scan [b].jpg: cannot identify image file"
    result = TrainResult(
        run_dir=tmp_path,
        epochs_completed=1,
        best_epoch=1,
        best_value=0.5,
        interrupted=False,
        decode_failures={"/d/scan [b].jpg": reason},
    )
    _report(result, failures_shown=True)  # the progress display already showed it
    assert "skipped" not in capsys.readouterr().err
    _report(result, failures_shown=False)
    err = capsys.readouterr().err
    assert err.count("skipped unreadable image") == 1
    assert "/d/scan [b].jpg" in err  # brackets in a file name are not markup


def test_progress_warnings_keep_brackets_in_file_names(capsys: pytest.CaptureFixture[str]) -> None:
    from mritumor.cli.runs import RichTrainingObserver

    observer = RichTrainingObserver()
    observer.on_warning("skipped unreadable image: cannot read image /d/[b]old scan.jpg")
    observer.close()
    assert "/d/[b]old scan.jpg" in capsys.readouterr().err
