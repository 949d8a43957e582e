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
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mritumor.run.bundle import BUNDLE_FILE, LOCK_FILE, BundleError


class RunInUseError(BundleError):
    """Another process holds the run directory."""


@contextmanager
def claimed_run(run_dir: Path, *, fresh: bool, run_file: str = BUNDLE_FILE) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the duration of the block.

    ``fresh``: the block starts a new run, so ``run_dir`` must not hold a run
    yet, that is no ``run_file`` (checked once the lock is held). Raises :class:`RunInUseError` when
    another process holds the lock, and :class:`~mritumor.run.bundle.BundleError`
    when a fresh run's folder already holds a run or cannot be locked.
    """
    path = run_dir / LOCK_FILE
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
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


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
