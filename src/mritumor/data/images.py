"""Reading an image file: the one reader, and what a file's header says.

:func:`read_image` is the one reader: the input pipeline, the data check and
prepare, ``infer`` and ``gradcam`` all see the same pixels. Files are decoded by
content, not by name: a PNG saved as ``.jpg`` still loads. It turns a photo
upright by its EXIF orientation, and refuses an image over Pillow's pixel limit
before decoding it (:func:`~mritumor.data.image_errors.refuse_too_large`). DICOM
files go to :mod:`mritumor.data.dicom`.

NumPy and Pillow are imported where images are read, so that importing this
module stays quick.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mritumor.data.dicom import dicom_frame_size, is_dicom_file, read_dicom_frames
from mritumor.data.image_errors import (
    ImageTooLargeError,
    NotAnImageError,
    UnreadableImageError,
    refuse_too_large,
)

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray
    from PIL.Image import Image as PILImage

MIN_IMAGE_SIDE = 32
"""Smallest width and height, in pixels, of a usable image.

Below it a brain MRI holds too little anatomy to classify: the model would see a
few pixels blown up 4-12 times (to its 128-384 px input), and the duplicate check
its 32x32 thumbnail blown up too, where unrelated tiny images look alike.
``data check`` reports smaller images (``too_small``), ``data prepare`` leaves them
out, and ``infer`` predicts them with a note. The input pipeline still reads them:
a training set assembled by hand that holds some still trains."""


@dataclass(frozen=True)
class DecodedImage:
    """An image as :func:`read_image` reads it, with what its file says about it."""

    pixels: NDArray[np.uint8]
    """``(height, width, channels)`` uint8, upright."""
    format: str
    """Pillow's name of the file format (``PNG``, ``JPEG``, ...), or ``DICOM``."""
    mode: str | None
    """The file's own Pillow mode (``L``, ``RGB``, ``P``, ``I;16``, ...); None for DICOM."""


def read_image(path: Path, channels: int = 3) -> NDArray[np.uint8]:
    """Decode ``path`` to a ``(height, width, channels)`` uint8 array.

    Grayscale, RGB, RGBA (alpha composited on black, the MRI background),
    palette and 16-bit images all load, and DICOM files (the first frame; see
    :mod:`mritumor.data.dicom`) with the ``dicom`` extra. A JPEG's EXIF
    orientation is applied, so a photo taken sideways reads upright. Raises
    :class:`UnreadableImageError` naming the file when it cannot be decoded
    (:class:`NotAnImageError` for a file no decoder recognises,
    :class:`ImageTooLargeError` for one over Pillow's pixel limit).
    """
    return decode_image(path, channels).pixels


def decode_image(path: Path, channels: int = 3) -> DecodedImage:
    """:func:`read_image`'s pixels, with the file's format and mode."""
    import numpy as np
    from PIL import UnidentifiedImageError

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if is_dicom_file(path):
        return DecodedImage(read_dicom_frames(path, channels)[0], "DICOM", None)
    try:
        with _open_within_limit(path) as image:
            image.load()
            _turn_upright(image)
            pixels = _to_mode(image, "L" if channels == 1 else "RGB")
            format_, mode = image.format or "unknown", image.mode
    except UnidentifiedImageError:
        message = f"cannot read image {path}: not an image file Pillow can identify"
        raise NotAnImageError(message) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise UnreadableImageError(f"cannot read image {path}: {error}") from None
    array = np.asarray(pixels, dtype=np.uint8)
    return DecodedImage(array[..., np.newaxis] if channels == 1 else array, format_, mode)


def _turn_upright(image: PILImage) -> None:
    """Turn ``image`` in place as its EXIF orientation says it is to be shown.

    An EXIF block that Pillow cannot parse says nothing about the orientation:
    the image then stays as stored, as it did before orientations were read.
    """
    from PIL import ImageOps

    try:
        ImageOps.exif_transpose(image, in_place=True)
    except (SyntaxError, ValueError, OSError, struct.error):
        return


def _open_within_limit(path: Path) -> PILImage:
    """``Image.open`` that refuses an image over the pixel limit before anything is decoded.

    Pillow itself raises above twice its limit (and warns above it, which a
    ``-W error`` turns into an exception): both are the same refusal here.
    """
    from PIL import Image

    _ignore_warnings_of(Image.DecompressionBombWarning)
    try:
        image = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError(
            f"cannot read image {path}: over the {Image.MAX_IMAGE_PIXELS}-pixel limit "
            "(decompression-bomb guard)"
        ) from None
    try:
        refuse_too_large(path, *image.size)
    except ImageTooLargeError:
        image.close()
        raise
    return image


def _ignore_warnings_of(category: type[Warning]) -> None:
    """Silence Pillow's over-the-limit warning, which only repeats the refusal that follows.

    Added wherever it is missing, not once at import: a ``warnings.catch_warnings``
    block (pytest wraps every test in one) puts back the filters it found.
    """
    if not any(entry[0] == "ignore" and entry[2] is category for entry in warnings.filters):
        warnings.filterwarnings("ignore", category=category)


def image_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from the file's header, pixels not decoded; None when unreadable.

    For a DICOM file, the size of its frames; for other files the size as stored,
    before any EXIF rotation.
    """
    if is_dicom_file(path):
        return dicom_frame_size(path)
    header = read_header(path)
    return None if header is None else (header.width, header.height)


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says, as stored (before any EXIF rotation)."""

    format: str | None
    mode: str
    width: int
    height: int


def read_header(path: Path) -> ImageHeader | None:
    """The header of a file Pillow can open, pixels not decoded; None when it cannot."""
    from PIL import Image

    _ignore_warnings_of(Image.DecompressionBombWarning)
    try:
        with Image.open(path) as image:
            width, height = image.size
            return ImageHeader(image.format, image.mode, int(width), int(height))
    except (
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ):
        return None


def small_image_note(path: Path) -> str | None:
    """Why the image at ``path`` deserves a caution, when a side is below :data:`MIN_IMAGE_SIDE`."""
    size = image_size(path)
    if size is None or min(size) >= MIN_IMAGE_SIDE:
        return None
    return f"smaller than {MIN_IMAGE_SIDE} px ({size[0]}x{size[1]}), upsampled to the model's input"


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
