"""The file lists of a split: from a persisted manifest, or by scanning the layout.

``data prepare`` writes ``<root>/manifests/<split>.csv`` (:mod:`mritumor.data.manifests`);
splits are read from there when it exists so that the exact files are reused, not
re-drawn. Otherwise ``<root>/<split>/<class>/`` is scanned (case-insensitive
extensions, via :func:`iter_image_files`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mritumor.core.errors import UsageError
from mritumor.data.files import TUMOUR_LABEL, iter_image_files, subfolders
from mritumor.data.layout import normalise_binary_label
from mritumor.data.manifests import manifest_path, read_manifest

#: Class names of binary (external yes/no) splits: label 1 is tumour.
BINARY_CLASSES = ("no", "yes")
#: The splits ``finetune`` carves from an external yes/no set.
EXTERNAL_SPLITS = ("ext_train", "ext_val", "ext_holdout")


@dataclass(frozen=True)
class SplitFiles:
    """Image paths of one split with their integer labels (indices into ``class_names``)."""

    name: str
    paths: tuple[Path, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]
    cases: tuple[str, ...] = ()
    """The case (patient) of each path, ``""`` for none; empty when the split names no cases."""

    def counts(self) -> dict[str, int]:
        tally = Counter(self.labels)
        return {name: tally.get(index, 0) for index, name in enumerate(self.class_names)}

    def __len__(self) -> int:
        return len(self.paths)


def load_split(root: Path, split: str, class_names: Sequence[str]) -> SplitFiles:
    """The files of ``split`` under ``root``; raises UsageError naming what is wrong."""
    manifest = manifest_path(root, split)
    if not manifest.is_file():
        return _labelled(split, _scan_split_folder(root, split), class_names)
    entries = read_manifest(root, manifest)
    pairs = [(entry.path, entry.label) for entry in entries]
    cases = tuple(entry.case for entry in entries)
    return _labelled(split, pairs, class_names, cases if any(cases) else ())


def split_exists(root: Path, split: str) -> bool:
    """Whether ``root`` has a manifest or a folder for ``split``."""
    return manifest_path(root, split).is_file() or (root / split).is_dir()


def _scan_split_folder(root: Path, split: str) -> list[tuple[Path, str]]:
    folder = root / split
    if not folder.is_dir():
        raise UsageError(
            f"no {split} split under {root}: expected {folder}/<class>/ or "
            f"{manifest_path(root, split)} (see `mritumor data prepare`)"
        )
    pairs: list[tuple[Path, str]] = []
    for class_dir in subfolders(folder):
        pairs.extend((path, class_dir.name) for path in iter_image_files(class_dir))
    return pairs


def _labelled(
    split: str,
    pairs: list[tuple[Path, str]],
    class_names: Sequence[str],
    cases: tuple[str, ...] = (),
) -> SplitFiles:
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
        cases=cases,
    )


def load_class_folder(folder: Path, class_names: Sequence[str]) -> SplitFiles:
    """A labelled set given as a folder of class sub-folders (``<folder>/<class>/*``).

    The split is named after the folder, e.g. ``mritumor eval --split ~/scans/site-b``.
    """
    if not folder.is_dir():
        raise UsageError(
            f"{folder} is not a folder of class sub-folders ({', '.join(class_names)})"
        )
    return _labelled(folder.name, _scan_split_folder(folder.parent, folder.name), class_names)


def load_binary_folder(folder: Path) -> tuple[tuple[Path, ...], tuple[int, ...]]:
    """A tumour / no-tumour set ``<folder>/{yes,no}/*``: paths and labels (1 = tumour).

    Folder names are read as ``data prepare`` reads them (``Y``, ``normal``, ...).
    """
    labelled = {
        class_dir: normalise_binary_label(class_dir.name)
        for class_dir in (subfolders(folder) if folder.is_dir() else [])
    }
    pairs = [
        (path, int(label == TUMOUR_LABEL))
        for class_dir, label in labelled.items()
        if label is not None
        for path in iter_image_files(class_dir)
    ]
    if not pairs:
        raise UsageError(f"{folder} has no images in yes/ and no/ sub-folders")
    return tuple(path for path, _ in pairs), tuple(label for _, label in pairs)


def carve_calibration_split(
    train: SplitFiles, fraction: float, seed: int
) -> tuple[SplitFiles, SplitFiles]:
    """Carve a ``cal`` split from ``train``: stratified, seeded, duplicates kept together.

    Temperature and threshold are then fitted on images that neither trained
    the model nor selected its checkpoint (val does the latter). Exact and near
    duplicates (:func:`~mritumor.data.duplicates.groups.duplicate_groups`), and the
    slices of one case, go whole to one side.
    """
    from mritumor.data.carve import carve_splits, join_cases
    from mritumor.data.duplicates.groups import duplicate_groups
    from mritumor.data.duplicates.hashing import image_hashes

    duplicates = duplicate_groups(image_hashes(train.paths))
    groups = dict(zip(train.paths, join_cases(duplicates, train.cases), strict=True))
    by_label = {
        name: [
            path for path, label in zip(train.paths, train.labels, strict=True) if label == index
        ]
        for index, name in enumerate(train.class_names)
    }
    carved = carve_splits(by_label, ("cal",), fraction, seed, groups=groups)
    if not any(carved["cal"].values()):
        raise UsageError(
            f"data.cal_size={fraction} carves no image from the {len(train)} training images; "
            "raise it, or set it to 0 to calibrate on val"
        )
    case_of = dict(zip(train.paths, train.cases, strict=True)) if train.cases else {}
    remaining, cal = (
        _labelled(
            split,
            pairs := [(path, label) for label, paths in carved[split].items() for path in paths],
            train.class_names,
            tuple(case_of[path] for path, _ in pairs) if case_of else (),
        )
        for split in ("train", "cal")
    )
    return remaining, cal
