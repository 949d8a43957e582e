"""Putting the images ``data prepare`` planned into the target, with their manifests.

Everything is assembled in a hidden staging folder inside the target and each
split is moved into place at the end, so an interrupted run leaves no
half-written split. Files are symlinked (absolute targets), copied, or (a zip's
unpacked members) moved; a split that already holds files is replaced only
when the user forces it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mritumor.core.errors import UsageError
from mritumor.core.progress import ProgressCallback
from mritumor.data.manifests import MANIFEST_COLUMNS, manifest_path, write_manifest
from mritumor.data.prepare.sources import Placement, Source


@dataclass(frozen=True)
class PlannedFile:
    """One file to place: ``file`` goes to ``<split>/<label>/<name>``."""

    file: Path
    split: str
    label: str
    name: str

    @property
    def relative(self) -> PurePosixPath:
        return PurePosixPath(self.split, self.label, self.name)


def unique_names(files: Sequence[Path]) -> list[tuple[Path, str]]:
    """Each file with its original name, ``-2``, ``-3``... added where two would clash.

    Clashes are judged case-insensitively, as on macOS and Windows; the first
    file (in sorted order) keeps its name, so the result is deterministic.
    """
    taken: set[str] = set()
    named: list[tuple[Path, str]] = []
    for path in files:
        name, counter = path.name, 1
        while name.casefold() in taken:
            counter += 1
            name = f"{path.stem}-{counter}{path.suffix}"
        taken.add(name.casefold())
        named.append((path, name))
    return named


def refuse_overwrite(target: Path, splits: Sequence[str], force: bool) -> None:
    """Without ``force``, a split of ``target`` that holds files or has a manifest is refused."""
    occupied = [
        split
        for split in splits
        if _holds_files(target / split) or manifest_path(target, split).exists()
    ]
    if occupied and not force:
        raise UsageError(
            f"{target} already holds {', '.join(occupied)}; rerun with --force to replace them"
        )


def _holds_files(path: Path) -> bool:
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def place_files(
    files: Sequence[PlannedFile],
    splits: Sequence[str],
    labels: Sequence[str],
    source: Source,
    target: Path,
    progress: ProgressCallback | None,
    details: Mapping[Path, Mapping[str, str]] | None = None,
) -> None:
    """Place ``files`` under ``target`` and write a manifest per split.

    Every split gets a folder for each of ``labels``, empty ones included.
    ``details`` adds manifest columns per file (by ``PlannedFile.file``), or replaces
    ``source``: the volume slice a file was cut from, say, and its case.
    """
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".prepare-", dir=target) as staging:
        for done, planned in enumerate(files, start=1):
            _place(planned.file, Path(staging, planned.relative), source.placement)
            if progress is not None:
                progress(done, len(files))
        for split in splits:
            for label in labels:
                Path(staging, split, label).mkdir(parents=True, exist_ok=True)
            _replace(Path(staging, split), target / split)
    extra = details or {}
    columns = list(MANIFEST_COLUMNS)
    for more in extra.values():
        columns.extend(name for name in more if name not in columns)
    for split in splits:
        rows = [
            {**_manifest_row(planned, source), **extra.get(planned.file, {})}
            for planned in files
            if planned.split == split
        ]
        write_manifest(manifest_path(target, split), rows, columns)


def _place(file: Path, destination: Path, placement: Placement) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    if placement == "symlink":
        destination.symlink_to(file)
    elif placement == "copy":
        shutil.copy2(file, destination)
    else:
        file.replace(destination)


def _replace(staged: Path, destination: Path) -> None:
    if destination.is_symlink() or destination.is_file():
        destination.unlink()
    elif destination.exists():
        shutil.rmtree(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staged.replace(destination)


def _manifest_row(planned: PlannedFile, source: Source) -> dict[str, object]:
    return {
        "path": planned.relative.as_posix(),
        "label": planned.label,
        "source": source.origin_of(planned.file),
    }
