"""The exact files of a run: ``splits/<name>.csv`` and the dataset fingerprint.

A run persists its splits rather than re-drawing them, so ``eval``, ``calibrate`` and
``--resume`` see the same files as training did, even after the data folder moved.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from mritumor.core.fsutil import atomic_write_text
from mritumor.data.splits import SplitFiles
from mritumor.run.layout import SPLITS_DIR, BundleError, RunLayout, check_folder_name

#: Split files listed in this order first, the rest alphabetically.
_SPLIT_ORDER = ("train", "val", "cal", "test")
_SPLIT_COLUMNS = ("path", "label", "relpath")


def write_splits(run_dir: Path, root: Path, splits: Iterable[SplitFiles]) -> list[Path]:
    """Write ``run_dir/splits/<name>.csv`` for every split; returns the paths written.

    Columns: ``path`` (absolute, POSIX; symlinks kept as links, since a prepared
    layout is made of them), ``label`` (class name) and ``relpath`` (the path
    relative to the data ``root``, empty for files outside it), which lets
    :func:`read_split` find the files again after the data folder moved.
    """
    root_abs = _absolute(root)
    layout = RunLayout(run_dir)
    written: list[Path] = []
    for split in splits:
        check_folder_name(split.name, "split name")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(_SPLIT_COLUMNS)
        for path, label in zip(split.paths, split.labels, strict=True):
            absolute = _absolute(path)
            writer.writerow(
                [absolute.as_posix(), split.class_names[label], _relative_to(absolute, root_abs)]
            )
        target = layout.split(split.name)
        atomic_write_text(target, buffer.getvalue())
        written.append(target)
    return written


def list_splits(run_dir: Path) -> list[str]:
    """Names of the splits stored in ``run_dir`` (train, val, cal, test first)."""
    folder = RunLayout(run_dir).splits
    if not folder.is_dir():
        return []
    names = [path.stem for path in folder.glob("*.csv") if not path.name.startswith(".")]
    return sorted(
        names,
        key=lambda n: (_SPLIT_ORDER.index(n) if n in _SPLIT_ORDER else len(_SPLIT_ORDER), n),
    )


def read_split(
    run_dir: Path, name: str, class_names: Sequence[str], *, data_root: Path | None = None
) -> SplitFiles:
    """The files of split ``name`` exactly as the run used them.

    A listed file that no longer exists is looked up again under ``data_root``
    by its ``relpath`` (the data folder moved); any still missing is an error.
    """
    file = RunLayout(run_dir).split(name)
    if not file.is_file():
        stored = list_splits(run_dir)
        has = f"it has {', '.join(stored)}" if stored else f"it has no {SPLITS_DIR}/ folder"
        raise BundleError(f"run {run_dir} has no {name} split ({file} not found); {has}")
    rows = split_rows(file)
    index = {class_name: position for position, class_name in enumerate(class_names)}
    paths: list[Path] = []
    labels: list[int] = []
    absent: list[Path] = []
    for line, row in enumerate(rows, start=2):
        label = row.get("label") or ""
        if label not in index:
            raise BundleError(
                f"{file} line {line}: label {label!r} is not one of the classes {list(class_names)}"
            )
        if not row.get("path"):
            raise BundleError(f"{file} line {line}: empty path")
        path = _located(Path(row["path"]), row.get("relpath"), data_root)
        if not path.is_file():
            absent.append(path)
        paths.append(path)
        labels.append(index[label])
    if absent:
        raise BundleError(
            f"{file} lists {len(absent)} file(s) that no longer exist, first {absent[0]}; "
            "restore them, or if the data folder moved, give its new location "
            "(paths.data_dir)"
        )
    if not paths:
        raise BundleError(f"{file} lists no files")
    return SplitFiles(
        name=name, paths=tuple(paths), labels=tuple(labels), class_names=tuple(class_names)
    )


def dataset_fingerprint(splits: Iterable[SplitFiles]) -> str:
    """``sha256:<hex>`` over (split, path, label, file size) of every file, sorted.

    Paths are taken relative to the deepest folder common to all files, so the
    fingerprint survives moving the data folder but changes when a file is added,
    removed, resized, relabelled or moved to another split. Raises
    :class:`BundleError` naming a file that cannot be read.
    """
    records = [
        (split.name, _absolute(path), split.class_names[label])
        for split in splits
        for path, label in zip(split.paths, split.labels, strict=True)
    ]
    base = _common_folder([path for _, path, _ in records])
    entries: list[tuple[str, str, str, int]] = []
    for split_name, path, class_name in records:
        try:
            size = path.stat().st_size
        except OSError as error:
            raise BundleError(f"cannot fingerprint the dataset: {path}: {error}") from None
        entries.append((split_name, _relative_to(path, base) or path.as_posix(), class_name, size))
    digest = hashlib.sha256()
    for entry in sorted(entries):
        digest.update(json.dumps(entry, ensure_ascii=False).encode("utf-8") + b"\n")
    return f"sha256:{digest.hexdigest()}"


def split_rows(file: Path) -> list[dict[str, str]]:
    """The rows of a split file, which must have the ``path`` and ``label`` columns.

    Whether the listed files still exist is not checked: :func:`read_split` does that.
    """
    try:
        with file.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing_columns = {"path", "label"} - set(reader.fieldnames or [])
            if missing_columns:
                raise BundleError(
                    f"{file} lacks column(s) {', '.join(sorted(missing_columns))}; "
                    "the file is damaged"
                )
            return list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise BundleError(f"cannot read {file}: {error}") from None


def _located(path: Path, relpath: str | None, data_root: Path | None) -> Path:
    """``path``, or the same file under ``data_root`` when only that one exists (a move)."""
    if not path.is_file() and data_root is not None and relpath:
        moved = data_root / relpath
        if moved.is_file():
            return moved
    return path


def _absolute(path: Path) -> Path:
    """``path`` made absolute and normalised, without following symlinks."""
    return Path(os.path.abspath(path))  # noqa: PTH100 (Path.resolve would follow symlinks)


def _relative_to(path: Path, base: Path | None) -> str:
    if base is None:
        return ""
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return ""


def _common_folder(paths: Sequence[Path]) -> Path | None:
    if not paths:
        return None
    try:
        return Path(os.path.commonpath([path.parent for path in paths]))
    except ValueError:  # different drives
        return None
