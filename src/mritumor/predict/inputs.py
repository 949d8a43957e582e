"""What ``infer`` and ``gradcam`` predict: images and 3-D volumes gathered from files, folders
and globs.

Folders are searched recursively and extensions match case-insensitively (the rules of
:func:`mritumor.data.files.is_image_file`); a multi-frame DICOM file is one input per frame.
A NIfTI file (``.nii``, ``.nii.gz``) and a folder holding one DICOM series
(:func:`mritumor.volumes.reading.is_dicom_series`) are volumes, predicted slice by slice
(:mod:`mritumor.predict.volumes`); the DICOM files of such a folder are not also images.
A folder search leaves out lesion masks (``*_mask.nii.gz``, ``*_seg.nii.gz``); named
on their own, they are predicted like any volume.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mritumor.data.dicom import dicom_frame_count, is_dicom_file
from mritumor.data.files import is_hidden, is_image_file, iter_image_files
from mritumor.volumes.reading import is_dicom_series, is_mask_file, is_nifti_file

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray


@dataclass(frozen=True)
class ImageInput:
    """One image to predict: a file, one frame of a multi-frame DICOM file, or a volume's slice.

    A slice carries its pixels (``(height, width, channels)`` uint8, already windowed
    and display-oriented) and its place: the plane and the 0-based position along it.
    """

    path: Path
    frame: int | None = None
    plane: tuple[str, int] | None = None
    pixels: NDArray[np.uint8] | None = field(default=None, compare=False, repr=False)

    @property
    def label(self) -> str:
        """How the image is named in output: the path, then ``#frame<k>`` for a frame or
        ``#<plane><k>`` for a slice (both 1-based)."""
        if self.plane is not None:
            return f"{self.path}#{self.plane[0]}{self.plane[1] + 1}"
        return str(self.path) if self.frame is None else f"{self.path}#frame{self.frame + 1}"

    @property
    def decoded(self) -> bool:
        """Whether the pixels come from here (a DICOM frame, a slice), not the input pipeline."""
        return self.frame is not None or self.pixels is not None


@dataclass(frozen=True)
class Scans:
    """What a list of specs names: images, volumes, and the specs that matched nothing."""

    images: list[ImageInput]
    volumes: list[Path]
    missing: list[str]


def gather_scans(specs: Iterable[str], *, volumes: bool = True) -> Scans:
    """Files, folders (recursive, case-insensitive extensions) and globs, as images and volumes.

    Each file comes once, in the order given; a multi-frame DICOM file becomes one
    input per frame. The DICOM files of a series found as a volume are not also
    images, however they were named. ``volumes`` False reads every file as an image
    (``serve``).
    """
    files: dict[Path, None] = {}
    found_volumes: dict[Path, None] = {}
    missing: list[str] = []
    for spec in specs:
        images, scans = _found(Path(spec).expanduser(), volumes)
        if not images and not scans:
            missing.append(spec)
        files.update(dict.fromkeys(images))
        found_volumes.update(dict.fromkeys(scans))
    inputs: list[ImageInput] = []
    for file in files:
        if file.parent in found_volumes and is_dicom_file(file):
            continue
        frames = _frame_count(file)
        if frames > 1:
            inputs.extend(ImageInput(file, frame) for frame in range(frames))
        else:
            inputs.append(ImageInput(file))
    return Scans(inputs, list(found_volumes), missing)


def _found(path: Path, volumes: bool) -> tuple[list[Path], list[Path]]:
    """The image files and the volumes ``path`` names: a file, a folder or a glob."""
    if path.is_dir():
        return _in_folder(path) if volumes else (list(iter_image_files(path)), [])
    if path.is_file():
        return ([], [path]) if volumes and is_nifti_file(path) else ([path], [])
    matches = [Path(m) for m in sorted(glob.glob(str(path), recursive=True))]  # noqa: PTH207
    scans = [m for m in matches if volumes and _is_volume(m)]
    return [m for m in matches if is_image_file(m)], scans


def _is_volume(path: Path) -> bool:
    """A NIfTI file that is not a lesion mask, or a folder holding one DICOM series."""
    return (is_nifti_file(path) and not is_mask_file(path)) or is_dicom_series(path)


def _in_folder(folder: Path) -> tuple[list[Path], list[Path]]:
    """The images and volumes in and below ``folder``: NIfTI files (not masks) and the
    folders, ``folder`` itself included, that hold one DICOM series."""
    niftis = [
        path
        for path in sorted(folder.rglob("*"))
        if is_nifti_file(path) and not is_mask_file(path) and not _hidden_below(folder, path)
    ]
    images = list(iter_image_files(folder))
    dicom_folders = sorted({path.parent for path in images if is_dicom_file(path)})
    series = [candidate for candidate in dicom_folders if is_dicom_series(candidate)]
    return [path for path in images if not (path.parent in series and is_dicom_file(path))], sorted(
        [*niftis, *series]
    )


def _hidden_below(folder: Path, path: Path) -> bool:
    return any(is_hidden(part) for part in path.relative_to(folder).parts)


def _frame_count(path: Path) -> int:
    """Frames in a DICOM file (1 for anything else, or a header that cannot be read)."""
    return dicom_frame_count(path) if is_dicom_file(path) else 1
