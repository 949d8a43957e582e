"""Recognising how a folder of MRI images is organised, and what its folders are called.

Three layouts are accepted, possibly below wrapper folders (a zip's top folder,
Kaggle's ``brain_tumor_dataset/``):

* ``split_class``: ``<split>/<class>/*`` (``Training/glioma``, ``val/no tumor``);
* ``class_only``: ``<class>/*``, with no split (prepare carves val and test);
* ``binary``: ``yes/*`` and ``no/*``, a tumour / no-tumour set for external validation.

Folder names are compared case-insensitively, with spaces and hyphens read as
underscores, so ``No Tumor``, ``no-tumor`` and ``notumor`` all mean ``no_tumor``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, NamedTuple

from mritumor.core.classes import CLASS_NAMES
from mritumor.core.errors import UsageError
from mritumor.data.files import (
    EXTERNAL_DIR,
    NO_TUMOUR_LABEL,
    TUMOUR_LABEL,
    iter_image_files,
    subfolders,
)

LayoutKind = Literal["split_class", "class_only", "binary"]

_CLASS_ALIASES: dict[str, tuple[str, ...]] = {
    "glioma": ("glioma", "glioma_tumor", "glioma_tumour"),
    "meningioma": ("meningioma", "meningioma_tumor", "meningioma_tumour"),
    "no_tumor": ("no_tumor", "notumor", "no_tumour", "notumour", "no", "normal"),
    "pituitary": ("pituitary", "pituitary_tumor", "pituitary_tumour"),
}
_BINARY_ALIASES: dict[str, tuple[str, ...]] = {
    TUMOUR_LABEL: ("yes", "y", "tumor", "tumour"),
    NO_TUMOUR_LABEL: ("no", "n", "normal", "no_tumor", "notumor", "no_tumour", "notumour"),
}
_SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "val": ("val", "validation", "valid"),
    "test": ("test", "testing"),
}


def _normalise(name: str, aliases: Mapping[str, tuple[str, ...]]) -> str | None:
    key = re.sub(r"[\s\-]+", "_", name.strip()).casefold()
    return next((canonical for canonical, names in aliases.items() if key in names), None)


def normalise_class_name(name: str) -> str | None:
    """The standard class a folder name stands for (``"Glioma Tumor"`` -> ``"glioma"``), or None."""
    return _normalise(name, _CLASS_ALIASES)


def normalise_binary_label(name: str) -> str | None:
    """``"yes"`` or ``"no"`` for a tumour / no-tumour folder name (``"Y"``, ``"normal"``), or None."""
    return _normalise(name, _BINARY_ALIASES)


def normalise_split_name(name: str) -> str | None:
    """``"train"``, ``"val"`` or ``"test"`` for a split folder name (``"Testing"``), or None."""
    return _normalise(name, _SPLIT_ALIASES)


def _accepted(aliases: Mapping[str, tuple[str, ...]]) -> str:
    return "; ".join(f"{canonical} ({', '.join(names)})" for canonical, names in aliases.items())


ACCEPTED_NAMES: dict[LayoutKind, str] = {
    "split_class": f"splits {_accepted(_SPLIT_ALIASES)}, each holding classes "
    + _accepted(_CLASS_ALIASES),
    "class_only": f"classes {_accepted(_CLASS_ALIASES)}",
    "binary": f"labels {_accepted(_BINARY_ALIASES)}",
}
"""For error messages: the folder names each layout accepts, with their aliases."""


class Destination(NamedTuple):
    """Where a source folder's images go: ``split`` is None when it is still to be carved."""

    split: str | None
    label: str


@dataclass(frozen=True)
class Layout:
    """What :func:`detect_layout` found.

    ``root`` is the folder the layout starts in (below any wrapper folders);
    ``folders`` maps each source folder holding images to its destination;
    ``duplicates`` are other copies of the same tree that are left out.
    """

    kind: LayoutKind
    root: Path
    folders: Mapping[Path, Destination]
    duplicates: tuple[Path, ...] = ()

    @property
    def splits(self) -> frozenset[str]:
        """The splits the source already has (``external`` for a binary set)."""
        return frozenset(d.split for d in self.folders.values() if d.split is not None)

    @property
    def labels(self) -> tuple[str, ...]:
        """The labels present, in the standard order."""
        present = {destination.label for destination in self.folders.values()}
        order = (TUMOUR_LABEL, NO_TUMOUR_LABEL) if self.kind == "binary" else CLASS_NAMES
        return tuple(label for label in order if label in present)

    def image_files(self) -> Iterator[tuple[Path, Destination]]:
        """Every image in the mapped folders (recursively), in a stable order."""
        for folder, destination in sorted(self.folders.items()):
            for path in iter_image_files(folder):
                yield path, destination


def detect_layout(source: Path) -> Layout:
    """Recognise the layout of the folder ``source``.

    Wrapper folders with a single sub-folder are descended into. Next to the
    recognised folders, a folder that holds an identical copy of the same tree
    (Kaggle's navoneel set ships ``yes/``, ``no/`` and ``brain_tumor_dataset/{yes,no}``)
    is listed in ``duplicates`` and left out; any other unknown folder is a
    :class:`UsageError` naming it and the accepted names.
    """
    if not source.is_dir():
        raise UsageError(f"{source} is not a folder")
    return _detect(source.resolve())


def _detect(folder: Path) -> Layout:
    children = subfolders(folder)
    splits = _matching(children, normalise_split_name)
    labels = _matching(children, normalise_binary_label)
    classes = _matching(children, normalise_class_name)
    if splits:
        layout = Layout("split_class", folder, _split_class_folders(splits))
        recognised = set(splits)
    elif len(labels) > len(classes):
        layout = Layout(
            "binary", folder, {p: Destination(EXTERNAL_DIR, v) for p, v in labels.items()}
        )
        recognised = set(labels)
    elif classes:
        layout = Layout("class_only", folder, {p: Destination(None, v) for p, v in classes.items()})
        recognised = set(classes)
    elif len(children) == 1:
        return _detect(children[0])
    else:
        found = ", ".join(repr(p.name) for p in children) or "no sub-folders"
        raise UsageError(
            f"cannot recognise the layout of {folder} ({found}); expected "
            "<split>/<class>/, <class>/ or yes/ and no/ folders"
        )
    others = [path for path in children if path not in recognised]
    return replace(layout, duplicates=tuple(_duplicate_of(layout, path) for path in others))


def _matching(folders: list[Path], normalise: Callable[[str], str | None]) -> dict[Path, str]:
    names = {folder: normalise(folder.name) for folder in folders}
    return {folder: name for folder, name in names.items() if name is not None}


def class_of_folder(folder: Path) -> str:
    """The standard class a class folder stands for; a UsageError listing the accepted names."""
    label = normalise_class_name(folder.name)
    if label is None:
        raise UsageError(
            f"unknown class folder {folder.name!r} in {folder.parent}; "
            f"accepted: {_accepted(_CLASS_ALIASES)}"
        )
    return label


def _split_class_folders(splits: Mapping[Path, str]) -> dict[Path, Destination]:
    folders: dict[Path, Destination] = {}
    for split_folder, split in splits.items():
        for class_folder in subfolders(split_folder):
            folders[class_folder] = Destination(split, class_of_folder(class_folder))
    return folders


def _duplicate_of(layout: Layout, folder: Path) -> Path:
    """``folder`` if it holds the same images as ``layout``, else an unknown-folder error."""
    try:
        copy = _detect(folder)
    except UsageError:
        copy = None
    if copy is None or copy.kind != layout.kind or _contents(copy) != _contents(layout):
        raise UsageError(
            f"unknown folder {folder.name!r} in {layout.root}; accepted: "
            f"{ACCEPTED_NAMES[layout.kind]}"
        )
    return folder


def _contents(layout: Layout) -> frozenset[tuple[Destination, str]]:
    return frozenset(
        (destination, path.relative_to(folder).as_posix())
        for folder, destination in layout.folders.items()
        for path in iter_image_files(folder)
    )
