"""What ``infer`` and ``gradcam`` predict: image inputs gathered from files, folders and globs.

Folders are searched recursively and extensions match case-insensitively (the rules of
:func:`mritumor.data.files.is_image_file`); a multi-frame DICOM file is one input per frame.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mritumor.data.dicom import dicom_frame_count, is_dicom_file
from mritumor.data.files import is_image_file, iter_image_files


@dataclass(frozen=True)
class ImageInput:
    """One image to predict: a file, or one frame of a multi-frame DICOM file."""

    path: Path
    frame: int | None = None

    @property
    def label(self) -> str:
        """How the image is named in output: the path, ``#frame<k>`` (1-based) for a frame."""
        return str(self.path) if self.frame is None else f"{self.path}#frame{self.frame + 1}"


def gather_inputs(specs: Iterable[str]) -> tuple[list[ImageInput], list[str]]:
    """Files, folders (recursive, case-insensitive extensions) and globs, as image inputs.

    Each file comes once, in the order given; a multi-frame DICOM file becomes
    one input per frame. Returns the inputs and the specs that matched nothing.
    """
    files: dict[Path, None] = {}
    missing: list[str] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            found = list(iter_image_files(path))
        elif path.is_file():
            found = [path]
        else:
            matches = sorted(glob.glob(str(path), recursive=True))  # noqa: PTH207 (any absolute pattern)
            found = [Path(match) for match in matches if is_image_file(Path(match))]
        if not found:
            missing.append(spec)
        files.update(dict.fromkeys(found))
    inputs: list[ImageInput] = []
    for file in files:
        frames = _frame_count(file)
        if frames > 1:
            inputs.extend(ImageInput(file, frame) for frame in range(frames))
        else:
            inputs.append(ImageInput(file))
    return inputs, missing


def _frame_count(path: Path) -> int:
    """Frames in a DICOM file (1 for anything else, or a header that cannot be read)."""
    return dicom_frame_count(path) if is_dicom_file(path) else 1
