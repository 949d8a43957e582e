"""The data check: integrity, duplicates, leakage and class balance of a dataset.

The dataset is in the standard layout (:mod:`mritumor.data.files`)::

    ROOT/{train,val,test}/<class>/*      ROOT/external/<name>/{yes,no}/*

Every non-hidden file in a class folder is fingerprinted (:mod:`mritumor.data.duplicates.hashing`).
Files the input pipeline cannot load, and images smaller than
:data:`~mritumor.data.images.MIN_IMAGE_SIDE` on a side, are *problems*; the usable
images are grouped into exact and near duplicates (:mod:`mritumor.data.duplicates.groups`: a
pHash candidate confirmed by the detail of the thumbnails). A duplicate that spans two
splits is *leakage*: the split that comes later in ``train < val < test < external``
holds the leaking copy. This module finds all that (:func:`check_dataset`);
:mod:`mritumor.data.check.report` saves it as JSON and CSV, and
:mod:`mritumor.data.check.quarantine` moves the leaking copies aside.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from mritumor.core.errors import UsageError
from mritumor.core.progress import ProgressCallback
from mritumor.data.duplicates.groups import DEFAULT_RADIUS, MIN_SIMILARITY, DuplicateGraph
from mritumor.data.duplicates.hashing import ImageRecord, ProblemKind, image_hashes
from mritumor.data.files import (
    BINARY_LABELS,
    EXTERNAL_DIR,
    SPLITS,
    TUMOUR_LABEL,
    is_hidden,
    subfolders,
)

DuplicateKind = Literal["exact", "near"]
DEFAULT_NEGATIVE_CLASS = "no_tumor"


class ClassFolder(NamedTuple):
    """One class folder of the layout: ``split`` is train/val/test or ``external/<name>``."""

    split: str
    class_name: str
    path: Path


@dataclass(frozen=True)
class FileRecord:
    """A file of the dataset: its fingerprint, where it sits, and its duplicate group."""

    image: ImageRecord
    split: str
    class_name: str
    #: The binary label: external ``yes``, or any internal class but the negative one.
    tumour: bool
    #: Shared by every exact and near duplicate of this file (singleton otherwise).
    group: int

    @property
    def path(self) -> Path:
        return self.image.path

    @property
    def is_external(self) -> bool:
        return self.split.startswith(f"{EXTERNAL_DIR}/")


@dataclass(frozen=True)
class Problem:
    """A file that is not a usable image, and why."""

    path: Path
    split: str
    class_name: str
    kind: ProblemKind
    message: str


@dataclass(frozen=True)
class NearPair:
    """Two files confirmed as near duplicates of each other.

    Their pHashes lie ``distance`` bits apart (at most the radius) and the detail
    of their thumbnails correlates at ``similarity`` (at least the threshold).
    """

    a: FileRecord
    b: FileRecord
    distance: int
    similarity: float


@dataclass(frozen=True)
class DuplicateGroup:
    """Files that show the same image: ``exact`` when all have identical pixels.

    ``near_pairs`` are the confirmed pairs that joined the group, between the
    first file of each distinct image (none in an exact group).
    """

    id: int
    kind: DuplicateKind
    files: tuple[FileRecord, ...]
    near_pairs: tuple[NearPair, ...]

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(sorted({file.split for file in self.files}, key=_split_order))

    @property
    def crosses_splits(self) -> bool:
        return len(self.splits) > 1

    @property
    def has_label_conflict(self) -> bool:
        """Internal copies filed under different classes, or copies whose tumour labels differ."""
        internal_classes = {file.class_name for file in self.files if not file.is_external}
        return len(internal_classes) > 1 or len({file.tumour for file in self.files}) > 1


@dataclass(frozen=True)
class LeakagePair:
    """A duplicate across splits: ``b`` is the leaking copy (the one ``fix`` moves).

    ``a`` sits in the earlier split of ``train < val < test < external`` and stays.
    ``distance`` (pHash bits) and ``similarity`` (detail) are 0 and 1.0 for an exact copy.
    """

    kind: DuplicateKind
    distance: int
    similarity: float
    a: FileRecord
    b: FileRecord


@dataclass(frozen=True)
class SizeRange:
    minimum: int
    median: float
    maximum: int


@dataclass(frozen=True)
class CheckReport:
    """Everything ``mritumor data check`` found: the CLI renders it, check_report saves it."""

    root: Path
    radius: int
    min_similarity: float
    files: tuple[FileRecord, ...]
    groups: tuple[DuplicateGroup, ...]
    leaks: tuple[LeakagePair, ...]
    #: Usable images per class folder, per split (empty class folders count 0).
    class_counts: dict[str, dict[str, int]]
    #: Pairs of distinct images within the pHash radius, before the detail check.
    near_candidates: int

    @property
    def has_leakage(self) -> bool:
        return bool(self.leaks)

    @property
    def usable(self) -> tuple[FileRecord, ...]:
        return tuple(file for file in self.files if file.image.usable)

    @property
    def problems(self) -> tuple[Problem, ...]:
        return tuple(
            Problem(
                file.path, file.split, file.class_name, file.image.problem, file.image.error or ""
            )
            for file in self.files
            if file.image.problem is not None
        )

    @property
    def exact_groups(self) -> tuple[DuplicateGroup, ...]:
        return tuple(group for group in self.groups if group.kind == "exact")

    @property
    def near_groups(self) -> tuple[DuplicateGroup, ...]:
        return tuple(group for group in self.groups if group.kind == "near")

    @property
    def label_conflicts(self) -> tuple[DuplicateGroup, ...]:
        return tuple(group for group in self.groups if group.has_label_conflict)

    @property
    def group_ids(self) -> list[int]:
        """A duplicate-group id per file, in :attr:`files` order (for grouped k-fold)."""
        return [file.group for file in self.files]

    @property
    def imbalance_ratios(self) -> dict[str, float]:
        """Largest over smallest class count per split (``inf`` when a class is empty)."""
        return {split: _imbalance(counts) for split, counts in self.class_counts.items()}

    @property
    def modes(self) -> dict[str, int]:
        """Usable images per Pillow mode (L, RGB, ...), most common first; DICOM files as DICOM."""
        modes = (file.image.mode or str(file.image.format) for file in self.usable)
        return dict(Counter(modes).most_common())

    @property
    def widths(self) -> SizeRange | None:
        return _size_range([file.image.width for file in self.usable])

    @property
    def heights(self) -> SizeRange | None:
        return _size_range([file.image.height for file in self.usable])


def check_dataset(
    root: Path,
    *,
    radius: int = DEFAULT_RADIUS,
    min_similarity: float = MIN_SIMILARITY,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    negative_class: str = DEFAULT_NEGATIVE_CLASS,
) -> CheckReport:
    """Check every file under the class folders of ``root`` (see the module docstring).

    ``radius`` is the largest pHash Hamming distance of a near-duplicate candidate
    and ``min_similarity`` the detail similarity that confirms one
    (:class:`~mritumor.data.duplicates.groups.DuplicateGraph`);
    ``workers`` the number of hashing processes (default: one per CPU);
    ``negative_class`` the internal class that means "no tumour", which is how
    internal classes are compared with the yes/no labels of external sets.
    """
    folders = class_folders(root)
    located = [(folder, path) for folder in folders for path in _files_in(folder.path)]
    images = image_hashes([path for _, path in located], workers=workers, progress=progress)
    graph = DuplicateGraph(images, radius, min_similarity)
    files = tuple(
        FileRecord(
            image=image,
            split=folder.split,
            class_name=folder.class_name,
            tumour=_is_tumour(folder, negative_class),
            group=group,
        )
        for (folder, _), image, group in zip(located, images, graph.group_ids(), strict=True)
    )
    return CheckReport(
        root=root,
        radius=radius,
        min_similarity=min_similarity,
        files=files,
        groups=_duplicate_groups(files, graph),
        leaks=_find_leaks(files, graph),
        class_counts=_class_counts(folders, files),
        near_candidates=graph.candidate_count,
    )


def class_folders(root: Path) -> list[ClassFolder]:
    """The class folders of the standard layout under ``root``, in a stable order."""
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder; point the check at a dataset root")
    folders = [
        ClassFolder(split, child.name, child)
        for split in SPLITS
        for child in subfolders(root / split)
    ]
    for external in subfolders(root / EXTERNAL_DIR):
        split = f"{EXTERNAL_DIR}/{external.name}"
        folders += [
            ClassFolder(split, label, external / label)
            for label in BINARY_LABELS
            if (external / label).is_dir()
        ]
    if not folders:
        raise UsageError(
            f"{root} has no train/, val/, test/ or external/<name>/{{yes,no}}/ class folders; "
            "point the check at a dataset prepared by `mritumor data prepare`"
        )
    return folders


def _files_in(folder: Path) -> list[Path]:
    """Every non-hidden regular file below ``folder``, whatever its extension."""
    return [
        path
        for path in sorted(folder.rglob("*"))
        if not any(is_hidden(part) for part in path.relative_to(folder).parts) and path.is_file()
    ]


def _is_tumour(folder: ClassFolder, negative_class: str) -> bool:
    if folder.split.startswith(f"{EXTERNAL_DIR}/"):
        return folder.class_name == TUMOUR_LABEL
    return folder.class_name != negative_class


def _split_order(split: str) -> tuple[int, str]:
    """``train < val < test < external/*``: the earlier split keeps a duplicated image."""
    return (SPLITS.index(split) if split in SPLITS else len(SPLITS), split)


def _split_rank(file: FileRecord) -> int:
    return _split_order(file.split)[0]


def _keeper_order(file: FileRecord) -> tuple[int, str]:
    return (_split_rank(file), str(file.path))


def _duplicate_groups(
    files: Sequence[FileRecord], graph: DuplicateGraph
) -> tuple[DuplicateGroup, ...]:
    members: dict[int, list[FileRecord]] = {}
    for file in files:
        if file.image.usable:
            members.setdefault(file.group, []).append(file)
    near_pairs = _near_pairs_by_group(files, graph)
    return tuple(
        DuplicateGroup(group, _kind_of(group_files), tuple(group_files), near_pairs.get(group, ()))
        for group, group_files in members.items()
        if len(group_files) > 1
    )


def _kind_of(files: Sequence[FileRecord]) -> DuplicateKind:
    return "exact" if len({file.image.pixel_sha256 for file in files}) == 1 else "near"


def _near_pairs_by_group(
    files: Sequence[FileRecord], graph: DuplicateGraph
) -> dict[int, tuple[NearPair, ...]]:
    """Each confirmed pair once, between the first file of either image.

    ``a`` is the file that comes first in ``train < val < test < external`` (then by
    path), as in a leak, and each group's pairs are in that order too.
    """
    first_file: dict[int, FileRecord] = {}
    for image, file in zip(graph.image_of.tolist(), files, strict=True):
        if image >= 0:
            first_file.setdefault(image, file)
    pairs: dict[int, list[NearPair]] = {}
    for image, file in first_file.items():
        for match in graph.neighbours(image):
            if match.image > image:
                a, b = sorted((file, first_file[match.image]), key=_keeper_order)
                pairs.setdefault(a.group, []).append(
                    NearPair(a, b, match.distance, match.similarity)
                )
    return {
        group: tuple(sorted(found, key=lambda pair: (_keeper_order(pair.a), _keeper_order(pair.b))))
        for group, found in pairs.items()
    }


def _find_leaks(files: Sequence[FileRecord], graph: DuplicateGraph) -> tuple[LeakagePair, ...]:
    """One pair per leaking file: its closest copy in an earlier split.

    A file leaks when some file in an earlier split (never across two external
    sets, which share the last rank) has identical pixels or is a confirmed near
    duplicate of it. Looking only at the earliest file per distinct image is
    enough: if any earlier copy exists, the earliest one of its image is earlier too.
    """
    image_of = graph.image_of.tolist()
    earliest: dict[int, FileRecord] = {}
    for image, file in zip(image_of, files, strict=True):
        if image >= 0:
            _keep_earliest(earliest, image, file)
    leaks = []
    for image, file in zip(image_of, files, strict=True):
        if image < 0:
            continue
        pairs = [
            LeakagePair("exact", 0, 1.0, earliest[image], file),
            *(
                LeakagePair("near", match.distance, match.similarity, earliest[match.image], file)
                for match in graph.neighbours(image)
            ),
        ]
        earlier = [pair for pair in pairs if _split_rank(pair.a) < _split_rank(file)]
        if earlier:
            leaks.append(min(earlier, key=_closest_first))
    return tuple(leaks)


def _keep_earliest(earliest: dict[int, FileRecord], image: int, file: FileRecord) -> None:
    current = earliest.get(image)
    if current is None or _keeper_order(file) < _keeper_order(current):
        earliest[image] = file


def _closest_first(pair: LeakagePair) -> tuple[bool, float, int, tuple[int, str]]:
    return (pair.kind != "exact", -pair.similarity, pair.distance, _keeper_order(pair.a))


def _class_counts(
    folders: Sequence[ClassFolder], files: Sequence[FileRecord]
) -> dict[str, dict[str, int]]:
    usable = Counter((file.split, file.class_name) for file in files if file.image.usable)
    counts: dict[str, dict[str, int]] = {}
    for folder in folders:
        counts.setdefault(folder.split, {})[folder.class_name] = usable[
            (folder.split, folder.class_name)
        ]
    return counts


def _imbalance(counts: dict[str, int]) -> float:
    smallest, largest = min(counts.values()), max(counts.values())
    return largest / smallest if smallest else float("inf")


def _size_range(values: Sequence[int | None]) -> SizeRange | None:
    known = [value for value in values if value is not None]
    if not known:
        return None
    return SizeRange(min(known), float(statistics.median(known)), max(known))
