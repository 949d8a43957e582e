"""DICOM files: one 8-bit picture per frame, as the rest of the toolkit reads images.

Reading DICOM needs the ``dicom`` extra (``pip install 'mritumor[dicom]'``,
which installs pydicom 2.4 or later). pydicom is imported inside the functions,
never when this module is imported, so the toolkit works without it and only a
DICOM file that is actually read asks for it.

A DICOM file is recognised by its name alone: ``.dcm`` or ``.dicom`` in any
letter case (see :func:`is_dicom_file`). Files without a suffix, as some
scanners write them, are not sniffed; give them a ``.dcm`` suffix.

:func:`read_dicom_frames` turns each frame into a ``(height, width, channels)``
uint8 array in these steps, applied to each frame in turn:

1. the stored values (``pixel_array``; for pydicom 2.x, YCbCr colour is
   converted to RGB, which pydicom 3 does itself);
2. the modality LUT: *Rescale Slope* and *Rescale Intercept* (or a *Modality LUT
   Sequence*), giving e.g. Hounsfield units, as float64. In an enhanced
   (multi-frame) file the frame's *Pixel Value Transformation* functional group
   is used when it has them;
3. the VOI window: the first *Window Center* / *Window Width* of the frame's
   *Frame VOI LUT* functional group, else of the file, mapped to 0-255 by the
   file's *VOI LUT Function* (``LINEAR``, the default, ``LINEAR_EXACT`` or
   ``SIGMOID``; DICOM PS3.3 C.11.2.1.2). Without a usable window (none, or a
   width below the minimum for its function) the frame is min-max scaled to
   0-255 on its own; a constant frame becomes all zeros. A *VOI LUT Sequence*
   (a lookup table rather than a window) is not applied;
4. ``MONOCHROME1`` (white is low) is inverted, ``255 - x``, after the window;
5. channels: grey is replicated to three planes for ``channels=3``; colour
   (``RGB``, ``YBR_*``; not windowed, 16-bit colour scaled by *Bits Stored*)
   becomes luminance for ``channels=1``, with the weights and rounding of
   Pillow's ``L`` conversion, as :func:`mritumor.data.images.read_image` does.

Values are rounded to the nearest integer. Other photometric interpretations
(``PALETTE COLOR``, ...) are reported as unreadable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mritumor.core.errors import UsageError
from mritumor.data.files import is_hidden
from mritumor.data.image_errors import UnreadableImageError, refuse_too_large

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

#: Suffixes of DICOM files, compared case-insensitively.
DICOM_SUFFIXES = (".dcm", ".dicom")
#: The message when pydicom is missing: names the extra that installs it.
MISSING_PYDICOM = "reading DICOM files needs pydicom: pip install 'mritumor[dicom]'"

_GREY = ("MONOCHROME1", "MONOCHROME2")
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

_Array = Any  # numpy arrays at the pydicom boundary, which is only partly typed
_PixelFunction = Callable[[_Array, Any], _Array]


def is_dicom_file(path: Path) -> bool:
    """True for a regular, non-hidden file named ``*.dcm`` or ``*.dicom``, in any letter case.

    Only the name is looked at: a DICOM file without a suffix is not recognised,
    and a non-DICOM file named ``.dcm`` is reported unreadable when it is read.
    """
    return path.suffix.lower() in DICOM_SUFFIXES and not is_hidden(path.name) and path.is_file()


def pydicom_available() -> bool:
    """Whether pydicom can be found, without importing it."""
    import importlib.util

    try:
        return importlib.util.find_spec("pydicom") is not None
    except (ImportError, ValueError):
        return False


def read_dicom_frames(path: Path, channels: int = 3) -> list[NDArray[np.uint8]]:
    """Decode every frame of the DICOM file ``path`` to a ``(height, width, channels)`` uint8 array.

    A single-frame file gives a list of one; a multi-frame file one array per
    frame, in the file's order. See the module's documentation for the steps.

    Raises :class:`~mritumor.core.errors.UsageError` naming the ``dicom`` extra when
    pydicom is not installed, and :class:`~mritumor.data.image_errors.UnreadableImageError`
    naming the file when it is not DICOM, is damaged, has no pixel data, needs
    a decoder plugin that is not installed, or holds an unsupported kind of
    picture; :class:`~mritumor.data.image_errors.ImageTooLargeError` when a frame is over
    Pillow's pixel limit, as for any other image.
    """
    import numpy as np

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    modality_lut, ybr_to_rgb = _pydicom_functions()
    dataset, stored = _read_pixels(path)
    interpretation = str(dataset.get("PhotometricInterpretation", "") or "MONOCHROME2").upper()
    samples = _int_or(dataset.get("SamplesPerPixel"), 1)
    colour = samples == 3
    if samples not in (1, 3) or (not colour and interpretation not in _GREY):
        raise UnreadableImageError(
            f"cannot read DICOM file {path}: unsupported photometric interpretation "
            f"{interpretation} with {samples} sample(s) per pixel"
        )
    frame_ndim = 3 if colour else 2
    if stored.ndim == frame_ndim:
        stored = stored[np.newaxis]
    if stored.ndim != frame_ndim + 1 or (colour and stored.shape[-1] != 3):
        raise UnreadableImageError(
            f"cannot read DICOM file {path}: unexpected pixel array shape {stored.shape}"
        )

    frames: list[NDArray[np.uint8]] = []
    for index in range(stored.shape[0]):
        if colour:
            rgb = stored[index]
            if interpretation.startswith("YBR") and ybr_to_rgb is not None:
                rgb = _guarded(path, partial(ybr_to_rgb, rgb, interpretation))
            frames.append(_colour_channels(_colour_to_uint8(rgb, dataset), channels))
        else:
            values = _guarded(path, partial(_modality, stored[index], dataset, index, modality_lut))
            grey = _window(values, dataset, index)
            if interpretation == "MONOCHROME1":
                grey = 255 - grey
            frames.append(
                grey[..., np.newaxis] if channels == 1 else np.repeat(grey[..., np.newaxis], 3, -1)
            )
    return frames


def dicom_frame_count(path: Path) -> int:
    """Frames in the DICOM file ``path``, from its header (pixels are not decoded).

    1 for a single-frame file, and for a file whose header cannot be read: the
    error is reported when its pixels are read.
    """
    header = _header(path)
    return 1 if header is None else max(_int_or(header.get("NumberOfFrames"), 1), 1)


def dicom_frame_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` of the frames of the DICOM file ``path``, from its header.

    None for a file whose header cannot be read or gives no size.
    """
    header = _header(path)
    if header is None:
        return None
    size = (_int_or(header.get("Columns"), 0), _int_or(header.get("Rows"), 0))
    return size if min(size) > 0 else None


def _header(path: Path) -> Any:
    """The file's data elements without its pixels, or None when they cannot be read."""
    _pydicom_functions()  # the one clear message when pydicom is missing
    import pydicom

    try:
        return _guarded(path, lambda: pydicom.dcmread(path, stop_before_pixels=True))
    except UnreadableImageError:
        return None


def _pydicom_functions() -> tuple[_PixelFunction, _PixelFunction | None]:
    """pydicom's modality LUT and, for pydicom 2.x only, its YCbCr-to-RGB conversion.

    pydicom 3 keeps these in :mod:`pydicom.pixels` (its ``processing`` module;
    pydicom 3 converts YCbCr itself);
    pydicom 2.x in :mod:`pydicom.pixel_data_handlers.util`.
    """
    try:
        import pydicom  # noqa: F401
    except ImportError:
        raise UsageError(MISSING_PYDICOM) from None
    try:
        from pydicom.pixels.processing import apply_modality_lut
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import (
            apply_modality_lut as apply_modality_lut_v2,
        )
        from pydicom.pixel_data_handlers.util import convert_color_space

        def ybr_to_rgb(rgb: _Array, interpretation: str) -> _Array:
            return convert_color_space(rgb, interpretation, "RGB")

        return apply_modality_lut_v2, ybr_to_rgb
    return apply_modality_lut, None


def _read_pixels(path: Path) -> tuple[Any, _Array]:
    """The dataset and its stored pixel values; anything wrong is :class:`UnreadableImageError`."""
    import pydicom

    dataset = _guarded(path, lambda: pydicom.dcmread(path))
    if not any(keyword in dataset for keyword in _PIXEL_DATA_KEYWORDS):
        raise UnreadableImageError(f"cannot read DICOM file {path}: it has no pixel data")
    refuse_too_large(path, _int_or(dataset.get("Columns"), 0), _int_or(dataset.get("Rows"), 0))
    return dataset, _guarded(path, lambda: dataset.pixel_array)


def _guarded(path: Path, call: Callable[[], Any]) -> Any:
    """Run a pydicom call, turning its failure into a one-line :class:`UnreadableImageError`.

    pydicom reports damaged or unsupported files with many exception types
    (InvalidDicomError, ValueError, KeyError, AttributeError, RuntimeError for a
    missing decoder plugin, struct.error, ...), so any exception raised inside
    pydicom while reading the user's file counts as "unreadable".

    pydicom's multi-line messages (the decoder plugins a compressed file needs,
    say) are joined with ``;`` into that line.
    """
    try:
        return call()
    except Exception as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = "; ".join(lines).replace(":; ", ": ") or type(error).__name__
        raise UnreadableImageError(f"cannot read DICOM file {path}: {reason}") from None


def _modality(stored: _Array, dataset: Any, index: int, modality_lut: _PixelFunction) -> _Array:
    """Stored values of frame ``index`` through the modality LUT, as float64.

    The LUT is applied to the stored (integer) values, which a *Modality LUT
    Sequence* indexes with, and the result converted to float64.
    """
    import numpy as np

    transform = _functional_group_item(dataset, index, "PixelValueTransformationSequence")
    if transform is not None and "RescaleSlope" in transform and "RescaleIntercept" in transform:
        slope = float(transform.RescaleSlope)
        intercept = float(transform.RescaleIntercept)
        return stored.astype(np.float64) * slope + intercept
    return np.asarray(modality_lut(stored, dataset), dtype=np.float64)


def _window(values: NDArray[np.float64], dataset: Any, index: int) -> NDArray[np.uint8]:
    """Map a frame's modality values to 0-255 with its VOI window, or min-max without one."""
    source = _functional_group_item(dataset, index, "FrameVOILUTSequence")
    window = voi_window_of(dataset if source is None else source)
    scaled = None if window is None else apply_voi_window(values, window)
    return _min_max_uint8(values) if scaled is None else scaled


@dataclass(frozen=True)
class VoiWindow:
    """A DICOM VOI window: *Window Center*, *Window Width* and *VOI LUT Function*."""

    center: float
    width: float
    function: str = "LINEAR"


def voi_window_of(dataset: Any) -> VoiWindow | None:
    """The first window of ``dataset`` (a file, or a functional group item); None without one."""
    center = _first_float(dataset.get("WindowCenter"))
    width = _first_float(dataset.get("WindowWidth"))
    if center is None or width is None:
        return None
    function = str(dataset.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    return VoiWindow(center, width, function)


def apply_voi_window(values: NDArray[np.float64], window: VoiWindow) -> NDArray[np.uint8] | None:
    """``values`` mapped to 0-255 by ``window`` (DICOM PS3.3 C.11.2.1.2); None when its width is
    below the minimum of its function (the caller then scales another way)."""
    import numpy as np

    center, width, function = window.center, window.width, window.function
    scaled: NDArray[np.float64] | None = None
    if function == "SIGMOID" and width > 0:
        scaled = 255.0 / (1.0 + np.exp(np.clip(-4.0 * (values - center) / width, -700, 700)))
    elif function == "LINEAR_EXACT" and width > 0:
        scaled = ((values - center) / width + 0.5) * 255.0
    elif function not in ("SIGMOID", "LINEAR_EXACT") and width > 1:
        # PS3.3 C.11.2.1.2.1: x <= c - 0.5 - (w-1)/2 -> 0, x > c - 0.5 + (w-1)/2 -> 255,
        # else ((x - (c - 0.5)) / (w - 1) + 0.5) * 255. The line meets 0 and 255
        # exactly at those bounds, so clipping it is the same function.
        scaled = ((values - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0
    elif function not in ("SIGMOID", "LINEAR_EXACT") and width == 1:
        scaled = np.where(values > center - 0.5, 255.0, 0.0)
    return None if scaled is None else np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def _min_max_uint8(values: NDArray[np.float64]) -> NDArray[np.uint8]:
    """``values`` scaled linearly from their minimum and maximum to 0-255; constant gives zeros."""
    import numpy as np

    low, high = float(values.min()), float(values.max())
    if not high > low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - low) / (high - low) * 255.0
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def read_grey_values(path: Path) -> tuple[Any, NDArray[np.float64]]:
    """The header and modality values (float64, ``(rows, columns)``) of a one-frame grey file.

    What a slice of a DICOM series holds: the stored values through the modality
    LUT (steps 1-2 of the module's documentation), before any window. Raises
    :class:`UnreadableImageError` for colour or multi-frame files.
    """
    modality_lut, _ = _pydicom_functions()
    dataset, stored = _read_pixels(path)
    interpretation = str(dataset.get("PhotometricInterpretation", "") or "MONOCHROME2").upper()
    if interpretation not in _GREY or stored.ndim != 2:
        raise UnreadableImageError(
            f"cannot read DICOM file {path} as a slice of a series: it holds "
            f"{interpretation} pixels of shape {stored.shape}, not one grey frame"
        )
    values = _guarded(path, partial(_modality, stored, dataset, 0, modality_lut))
    return dataset, values


def _colour_to_uint8(rgb: _Array, dataset: Any) -> NDArray[np.uint8]:
    """8-bit colour as it is; deeper colour scaled from its *Bits Stored* range to 0-255."""
    import numpy as np

    if rgb.dtype == np.uint8:
        return np.asarray(rgb, dtype=np.uint8)
    bits = _int_or(dataset.get("BitsStored"), 8 * rgb.dtype.itemsize)
    scaled = np.asarray(rgb, dtype=np.float64) * (255.0 / (2.0**bits - 1.0))
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def _colour_channels(rgb: NDArray[np.uint8], channels: int) -> NDArray[np.uint8]:
    """RGB as it is, or its luminance like Pillow's ``L`` conversion (ITU-R 601-2, rounded)."""
    import numpy as np

    if channels == 3:
        return np.asarray(rgb, dtype=np.uint8)
    planes = rgb.astype(np.uint32)
    luminance = (
        planes[..., 0] * 19595 + planes[..., 1] * 38470 + planes[..., 2] * 7471 + 0x8000
    ) >> 16
    return luminance.astype(np.uint8)[..., np.newaxis]


def _functional_group_item(dataset: Any, index: int, sequence: str) -> Any | None:
    """The first item of ``sequence`` for frame ``index`` of an enhanced file, if any.

    The frame's *Per-frame Functional Groups* come first, then the *Shared
    Functional Groups*; ``None`` when neither has the sequence.
    """
    for groups_keyword, position in (
        ("PerFrameFunctionalGroupsSequence", index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        groups = dataset.get(groups_keyword)
        if groups is not None and len(groups) > position:
            items = groups[position].get(sequence)
            if items:
                return items[0]
    return None


def _first_float(value: Any) -> float | None:
    """The first of a possibly multi-valued number; ``None`` when absent or not a number."""
    if value is None or (isinstance(value, (str, bytes)) and not value):
        return None
    if not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int_or(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
