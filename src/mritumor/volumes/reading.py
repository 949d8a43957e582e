"""Reading a 3-D scan: a NIfTI file, or a folder holding one DICOM series, into RAS+ voxels.

Every volume is brought to the same orientation, nibabel's closest canonical
(RAS+: the first array axis runs to the patient's right, the second anteriorly,
the third superiorly), so a slice means the same anatomy whatever order the file
stored its axes in. Oblique acquisitions are reordered to the nearest of those
axes, not resampled.

A DICOM series is ordered by the position of each slice along the slice normal
(*Image Position (Patient)* projected on the cross product of the two
*Image Orientation (Patient)* cosines), or, for files without that geometry, by
*Instance Number*. A gap larger than 1.5 times the usual spacing is reported as
missing slices (:attr:`Volume.notes`), not filled in. The voxel values are the
modality values (*Rescale Slope* / *Intercept* applied); the series' first VOI
window is kept for :mod:`.slicing`.

Needs the ``volumes`` extra (nibabel, pydicom); a missing one is one
:class:`~mritumor.core.errors.UsageError`. A file or folder that cannot be read as
a volume is an :class:`~mritumor.data.image_errors.UnreadableImageError` naming it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from mritumor.core.errors import UsageError
from mritumor.data.dicom import (
    VoiWindow,
    is_dicom_file,
    pydicom_available,
    read_grey_values,
    voi_window_of,
)
from mritumor.data.files import is_hidden
from mritumor.data.image_errors import UnreadableImageError

if TYPE_CHECKING:
    from numpy.typing import NDArray

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: A NIfTI file named ``<case>_mask`` or ``<case>_seg`` is a lesion mask, not a scan.
MASK_SUFFIXES = ("_mask", "_seg")
MISSING_EXTRA = "reading 3-D volumes needs nibabel and pydicom: pip install 'mritumor[volumes]'"
#: A step between two slices this many times the usual spacing means slices are missing.
GAP_FACTOR = 1.5

VolumeKind = Literal["nifti", "dicom"]


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3-D scan in RAS+ voxel order, with what is needed to cut and window it."""

    source: Path
    kind: VolumeKind
    voxels: NDArray[np.float32]
    """``(X, Y, Z)``: X to the patient's right, Y anterior, Z superior."""
    affine: NDArray[np.float64]
    """Voxel indices to RAS+ millimetres, for :attr:`voxels`."""
    spacing: tuple[float, float, float]
    """Voxel size in mm along X, Y and Z."""
    orientation: str
    """The axis codes of the file as stored (``LPS``, ``RAS``, ...), before reordering."""
    window: VoiWindow | None = None
    """A DICOM series' own window (its first slice's), None for NIfTI or when it has none."""
    notes: tuple[str, ...] = field(default=())
    """What the reader found wrong but could read past: missing slices, assumed geometry."""


def is_nifti_file(path: Path) -> bool:
    """A visible file named ``*.nii`` or ``*.nii.gz``, in any letter case."""
    name = path.name.lower()
    return name.endswith(NIFTI_SUFFIXES) and not is_hidden(path.name) and path.is_file()


def is_mask_file(path: Path) -> bool:
    """A NIfTI file named like a lesion mask (``case-1_mask.nii.gz``, ``case-1_seg.nii``)."""
    return is_nifti_file(path) and volume_stem(path).lower().endswith(MASK_SUFFIXES)


def volume_stem(path: Path) -> str:
    """The name of a volume without its suffix: ``case-1`` for ``case-1.nii.gz`` or ``case-1/``."""
    name = path.name
    for suffix in NIFTI_SUFFIXES[::-1]:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def dicom_files_in(folder: Path) -> list[Path]:
    """The DICOM files directly in ``folder``, sorted by name."""
    return sorted(path for path in folder.iterdir() if is_dicom_file(path))


def is_dicom_series(folder: Path) -> bool:
    """Whether ``folder`` holds one DICOM series: two or more DICOM files, one series.

    Only the files directly in the folder count, and only their headers are read
    (with pydicom alone). Each must carry the same *Series Instance UID*, and where
    it lies: *Image Position* and *Orientation (Patient)*, or an *Instance Number*.
    Anything else (files of several series, anonymised files without a UID, a
    damaged header, no pydicom) is a folder of 2-D images, each predicted on its own.
    """
    if not folder.is_dir() or not pydicom_available():
        return False
    files = dicom_files_in(folder)
    if len(files) < 2:
        return False
    try:
        headers = _headers(files)
    except UnreadableImageError:  # a damaged file: read as images, and reported as such
        return False
    uids = {str(header.get("SeriesInstanceUID") or "") for header in headers}
    return len(uids) == 1 and "" not in uids and all(map(_placed, headers))


def _placed(header: Any) -> bool:
    """Whether a slice says where it lies: its position and orientation, or its number."""
    geometry = header.get("ImagePositionPatient") and header.get("ImageOrientationPatient")
    return bool(geometry) or _instance(header) is not None


def read_volume(path: Path) -> Volume:
    """The volume at ``path``: a NIfTI file, or a folder holding one DICOM series."""
    if path.is_dir():
        return read_dicom_series(path)
    return read_nifti(path)


def read_nifti(path: Path) -> Volume:
    """A ``.nii`` / ``.nii.gz`` file, reordered to RAS+; a 4-D file must hold one volume."""
    nibabel = import_nibabel()
    what = f"NIfTI file {path}"
    try:
        image = nibabel.load(path)
        shape = tuple(image.shape)
    except Exception as error:  # nibabel raises many kinds for damaged files
        raise UnreadableImageError(f"cannot read {what}: {_reason(error)}") from None
    if len(shape) == 4 and shape[3] == 1:
        image = image.slicer[..., 0]
    elif len(shape) != 3:
        raise UnreadableImageError(
            f"cannot read {what}: it holds an array of shape {shape}, not one 3-D volume"
        )
    voxels, affine, spacing, orientation = _canonical(image, what)
    return Volume(path, "nifti", voxels, affine, spacing, orientation)


@dataclass(frozen=True)
class _Slice:
    """One file of a series: its header, and where it lies."""

    path: Path
    header: Any
    position: float | None
    instance: int | None


def read_dicom_series(folder: Path) -> Volume:
    """The DICOM series in ``folder``, ordered along its normal, with missing slices noted."""
    nibabel = import_nibabel()
    files = dicom_files_in(folder)
    if len(files) < 2:
        raise UnreadableImageError(
            f"cannot read {folder} as a DICOM series: it holds {len(files)} DICOM file(s), "
            "a series needs two or more"
        )
    headers = _headers(files)
    uids = _series_uids(headers)
    if len(uids) > 1:
        listed = ", ".join(f"{uid} ({count} files)" for uid, count in sorted(uids.items()))
        raise UnreadableImageError(
            f"cannot read {folder} as one DICOM series: it holds {len(uids)} series ({listed}); "
            "put each series in a folder of its own"
        )
    slices, cosines, notes = _ordered_slices(folder, files, headers)
    planes, window = _read_planes(slices)
    stacked = np.stack([plane.T for plane in planes], axis=-1).astype(np.float32)
    image = nibabel.Nifti1Image(stacked, _series_affine(folder, slices, cosines))
    voxels, affine, spacing, orientation = _canonical(image, f"the DICOM series in {folder}")
    notes = (*notes, *_gaps(slices))
    return Volume(folder, "dicom", voxels, affine, spacing, orientation, window, notes)


def _canonical(
    image: Any, what: str
) -> tuple[NDArray[np.float32], NDArray[np.float64], tuple[float, float, float], str]:
    """A nibabel image's voxels in RAS+, with their affine, spacing and the original axis codes.

    Non-finite values become 0. Whatever nibabel cannot do with the image (a singular
    affine, damaged data) is an :class:`UnreadableImageError` naming ``what``.
    """
    nibabel = import_nibabel()
    try:
        orientation = "".join(nibabel.aff2axcodes(image.affine))
        canonical = nibabel.as_closest_canonical(image)
        voxels = np.asarray(canonical.get_fdata(dtype=np.float32), dtype=np.float32)
        zooms = canonical.header.get_zooms()[:3]
    except Exception as error:
        raise UnreadableImageError(f"cannot read {what}: {_reason(error)}") from None
    affine = np.asarray(canonical.affine, dtype=np.float64)
    spacing = _positive_spacing(zooms)
    return np.nan_to_num(voxels, nan=0.0, posinf=0.0, neginf=0.0), affine, spacing, orientation


def import_nibabel() -> Any:
    """nibabel, or the one-line error naming the ``volumes`` extra (which also brings pydicom)."""
    try:
        import nibabel
        import pydicom  # noqa: F401  (the extra installs both; ask for it once)
    except ImportError:
        raise UsageError(MISSING_EXTRA) from None
    return nibabel


def _reason(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__


def _headers(files: list[Path]) -> list[Any]:
    import pydicom

    headers = []
    for path in files:
        try:
            headers.append(pydicom.dcmread(path, stop_before_pixels=True))
        except Exception as error:
            raise UnreadableImageError(f"cannot read DICOM file {path}: {_reason(error)}") from None
    return headers


def _series_uids(headers: list[Any]) -> dict[str, int]:
    """How many files belong to each *Series Instance UID* (``?`` when a file has none)."""
    counts: dict[str, int] = defaultdict(int)
    for header in headers:
        counts[str(header.get("SeriesInstanceUID", "?"))] += 1
    return dict(counts)


def _floats(value: Any, count: int) -> NDArray[np.float64] | None:
    try:
        numbers = np.asarray([float(item) for item in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return numbers if numbers.shape == (count,) and np.all(np.isfinite(numbers)) else None


def _instance(header: Any) -> int | None:
    try:
        return int(header.get("InstanceNumber"))
    except (TypeError, ValueError):
        return None


#: The cosines of an axial plane: what a series without *Image Orientation (Patient)* is taken as.
AXIAL_COSINES = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])


def _ordered_slices(
    folder: Path, files: list[Path], headers: list[Any]
) -> tuple[list[_Slice], NDArray[np.float64], tuple[str, ...]]:
    """The files in anatomical order, the orientation cosines used, and notes on what was assumed.

    Files of different orientations (a localizer among the slices) are refused: they
    are not one stack. Without positions, the *Instance Number* orders the files.
    """
    orientations = [_floats(h.get("ImageOrientationPatient"), 6) for h in headers]
    positions = [_floats(h.get("ImagePositionPatient"), 3) for h in headers]
    oriented = [o for o in orientations if o is not None]
    if oriented and not (len(oriented) == len(orientations) and _same(oriented)):
        raise UnreadableImageError(
            f"cannot read {folder} as one DICOM series: its files have different (or missing) "
            "Image Orientation (Patient), as when a localizer is among the slices"
        )
    cosines = oriented[0] if oriented else AXIAL_COSINES
    if oriented and all(position is not None for position in positions):
        normal = _normal(cosines)
        slices = [
            _Slice(path, header, float(np.dot(position, normal)), _instance(header))
            for path, header, position in zip(files, headers, positions, strict=True)
            if position is not None
        ]
        slices.sort(key=lambda item: (item.position, item.path.name))
        _refuse_repeats(folder, [s.position for s in slices], "lie at the same position")
        return slices, cosines, ()
    if any(_instance(header) is None for header in headers):
        raise UnreadableImageError(
            f"cannot order the DICOM series in {folder}: its files have neither a usable "
            "Image Position (Patient) nor an Instance Number"
        )
    slices = [_Slice(path, h, None, _instance(h)) for path, h in zip(files, headers, strict=True)]
    slices.sort(key=lambda item: (item.instance, item.path.name))
    _refuse_repeats(folder, [s.instance for s in slices], "share an Instance Number")
    assumed = "its orientation" if oriented else "taken as axial"
    return (
        slices,
        cosines,
        (
            f"no Image Position (Patient): ordered by Instance Number, {assumed}, spacing from "
            "Slice Thickness",
        ),
    )


def _unit(vector: NDArray[np.float64]) -> NDArray[np.float64]:
    length = float(np.linalg.norm(vector))
    return vector / length if length > 0 else vector


def _normal(cosines: NDArray[np.float64]) -> NDArray[np.float64]:
    """The unit slice normal of *Image Orientation (Patient)*: rounded cosines stay exact."""
    return _unit(np.cross(_unit(cosines[:3]), _unit(cosines[3:])))


def _refuse_repeats(folder: Path, keys: list[float | int | None], what: str) -> None:
    if len(set(keys)) < len(keys):
        raise UnreadableImageError(
            f"cannot read {folder} as one DICOM series: two files {what} "
            "(several echoes or phases?); put each in a folder of its own"
        )


def _same(orientations: list[NDArray[np.float64]]) -> bool:
    return all(np.allclose(o, orientations[0], atol=1e-3) for o in orientations)


def _read_planes(slices: list[_Slice]) -> tuple[list[NDArray[np.float64]], VoiWindow | None]:
    """Each slice's modality values, and the first VOI window of the series."""
    planes: list[NDArray[np.float64]] = []
    window: VoiWindow | None = None
    for item in slices:
        dataset, values = read_grey_values(item.path)
        if planes and values.shape != planes[0].shape:
            raise UnreadableImageError(
                f"cannot read {item.path.parent} as one DICOM series: {item.path.name} is "
                f"{values.shape[1]}x{values.shape[0]} pixels, the first slice "
                f"{planes[0].shape[1]}x{planes[0].shape[0]}"
            )
        window = window or voi_window_of(dataset)
        planes.append(values)
    return planes, window


def _series_affine(
    folder: Path, slices: list[_Slice], cosines: NDArray[np.float64]
) -> NDArray[np.float64]:
    """The RAS affine of voxels stored ``(column, row, slice)``.

    DICOM's patient coordinates are LPS; the first two rows change sign for RAS.
    A *Pixel Spacing* that is not two positive numbers is refused: a negative one
    would mirror the image silently.
    """
    header = slices[0].header
    pixel = _floats(header.get("PixelSpacing"), 2)
    if pixel is not None and not np.all(pixel > 0):
        raise UnreadableImageError(
            f"cannot read the DICOM series in {folder}: its Pixel Spacing "
            f"{list(map(float, pixel))} is not two positive numbers"
        )
    row_step, column_step = (1.0, 1.0) if pixel is None else (float(pixel[0]), float(pixel[1]))
    slice_step = _usual_step(slices) or _thickness(header)
    origin = _floats(header.get("ImagePositionPatient"), 3)
    affine = np.eye(4)
    affine[:3, 0] = _unit(cosines[:3]) * column_step
    affine[:3, 1] = _unit(cosines[3:]) * row_step
    affine[:3, 2] = _normal(cosines) * slice_step
    affine[:3, 3] = np.zeros(3) if origin is None else origin
    affine[:2] *= -1.0
    return affine


def _steps(slices: list[_Slice]) -> NDArray[np.float64]:
    if slices[0].position is not None:
        return np.diff([float(s.position or 0.0) for s in slices])
    return np.diff([float(s.instance or 0) for s in slices])


def _usual_step(slices: list[_Slice]) -> float | None:
    """The median distance between neighbouring slices, in mm (None without positions)."""
    if slices[0].position is None:
        return None
    step = float(np.median(_steps(slices)))
    return step if step > 0 else None


def _thickness(header: Any) -> float:
    thickness = _floats([header.get("SliceThickness")], 1)
    return float(thickness[0]) if thickness is not None and thickness[0] > 0 else 1.0


def _gaps(slices: list[_Slice]) -> tuple[str, ...]:
    """A note for each place where slices are missing: a step over GAP_FACTOR x the usual."""
    steps = _steps(slices)
    usual = float(np.median(steps))
    unit = "mm" if slices[0].position is not None else "instance numbers"
    notes = []
    for index, step in enumerate(steps):
        if step > GAP_FACTOR * usual:
            missing = round(step / usual) - 1
            before, after = slices[index], slices[index + 1]
            notes.append(
                f"about {missing} slice(s) missing between {before.path.name} and "
                f"{after.path.name}: a step of {step:g} {unit} where the series steps {usual:g}"
            )
    return tuple(notes)


def _positive_spacing(zooms: Any) -> tuple[float, float, float]:
    values = [float(z) if float(z) > 0 else 1.0 for z in zooms]
    values += [1.0] * (3 - len(values))
    return values[0], values[1], values[2]
