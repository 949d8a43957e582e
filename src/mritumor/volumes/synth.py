"""Phantom volumes: stacks of synthetic axial sections with a 3-D lesion, written as NIfTI.

``data synth --volumes N`` writes N volumes per class, each with its lesion mask::

    <root>/<class>/<class>-<k>.nii.gz         int16, 0-1000
    <root>/<class>/<class>-<k>_mask.nii.gz    uint8, 1 inside the lesion

which is the labelled-volume layout ``data prepare`` reads (:mod:`.prepare`). A volume
is ``depth`` axial sections of one phantom head (:func:`~mritumor.data.synth.render.render_section`):
a slab of the cerebrum whose sections narrow like an ellipsoid's towards its ends
(to about 0.71 of the head's width), the first and last few sections air (blank), and a tumour class's lesion is an ellipsoid a
quarter to a half of the head's height tall, placed in its middle part. Each section
has its own noise. Voxels are 1 mm in-plane and ``image_size / depth`` mm thick.
The files are stored with an LPS-like affine (first axis to the patient's left,
second posterior), as DICOM-derived files often are, so reading them exercises the
reorientation. Seeds are keyed by ``(seed, class, k)``, as in the 2-D generator.
"""

from __future__ import annotations

import gzip
import json
import math
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from mritumor import __version__
from mritumor.core.classes import CLASS_NAMES
from mritumor.core.fsutil import atomic_write_bytes, atomic_write_text
from mritumor.core.progress import ProgressCallback
from mritumor.data.synth.lesions import NO_TUMOR
from mritumor.data.synth.render import SceneStreams, render_section
from mritumor.data.synth.writer import MANIFEST_NAME, prepare_output_root
from mritumor.volumes.reading import import_nibabel

MASK_SUFFIX = "_mask"
#: Sections beyond this height (of the head's half-height) are air.
_HEAD_TOP = 0.95
#: The volume spans this many head half-heights, so its ends are blank.
_FIELD_OF_VIEW = 2.3
#: The sections are a slab of the cerebrum: the head narrows to sqrt(1 - 0.7^2), about 0.71 of
#: its width, at the slab's ends (not to a point, which 2-D training images never show).
_NARROWING = 0.7
_INTENSITY = 1000.0


@dataclass(frozen=True)
class VolumeSynthConfig:
    """What to generate: ``count`` volumes per class of ``depth`` sections ``image_size`` wide."""

    count: int = 4
    image_size: int = 128
    depth: int = 48
    seed: int = 42
    lesion_scale: float = 1.0
    class_names: tuple[str, ...] = CLASS_NAMES

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(self.class_names))
        checks = (
            (self.count >= 1, f"volumes must be at least 1, got {self.count}"),
            (32 <= self.image_size <= 512, f"image_size must be 32-512, got {self.image_size}"),
            (8 <= self.depth <= 512, f"depth must be 8-512 sections, got {self.depth}"),
            (0.25 <= self.lesion_scale <= 3.0, "lesion_scale must be within [0.25, 3]"),
            (
                not set(self.class_names) - set(CLASS_NAMES),
                f"unknown classes in {self.class_names}",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass(frozen=True)
class PhantomVolume:
    """``(depth, height, width)`` sections from inferior to superior, display-oriented."""

    image: NDArray[np.float32]
    mask: NDArray[np.bool_]


def render_volume(
    seed: np.random.SeedSequence,
    class_name: str,
    image_size: int,
    depth: int,
    lesion_scale: float = 1.0,
) -> PhantomVolume:
    """One phantom volume of ``class_name`` (a no_tumor volume has an empty mask)."""
    anatomy, lesion, scan, noise, placement = seed.spawn(5)
    layout = np.random.default_rng(placement)
    centre = layout.uniform(-0.3, 0.3)
    half_height = layout.uniform(0.25, 0.5)
    noise_rng = np.random.default_rng(noise)
    images, masks = [], []
    for index in range(depth):
        height = _FIELD_OF_VIEW * ((index + 0.5) / depth - 0.5)
        extent = math.sqrt(1.0 - (_NARROWING * height) ** 2) if abs(height) < _HEAD_TOP else 0.0
        offset = (height - centre) / half_height
        inside = class_name != NO_TUMOR and abs(offset) < 1.0 and extent > 0.0
        streams = SceneStreams(*(np.random.default_rng(s) for s in (anatomy, lesion, scan)))
        image, mask = render_section(
            streams,
            noise_rng,
            class_name if inside else NO_TUMOR,
            (image_size, image_size),
            extent=extent,
            lesion_scale=lesion_scale * math.sqrt(1.0 - offset**2) if inside else lesion_scale,
        )
        images.append(image)
        masks.append(mask)
    return PhantomVolume(np.stack(images), np.stack(masks))


def nifti_bytes(sections: NDArray[np.generic], spacing: tuple[float, float, float]) -> bytes:
    """``(depth, rows, columns)`` display-oriented sections as a gzipped NIfTI-1 file.

    Stored ``(column, row, section)`` with an affine taking columns to the patient's
    left, rows posterior and sections superior (``LPS`` axis codes).
    """
    nibabel = import_nibabel()
    voxels = np.ascontiguousarray(np.transpose(sections, (2, 1, 0)))
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    image = nibabel.Nifti1Image(voxels, affine)
    image.header.set_xyzt_units("mm")
    return gzip.compress(image.to_bytes(), mtime=0)


def write_phantom_volumes(
    root: Path,
    config: VolumeSynthConfig,
    *,
    force: bool = False,
    progress: ProgressCallback | None = None,
) -> dict[str, int]:
    """Write ``config.count`` volumes per class, with masks, under ``root``; volumes per class.

    A non-empty ``root`` is refused unless ``force``, which replaces only the files of
    a previous run's ``synth.json``.
    """
    import_nibabel()
    started = time.perf_counter()
    prepare_output_root(root, force=force)
    spacing = (1.0, 1.0, config.image_size / config.depth)
    files: list[str] = []
    total = config.count * len(config.class_names)
    for done, (class_name, index) in enumerate(_cases(config), start=1):
        key = np.random.SeedSequence(
            config.seed, spawn_key=(zlib.crc32(class_name.encode()), index)
        )
        volume = render_volume(
            key, class_name, config.image_size, config.depth, config.lesion_scale
        )
        stem = f"{class_name}/{class_name}-{index:03d}"
        scaled = np.rint(volume.image * _INTENSITY).astype(np.int16)
        for name, data in ((stem, scaled), (stem + MASK_SUFFIX, volume.mask.astype(np.uint8))):
            atomic_write_bytes(root / f"{name}.nii.gz", nifti_bytes(data, spacing))
            files.append(f"{name}.nii.gz")
        if progress is not None:
            progress(done, total)
    manifest = {
        "generator": "mritumor.volumes.synth",
        "mritumor_version": __version__,
        "seconds": time.perf_counter() - started,
        "config": asdict(config),
        "files": files,
    }
    atomic_write_text(root / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
    return dict.fromkeys(config.class_names, config.count)


def _cases(config: VolumeSynthConfig) -> list[tuple[str, int]]:
    return [(name, index) for name in config.class_names for index in range(config.count)]
