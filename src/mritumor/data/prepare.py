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
Every image is first read through :func:`~mritumor.data.files.read_image`
(fingerprinted as ``data check`` does, :func:`~mritumor.data.hashing.image_hashes`):
a file that is not a usable image (unreadable, truncated, not an image, over the
pixel limit, smaller than :data:`~mritumor.data.files.MIN_IMAGE_SIDE`) is left out
and listed with the reason. A class left without usable images is refused;
a split left without the images of a class is a warning.
Files are symlinked (absolute targets) or copied; the source is never modified.
Everything is assembled in a hidden staging folder inside the target and moved
into place at the end, so an interrupted run leaves no half-written split.
"""

from __future__ import annotations

import csv
import io
import math
import re
import shutil
import tempfile
import time
import zipfile
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np

from mritumor.core.errors import UsageError
from mritumor.core.fsutil import atomic_write_text
from mritumor.core.progress import ProgressCallback
from mritumor.data.files import EXTERNAL_DIR, SPLITS
from mritumor.data.hashing import ImageRecord, ProblemKind, duplicate_groups, image_hashes
from mritumor.data.layout import Destination, Layout, LayoutKind, detect_layout
from mritumor.data.splits import MANIFEST_DIR

MANIFEST_COLUMNS = ("path", "label", "source")

Placement = Literal["symlink", "copy", "move"]
FilesByLabel = dict[str, list[Path]]
_KeyFunction = Callable[[Path], Hashable]


@dataclass(frozen=True)
class DuplicateGrouping:
    """How a duplicate-aware carve treated exact and near duplicates.

    ``hashed`` images were fingerprinted in ``seconds`` (hashing and grouping):
    every image file of the source, those left out as unusable included.
    ``kept_together`` duplicate groups of the carve, ``grouped_images``
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
class LeftOut:
    """An image file of the source that was not placed because it is not a usable image."""

    path: Path
    kind: ProblemKind
    reason: str


@dataclass(frozen=True)
class PrepareSummary:
    """What :func:`prepare` wrote.

    ``counts`` maps each split written (``train``, ``val``, ``test`` or
    ``external/<name>``) to its images per label. ``carved`` names the splits
    drawn at random because the source had none. ``skipped`` lists the files
    under the source that were not taken (non-images, hidden files, loose files
    outside the class folders); ``duplicates`` the copies of the tree left out;
    ``left_out`` the image files that are not usable images, with the reason.
    ``grouping`` says how duplicates were kept together in the carve; it is
    None when nothing was carved or grouping was turned off. ``warnings`` name
    the splits left without the images of a class (a carve short of images).
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
    left_out: tuple[LeftOut, ...] = ()
    warnings: tuple[str, ...] = ()

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
    """The files to place; ``splits`` and ``labels`` include those left empty by a carve.

    ``verified`` image files were read, of which ``left_out`` are not usable images.
    """

    items: tuple[_Item, ...]
    splits: tuple[str, ...]
    labels: tuple[str, ...]
    carved: tuple[str, ...]
    grouping: DuplicateGrouping | None
    verified: int
    left_out: tuple[ImageRecord, ...]


@dataclass(frozen=True)
class _Verified:
    """The fingerprint of every image file of the source, taken in ``seconds``."""

    records: dict[Path, ImageRecord]
    seconds: float

    def usable(self, path: Path) -> bool:
        return self.records[path].usable

    @property
    def left_out(self) -> tuple[ImageRecord, ...]:
        return tuple(record for record in self.records.values() if not record.usable)


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
    Every image is hashed (:func:`~mritumor.data.hashing.image_hashes`) and only
    usable images are placed; the others are listed in the summary's ``left_out``.
    With ``group_duplicates`` a carve keeps each group of exact or near duplicates
    in one split (:func:`carve_splits`); turning it off carves file by file.
    ``progress`` counts the images hashed, then the images placed, against one
    total. A class without any usable image is a :class:`UsageError`, raised
    before anything is written.
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
            carved_size(len(ordered), fraction),
        )
        placed["train"].extend(p for unit in units if key(unit[0]) in conflicts for p in unit)
        for split, chosen in placed.items():
            splits[split][label] = sorted(chosen)
    return splits


def carved_size(count: int, fraction: float) -> int:
    """Images a held-out split takes of a class of ``count``: ``fraction`` of it, rounded."""
    return int(count * fraction + 0.5)


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
    _write(plan, source, target, _Steps(progress, plan.verified, len(plan.items)).phase("place"))
    counts = _counts(plan)
    return PrepareSummary(
        source=source.origin,
        target=target,
        kind=layout.kind,
        counts=counts,
        carved=plan.carved,
        skipped=_skipped(source, layout, plan),
        duplicates=tuple(source.origin_of(path) for path in layout.duplicates),
        manifests=tuple(_manifest_path(target, split) for split in plan.splits),
        linked=source.placement == "symlink",
        grouping=_with_origins(plan.grouping, source),
        left_out=tuple(
            LeftOut(
                source.origin_of(record.path), record.problem or "unreadable", record.error or ""
            )
            for record in plan.left_out
        ),
        warnings=_shortfalls(counts, plan.carved, val_size),
    )


def _plan(
    layout: Layout,
    external_name: str,
    val_size: float,
    seed: int,
    group_duplicates: bool,
    progress: ProgressCallback | None,
) -> _Plan:
    found = list(layout.image_files())
    if not found:
        raise UsageError(f"no images in {layout.root} (extensions are matched case-insensitively)")
    held_out = _held_out(layout)
    if val_size * len(held_out) >= 1.0:
        raise UsageError(f"val_size {val_size} leaves nothing to train on; use less than 0.5")
    verified = _verify([path for path, _ in found], progress)
    _refuse_classes_without_images(layout, found, verified)
    grouped: dict[str | None, FilesByLabel] = defaultdict(lambda: defaultdict(list))
    for path, destination in found:
        if verified.usable(path):
            grouped[_split_of(destination, external_name)][destination.label].append(path)
    grouping = None
    if held_out:
        pool = grouped.pop(None if layout.kind == "class_only" else "train", {})
        if group_duplicates:
            given = {split: grouped[split] for split in SPLITS if split in grouped}
            carved, grouping = _grouped_carve(pool, given, held_out, val_size, seed, verified)
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
    return _Plan(
        tuple(items),
        tuple(splits),
        layout.labels,
        held_out,
        grouping,
        len(found),
        verified.left_out,
    )


def _verify(paths: Sequence[Path], progress: ProgressCallback | None) -> _Verified:
    """Fingerprint every image file, the hashing phase of the progress count."""
    start = time.perf_counter()
    steps = _Steps(progress, len(paths), len(paths))  # placing counts at most every file
    records = image_hashes(paths, progress=steps.phase("hash"))
    return _Verified({record.path: record for record in records}, time.perf_counter() - start)


def _refuse_classes_without_images(
    layout: Layout, found: Iterable[tuple[Path, Destination]], verified: _Verified
) -> None:
    """One line naming each class with no usable image, and an example of what was left out."""
    usable: Counter[str] = Counter()
    left_out: dict[str, list[ImageRecord]] = defaultdict(list)
    for path, destination in found:
        if verified.usable(path):
            usable[destination.label] += 1
        else:
            left_out[destination.label].append(verified.records[path])
    empty = [label for label in layout.labels if not usable[label]]
    if not empty:
        return
    examples = [record for label in empty for record in left_out[label]]
    example = (
        f" ({len(examples)} file(s) left out, such as "
        f"{examples[0].path.relative_to(layout.root)}: {examples[0].error})"
        if examples
        else ""
    )
    raise UsageError(
        f"no usable images of {', '.join(empty)} in {layout.root}{example}; "
        "add readable images or remove the class folder"
    )


def _grouped_carve(
    pool: Mapping[str, Sequence[Path]],
    given: Mapping[str, Mapping[str, Sequence[Path]]],
    held_out: Sequence[str],
    fraction: float,
    seed: int,
    verified: _Verified,
) -> tuple[dict[str, FilesByLabel], DuplicateGrouping]:
    """Carve the pool keeping duplicate groups whole, from the images' fingerprints.

    The carve's groups come from the pool's images alone, so the splits the source
    gave (test) do not move it; all images together say which groups cross splits.
    """
    pool_files = sorted(path for files in pool.values() for path in files)
    given_files = sorted(
        path for by_label in given.values() for f in by_label.values() for path in f
    )
    start = time.perf_counter()
    records = [verified.records[path] for path in (*pool_files, *given_files)]
    pool_ids = duplicate_groups(records[: len(pool_files)])
    all_ids = duplicate_groups(records) if given_files else pool_ids
    seconds = verified.seconds + time.perf_counter() - start
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
        hashed=len(verified.records),
        seconds=seconds,
        kept_together=len(together),
        grouped_images=sum(together),
        label_conflicts=tuple(files for _, files in conflicts),
        cross_split_groups=sum(len(found) > 1 for found in spans.values()),
    )


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
    """Files under the source that were not read as images, outside any duplicate copy left out."""
    taken = {item.file for item in plan.items} | {record.path for record in plan.left_out}
    return tuple(
        source.origin_of(path)
        for path in sorted(source.folder.rglob("*"))
        if path not in taken
        and not any(path.is_relative_to(copy) for copy in layout.duplicates)
        and (path.is_file() or path.is_symlink())
    )


def _shortfalls(
    counts: Mapping[str, Mapping[str, int]], carved: Sequence[str], fraction: float
) -> tuple[str, ...]:
    """A warning per split left without the images of some class, saying when a carve was short."""
    need = _smallest_carvable(fraction)
    pool: Counter[str] = Counter()
    for split in ("train", *carved):
        pool.update(counts.get(split, {}))
    found = []
    for split, per_label in counts.items():
        missing = [label for label, count in per_label.items() if count == 0]
        if not missing:
            continue
        if len(missing) == len(per_label):
            warning = f"{split} is empty"
        else:
            warning = f"{split} has no images of {', '.join(missing)}"
        if split in carved and any(pool[label] < need for label in missing):
            warning += f": a carve at val_size {fraction} needs {need} usable images of a class"
        found.append(warning)
    return tuple(found)


def _smallest_carvable(fraction: float) -> int:
    """The fewest images of a class of which a held-out split takes one (:func:`carved_size`)."""
    count = max(1, math.ceil(0.5 / fraction))
    return count if carved_size(count, fraction) else count + 1
