"""Image files: finding them, reading them, and the standard data layout.

The standard layout every data command ends in::

    <root>/train/<class>/*   <root>/val/<class>/*   <root>/test/<class>/*
    <root>/external/<name>/{yes,no}/*

Extensions are matched case-insensitively (the reference framework's
case-sensitive globs silently dropped 74 of 253 external images). Files are
decoded by content, not by name: a PNG saved as ``.jpg`` still loads.

NumPy and Pillow are imported where images are read, so that the settings
model, which takes its class names from here, stays quick to import.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from mritumor.errors import MritumorError

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray
    from PIL.Image import Image as PILImage

#: The four classes of the Kaggle brain-tumour sets, in the order of the model's outputs.
CLASS_NAMES = ("glioma", "meningioma", "no_tumor", "pituitary")
SPLITS = ("train", "val", "test")
EXTERNAL_DIR = "external"
TUMOUR_LABEL = "yes"
NO_TUMOUR_LABEL = "no"
BINARY_LABELS = (TUMOUR_LABEL, NO_TUMOUR_LABEL)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"})
"""Lower-case suffixes of image files. DICOM files are listed even without pydicom, so
they are never skipped silently: reading one then says which extra to install."""


class UnreadableImageError(MritumorError):
    """A file that is not a decodable image (zero bytes, truncated, another format)."""


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


def read_image(path: Path, channels: int = 3) -> NDArray[np.uint8]:
    """Decode ``path`` to a ``(height, width, channels)`` uint8 array.

    Grayscale, RGB, RGBA (alpha composited on black, the MRI background),
    palette and 16-bit images all load, and DICOM files (the first frame; see
    :mod:`mritumor.data.dicom`) with the ``dicom`` extra. Raises :class:`UnreadableImageError`
    naming the file when it cannot be decoded.
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from mritumor.data.dicom import is_dicom_file, read_dicom_frames

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if is_dicom_file(path):
        return read_dicom_frames(path, channels)[0]
    try:
        with Image.open(path) as image:
            image.load()
            pixels = _to_mode(image, "L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise UnreadableImageError(f"cannot read image {path}: {error}") from None
    array = np.asarray(pixels, dtype=np.uint8)
    return array[..., np.newaxis] if channels == 1 else array


def _to_mode(image: PILImage, mode: str) -> PILImage:
    import numpy as np
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
        image = Image.fromarray(scaled.astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert(mode)
