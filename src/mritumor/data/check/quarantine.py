"""Quarantine: moving the leaking copies a data check found out of their splits, and back.

:func:`quarantine_leaks` moves exactly the leaking copies (never a train file) into
``ROOT/quarantine/`` and drops their rows from the split manifests written by
``data prepare``, logging each move and row in ``quarantine/moves.json`` so that
:func:`restore_quarantine` can undo it. Files are moved, never deleted.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from mritumor.core.errors import MritumorError, UsageError
from mritumor.core.fsutil import atomic_write_text
from mritumor.data.check.analysis import CheckReport, DuplicateKind, FileRecord, LeakagePair
from mritumor.data.files import EXTERNAL_DIR, SPLITS
from mritumor.data.manifests import (
    ManifestFormatError,
    ManifestTable,
    manifest_path,
    read_table,
    write_manifest,
)

QUARANTINE_DIR = "quarantine"
MOVES_LOG = "moves.json"
LOG_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ManifestRows:
    """The rows of a split manifest that listed a quarantined file, kept to put them back.

    ``rows`` pairs each row's position in ``manifest`` when it was taken out with
    its values by column, lowest position first.
    """

    manifest: Path
    rows: tuple[tuple[int, dict[str, str]], ...]

    def to_json(self, root: Path) -> dict[str, Any]:
        return {
            "manifest": _portable(self.manifest, root),
            "rows": [{"index": index, "values": values} for index, values in self.rows],
        }

    @classmethod
    def from_json(cls, entry: dict[str, Any], root: Path) -> ManifestRows:
        rows = tuple((row["index"], row["values"]) for row in entry["rows"])
        return cls(root / entry["manifest"], rows)


@dataclass(frozen=True)
class Move:
    """One file moved into quarantine; ``duplicate_of`` is the copy that stayed.

    ``manifest_rows`` are the rows taken out of its split's manifest (``None``
    when the split has no manifest or it did not list the file).
    """

    source: Path
    destination: Path
    sha256: str
    kind: DuplicateKind
    distance: int
    duplicate_of: Path
    manifest_rows: ManifestRows | None = None

    def to_json(self, root: Path) -> dict[str, Any]:
        return {
            "source": _portable(self.source, root),
            "destination": _portable(self.destination, root),
            "sha256": self.sha256,
            "kind": self.kind,
            "distance": self.distance,
            "duplicate_of": _portable(self.duplicate_of, root),
            "manifest_rows": None
            if self.manifest_rows is None
            else self.manifest_rows.to_json(root),
        }

    @classmethod
    def from_json(cls, entry: dict[str, Any], root: Path) -> Move:
        rows = entry.get("manifest_rows")
        return cls(
            source=root / entry["source"],
            destination=root / entry["destination"],
            sha256=entry["sha256"],
            kind=entry["kind"],
            distance=entry["distance"],
            duplicate_of=root / entry["duplicate_of"],
            manifest_rows=None if rows is None else ManifestRows.from_json(rows, root),
        )


def _portable(path: Path, root: Path) -> str:
    """Relative to ``root`` when inside it, so the log survives moving the dataset."""
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def quarantine_leaks(
    report: CheckReport, root: Path, quarantine_dir: Path | None = None
) -> list[Move]:
    """Move every leaking copy (``leak.b``) out of its split into the quarantine folder.

    Files are moved, never deleted: ``ROOT/test/glioma/x.jpg`` goes to
    ``<quarantine>/test/glioma/x.jpg`` (``x_1.jpg`` if that is taken), and each
    move is appended to ``<quarantine>/moves.json`` for :func:`restore_quarantine`.
    The rows listing a moved file leave its split's manifest
    (``ROOT/manifests/<split>.csv``, where ``data prepare`` wrote one), so the
    input pipeline does not look for it; the log keeps them. ``root`` must be the
    folder ``report`` was made for; every file to move must still have the
    content the check saw, or nothing is moved.
    """
    if root.resolve() != report.root.resolve():
        raise UsageError(f"the report was made for {report.root}, not for {root}")
    target = _quarantine_folder(report.root, quarantine_dir)
    _require_unchanged([leak.b for leak in report.leaks])
    log = target / MOVES_LOG
    logged = _read_moves_log(log, report.root)
    manifests = _Manifests(manifest_path(report.root, leak.b.split) for leak in report.leaks)
    moves: list[Move] = []
    taken: set[Path] = set()
    try:
        for leak in report.leaks:
            destination = _free_path(target / leak.b.path.relative_to(report.root), taken)
            moves.append(_move_leaking_copy(leak, destination, report.root, manifests))
    finally:
        if moves:
            # The log first: should saving a manifest fail, the rows are still on record.
            _write_moves_log(log, report.root, logged + moves)
            manifests.save()
    return moves


def _quarantine_folder(root: Path, quarantine_dir: Path | None) -> Path:
    """The quarantine folder, which must not lie inside a folder the check reads."""
    target = quarantine_dir if quarantine_dir is not None else root / QUARANTINE_DIR
    for checked in (*SPLITS, EXTERNAL_DIR):
        if target.resolve().is_relative_to((root / checked).resolve()):
            raise UsageError(
                f"the quarantine folder {target} is inside {root / checked}, which the check "
                "reads; choose a folder outside it"
            )
    return target


def _require_unchanged(files: Sequence[FileRecord]) -> None:
    for file in files:
        if not file.path.is_file() or _file_sha256(file.path) != file.image.sha256:
            raise MritumorError(
                f"{file.path} changed since the check; run `mritumor data check` again "
                "before quarantining"
            )


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _free_path(candidate: Path, taken: set[Path]) -> Path:
    """``candidate``, or ``name_1.ext``, ``name_2.ext``... if it exists or is already planned."""
    path, number = candidate, 0
    while path in taken or path.exists() or path.is_symlink():
        number += 1
        path = candidate.with_name(f"{candidate.stem}_{number}{candidate.suffix}")
    taken.add(path)
    return path


def _move_leaking_copy(
    leak: LeakagePair, destination: Path, root: Path, manifests: _Manifests
) -> Move:
    assert leak.b.image.sha256 is not None  # usable files were read, so they have a hash
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(leak.b.path, destination)
    listed = PurePosixPath(leak.b.path.relative_to(root).as_posix())
    rows = manifests.take(manifest_path(root, leak.b.split), listed)
    return Move(
        leak.b.path, destination, leak.b.image.sha256, leak.kind, leak.distance, leak.a.path, rows
    )


class _Manifest:
    """One split manifest held in memory; its columns and row order are kept."""

    def __init__(self, path: Path) -> None:
        try:
            self.table: ManifestTable = read_table(path)
        except (OSError, ManifestFormatError) as error:
            raise MritumorError(
                f"cannot read the manifest {path} ({error}); fix it or move it aside"
            ) from None
        self.path = path
        self.changed = False

    def take(self, listed: PurePosixPath) -> ManifestRows | None:
        """Remove the rows whose ``path`` is ``listed``; ``None`` when no row lists it."""
        rows = self.table.rows
        positions = [index for index, row in enumerate(rows) if _listed(row) == listed]
        if not positions:
            return None
        taken = tuple((index, rows[index]) for index in positions)
        self.table.rows = [row for row in rows if _listed(row) != listed]
        self.changed = True
        return ManifestRows(self.path, taken)

    def put_back(self, taken: ManifestRows) -> None:
        """Insert rows at their old positions, unless their path is listed again already."""
        listed = {_listed(row) for row in self.table.rows}
        for index, row in taken.rows:
            if _listed(row) not in listed:
                self.table.rows.insert(index, row)
                self.changed = True

    def save(self) -> None:
        write_manifest(self.path, self.table.rows, self.table.columns)


def _listed(row: dict[str, str]) -> PurePosixPath | None:
    """The file a manifest row lists (``./a//b`` and ``a/b`` are the same)."""
    value = row.get("path")
    return None if value is None else PurePosixPath(value)


class _Manifests:
    """The manifests a quarantine or a restore touches, read before any file moves.

    Reading first means a manifest that cannot be read stops the command while
    nothing has changed yet. Paths without a manifest are ignored.
    """

    def __init__(self, paths: Iterable[Path]) -> None:
        self._manifests = {path: _Manifest(path) for path in set(paths) if path.is_file()}

    def take(self, path: Path, listed: PurePosixPath) -> ManifestRows | None:
        manifest = self._manifests.get(path)
        return None if manifest is None else manifest.take(listed)

    def put_back(self, taken: ManifestRows) -> None:
        manifest = self._manifests.get(taken.manifest)
        if manifest is not None:
            manifest.put_back(taken)

    def save(self) -> None:
        for manifest in self._manifests.values():
            if manifest.changed:
                manifest.save()


def _read_moves_log(log: Path, root: Path) -> list[Move]:
    if not log.exists():
        return []
    try:
        entries = json.loads(log.read_text(encoding="utf-8"))["moves"]
        return [Move.from_json(entry, root) for entry in entries]
    except (ValueError, KeyError, TypeError) as error:
        raise MritumorError(f"{log} is not a quarantine log ({error}); move it aside") from None


def _write_moves_log(log: Path, root: Path, moves: Sequence[Move]) -> None:
    document = {
        "schema_version": LOG_SCHEMA_VERSION,
        "moves": [move.to_json(root) for move in moves],
    }
    atomic_write_text(log, json.dumps(document, indent=2) + "\n")


def restore_quarantine(root: Path, quarantine_dir: Path | None = None) -> list[Move]:
    """Undo :func:`quarantine_leaks`: move every logged file back where it came from.

    The manifest rows taken out with a file go back to their old positions
    (unless the manifest lists that path again by now, or is gone). A file whose
    original place is taken again stays in quarantine (nothing is overwritten)
    and stays in the log; restored moves leave the log. Later moves are undone
    first, so when every move is undone the rows are back in exactly their order.
    """
    target = quarantine_dir if quarantine_dir is not None else root / QUARANTINE_DIR
    log = target / MOVES_LOG
    if not log.exists():
        raise UsageError(f"there is no quarantine log at {log}; nothing to restore")
    logged = _read_moves_log(log, root)
    manifests = _Manifests(move.manifest_rows.manifest for move in logged if move.manifest_rows)
    restored: list[Move] = []
    remaining: list[Move] = []
    for move in reversed(logged):
        if move.destination.exists() and not move.source.exists():
            move.source.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(move.destination, move.source)
            if move.manifest_rows is not None:
                manifests.put_back(move.manifest_rows)
            restored.append(move)
        else:
            remaining.append(move)
    manifests.save()
    _write_moves_log(log, root, remaining[::-1])
    return restored
