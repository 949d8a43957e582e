"""One process per run directory: an operating-system file lock held for the run's life.

Two ``mritumor train --name X`` started seconds apart both found ``runs/X``
empty (the first had made the folder but not yet written its bundle), both
trained, and the first run was silently overwritten. Now every command that
writes a run (``train``, ``finetune``, ``pipeline``, and ``--resume``) holds
``<run>/.lock`` while it works; ``kfold`` holds its run's lock while it draws
the folds, then each fold's own lock while it trains or scores that fold:

- the lock is an OS lock (``flock`` on POSIX, ``msvcrt.locking`` on Windows),
  so the OS releases it when the process ends, even by SIGKILL: a killed run
  never leaves a stale lock that blocks ``--resume``;
- a fresh run is checked for a ``bundle.json`` only after the lock is taken,
  so of two processes given the same name exactly one trains; the other stops
  with one line, as it would had it started after the first finished.

The lock file holds the owner's process id, for the message. It stays in the
run folder after the run (an empty lock file locks nothing).

A command gets its run through one of three blocks: :func:`new_run` (a fresh folder,
removed again if the command fails before the run started), :func:`claimed_run` (an
existing run, for ``--resume`` or a kfold fold) and :func:`renewed_run` (the fixed-name
runs of ``pipeline``, replaced when out of date).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mritumor.run.layout import BUNDLE_FILE, LOCK_FILE, BundleError, RunLayout


class RunInUseError(BundleError):
    """Another process holds the run directory."""


@contextmanager
def claimed_run(run_dir: Path, *, fresh: bool, run_file: str = BUNDLE_FILE) -> Iterator[Path]:
    """Hold ``run_dir``'s lock for the duration of the block, which gets ``run_dir``.

    ``fresh``: the block starts a new run, so ``run_dir`` must not hold a run
    yet, that is no ``run_file`` (checked once the lock is held). Raises :class:`RunInUseError` when
    another process holds the lock, and :class:`~mritumor.run.layout.BundleError`
    when a fresh run's folder already holds a run or cannot be locked.
    """
    path = RunLayout(run_dir).lock
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as error:
        raise BundleError(f"cannot lock run directory {run_dir}: {error.strerror}") from None
    try:
        if not _lock_or_refuse(descriptor, run_dir):
            raise RunInUseError(
                f"run directory {run_dir} is in use by another mritumor process"
                f"{_owner(path)}; wait for it to finish, or choose another --name"
            )
        if fresh and (run_dir / run_file).exists():
            raise BundleError(
                f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                "or choose another --name"
            )
        _write_owner(descriptor)
        yield run_dir
    finally:
        os.close(descriptor)  # closing releases the lock


@contextmanager
def new_run(
    runs_dir: Path,
    command: str,
    *,
    name: str | None = None,
    exist_ok: bool = False,
    started_by: str = BUNDLE_FILE,
) -> Iterator[Path]:
    """A fresh run folder (:meth:`RunLayout.create`), locked for the block.

    The run has started once ``started_by`` exists in it. A block that fails before
    then removes the folder again, unless it was there before this call (``--name X
    --exist-ok``): a failed command leaves no empty run behind, and deletes nothing
    the user had.
    """
    existed = name is not None and (runs_dir / name).exists()
    run_dir = RunLayout.create(runs_dir, command, name=name, exist_ok=exist_ok).root
    with claimed_run(run_dir, fresh=True, run_file=started_by):
        try:
            yield run_dir
        except BaseException:
            if not existed and not (run_dir / started_by).exists():
                shutil.rmtree(run_dir, ignore_errors=True)
            raise


@contextmanager
def renewed_run(run_dir: Path, command: str) -> Iterator[Path]:
    """``run_dir``, a run of fixed name that ``mritumor <command>`` replaces when it is out
    of date: created or emptied, and locked for the block.

    A folder of that name that the command did not make (it lacks the command's marker
    file) is refused: runs never overwrite each other. The lock is taken before anything
    is removed and held through the block, so a second process never empties a run that
    the first is still writing.
    """
    marker = run_dir / f".mritumor-{command}"
    if run_dir.exists() and not marker.is_file():
        raise BundleError(
            f"{run_dir} exists and was not made by `mritumor {command}`; "
            "move it, or set paths.runs_dir to another folder"
        )
    with claimed_run(RunLayout.ensured(run_dir).root, fresh=False):
        clear_run_dir(run_dir)
        marker.write_text(
            f"made by mritumor {command}; replaced when out of date\n", encoding="utf-8"
        )
        yield run_dir


def _try_lock(descriptor: int) -> bool:
    """Take an exclusive lock without waiting; False when another process holds it."""
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _lock_or_refuse(descriptor: int, run_dir: Path) -> bool:
    """:func:`_try_lock`, with a file system that has no locks (some network mounts) named."""
    try:
        return _try_lock(descriptor)
    except OSError as error:
        raise BundleError(f"cannot lock run directory {run_dir}: {error.strerror}") from None


def _write_owner(descriptor: int) -> None:
    os.ftruncate(descriptor, 0)
    os.lseek(descriptor, 0, os.SEEK_SET)
    os.write(descriptor, f"{os.getpid()}\n".encode())


def _owner(path: Path) -> str:
    try:
        pid = path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def clear_run_dir(run_dir: Path) -> None:
    """Remove everything ``run_dir`` holds but its lock, which the caller holds.

    The folder and its lock stay, so no other process can claim the folder in
    between (and Windows cannot delete a file that is open).
    """
    for path in run_dir.iterdir():
        if path.name == LOCK_FILE:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
