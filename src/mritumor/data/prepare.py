"""Turning a local folder or .zip of MRI images into the standard layout, with manifests.

``prepare`` detects the source's layout (:mod:`mritumor.data.layout`), maps its
folder names to the standard classes, carves a stratified, seeded validation
split where the source has none, and writes::

    <target>/train/<class>/*  <target>/val/<class>/*  <target>/test/<class>/*
    <target>/external/<name>/{yes,no}/*
    <target>/manifests/<split>.csv        (manifests/external/<name>.csv)

A manifest has the columns ``path`` (relative to the target, POSIX), ``label``
and ``source`` (the original absolute path; for a zip member ``<archive>/<member>``);
the input pipeline (:mod:`mritumor.data.splits`) reads its split from there.
Files are symlinked (absolute targets) or copied; the source is never modified.
Everything is assembled in a hidden staging folder inside the target and moved
into place at the end, so an interrupted run leaves no half-written split.
"""

from __future__ import annotations

import csv
import io
import re
import shutil
import tempfile
import zipfile
import zlib
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np

from mritumor.data.files import EXTERNAL_DIR, SPLITS
from mritumor.data.layout import Destination, Layout, LayoutKind, detect_layout
from mritumor.data.splits import MANIFEST_DIR
from mritumor.errors import UsageError
from mritumor.fsutil import atomic_write_text
from mritumor.progress import ProgressCallback

MANIFEST_COLUMNS = ("path", "label", "source")

Placement = Literal["symlink", "copy", "move"]
FilesByLabel = dict[str, list[Path]]


@dataclass(frozen=True)
class PrepareSummary:
    """What :func:`prepare` wrote.

    ``counts`` maps each split written (``train``, ``val``, ``test`` or
    ``external/<name>``) to its images per label. ``carved`` names the splits
    drawn at random because the source had none. ``skipped`` lists the files
    under the source that were not taken (non-images, hidden files, loose files
    outside the class folders); ``duplicates`` the copies of the tree left out.
    """

    source: Path
    target: Path
    kind: LayoutKind
    counts: dict[str, dict[str, int]]
    carved: tuple[str, ...]
    skipped: tuple[Path, ...]
    duplicates: tuple[Path, ...]
    manifests: tuple[Path, ...]
    linked: bool

    @property
    def total(self) -> int:
        """How many images were written, over all splits."""
        return sum(sum(per_label.values()) for per_label in self.counts.values())


@dataclass(frozen=True)
class _Source:
    """Where images are read from, and the path the user named for them."""

    folder: Path
    origin: Path
    placement: Placement

    def origin_of(self, path: Path) -> Path:
        return self.origin / path.relative_to(self.folder)


@dataclass(frozen=True)
class _Item:
    """One file to place: ``file`` goes to ``<split>/<label>/<name>``."""

    file: Path
    split: str
    label: str
    name: str

    @property
    def relative(self) -> PurePosixPath:
        return PurePosixPath(self.split, self.label, self.name)


@dataclass(frozen=True)
class _Plan:
    """The files to place; ``splits`` and ``labels`` include those left empty by a carve."""

    items: tuple[_Item, ...]
    splits: tuple[str, ...]
    labels: tuple[str, ...]
    carved: tuple[str, ...]


def prepare(
    source: Path,
    target: Path,
    *,
    copy: bool = False,
    val_size: float = 0.15,
    seed: int = 42,
    force: bool = False,
    external_name: str | None = None,
    progress: ProgressCallback | None = None,
) -> PrepareSummary:
    """Normalise the folder or .zip ``source`` into the standard layout under ``target``.

    ``copy`` copies files instead of symlinking them (a zip's members are always
    copied). ``val_size`` is the share of each class carved into val when the
    source has no val split, and (for a tree without splits) into test as well.
    ``external_name`` names a yes/no set's folder under ``external/`` (default:
    the source's name). Without ``force``, a split that already holds files in
    the target is a :class:`UsageError`; with it, only the splits written are replaced.
    """
    if not 0.0 < val_size < 1.0:
        raise UsageError(f"val_size must be between 0 and 1, got {val_size}")
    source = _existing_source(source)
    target = target.expanduser().resolve()
    _refuse_overlap(source, target)
    name = _external_name(external_name, source)
    with _removed_on_failure(target), _opened(source, target, copy) as opened:
        return _prepare_folder(opened, target, name, val_size, seed, force, progress)


def carve_splits(
    files_by_label: Mapping[str, Sequence[Path]],
    held_out: Sequence[str],
    fraction: float,
    seed: int,
) -> dict[str, FilesByLabel]:
    """Split each class at random into ``held_out`` splits of ``fraction`` each, rest ``train``.

    Stratified by construction: every class gives ``round(n * fraction)`` files to
    each held-out split. Each class is shuffled by its own generator, seeded by
    ``seed`` and the class name, so a class's split does not change when another
    class gains or loses images.
    """
    splits: dict[str, FilesByLabel] = {split: {} for split in ("train", *held_out)}
    for label, files in files_by_label.items():
        ordered = sorted(files)
        rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
        shuffled = [ordered[i] for i in rng.permutation(len(ordered))]
        size = int(len(ordered) * fraction + 0.5)
        for index, split in enumerate(held_out):
            splits[split][label] = sorted(shuffled[index * size : (index + 1) * size])
        splits["train"][label] = sorted(shuffled[len(held_out) * size :])
    return splits


def _manifest_path(target: Path, split: str) -> Path:
    """``<target>/manifests/<split>.csv`` (``manifests/external/<name>.csv`` for external sets)."""
    return target / MANIFEST_DIR / f"{split}.csv"


def _existing_source(source: Path) -> Path:
    source = source.expanduser()
    if not source.exists():
        raise UsageError(f"{source} does not exist")
    if not source.is_dir() and source.suffix.lower() != ".zip":
        raise UsageError(f"{source} is neither a folder nor a .zip file")
    return source.resolve()


def _refuse_overlap(source: Path, target: Path) -> None:
    """Writing inside the source would modify it; replacing a split holding it would delete it."""
    if target == source or target.is_relative_to(source):
        raise UsageError(f"the target {target} is inside the source {source}; choose another")
    owned = [target / name for name in (*SPLITS, EXTERNAL_DIR, MANIFEST_DIR)]
    if any(source.is_relative_to(folder) for folder in owned):
        raise UsageError(f"the source {source} is inside the target's splits; move it out first")


def _external_name(name: str | None, source: Path) -> str:
    if name is None:
        derived = source.stem if source.suffix.lower() == ".zip" else source.name
        return re.sub(r"[^\w.-]+", "_", derived).strip("._") or "external"
    if not re.fullmatch(r"\w[\w.-]*", name):
        raise UsageError(f"external name {name!r} must be letters, digits, '_', '-' or '.'")
    return name


@contextmanager
def _removed_on_failure(target: Path) -> Iterator[None]:
    """Leave no empty target folder behind when a run that created it fails."""
    existed = target.exists()
    try:
        yield
    except BaseException:
        if not existed and target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        raise


@contextmanager
def _opened(source: Path, target: Path, copy: bool) -> Iterator[_Source]:
    """A folder to read ``source`` from: itself, or a zip's members unpacked."""
    if source.suffix.lower() != ".zip":
        yield _Source(source, source, "copy" if copy else "symlink")
        return
    with _extracted_zip(source, target) as folder:
        yield _Source(folder, source, "move")


@contextmanager
def _extracted_zip(archive: Path, target: Path) -> Iterator[Path]:
    """Unpack ``archive`` into a hidden folder inside ``target`` (so files move, not copy).

    Every member name is checked before anything is written: an absolute path or
    a ``..`` component (zip-slip) rejects the whole archive.
    """
    try:
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.namelist():
                _check_member(member, archive)
            target.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".unzip-", dir=target) as folder:
                bundle.extractall(folder)
                yield Path(folder)
    except zipfile.BadZipFile as error:
        raise UsageError(f"cannot read the zip {archive}: {error}") from None


def _check_member(member: str, archive: Path) -> None:
    name = member.replace("\\", "/")
    if name.startswith("/") or re.match(r"[A-Za-z]:", name) or ".." in name.split("/"):
        raise UsageError(
            f"refusing {archive}: member {member!r} would be written outside the target "
            "(absolute path or '..')"
        )


def _prepare_folder(
    source: _Source,
    target: Path,
    external_name: str,
    val_size: float,
    seed: int,
    force: bool,
    progress: ProgressCallback | None,
) -> PrepareSummary:
    layout = detect_layout(source.folder)
    plan = _plan(layout, external_name, val_size, seed)
    _refuse_overwrite(target, plan.splits, force)
    _write(plan, source, target, progress)
    return PrepareSummary(
        source=source.origin,
        target=target,
        kind=layout.kind,
        counts=_counts(plan),
        carved=plan.carved,
        skipped=_skipped(source, layout, plan),
        duplicates=tuple(source.origin_of(path) for path in layout.duplicates),
        manifests=tuple(_manifest_path(target, split) for split in plan.splits),
        linked=source.placement == "symlink",
    )


def _plan(layout: Layout, external_name: str, val_size: float, seed: int) -> _Plan:
    grouped: dict[str | None, FilesByLabel] = defaultdict(lambda: defaultdict(list))
    for path, destination in layout.image_files():
        grouped[_split_of(destination, external_name)][destination.label].append(path)
    if not grouped:
        raise UsageError(f"no images in {layout.root} (extensions are matched case-insensitively)")
    held_out = _held_out(layout)
    if held_out:
        if val_size * len(held_out) >= 1.0:
            raise UsageError(f"val_size {val_size} leaves nothing to train on; use less than 0.5")
        pool = grouped.pop(None if layout.kind == "class_only" else "train", {})
        grouped.update(carve_splits(pool, held_out, val_size, seed))
    splits = {s: grouped[s] for s in sorted(grouped, key=_split_order) if s is not None}
    items = [
        _Item(path, split, label, name)
        for split, by_label in splits.items()
        for label in layout.labels
        for path, name in _unique_names(by_label.get(label, []))
    ]
    return _Plan(tuple(items), tuple(splits), layout.labels, held_out)


def _split_of(destination: Destination, external_name: str) -> str | None:
    if destination.split == EXTERNAL_DIR:
        return f"{EXTERNAL_DIR}/{external_name}"
    return destination.split


def _held_out(layout: Layout) -> tuple[str, ...]:
    """The splits to carve: val and test for a tree without splits, val when only it is missing."""
    if layout.kind == "class_only":
        return ("val", "test")
    if layout.kind == "split_class" and "train" in layout.splits and "val" not in layout.splits:
        return ("val",)
    return ()


def _split_order(split: str | None) -> int:
    return SPLITS.index(split) if split in SPLITS else len(SPLITS)


def _unique_names(files: Sequence[Path]) -> list[tuple[Path, str]]:
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


def _refuse_overwrite(target: Path, splits: Sequence[str], force: bool) -> None:
    occupied = [
        split
        for split in splits
        if _holds_files(target / split) or _manifest_path(target, split).exists()
    ]
    if occupied and not force:
        raise UsageError(
            f"{target} already holds {', '.join(occupied)}; rerun with --force to replace them"
        )


def _holds_files(path: Path) -> bool:
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def _write(plan: _Plan, source: _Source, target: Path, progress: ProgressCallback | None) -> None:
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".prepare-", dir=target) as staging:
        for done, item in enumerate(plan.items, start=1):
            _place(item.file, Path(staging, item.relative), source.placement)
            if progress is not None:
                progress(done, len(plan.items))
        for split in plan.splits:
            for label in plan.labels:
                Path(staging, split, label).mkdir(parents=True, exist_ok=True)
            _replace(Path(staging, split), target / split)
    for split in plan.splits:
        rows = [item for item in plan.items if item.split == split]
        atomic_write_text(_manifest_path(target, split), _manifest_text(rows, source))


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


def _manifest_text(items: Sequence[_Item], source: _Source) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for item in items:
        writer.writerow((item.relative.as_posix(), item.label, source.origin_of(item.file)))
    return buffer.getvalue()


def _counts(plan: _Plan) -> dict[str, dict[str, int]]:
    counts = {split: dict.fromkeys(plan.labels, 0) for split in plan.splits}
    for item in plan.items:
        counts[item.split][item.label] += 1
    return counts


def _skipped(source: _Source, layout: Layout, plan: _Plan) -> tuple[Path, ...]:
    """Files under the source that were not taken, outside any duplicate copy left out."""
    taken = {item.file for item in plan.items}
    return tuple(
        source.origin_of(path)
        for path in sorted(source.folder.rglob("*"))
        if path not in taken
        and not any(path.is_relative_to(copy) for copy in layout.duplicates)
        and (path.is_file() or path.is_symlink())
    )
