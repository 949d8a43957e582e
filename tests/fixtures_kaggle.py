"""Miniature copies of the three Kaggle brain-MRI downloads, built from tiny generated images.

They keep what makes the real sets awkward: upper-case and ``.jpeg`` extensions,
spaces in names, PNG data in a ``.jpg`` file, RGBA / palette / grayscale images,
navoneel's second copy under ``brain_tumor_dataset/``, and non-image debris.
"""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

MASOUD_CLASSES = ("glioma", "meningioma", "notumor", "pituitary")
SARTAJ_CLASSES = ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor")
MASOUD_TRAIN = {"glioma": 20, "meningioma": 14, "notumor": 10, "pituitary": 7}
MASOUD_TEST = {"glioma": 3, "meningioma": 2, "notumor": 2, "pituitary": 1}

# (mode, format): JPEG cannot hold alpha or a palette, so those are PNG whatever the name says.
_VARIANTS = (("RGB", "JPEG"), ("L", "JPEG"), ("RGBA", "PNG"), ("P", "PNG"), ("RGB", "PNG"))

NAVONEEL_YES = ("Y1.jpg", "Y2.JPG", "Y3.jpeg", "Y4.png", "Y5.JPEG", "Y6 copy.jpg")
NAVONEEL_NO = ("no 1.jpg", "No12.jpg", "N3.JPG", "no 4.jpeg", "N5.png")
NAVONEEL_DEBRIS = ("Thumbs.db", "notes.txt", ".DS_Store")


def write_image(path: Path, index: int = 0) -> Path:
    """A 32-48 px noise image (usable: at least MIN_IMAGE_SIDE) whose mode and format cycle."""
    mode, image_format = _VARIANTS[index % len(_VARIANTS)]
    side = 32 + (index * 7) % 17
    pixels = np.random.default_rng(index).integers(0, 256, (side, side, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    image = image.convert(mode) if mode != "P" else image.quantize(colors=16)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=image_format)
    return path


def write_class_tree(root: Path, counts: Mapping[str, int], name: str = "img_{:03d}.jpg") -> Path:
    """``root/<folder>/<name>`` with ``counts[folder]`` images in each folder."""
    for folder, count in counts.items():
        for number in range(count):
            write_image(root / folder / name.format(number), index=number)
    return root


def build_masoud(root: Path) -> Path:
    """Training/ and Testing/ with masoud's class folder names (``notumor``)."""
    write_class_tree(root / "Training", MASOUD_TRAIN, "Tr-{:04d}.jpg")
    write_class_tree(root / "Testing", MASOUD_TEST, "Te-{:04d}.jpg")
    return root


def build_sartaj(root: Path) -> Path:
    """Training/ and Testing/ with sartaj's ``*_tumor`` folder names and spaced file names."""
    write_class_tree(root / "Training", dict.fromkeys(SARTAJ_CLASSES, 4), "image ({}).jpg")
    write_class_tree(root / "Testing", dict.fromkeys(SARTAJ_CLASSES, 2), "image({}).jpg")
    return root


def build_navoneel(root: Path, *, nested_copy: bool = True) -> Path:
    """yes/ and no/ with mixed extensions and debris, plus a copy in brain_tumor_dataset/."""
    for label, names in (("yes", NAVONEEL_YES), ("no", NAVONEEL_NO)):
        for index, name in enumerate(names):
            write_image(root / label / name, index=index)
    (root / "yes" / NAVONEEL_DEBRIS[0]).write_bytes(b"\0thumbnail cache")
    (root / NAVONEEL_DEBRIS[1]).write_text("253 images\n", encoding="utf-8")
    (root / "no" / NAVONEEL_DEBRIS[2]).write_bytes(b"\0\0\0\1Bud1")
    if nested_copy:
        for label in ("yes", "no"):
            shutil.copytree(root / label, root / "brain_tumor_dataset" / label)
    return root


def zip_folder(folder: Path, archive: Path, prefix: str = "") -> Path:
    """Zip every file under ``folder``, member names prefixed by ``prefix``."""
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                bundle.write(path, prefix + path.relative_to(folder).as_posix())
    return archive


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root`` (or ``root`` itself) with its SHA-256 and mtime."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {
        str(path): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        for path in files
    }


def files_under(root: Path) -> set[str]:
    """Relative POSIX paths of the files (and file symlinks) under ``root``."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
