"""Image files: the standard data layout and finding the image files in it.

The standard layout every data command ends in::

    <root>/train/<class>/*   <root>/val/<class>/*   <root>/test/<class>/*
    <root>/external/<name>/{yes,no}/*

Extensions are matched case-insensitively (the reference framework's
case-sensitive globs silently dropped 74 of 253 external images). Reading the
files is :mod:`mritumor.data.images`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

SPLITS = ("train", "val", "test")
EXTERNAL_DIR = "external"
TUMOUR_LABEL = "yes"
NO_TUMOUR_LABEL = "no"
BINARY_LABELS = (TUMOUR_LABEL, NO_TUMOUR_LABEL)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"})
"""Lower-case suffixes of image files. DICOM files are listed even without pydicom, so
they are never skipped silently: reading one then says which extra to install."""


def is_hidden(name: str) -> bool:
    """Dot files and folders, and the ``__MACOSX`` debris of zips made on a Mac: never data."""
    return name.startswith(".") or name == "__MACOSX"


def subfolders(folder: Path) -> list[Path]:
    """The visible sub-folders of ``folder``, sorted; none when it is not a folder."""
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.is_dir() and not is_hidden(path.name))


def is_image_file(path: Path) -> bool:
    """True for a regular, non-hidden file with an image extension, in any letter case."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not is_hidden(path.name) and path.is_file()


def iter_image_files(root: Path) -> Iterator[Path]:
    """Every image file below ``root``, recursively, in a stable (sorted) order.

    Hidden files and folders (see :func:`is_hidden`) are skipped; symlinked
    files are followed.
    """
    for path in sorted(root.rglob("*")):
        if any(is_hidden(part) for part in path.relative_to(root).parts):
            continue
        if is_image_file(path):
            yield path
