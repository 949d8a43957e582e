"""Split manifests, ``<root>/manifests/<split>.csv``: the exact file list of each split.

A manifest has a header row and one row per file: ``path`` (relative to the root,
POSIX, or absolute) and ``label``; ``data prepare`` adds ``source``, the original
path (:data:`MANIFEST_COLUMNS`), and for slices of volumes ``case`` (:data:`CASE_COLUMN`). An external set's manifest is
``manifests/external/<name>.csv``. ``data prepare`` and ``kfold`` write them, the
input pipeline reads its split from one when it exists (:func:`read_manifest`),
and ``data check --fix`` takes the rows of quarantined files out and puts them
back (:func:`read_table`, :func:`write_manifest`), keeping the file's own columns.
This module is the only one that parses or writes them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from mritumor.core.errors import UsageError
from mritumor.core.fsutil import atomic_write_text

MANIFEST_DIR = "manifests"
#: The columns ``data prepare`` writes.
MANIFEST_COLUMNS = ("path", "label", "source")
#: The columns every manifest needs.
REQUIRED_COLUMNS = frozenset({"path", "label"})
#: The optional column naming the case (patient) a file belongs to: its files stay in one split.
CASE_COLUMN = "case"


class ManifestFormatError(ValueError):
    """A manifest that is not UTF-8 CSV text; the message is the decoder's reason."""


@dataclass
class ManifestTable:
    """A manifest as it is on disk: its columns in order, and its rows by column."""

    columns: list[str]
    rows: list[dict[str, str]]


def manifest_path(root: Path, split: str) -> Path:
    """``<root>/manifests/<split>.csv`` (``manifests/external/<name>.csv`` for external sets)."""
    return root / MANIFEST_DIR / f"{split}.csv"


def read_table(path: Path) -> ManifestTable:
    """Every row of the manifest at ``path``, with its columns.

    Raises :class:`ManifestFormatError` when the file is not UTF-8 CSV text, and
    :class:`OSError` when it cannot be opened.
    """
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = list(reader.fieldnames or [])
            return ManifestTable(columns, list(reader))
    except (UnicodeDecodeError, csv.Error) as error:
        raise ManifestFormatError(str(error)) from None


class ManifestEntry(NamedTuple):
    """One file of a manifest: its path, label, and case id (``""`` when it has none)."""

    path: Path
    label: str
    case: str


def read_manifest(root: Path, manifest: Path) -> list[ManifestEntry]:
    """The files the manifest lists, with label and case; raises UsageError naming what is wrong.

    Relative paths are read against ``root``. Every file listed must exist: a split
    is used exactly as it was written, or not at all. The optional ``case`` column
    (``data prepare`` of volumes writes it) names the case, or patient, a file was cut from.
    """
    try:
        table = read_table(manifest)
    except ManifestFormatError as error:
        raise UsageError(f"{manifest} is not a readable CSV manifest: {error}") from None
    missing_columns = REQUIRED_COLUMNS - set(table.columns)
    if missing_columns:
        raise UsageError(f"{manifest} lacks column(s) {', '.join(sorted(missing_columns))}")
    incomplete = [
        number for number, row in enumerate(table.rows, 2) if not row["path"] or not row["label"]
    ]
    if incomplete:
        raise UsageError(f"{manifest} line {incomplete[0]} lacks a path or a label")
    entries = [
        ManifestEntry(root / row["path"], row["label"], row.get(CASE_COLUMN) or "")
        for row in table.rows
    ]
    absent = [entry.path for entry in entries if not entry.path.is_file()]
    if absent:
        raise UsageError(
            f"{manifest} lists {len(absent)} file(s) that no longer exist, first {absent[0]}; "
            "restore them or run `mritumor data prepare` again"
        )
    return entries


def write_manifest(
    path: Path,
    rows: Iterable[Mapping[str, object]],
    columns: Sequence[str] = MANIFEST_COLUMNS,
) -> None:
    """Write ``rows`` (values by column) under a header of ``columns``, atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
