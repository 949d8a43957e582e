"""The data check: integrity, duplicates, leakage and class balance of a dataset.

The dataset is in the standard layout (:mod:`mritumor.data.files`)::

    ROOT/{train,val,test}/<class>/*      ROOT/external/<name>/{yes,no}/*

Every non-hidden file in a class folder is fingerprinted (:mod:`mritumor.data.hashing`).
Files the input pipeline cannot load, and images smaller than
:data:`~mritumor.data.files.MIN_IMAGE_SIDE` on a side, are *problems*; the usable
images are grouped into exact and near duplicates (a pHash candidate confirmed by
the detail of the thumbnails). A duplicate that spans two splits is *leakage*: the split that comes
later in ``train < val < test < external`` holds the leaking copy, and
:func:`quarantine_leaks` moves exactly those copies (never a train file) into
``ROOT/quarantine/`` and drops their rows from the split manifests written by
``data prepare``, logging each move and row so :func:`restore_quarantine` can undo it.
:func:`write_report` saves the findings as JSON, :func:`write_leaks` every leaking pair as CSV.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal, NamedTuple

from mritumor.core.errors import MritumorError, UsageError
from mritumor.core.fsutil import atomic_write_text
from mritumor.core.progress import ProgressCallback
from mritumor.data.files import (
    BINARY_LABELS,
    EXTERNAL_DIR,
    SPLITS,
    TUMOUR_LABEL,
    is_hidden,
    subfolders,
)
from mritumor.data.hashing import (
    DEFAULT_RADIUS,
    MIN_SIMILARITY,
    PROBLEM_KINDS,
    DuplicateGraph,
    ImageRecord,
    ProblemKind,
    image_hashes,
)
from mritumor.data.splits import MANIFEST_DIR

DuplicateKind = Literal["exact", "near"]
SCHEMA_VERSION = 1
QUARANTINE_DIR = "quarantine"
#: Every leaking pair, beside the JSON report: ``kind, distance, similarity, kept, leaking_copy``.
LEAKS_SUFFIX = "-leaks.csv"
MOVES_LOG = "moves.json"
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
    """Everything ``mritumor data check`` found; the CLI renders it, ``to_json`` saves it."""

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

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; paths are relative to the root, with forward slashes."""
        return {
            "schema_version": SCHEMA_VERSION,
            "root": str(self.root),
            "radius": self.radius,
            "min_similarity": self.min_similarity,
            "summary": self._summary_json(),
            "class_counts": self.class_counts,
            "imbalance_ratio": {
                split: _finite_or_none(ratio) for split, ratio in self.imbalance_ratios.items()
            },
            "modes": self.modes,
            "sizes": {"width": _range_json(self.widths), "height": _range_json(self.heights)},
            "problems": [self._problem_json(problem) for problem in self.problems],
            "groups": [self._group_json(group) for group in self.groups],
            "leaks": [self._leak_json(leak) for leak in self.leaks],
            "label_conflicts": [group.id for group in self.label_conflicts],
            "files": [self._file_json(file) for file in self.files],
        }

    def _summary_json(self) -> dict[str, Any]:
        problem_counts = Counter(problem.kind for problem in self.problems)
        return {
            "files": len(self.files),
            "usable_images": len(self.usable),
            "problems": {kind: problem_counts[kind] for kind in PROBLEM_KINDS},
            "exact_groups": len(self.exact_groups),
            "near_groups": len(self.near_groups),
            "near_candidates": self.near_candidates,
            "near_pairs": sum(len(group.near_pairs) for group in self.groups),
            "leaks": len(self.leaks),
            "label_conflicts": len(self.label_conflicts),
            "has_leakage": self.has_leakage,
        }

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _problem_json(self, problem: Problem) -> dict[str, Any]:
        return {
            "path": self._relative(problem.path),
            "split": problem.split,
            "class": problem.class_name,
            "kind": problem.kind,
            "message": problem.message,
        }

    def _group_json(self, group: DuplicateGroup) -> dict[str, Any]:
        return {
            "id": group.id,
            "kind": group.kind,
            "splits": list(group.splits),
            "label_conflict": group.has_label_conflict,
            "files": [self._relative(file.path) for file in group.files],
            "near_pairs": [self._near_pair_json(pair) for pair in group.near_pairs],
        }

    def _near_pair_json(self, pair: NearPair) -> dict[str, Any]:
        return {
            "path_a": self._relative(pair.a.path),
            "path_b": self._relative(pair.b.path),
            "distance": pair.distance,
            "similarity": round(pair.similarity, 4),
        }

    def _leak_json(self, leak: LeakagePair) -> dict[str, Any]:
        return {
            "kind": leak.kind,
            "distance": leak.distance,
            "similarity": round(leak.similarity, 4),
            "path_a": self._relative(leak.a.path),
            "split_a": leak.a.split,
            "class_a": leak.a.class_name,
            "path_b": self._relative(leak.b.path),
            "split_b": leak.b.split,
            "class_b": leak.b.class_name,
        }

    def _file_json(self, file: FileRecord) -> dict[str, Any]:
        image = file.image
        return {
            "path": self._relative(file.path),
            "split": file.split,
            "class": file.class_name,
            "tumour": file.tumour,
            "group": file.group,
            "bytes": image.size_bytes,
            "sha256": image.sha256,
            "pixel_sha256": image.pixel_sha256,
            "phash": None if image.phash is None else f"{image.phash:016x}",
            "format": image.format,
            "mode": image.mode,
            "width": image.width,
            "height": image.height,
            "problem": image.problem,
        }


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
    (:class:`~mritumor.data.hashing.DuplicateGraph`);
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


def _range_json(size: SizeRange | None) -> dict[str, float] | None:
    if size is None:
        return None
    return {"min": size.minimum, "median": size.median, "max": size.maximum}


def _finite_or_none(value: float) -> float | None:
    """JSON has no infinity; an empty class makes the imbalance ratio ``null``."""
    return value if value != float("inf") else None


def write_report(report: CheckReport, path: Path) -> None:
    """Save :meth:`CheckReport.to_json` to ``path`` atomically."""
    atomic_write_text(path, json.dumps(report.to_json(), indent=2) + "\n")


def write_leaks(report: CheckReport, path: Path) -> None:
    """Save :func:`leaks_csv` to ``path`` atomically, a header alone when nothing leaks.

    Written on every check, so no list from an earlier check is left behind.
    """
    atomic_write_text(path, leaks_csv(report))


def leaks_path(report_path: Path) -> Path:
    """Where ``data check`` puts the leakage CSV: beside the JSON report, named after it
    (``check.json`` -> ``check-leaks.csv``), so a ``--report`` of the user's own never
    replaces a file of theirs that happens to be called leaks.csv."""
    return report_path.with_name(report_path.stem + LEAKS_SUFFIX)


def leaks_csv(report: CheckReport) -> str:
    """Every leaking pair, one row each, paths relative to the root (the copy kept first)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("kind", "distance", "similarity", "kept", "leaking_copy"))
    for leak in report.leaks:
        kept, leaking = (file.path.relative_to(report.root).as_posix() for file in (leak.a, leak.b))
        writer.writerow((leak.kind, leak.distance, f"{leak.similarity:.4f}", kept, leaking))
    return buffer.getvalue()


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
    manifests = _Manifests(_manifest_of(report.root, leak.b.split) for leak in report.leaks)
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
    rows = manifests.take(_manifest_of(root, leak.b.split), listed)
    return Move(
        leak.b.path, destination, leak.b.image.sha256, leak.kind, leak.distance, leak.a.path, rows
    )


def _manifest_of(root: Path, split: str) -> Path:
    """``manifests/<split>.csv``; an external set's is ``manifests/external/<name>.csv``."""
    return root / MANIFEST_DIR / f"{split}.csv"


class _Manifest:
    """One split manifest held in memory; its columns and row order are kept."""

    def __init__(self, path: Path) -> None:
        try:
            with path.open(newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                self.columns = list(reader.fieldnames or [])
                self.rows: list[dict[str, str]] = list(reader)
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            raise MritumorError(
                f"cannot read the manifest {path} ({error}); fix it or move it aside"
            ) from None
        self.path = path
        self.changed = False

    def take(self, listed: PurePosixPath) -> ManifestRows | None:
        """Remove the rows whose ``path`` is ``listed``; ``None`` when no row lists it."""
        positions = [index for index, row in enumerate(self.rows) if _listed(row) == listed]
        if not positions:
            return None
        taken = tuple((index, self.rows[index]) for index in positions)
        self.rows = [row for row in self.rows if _listed(row) != listed]
        self.changed = True
        return ManifestRows(self.path, taken)

    def put_back(self, taken: ManifestRows) -> None:
        """Insert rows at their old positions, unless their path is listed again already."""
        listed = {_listed(row) for row in self.rows}
        for index, row in taken.rows:
            if _listed(row) not in listed:
                self.rows.insert(index, row)
                self.changed = True

    def save(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buffer.getvalue())


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
        "schema_version": SCHEMA_VERSION,
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
