"""Turning a local folder or .zip of MRI images into the standard layout, with manifests.

``prepare`` detects the source's layout (:mod:`mritumor.data.layout`), maps its
folder names to the standard classes, carves a stratified, seeded validation
split where the source has none (keeping exact and near duplicates together,
:func:`~mritumor.data.carve.carve_splits`), and writes::

    <target>/train/<class>/*  <target>/val/<class>/*  <target>/test/<class>/*
    <target>/external/<name>/{yes,no}/*
    <target>/manifests/<split>.csv        (manifests/external/<name>.csv)

A manifest has the columns ``path`` (relative to the target, POSIX), ``label``
and ``source`` (the original absolute path; for a zip member ``<archive>/<member>``);
the input pipeline (:mod:`mritumor.data.splits`) reads its split from there
(:mod:`mritumor.data.manifests`).
Every image is first read through :func:`~mritumor.data.images.read_image`
(fingerprinted as ``data check`` does, :func:`~mritumor.data.duplicates.hashing.image_hashes`):
a file that is not a usable image (unreadable, truncated, not an image, over the
pixel limit, smaller than :data:`~mritumor.data.images.MIN_IMAGE_SIDE`) is left out
and listed with the reason. A class left without usable images is refused;
a split left without the images of a class is a warning.
Files are symlinked (absolute targets) or copied; the source is never modified
(:mod:`mritumor.data.prepare.sources`), and an interrupted run leaves no half-written
split (:mod:`mritumor.data.prepare.placement`).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from mritumor.core.errors import UsageError
from mritumor.core.progress import ProgressCallback
from mritumor.data.carve import (
    FilesByLabel,
    carve_splits,
    conflicting_groups,
    smallest_carvable,
)
from mritumor.data.duplicates.groups import duplicate_groups
from mritumor.data.duplicates.hashing import ImageRecord, ProblemKind, image_hashes
from mritumor.data.files import EXTERNAL_DIR, SPLITS
from mritumor.data.layout import Destination, Layout, LayoutKind, detect_layout
from mritumor.data.manifests import manifest_path
from mritumor.data.prepare.placement import PlannedFile, place_files, refuse_overwrite, unique_names
from mritumor.data.prepare.sources import (
    Source,
    existing_source,
    external_set_name,
    opened_source,
    refuse_overlap,
    removed_on_failure,
)


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
class _Plan:
    """The files to place; ``splits`` and ``labels`` include those left empty by a carve.

    ``verified`` image files were read, of which ``left_out`` are not usable images.
    """

    files: tuple[PlannedFile, ...]
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
    Every image is hashed (:func:`~mritumor.data.duplicates.hashing.image_hashes`) and only
    usable images are placed; the others are listed in the summary's ``left_out``.
    With ``group_duplicates`` a carve keeps each group of exact or near duplicates
    in one split (:func:`~mritumor.data.carve.carve_splits`); turning it off carves file by
    file.
    ``progress`` counts the images hashed, then the images placed, against one
    total. A class without any usable image is a :class:`UsageError`, raised
    before anything is written.
    ``external_name`` names a yes/no set's folder under ``external/`` (default:
    the source's name). Without ``force``, a split that already holds files in
    the target is a :class:`UsageError`; with it, only the splits written are replaced.
    """
    if not 0.0 < val_size < 1.0:
        raise UsageError(f"val_size must be between 0 and 1, got {val_size}")
    source = existing_source(source)
    target = target.expanduser().resolve()
    refuse_overlap(source, target)
    name = external_set_name(external_name, source)
    with removed_on_failure(target), opened_source(source, target, copy) as opened:
        return _prepare_folder(
            opened, target, name, val_size, seed, force, group_duplicates, progress
        )


def _prepare_folder(
    source: Source,
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
    refuse_overwrite(target, plan.splits, force)
    placing = _Steps(progress, plan.verified, len(plan.files)).phase("place")
    place_files(plan.files, plan.splits, plan.labels, source, target, placing)
    counts = _counts(plan)
    return PrepareSummary(
        source=source.origin,
        target=target,
        kind=layout.kind,
        counts=counts,
        carved=plan.carved,
        skipped=_skipped(source, layout, plan),
        duplicates=tuple(source.origin_of(path) for path in layout.duplicates),
        manifests=tuple(manifest_path(target, split) for split in plan.splits),
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
    files = [
        PlannedFile(path, split, label, name)
        for split, by_label in splits.items()
        for label in layout.labels
        for path, name in unique_names(by_label.get(label, []))
    ]
    return _Plan(
        tuple(files),
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
    conflicts = conflicting_groups(pool, groups)
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


def _with_origins(grouping: DuplicateGrouping | None, source: Source) -> DuplicateGrouping | None:
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


def _counts(plan: _Plan) -> dict[str, dict[str, int]]:
    counts = {split: dict.fromkeys(plan.labels, 0) for split in plan.splits}
    for planned in plan.files:
        counts[planned.split][planned.label] += 1
    return counts


def _skipped(source: Source, layout: Layout, plan: _Plan) -> tuple[Path, ...]:
    """Files under the source that were not read as images, outside any duplicate copy left out."""
    taken = {planned.file for planned in plan.files} | {record.path for record in plan.left_out}
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
    need = smallest_carvable(fraction)
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
