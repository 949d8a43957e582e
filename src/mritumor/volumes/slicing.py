"""Cutting a volume into the 8-bit, display-oriented 2-D slices a classifier of 2-D MRI reads.

Slices are taken along one anatomical axis of the RAS+ voxels (:mod:`.reading`) and
shown as radiologists show them, which is how the 2-D training images look:

* axial: anterior at the top, the patient's right on the image's left;
* coronal: superior at the top, the patient's right on the left;
* sagittal: superior at the top, anterior on the left.

Slice numbers count from 1 along the RAS+ axis: from inferior (axial), posterior
(coronal) or the patient's left (sagittal). A slice whose pixels are not square
(thick slices seen side-on) is resampled bilinearly to the finer spacing.

Windowing maps the voxel values of the whole volume to 0-255 at once, so that
slices keep their brightness relative to each other (a slice of air stays dark):
``percentile`` maps the volume's ``low`` and ``high`` percentiles to 0 and 255;
``dicom`` uses the series' own VOI window; ``auto`` is ``dicom`` when the series has
a window, else ``percentile``. A slice is blank when less than ``min_foreground`` of
its pixels reach :data:`FOREGROUND_LEVEL` of the window after a 3 x 3 median
filter (so isolated noisy pixels do not count): air above the vertex, the empty ends of the field of view. Blank
slices are counted, not scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mritumor.core.errors import UsageError
from mritumor.core.volume_terms import Axis, WindowMethod
from mritumor.data.dicom import apply_voi_window

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from mritumor.config.schema import VolumeSettings
    from mritumor.volumes.reading import Volume

#: The RAS+ array axis each plane is cut across.
NORMAL_AXIS: dict[Axis, int] = {"sagittal": 0, "coronal": 1, "axial": 2}
#: A pixel at this share of the window (0-255 scale) or above is tissue, for blank detection.
FOREGROUND_LEVEL = 0.1


@dataclass(frozen=True)
class SliceOptions:
    """How a volume is cut, windowed and screened for blank slices."""

    axis: Axis = "axial"
    window: WindowMethod = "auto"
    percentiles: tuple[float, float] = (0.5, 99.5)
    min_foreground: float = 0.05

    @classmethod
    def from_settings(cls, volumes: VolumeSettings) -> SliceOptions:
        """The ``volumes`` settings' slicing part: what ``infer``, ``gradcam`` and ``data
        prepare`` cut volumes with."""
        return cls(
            axis=volumes.axis,
            window=volumes.window,
            percentiles=volumes.percentiles,
            min_foreground=volumes.min_foreground,
        )


@dataclass(frozen=True, eq=False)
class VolumeSlices:
    """The slices of one volume along one axis: those kept, as pixels, and those left blank.

    The voxels are not kept: once cut, a volume costs only its kept slices' pixels.
    """

    source: Path
    notes: tuple[str, ...]
    """What the reader noted about the volume (:attr:`Volume.notes`)."""
    axis: Axis
    count: int
    """Slices along the axis, blank ones included."""
    kept: tuple[int, ...]
    """0-based positions of the slices kept, in order."""
    pixels: tuple[NDArray[np.uint8], ...]
    """``(height, width, 1)`` grey pixels of each kept slice."""
    blank: tuple[int, ...]
    """0-based positions of the blank slices."""
    window: str
    """How the volume was windowed, for the output: ``percentile 0.5-99.5`` or ``DICOM 40/400``."""


def slice_volume(volume: Volume, options: SliceOptions) -> VolumeSlices:
    """Every slice of ``volume`` along ``options.axis``, windowed, blank ones set aside."""
    scaled, described = window_voxels(volume, options)
    normal = NORMAL_AXIS[options.axis]
    count = int(scaled.shape[normal])
    kept: list[int] = []
    pixels: list[NDArray[np.uint8]] = []
    blank: list[int] = []
    for index in range(count):
        plane = display_plane(scaled, options.axis, index, volume.spacing)
        if foreground_share(plane) < options.min_foreground:
            blank.append(index)
            continue
        kept.append(index)
        pixels.append(plane[..., np.newaxis])
    return VolumeSlices(
        source=volume.source,
        notes=volume.notes,
        axis=options.axis,
        count=count,
        kept=tuple(kept),
        pixels=tuple(pixels),
        blank=tuple(blank),
        window=described,
    )


def window_voxels(volume: Volume, options: SliceOptions) -> tuple[NDArray[np.float32], str]:
    """The voxels on a 0-255 scale, as float, and how they were windowed.

    A DICOM window maps to whole numbers already (as DICOM viewers show it); the
    percentile window is left unrounded until the slices are cut. ``dicom`` asked
    for explicitly, on a volume without a usable window, is a :class:`UsageError`;
    ``auto`` then falls back to percentiles.
    """
    method = options.window
    window = volume.window
    mapped = None
    if method != "percentile" and window is not None:
        mapped = apply_voi_window(volume.voxels.astype(np.float64), window)
    if mapped is not None and window is not None:
        return mapped.astype(np.float32), f"DICOM {window.center:g}/{window.width:g}"
    if method == "dicom":
        raise UsageError(
            f"--window dicom needs the series' own VOI window, and {volume.source} is "
            f"{_without_window(volume)}; use --window percentile"
        )
    low_share, high_share = options.percentiles
    low, high = np.percentile(volume.voxels, [low_share, high_share])
    described = f"percentile {low_share:g}-{high_share:g}"
    if not high > low:
        return np.zeros(volume.voxels.shape, np.float32), described
    scaled = (volume.voxels - np.float32(low)) * np.float32(255.0 / (high - low))
    return np.clip(scaled, 0.0, 255.0).astype(np.float32), described


def _without_window(volume: Volume) -> str:
    """Why a volume has no usable DICOM window."""
    if volume.kind == "nifti":
        return "a NIfTI file"
    if volume.window is None:
        return "a DICOM series without one"
    window = volume.window
    return f"a DICOM series whose window ({window.center:g}/{window.width:g}) is too narrow"


def display_plane(
    scaled: NDArray[np.float32],
    axis: Axis,
    index: int,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> NDArray[np.uint8]:
    """Slice ``index`` across ``axis`` of RAS+ voxels, radiologically oriented, square pixels.

    The plane's two remaining RAS+ axes, in order, become the columns and rows;
    both are reversed so that right, anterior and superior come first.
    """
    normal = NORMAL_AXIS[axis]
    plane = np.take(scaled, index, axis=normal).T[::-1, ::-1]
    in_plane = [spacing[i] for i in range(3) if i != normal]
    square = square_pixels(plane, row_mm=in_plane[1], column_mm=in_plane[0])
    return np.rint(np.clip(square, 0.0, 255.0)).astype(np.uint8)


def square_pixels(
    plane: NDArray[np.float32], *, row_mm: float, column_mm: float
) -> NDArray[np.float32]:
    """``plane`` resampled (bilinear) so that rows and columns are both ``min(row_mm, column_mm)``
    apart; as it is when they already are (within 1 %)."""
    from scipy import ndimage

    finer = min(row_mm, column_mm)
    if abs(row_mm - column_mm) <= 0.01 * finer:
        return plane
    rows = max(1, round(plane.shape[0] * row_mm / finer))
    columns = max(1, round(plane.shape[1] * column_mm / finer))
    zoom = (rows / plane.shape[0], columns / plane.shape[1])
    resized: NDArray[np.float32] = ndimage.zoom(plane, zoom, order=1, mode="nearest")
    return resized


def foreground_share(plane: NDArray[np.uint8]) -> float:
    """The share of the plane's pixels at or above :data:`FOREGROUND_LEVEL` of the 0-255 scale,
    after a 3 x 3 median filter.

    Tissue is contiguous and noise is not: a pixel counts when most of its 3 x 3
    neighbourhood is bright, so isolated bright pixels (the noise of air, spikes)
    do not pass for tissue, and a region of tissue loses only its corners.
    """
    from scipy import ndimage

    if plane.size == 0:
        return 0.0
    filtered = ndimage.median_filter(plane, size=3, mode="nearest")
    return float(np.mean(filtered >= FOREGROUND_LEVEL * 255.0))
