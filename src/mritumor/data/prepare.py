"""Turning a local folder or .zip of MRI images into the standard layout, with manifests.

``prepare`` detects the source's layout (:mod:`mritumor.data.layout`), maps its
folder names to the standard classes, carves a stratified, seeded validation
split where the source has none (keeping exact and near duplicates together,
:func:`carve_splits`), and writes::

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
import time
import zipfile
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np

from mritumor.data.files import EXTERNAL_DIR, SPLITS
from mritumor.data.hashing import duplicate_groups, image_hashes
from mritumor.data.layout import Destination, Layout, LayoutKind, detect_layout
from mritumor.data.splits import MANIFEST_DIR
from mritumor.errors import UsageError
from mritumor.fsutil import atomic_write_text
from mritumor.progress import ProgressCallback

MANIFEST_COLUMNS = ("path", "label", "source")

Placement = Literal["symlink", "copy", "move"]
FilesByLabel = dict[str, list[Path]]
_KeyFunction = Callable[[Path], Hashable]


@dataclass(frozen=True)
class DuplicateGrouping:
    """How a duplicate-aware carve treated exact and near duplicates.

    ``hashed`` images were fingerprinted in ``seconds`` (hashing and grouping):
    those the carve drew from, plus the other train/val/test splits the source
    gave. ``kept_together`` duplicate groups of the carve, ``grouped_images``
    images in all, were each placed whole in one split. ``label_conflicts`` are
    groups whose copies carry different labels, as sorted source paths: they
    stay in train, all of them, and ``mritumor data check`` lists them as label
    conflicts. ``cross_split_groups`` counts the duplicate groups that still
    span two splits of the result, which only happens across splits the source
    itself gave (Kaggle's Training vs Testing): ``mritumor data check --fix``
    moves such copies out of val and test.
    """

    hashed: int
    seconds: float
    kept_together: int
    grouped_images: int
    label_conflicts: tuple[tuple[Path, ...], ...]
    cross_split_groups: int


@dataclass(frozen=True)
class PrepareSummary:
    """What :func:`prepare` wrote.

    ``counts`` maps each split written (``train``, ``val``, ``test`` or
    ``external/<name>``) to its images per label. ``carved`` names the splits
    drawn at random because the source had none. ``skipped`` lists the files
    under the source that were not taken (non-images, hidden files, loose files
    outside the class folders); ``duplicates`` the copies of the tree left out.
    ``grouping`` says how duplicates were kept together in the carve; it is
    None when nothing was carved or grouping was turned off.
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
    grouping: DuplicateGrouping | None = None

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
    grouping: DuplicateGrouping | None


class _Steps:
    """One progress count over two phases: hashing ``hashed`` images, then placing ``placed``.

    The library's progress protocol has one monotonic count and a fixed total,
    so the bar runs from 0 to ``hashed + placed``; each phase reports through
    :meth:`phase`, offset by the steps of the phases before it.
    """

    def __init__(self, progress: ProgressCallback | None, hashed: int, placed: int) -> None:
        self._progress = progress
        self._offsets = {"hash": 0, "place": hashed}
        self.total = hashed + placed

    def phase(self, name: Literal["hash", "place"]) -> ProgressCallback | None:
        if self._progress is None:
            return None
        report, offset, overall = self._progress, self._offsets[name], self.total

        def advance(completed: int, total: int) -> None:  # ``total``: of this phase alone
            report(offset + completed, overall)

        return advance


def prepare(
    source: Path,
    target: Path,
    *,
    copy: bool = False,
    val_size: float = 0.15,
    seed: int = 42,
    force: bool = False,
    external_name: str | None = None,
    group_duplicates: bool = True,
    progress: ProgressCallback | None = None,
) -> PrepareSummary:
    """Normalise the folder or .zip ``source`` into the standard layout under ``target``.

    ``copy`` copies files instead of symlinking them (a zip's members are always
    copied). ``val_size`` is the share of each class carved into val when the
    source has no val split, and (for a tree without splits) into test as well.
    With ``group_duplicates`` a carve first hashes the images
    (:func:`~mritumor.data.hashing.image_hashes`) and keeps each group of exact
    or near duplicates in one split (:func:`carve_splits`); turning it off
    saves the hashing time and carves file by file. ``progress`` counts the
    images hashed, then the images placed, against one total.
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
        return _prepare_folder(
            opened, target, name, val_size, seed, force, group_duplicates, progress
        )


def carve_splits(
    files_by_label: Mapping[str, Sequence[Path]],
    held_out: Sequence[str],
    fraction: float,
    seed: int,
    *,
    groups: Mapping[Path, Hashable] | None = None,
) -> dict[str, FilesByLabel]:
    """Split each class at random into ``held_out`` splits of ``fraction`` each, rest ``train``.

    Stratified: each held-out split aims at ``round(n * fraction)`` of a class's
    ``n`` files. Each class is shuffled by its own generator, seeded by ``seed``
    and the class name, and the held-out splits are filled in shuffled order.

    ``groups`` gives files a group id (:func:`~mritumor.data.hashing.duplicate_groups`);
    files sharing one land in the same split. A group takes the place of its first
    file (in sorted order) in the shuffle and goes to the first held-out split it
    fits into without overshooting; a split still short at the end takes any
    remaining group that brings it closer to its size. A group whose files carry
    different labels (a label conflict) stays in ``train``, whole. Files without
    an id stand alone, so without ``groups``, or without duplicates, this is the
    plain file-by-file carve. A class's split does not change when another class
    changes, unless the change makes or breaks a label conflict with its files.
    """
    key = _group_key(groups)
    conflicts = {k for k, _ in _conflicting_groups(files_by_label, key)}
    splits: dict[str, FilesByLabel] = {split: {} for split in ("train", *held_out)}
    for label, files in files_by_label.items():
        ordered = sorted(files)
        rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
        shuffled = [ordered[i] for i in rng.permutation(len(ordered))]
        members: dict[Hashable, list[Path]] = defaultdict(list)
        for path in ordered:
            members[key(path)].append(path)
        units = [members[key(path)] for path in shuffled if members[key(path)][0] == path]
        placed = _fill(
            [unit for unit in units if key(unit[0]) not in conflicts],
            held_out,
            int(len(ordered) * fraction + 0.5),
        )
        placed["train"].extend(p for unit in units if key(unit[0]) in conflicts for p in unit)
        for split, chosen in placed.items():
            splits[split][label] = sorted(chosen)
    return splits


def _group_key(groups: Mapping[Path, Hashable] | None) -> _KeyFunction:
    """The group a file belongs to: its id in ``groups``, or the file itself."""
    if groups is None:
        return lambda path: path
    return lambda path: groups.get(path, path)


def _fill(
    units: Sequence[Sequence[Path]], held_out: Sequence[str], size: int
) -> dict[str, list[Path]]:
    """Deal ``units`` (groups, in shuffled order) into ``held_out`` splits of ``size`` files."""
    placed: dict[str, list[Path]] = {split: [] for split in ("train", *held_out)}
    left: list[Sequence[Path]] = []
    for unit in units:
        split = next((s for s in held_out if len(placed[s]) + len(unit) <= size), None)
        if split is None:
            left.append(unit)
        else:
            placed[split].extend(unit)
    for split in held_out:  # top up a split that no remaining group fits exactly
        still_left = []
        for unit in left:
            short = size - len(placed[split])
            if abs(short - len(unit)) < short:
                placed[split].extend(unit)
            else:
                still_left.append(unit)
        left = still_left
    placed["train"].extend(path for unit in left for path in unit)
    return placed


def _conflicting_groups(
    files_by_label: Mapping[str, Sequence[Path]], key: _KeyFunction
) -> list[tuple[Hashable, tuple[Path, ...]]]:
    """Groups whose files carry more than one label, with their files (sorted)."""
    labels: dict[Hashable, set[str]] = defaultdict(set)
    files: dict[Hashable, list[Path]] = defaultdict(list)
    for label, paths in files_by_label.items():
        for path in paths:
            labels[key(path)].add(label)
            files[key(path)].append(path)
    conflicts = [(k, tuple(sorted(files[k]))) for k, found in labels.items() if len(found) > 1]
    return sorted(conflicts, key=lambda conflict: conflict[1])


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
    group_duplicates: bool,
    progress: ProgressCallback | None,
) -> PrepareSummary:
    layout = detect_layout(source.folder)
    plan = _plan(layout, external_name, val_size, seed, group_duplicates, progress)
    _refuse_overwrite(target, plan.splits, force)
    hashed = plan.grouping.hashed if plan.grouping is not None else 0
    _write(plan, source, target, _Steps(progress, hashed, len(plan.items)).phase("place"))
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
        grouping=_with_origins(plan.grouping, source),
    )


def _plan(
    layout: Layout,
    external_name: str,
    val_size: float,
    seed: int,
    group_duplicates: bool,
    progress: ProgressCallback | None,
) -> _Plan:
    grouped: dict[str | None, FilesByLabel] = defaultdict(lambda: defaultdict(list))
    for path, destination in layout.image_files():
        grouped[_split_of(destination, external_name)][destination.label].append(path)
    if not grouped:
        raise UsageError(f"no images in {layout.root} (extensions are matched case-insensitively)")
    held_out = _held_out(layout)
    grouping = None
    if held_out:
        if val_size * len(held_out) >= 1.0:
            raise UsageError(f"val_size {val_size} leaves nothing to train on; use less than 0.5")
        placed = sum(map(_count, grouped.values()))
        pool = grouped.pop(None if layout.kind == "class_only" else "train", {})
        if group_duplicates:
            given = {split: grouped[split] for split in SPLITS if split in grouped}
            steps = _Steps(progress, _count(pool) + sum(map(_count, given.values())), placed)
            carved, grouping = _grouped_carve(pool, given, held_out, val_size, seed, steps)
        else:
            carved = carve_splits(pool, held_out, val_size, seed)
        grouped.update(carved)
    splits = {s: grouped[s] for s in sorted(grouped, key=_split_order) if s is not None}
    items = [
        _Item(path, split, label, name)
        for split, by_label in splits.items()
        for label in layout.labels
        for path, name in _unique_names(by_label.get(label, []))
    ]
    return _Plan(tuple(items), tuple(splits), layout.labels, held_out, grouping)


def _grouped_carve(
    pool: Mapping[str, Sequence[Path]],
    given: Mapping[str, Mapping[str, Sequence[Path]]],
    held_out: Sequence[str],
    fraction: float,
    seed: int,
    steps: _Steps,
) -> tuple[dict[str, FilesByLabel], DuplicateGrouping]:
    """Hash the pool and the source's own splits; carve the pool keeping duplicate groups whole.

    The carve's groups come from the pool's images alone, so the splits the source
    gave (test) do not move it; all images together say which groups cross splits.
    """
    pool_files = sorted(path for files in pool.values() for path in files)
    given_files = sorted(
        path for by_label in given.values() for f in by_label.values() for path in f
    )
    start = time.perf_counter()
    records = image_hashes([*pool_files, *given_files], progress=steps.phase("hash"))
    pool_ids = duplicate_groups(records[: len(pool_files)])
    all_ids = duplicate_groups(records) if given_files else pool_ids
    seconds = time.perf_counter() - start
    groups = dict(zip(pool_files, pool_ids, strict=True))
    carved = carve_splits(pool, held_out, fraction, seed, groups=groups)
    conflicts = _conflicting_groups(pool, _group_key(groups))
    conflicting = {group for group, _ in conflicts}
    together = [n for group, n in Counter(pool_ids).items() if n > 1 and group not in conflicting]
    split_of = {
        path: split
        for split, by_label in (*carved.items(), *given.items())
        for files in by_label.values()
        for path in files
    }
    spans: dict[int, set[str]] = defaultdict(set)
    for path, group in zip([*pool_files, *given_files], all_ids, strict=True):
        spans[group].add(split_of[path])
    return carved, DuplicateGrouping(
        hashed=len(records),
        seconds=seconds,
        kept_together=len(together),
        grouped_images=sum(together),
        label_conflicts=tuple(files for _, files in conflicts),
        cross_split_groups=sum(len(found) > 1 for found in spans.values()),
    )


def _count(by_label: Mapping[str, Sequence[Path]]) -> int:
    return sum(len(files) for files in by_label.values())


def _with_origins(grouping: DuplicateGrouping | None, source: _Source) -> DuplicateGrouping | None:
    """The grouping with label conflicts named by the paths the user gave (not a zip's unpacking)."""
    if grouping is None:
        return None
    conflicts = tuple(
        tuple(source.origin_of(path) for path in group) for group in grouping.label_conflicts
    )
    return replace(grouping, label_conflicts=conflicts)


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
