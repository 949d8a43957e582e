"""The file lists of a split: from a persisted manifest, or by scanning the layout.

``data prepare`` writes ``<root>/manifests/<split>.csv`` (columns ``path``
relative to the root, ``label``); splits are read from there when it exists so
that the exact files are reused, not re-drawn. Otherwise ``<root>/<split>/<class>/``
is scanned (case-insensitive extensions, via :func:`iter_image_files`).
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mritumor.data.files import iter_image_files, subfolders
from mritumor.errors import UsageError

MANIFEST_DIR = "manifests"


@dataclass(frozen=True)
class SplitFiles:
    """Image paths of one split with their integer labels (indices into ``class_names``)."""

    name: str
    paths: tuple[Path, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]

    def counts(self) -> dict[str, int]:
        tally = Counter(self.labels)
        return {name: tally.get(index, 0) for index, name in enumerate(self.class_names)}

    def __len__(self) -> int:
        return len(self.paths)


def load_split(root: Path, split: str, class_names: Sequence[str]) -> SplitFiles:
    """The files of ``split`` under ``root``; raises UsageError naming what is wrong."""
    manifest = root / MANIFEST_DIR / f"{split}.csv"
    if manifest.is_file():
        pairs = _read_manifest(root, manifest)
    else:
        pairs = _scan_split_folder(root, split)
    return _labelled(split, pairs, class_names)


def _read_manifest(root: Path, manifest: Path) -> list[tuple[Path, str]]:
    try:
        with manifest.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing_columns = {"path", "label"} - set(reader.fieldnames or [])
            if missing_columns:
                raise UsageError(f"{manifest} lacks column(s) {', '.join(sorted(missing_columns))}")
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as error:
        raise UsageError(f"{manifest} is not a readable CSV manifest: {error}") from None
    incomplete = [
        number for number, row in enumerate(rows, 2) if not row["path"] or not row["label"]
    ]
    if incomplete:
        raise UsageError(f"{manifest} line {incomplete[0]} lacks a path or a label")
    pairs = [(root / row["path"], row["label"]) for row in rows]
    absent = [path for path, _ in pairs if not path.is_file()]
    if absent:
        raise UsageError(
            f"{manifest} lists {len(absent)} file(s) that no longer exist, first {absent[0]}; "
            "restore them or run `mritumor data prepare` again"
        )
    return pairs


def _scan_split_folder(root: Path, split: str) -> list[tuple[Path, str]]:
    folder = root / split
    if not folder.is_dir():
        raise UsageError(
            f"no {split} split under {root}: expected {folder}/<class>/ or "
            f"{root / MANIFEST_DIR / (split + '.csv')} (see `mritumor data prepare`)"
        )
    pairs: list[tuple[Path, str]] = []
    for class_dir in subfolders(folder):
        pairs.extend((path, class_dir.name) for path in iter_image_files(class_dir))
    return pairs


def _labelled(split: str, pairs: list[tuple[Path, str]], class_names: Sequence[str]) -> SplitFiles:
    index = {name: position for position, name in enumerate(class_names)}
    unknown = sorted({label for _, label in pairs} - set(index))
    if unknown:
        raise UsageError(
            f"split {split!r} has class(es) {', '.join(unknown)} that are not in "
            f"data.class_names {list(class_names)}; rename the folders or set data.class_names"
        )
    if not pairs:
        raise UsageError(f"split {split!r} has no images")
    return SplitFiles(
        name=split,
        paths=tuple(path for path, _ in pairs),
        labels=tuple(index[label] for _, label in pairs),
        class_names=tuple(class_names),
    )
