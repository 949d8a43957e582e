"""Nothing lost: one process per run folder, crash-consistent checkpoints, damaged files named.

Real processes where the operating system matters (two trainings started
together, SIGKILL at chosen moments); tiny trainings (32 px, small_cnn) that
never overlap with one another except where two are started on purpose.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import BuiltRuns
from mritumor.cli.main import app
from mritumor.core.environment import ENV_PREFIX
from mritumor.core.errors import MritumorError
from mritumor.run.bundle import read_bundle
from mritumor.run.layout import BUNDLE_FILE, HISTORY_FILE, LAST_FILE, LOCK_FILE, MODEL_FILE
from mritumor.run.lock import RunInUseError, claimed_run
from test_train_cli import SUBPROCESS_TIMEOUT_S, history_rows, one_error_line, train_args

WIDE = {"COLUMNS": "200"}


def child_env() -> dict[str, str]:
    env = {
        name: value for name, value in os.environ.items() if not name.upper().startswith(ENV_PREFIX)
    }
    return {**env, **WIDE, "PYTHONUNBUFFERED": "1"}


def start_training(work: Path, *args: str, name: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "mritumor", *args]
    return subprocess.Popen(
        command,
        stdout=(work / f"{name}.out").open("wb"),
        stderr=(work / f"{name}.err").open("wb"),
        env=child_env(),
        cwd=work,
    )


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"training ended before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def file_state(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != LOCK_FILE
    }


# --------------------------------------------------------------------------- the run lock


def test_a_held_run_folder_is_refused_with_one_line_and_left_alone(
    cli_data_root: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    run_dir = runs / "shared"
    run_dir.mkdir(parents=True)
    with claimed_run(run_dir, fresh=True):
        result = CliRunner().invoke(
            app, train_args(cli_data_root, runs, 1, "--name", "shared"), env=WIDE
        )
    assert result.exit_code == 2
    message = one_error_line(result.stderr)
    assert f"run directory {run_dir} is in use by another mritumor process (pid {os.getpid()})" in (
        message
    )
    assert file_state(run_dir) == {}  # nothing written, nothing removed
    assert run_dir.is_dir()


def test_the_lock_is_released_after_the_block_and_when_its_process_is_killed(
    tmp_path: Path,
) -> None:
    with (
        claimed_run(tmp_path, fresh=True),
        pytest.raises(RunInUseError),
        claimed_run(tmp_path, fresh=False),
    ):
        pass
    with claimed_run(tmp_path, fresh=False):
        pass  # released by the first block
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from mritumor.run.lock import claimed_run\n"
            f"with claimed_run(Path({str(tmp_path)!r}), fresh=False):\n"
            "    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with (
            pytest.raises(RunInUseError, match=rf"\(pid {holder.pid}\)"),
            claimed_run(tmp_path, fresh=False),
        ):
            pass
    finally:
        holder.kill()
        holder.wait()
    with claimed_run(tmp_path, fresh=False):
        pass  # SIGKILL left no stale lock


def test_a_fresh_claim_of_a_folder_that_holds_a_run_is_refused(tmp_path: Path) -> None:
    (tmp_path / BUNDLE_FILE).write_text("{}", encoding="utf-8")
    with (
        pytest.raises(MritumorError, match="already holds a run; continue it with --resume"),
        claimed_run(tmp_path, fresh=True),
    ):
        pass


def test_two_trainings_started_together_with_one_name_one_refuses_and_one_run_survives(
    cli_data_root: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    args = train_args(cli_data_root, runs, 2, "--name", "X")
    first = start_training(tmp_path, *args, name="first")
    second = start_training(tmp_path, *args, name="second")
    codes = sorted(
        (process.wait(timeout=SUBPROCESS_TIMEOUT_S), name)
        for process, name in ((first, "first"), (second, "second"))
    )
    (ok, winner), (refused, loser) = codes
    assert (ok, refused) == (0, 2), [(tmp_path / f"{n}.err").read_text() for _, n in codes]
    message = one_error_line((tmp_path / f"{loser}.err").read_text())
    assert "is in use by another mritumor process" in message or "already holds a run" in message
    assert f"Run {runs / 'X'}" in (tmp_path / f"{winner}.out").read_text()
    run_dir = runs / "X"
    bundle = read_bundle(run_dir)
    assert bundle.epochs_completed == 2
    assert [int(row["epoch"]) for row in history_rows(run_dir)] == [1, 2]


# --------------------------------------------------------------------------- SIGKILL and --resume


def partial_files(run_dir: Path) -> list[str]:
    """The checkpoints being written (``.model.partial.keras``); none before the run exists."""
    if not run_dir.is_dir():
        return []
    return sorted(path.name for path in run_dir.iterdir() if "partial" in path.name)


@pytest.mark.slow
@pytest.mark.parametrize(
    "moment", ["before the first checkpoint", "during an epoch", "while a checkpoint is written"]
)
def test_sigkill_leaves_a_run_that_resumes_to_the_end(
    moment: str, cli_data_root: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    run_dir = runs / "train-1"
    process = start_training(tmp_path, *train_args(cli_data_root, runs, 4), name="killed")
    try:
        if moment == "before the first checkpoint":
            wait_for((run_dir / BUNDLE_FILE).exists, process, "the bundle")
        else:
            wait_for(lambda: len(history_rows_or_none(run_dir)) >= 1, process, "the first epoch")
        if moment == "while a checkpoint is written":
            wait_for(lambda: bool(partial_files(run_dir)), process, "a checkpoint write")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=SUBPROCESS_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # What a kill leaves: whole files only, a bundle that reads, checkpoints that are zips.
    bundle = read_bundle(run_dir)
    json.loads((run_dir / BUNDLE_FILE).read_text(encoding="utf-8"))
    for name in (MODEL_FILE, LAST_FILE):
        if (run_dir / name).exists():
            assert zipfile.is_zipfile(run_dir / name), name
    completed = bundle.epochs_completed
    assert completed < 4

    resumed = start_training(tmp_path, "train", "--resume", str(run_dir), name="resumed")
    code = resumed.wait(timeout=SUBPROCESS_TIMEOUT_S)
    stderr = (tmp_path / "resumed.err").read_text()
    if code == 0:
        assert read_bundle(run_dir).epochs_completed == 4
        assert [int(row["epoch"]) for row in history_rows(run_dir)] == [1, 2, 3, 4]
        assert partial_files(run_dir) == []
    else:  # killed before last.keras existed: the run says it is incomplete, in one line
        assert code == 2
        assert not (run_dir / LAST_FILE).exists()
        (error,) = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert error == (
            f"error: {run_dir} is incomplete: it stopped before its first epoch ended, so there "
            f"is no last.keras to resume from; start a new run (remove {run_dir} or choose "
            "another --name)"
        )
        assert "Traceback" not in stderr
    if moment == "before the first checkpoint":
        assert code == 2
    else:
        assert code == 0, stderr


def history_rows_or_none(run_dir: Path) -> list[dict[str, str]]:
    return history_rows(run_dir) if (run_dir / HISTORY_FILE).exists() else []


def test_a_failing_checkpoint_write_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    import keras

    from mritumor.engine.checkpoints import _save_atomically

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    path = tmp_path / MODEL_FILE
    _save_atomically(model, path)
    before = path.read_bytes()

    def disk_full(target: object) -> None:
        Path(str(target)).write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    model.save = disk_full  # type: ignore[method-assign]
    with pytest.raises(MritumorError) as caught:
        _save_atomically(model, path)
    assert str(caught.value) == (
        f"cannot write checkpoint {path}: No space left on device; the previous model.keras is kept"
    )
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [MODEL_FILE]


# --------------------------------------------------------------------------- damaged run files


@pytest.fixture
def run_dir(cli_data_root: Path, built_run: BuiltRuns, run_copy: Callable[..., Path]) -> Path:
    """A copy to damage, at tmp_path/runs/train-1."""
    return run_copy(built_run(cli_data_root), "runs/train-1")


@pytest.mark.parametrize("damage", ["zero bytes", "cut in half"])
def test_a_damaged_model_keras_is_named_with_the_way_to_recover(
    damage: str, run_dir: Path, cli_data_root: Path
) -> None:
    model = run_dir / MODEL_FILE
    shutil.copy(model, run_dir / LAST_FILE)
    data = model.read_bytes()
    model.write_bytes(b"" if damage == "zero bytes" else data[: len(data) // 2])
    image = next((cli_data_root / "test" / "glioma").iterdir())
    result = CliRunner().invoke(app, ["infer", str(image), "--run", str(run_dir)], env=WIDE)
    assert result.exit_code == 1
    message = one_error_line(result.stderr)
    size = model.stat().st_size
    assert f"{model} is damaged ({size} bytes, not a complete .keras archive)" in message
    assert f"mritumor train --resume {run_dir}" in message


def test_a_bundle_with_fewer_class_names_than_outputs_is_refused(
    run_dir: Path, cli_data_root: Path
) -> None:
    path = run_dir / BUNDLE_FILE
    bundle = json.loads(path.read_text(encoding="utf-8"))
    bundle["class_names"] = ["glioma", "meningioma", "no_tumor"]
    path.write_text(json.dumps(bundle), encoding="utf-8")
    image = next((cli_data_root / "test" / "glioma").iterdir())
    result = CliRunner().invoke(app, ["infer", str(image), "--run", str(run_dir)], env=WIDE)
    assert result.exit_code == 2
    assert one_error_line(result.stderr) == (
        f"error: {run_dir}: the model has 4 outputs but bundle.json lists 3 class_names; "
        "the run directory mixes files of different runs\n"
    )


def test_demo_into_an_existing_file_is_refused_and_the_file_kept(tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("mine", encoding="utf-8")
    result = CliRunner().invoke(app, ["demo", "--quick", "-o", str(target)], env=WIDE)
    assert result.exit_code == 2
    assert one_error_line(result.stderr) == (
        f"error: --out {target} is a file; give a folder for the demo's data and runs\n"
    )
    assert target.read_text(encoding="utf-8") == "mine"


def test_a_file_system_without_locks_is_one_line_naming_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl

    def no_locks(descriptor: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(MritumorError) as caught, claimed_run(tmp_path, fresh=True):
        pass
    assert str(caught.value) == f"cannot lock run directory {tmp_path}: No locks available"


def test_a_write_refused_before_the_temporary_file_names_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    from mritumor.core.fsutil import atomic_write_text

    def read_only(**_: object) -> tuple[int, str]:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    target = tmp_path / "check.json"
    with pytest.raises(OSError) as caught:
        atomic_write_text(target, "{}")
    assert (caught.value.strerror, caught.value.filename) == (os.strerror(errno.EROFS), str(target))
    assert list(tmp_path.iterdir()) == []
