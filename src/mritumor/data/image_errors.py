"""Why an image file cannot be read: the errors, and the pixel-limit guard.

Both readers raise these, the Pillow one (:mod:`mritumor.data.images`) and the
DICOM one (:mod:`mritumor.data.dicom`), so they sit below both. The guard refuses
an image over Pillow's pixel limit (``PIL.Image.MAX_IMAGE_PIXELS``, 89,478,485
pixels by default, about 9459x9459) before it is decoded: a decompression bomb.
"""

from __future__ import annotations

from pathlib import Path

from mritumor.core.errors import MritumorError


class UnreadableImageError(MritumorError):
    """A file that is not a decodable image (zero bytes, truncated, another format)."""


class NotAnImageError(UnreadableImageError):
    """A file that no image decoder recognises: text, another kind of file."""


class ImageTooLargeError(UnreadableImageError):
    """An image over Pillow's pixel limit, refused before decoding (decompression-bomb guard)."""


def refuse_too_large(path: Path, width: int, height: int) -> None:
    """Raise :class:`ImageTooLargeError` when ``width x height`` is over Pillow's pixel limit."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise ImageTooLargeError(
            f"cannot read image {path}: {width}x{height} pixels is over the {limit}-pixel "
            "limit (decompression-bomb guard)"
        )
