"""Synthetic brain MRI phantoms: the offline default dataset.

Each image is a procedural 2-D axial slice: head, scalp and skull rings, a thin
CSF rim, grey and white matter with sulci, deep grey nuclei, ventricles and the
interhemispheric fissure. A lesion is added by class:

* glioma: an irregular intra-axial mass in one hemisphere, with an enhancing
  rim around a necrotic core (or a heterogeneous solid mass) inside an oedema halo;
* meningioma: a well-circumscribed homogeneous extra-axial mass whose base sits
  on the inner table of the skull, often with a dural tail;
* pituitary: a small mass on the midline, anterior of the centre;
* no_tumor: none.

Pose, size, contrast (T1 post-contrast, T2 or FLAIR-like), bias field, Rician
noise, blur, JPEG quality, image size and channel mode are drawn per image,
independently of the class, so the class cannot be read from global image
statistics. Every image gets a binary lesion mask (all zero for no_tumor) in a
``masks/`` tree beside the class folders, with the same stem as the image.

Randomness: every image's generator is keyed by ``(seed, split, folder, index)``
through :class:`numpy.random.SeedSequence`, so the bytes written do not depend
on the number of worker processes, on the order the work is done, or on the
counts asked for in other splits.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
import time
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from mritumor.core.errors import UsageError
from mritumor.core.fsutil import atomic_write_bytes, atomic_write_text
from mritumor.core.progress import ProgressCallback
from mritumor.data.files import (
    CLASS_NAMES,
    EXTERNAL_DIR,
    MIN_IMAGE_SIDE,
    NO_TUMOUR_LABEL,
    SPLITS,
    TUMOUR_LABEL,
)

if TYPE_CHECKING:
    from PIL.Image import Image as PILImageType

GLIOMA, MENINGIOMA, NO_TUMOR, PITUITARY = CLASS_NAMES
TUMOUR_CLASSES = (GLIOMA, MENINGIOMA, PITUITARY)
MASKS_DIR = "masks"
MANIFEST_NAME = "synth.json"

Domain = Literal["source", "external"]
Image = NDArray[np.float32]
Mask = NDArray[np.bool_]
Field = NDArray[np.floating[Any]]  # float32 at run time: half the memory traffic of float64

_BATCH_SIZE = 16
_EGG = 0.05  # heads are wider at the back: half-width grows by this share per unit of v
_IMAGE_SUFFIX = {"JPEG": ".jpg", "PNG": ".png"}


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. Counts are images per class (per yes/no label for ``external``)."""

    train: int = 200
    val: int = 40
    test: int = 60
    image_size: int = 256
    seed: int = 42
    class_names: tuple[str, ...] = CLASS_NAMES
    external: int = 0
    external_name: str = "synthetic"
    vary_size: bool = True
    """Draw each image's width and height around ``image_size`` (else exactly square)."""
    rgb_fraction: float = 0.35
    """Share of files saved as 3-channel RGB (grey replicated); the rest are mode L."""
    png_fraction: float = 0.15
    """Share of files saved as PNG; the rest are JPEG."""
    jpeg_quality: tuple[int, int] = (70, 95)
    """Inclusive range the JPEG quality of each file is drawn from."""
    lesion_scale: float = 1.0
    """Multiplies every lesion's radius: above 1 gives easier data for CPU demos and tests."""

    def __post_init__(self) -> None:
        # Accept any sequence (settings hold lists) but store tuples, so the config stays hashable.
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "jpeg_quality", tuple(self.jpeg_quality))
        for name in (*SPLITS, "external"):
            _require(_is_count(getattr(self, name)), f"{name} must be an integer >= 0")
        _require(
            isinstance(self.image_size, int) and 32 <= self.image_size <= 2048,
            f"image_size must be an integer from 32 to 2048, got {self.image_size!r}",
        )
        _require(_is_count(self.seed), f"seed must be an integer >= 0, got {self.seed!r}")
        self._validate_class_names()
        _require(
            bool(self.external_name) and _is_plain_name(self.external_name),
            f"external_name must be a plain folder name (no '/', no leading '.'), "
            f"got {self.external_name!r}",
        )
        for name in ("rgb_fraction", "png_fraction"):
            value = getattr(self, name)
            _require(0.0 <= value <= 1.0, f"{name} must be within [0, 1], got {value!r}")
        _require(
            0.25 <= self.lesion_scale <= 3.0,
            f"lesion_scale must be within [0.25, 3], got {self.lesion_scale!r}",
        )
        quality = self.jpeg_quality
        _require(
            len(quality) == 2 and 1 <= quality[0] <= quality[1] <= 100,
            f"jpeg_quality must be (low, high) with 1 <= low <= high <= 100, got {quality}",
        )

    def _validate_class_names(self) -> None:
        names = self.class_names
        _require(len(names) >= 2, f"class_names needs at least two classes, got {list(names)}")
        _require(len(set(names)) == len(names), f"class_names has duplicates: {list(names)}")
        unknown = sorted(set(names) - set(CLASS_NAMES))
        _require(
            not unknown,
            f"class_names {unknown} cannot be synthesised; choose from {list(CLASS_NAMES)}",
        )

    def split_counts(self) -> dict[str, int]:
        """Images per class for each split, in split order."""
        return {split: int(getattr(self, split)) for split in SPLITS}


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`write_synthetic_dataset` wrote."""

    root: Path
    counts: dict[str, dict[str, int]]
    """Images per split and class, e.g. ``counts["train"]["glioma"]``."""
    external: dict[str, int]
    """Images per yes/no label in ``external/<external_name>/``; empty when none."""
    seconds: float

    @property
    def total(self) -> int:
        """Number of images written (masks not counted)."""
        per_split = sum(sum(per_class.values()) for per_class in self.counts.values())
        return per_split + sum(self.external.values())


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_plain_name(name: str) -> bool:
    """A visible folder name: no separators, and no leading dot (image readers skip those)."""
    return not name.startswith(".") and not any(sep in name for sep in ("/", "\\"))


# --------------------------------------------------------------------------- contrast and domain


@dataclass(frozen=True)
class _Contrast:
    """Tissue intensities of one MR sequence, on a 0-1 scale before gain."""

    scalp: float
    skull: float
    diploe: float
    csf: float
    grey: float
    white: float
    oedema: float
    enhancing: float
    necrosis: float
    meningioma: float
    pituitary: float

    def jittered(self, rng: np.random.Generator, spread: float) -> _Contrast:
        """The same sequence with every tissue scaled by its own factor ``1 ± spread``."""
        values = asdict(self)
        factors = rng.uniform(1.0 - spread, 1.0 + spread, size=len(values))
        scaled = {k: float(v * f) for (k, v), f in zip(values.items(), factors, strict=True)}
        return _Contrast(**scaled)


_T1_POST_CONTRAST = _Contrast(
    scalp=0.85, skull=0.06, diploe=0.5, csf=0.1, grey=0.4, white=0.55, oedema=0.4,
    enhancing=0.85, necrosis=0.15, meningioma=0.8, pituitary=0.72,
)  # fmt: skip
_T2 = _Contrast(
    scalp=0.55, skull=0.05, diploe=0.35, csf=0.92, grey=0.5, white=0.36, oedema=0.62,
    enhancing=0.55, necrosis=0.8, meningioma=0.62, pituitary=0.7,
)  # fmt: skip
_FLAIR = _Contrast(
    scalp=0.6, skull=0.05, diploe=0.4, csf=0.1, grey=0.5, white=0.4, oedema=0.72,
    enhancing=0.62, necrosis=0.25, meningioma=0.64, pituitary=0.72,
)  # fmt: skip


@dataclass(frozen=True)
class _DomainStyle:
    """How one acquisition domain draws contrast, pose and artefacts."""

    sequences: tuple[tuple[_Contrast, float], ...]
    contrast_spread: float
    rotation_deg: float
    bias_strength: tuple[float, float]
    noise_sigma: tuple[float, float]
    gain: tuple[float, float]


_DOMAINS: dict[str, _DomainStyle] = {
    "source": _DomainStyle(
        sequences=((_T1_POST_CONTRAST, 0.7), (_T2, 0.3)),
        contrast_spread=0.08,
        rotation_deg=12.0,
        bias_strength=(0.0, 0.12),
        noise_sigma=(0.008, 0.03),
        gain=(0.8, 1.15),
    ),
    "external": _DomainStyle(
        sequences=((_FLAIR, 0.6), (_T2, 0.4)),
        contrast_spread=0.12,
        rotation_deg=20.0,
        bias_strength=(0.12, 0.25),
        noise_sigma=(0.025, 0.06),
        gain=(0.7, 1.0),
    ),
}


# --------------------------------------------------------------------------- fields and shapes


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], spacing: float) -> Field:
    """A smooth random field with zero mean and unit variance at every pixel.

    Blobs are about ``spacing`` pixels apart. Built as ``By @ C @ Bx.T`` from
    Gaussian basis functions, which is far cheaper than spline-zooming a coarse
    grid. Each basis row is scaled to unit norm, which makes the variance exactly
    one everywhere, so a field drawn over a small window is as strong as one
    drawn over the whole image.
    """
    basis_rows = _gaussian_basis(shape[0], spacing)
    basis_cols = _gaussian_basis(shape[1], spacing)
    coefficients = rng.standard_normal((basis_rows.shape[1], basis_cols.shape[1]), np.float32)
    return np.asarray(basis_rows @ coefficients @ basis_cols.T)


def _gaussian_basis(length: int, spacing: float) -> Field:
    """Gaussian bumps ``spacing`` apart (and as wide), one row per pixel, each row of unit norm."""
    centres = np.arange(-1.0, length / spacing + 2.0, dtype=np.float32) * spacing
    positions = np.arange(length, dtype=np.float32)[:, np.newaxis]
    basis = np.exp(-0.5 * ((positions - centres[np.newaxis, :]) / spacing) ** 2)
    return np.asarray(basis / np.linalg.norm(basis, axis=1, keepdims=True))


def _inside(level: Field | float, edge: float) -> Field:
    """Soft indicator of ``level < 0`` with an anti-aliasing ramp ``edge`` wide."""
    ramp = 0.5 - np.asarray(level, dtype=np.float32) / edge
    return np.clip(ramp, 0.0, 1.0, out=ramp)


def _paint(canvas: Field, value: Field | float, weight: Field) -> None:
    """Alpha-blend ``value`` into ``canvas`` where ``weight`` is 1, in place."""
    canvas += weight * (value - canvas)


def _rotated(u: Field, v: Field, angle: float) -> tuple[Field, Field]:
    cos, sin = math.cos(angle), math.sin(angle)
    return cos * u + sin * v, -sin * u + cos * v


# --------------------------------------------------------------------------- anatomy

Point = tuple[float, float]
Window = tuple[slice, slice]


@dataclass(frozen=True)
class _Pose:
    """Where the head sits in the image: centre (pixels), pixels per head unit, rotation."""

    row: float
    col: float
    scale: float
    angle: float

    def head_coordinates(self, shape: tuple[int, int]) -> tuple[Field, Field]:
        rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
        return _rotated((cols - self.col) / self.scale, (rows - self.row) / self.scale, self.angle)

    def pixel_of(self, point: Point) -> Point:
        """Image (row, col) of a head-frame point: the inverse of :meth:`head_coordinates`."""
        col, row = _rotated(np.asarray(point[0]), np.asarray(point[1]), -self.angle)
        return self.row + float(row) * self.scale, self.col + float(col) * self.scale


@dataclass
class _Head:
    """Head-frame coordinates of every pixel, and the anatomy that lesions depend on.

    ``u`` runs left-right and ``v`` from anterior (negative, image top) to
    posterior, in units of the head's anterior-posterior half-length.
    """

    pose: _Pose
    u: Field
    v: Field
    half_width: float
    """Left-right half-width at the centre, relative to the anterior-posterior half-length."""
    skull_outer: float
    inner_skull: float
    brain_surface: float
    rho: Field
    """Elliptic radius: 1 on the skin, ``inner_skull`` on the inner table."""
    white: Field
    """White-matter weight, filled in when the parenchyma is painted."""

    @property
    def pixel(self) -> float:
        """Pixel pitch in head units: the width of every anti-aliasing ramp."""
        return 1.0 / self.pose.scale

    @property
    def brain(self) -> Field:
        return _inside(self.rho - self.brain_surface, self.pixel)

    @property
    def intracranial(self) -> Field:
        return _inside(self.rho - self.inner_skull, self.pixel)

    def noise(self, rng: np.random.Generator, feature: float) -> Field:
        """A smooth unit field over this head's pixels with blobs ``feature`` head units apart."""
        return _smooth_field(rng, self.u.shape, feature * self.pose.scale)

    def window(self, centre: Point, radius: float) -> Window:
        """The pixel box holding the disc of ``radius`` head units around ``centre``."""
        row, col = self.pose.pixel_of(centre)
        reach = radius * self.pose.scale + 2.0
        height, width = self.u.shape
        rows = slice(max(0, int(row - reach)), max(0, min(height, int(row + reach) + 1)))
        cols = slice(max(0, int(col - reach)), max(0, min(width, int(col + reach) + 1)))
        return rows, cols

    def crop(self, window: Window) -> _Head:
        """The same head seen through ``window``: lesions are drawn only where they can be."""
        return replace(
            self, u=self.u[window], v=self.v[window], rho=self.rho[window], white=self.white[window]
        )

    def radius_along(self, direction: Point) -> float:
        """Distance from the head centre to the inner table of the skull along ``direction``."""
        distance = self.inner_skull
        for _ in range(6):  # fixed point: the egg factor changes the half-width only a little
            half_width = self.half_width * (1.0 + _EGG * distance * direction[1])
            distance = self.inner_skull / math.hypot(direction[0] / half_width, direction[1])
        return distance


def _draw_head(rng: np.random.Generator, shape: tuple[int, int], max_rotation_deg: float) -> _Head:
    """A head with random size, position, rotation and proportions."""
    pose = _Pose(
        row=(shape[0] - 1) / 2.0 + rng.uniform(-0.04, 0.04) * shape[0],
        col=(shape[1] - 1) / 2.0 + rng.uniform(-0.04, 0.04) * shape[1],
        scale=rng.uniform(0.76, 0.9) * min(shape) / 2.0,
        angle=math.radians(rng.uniform(-max_rotation_deg, max_rotation_deg)),
    )
    u, v = pose.head_coordinates(shape)
    half_width = rng.uniform(0.76, 0.86)
    skull_outer = 1.0 - rng.uniform(0.05, 0.08)  # under the scalp
    inner_skull = skull_outer - rng.uniform(0.04, 0.07)
    return _Head(
        pose=pose,
        u=u,
        v=v,
        half_width=half_width,
        skull_outer=skull_outer,
        inner_skull=inner_skull,
        brain_surface=inner_skull - rng.uniform(0.01, 0.02),  # the CSF rim
        rho=np.hypot(u / (half_width * (1.0 + _EGG * v)), v),
        white=np.zeros(shape, np.float32),
    )


def _paint_head(rng: np.random.Generator, head: _Head, tissue: _Contrast) -> Field:
    """Scalp, skull with diploe, CSF rim and brain, each blended over the one outside it."""
    canvas = np.zeros_like(head.u)
    scalp = tissue.scalp * (1.0 + 0.08 * head.noise(rng, 0.3))
    _paint(canvas, scalp, _inside(head.rho - 1.0, head.pixel))
    _paint(canvas, tissue.skull, _inside(head.rho - head.skull_outer, head.pixel))
    # The diploe: the marrow band in the middle 40 % of the skull's thickness.
    thickness = head.skull_outer - head.inner_skull
    middle = head.inner_skull + 0.5 * thickness
    diploe = _inside(np.abs(head.rho - middle) - 0.2 * thickness, head.pixel)
    _paint(canvas, tissue.diploe * rng.uniform(0.6, 1.0), diploe)
    _paint(canvas, tissue.csf, head.intracranial)
    _paint(canvas, _parenchyma(rng, head, tissue), head.brain)
    return canvas


def _parenchyma(rng: np.random.Generator, head: _Head, tissue: _Contrast) -> Field:
    """Cortex and white matter, deep nuclei, ventricles and the midline fissure."""
    sulci, cortex = _gyri(rng, head)
    head.white = 1.0 - cortex
    canvas = tissue.grey + head.white * (tissue.white - tissue.grey)
    canvas *= 1.0 + 0.03 * head.noise(rng, 0.045)
    _paint(canvas, tissue.csf, sulci)
    centre = head.window((0.0, 0.05), 0.55)
    _paint_deep_structures(rng, head.crop(centre), tissue, canvas[centre])
    _paint(canvas, tissue.csf, _midline_fissure(head))
    return canvas


def _gyri(rng: np.random.Generator, head: _Head) -> tuple[Field, Field]:
    """Weights of sulcal CSF and of cortex.

    Sulci are the zero lines of ``sin(n * angle + wiggle)``: thin CSF clefts that
    run in from the surface to a varying depth. Grey matter lines each sulcus and
    the surface, so white matter reaches into the gyri between them.
    """
    depth = head.rho / head.brain_surface  # 0 at the centre, 1 on the brain surface
    angle = np.arctan2(head.v, head.u / head.half_width)
    sulcus_pairs = int(rng.integers(14, 20))
    wiggle = rng.uniform(1.2, 2.0) * head.noise(rng, 0.09)
    along_surface = np.abs(np.sin(sulcus_pairs * angle + wiggle)) * head.rho / sulcus_pairs
    reach = rng.uniform(0.6, 0.7) + 0.1 * head.noise(rng, 0.07)
    outer = np.clip((depth - reach) / 0.1, 0.0, 1.0)
    sulci = _inside(along_surface - rng.uniform(0.003, 0.008), head.pixel) * outer
    lining = _inside(along_surface - rng.uniform(0.022, 0.03), 1.5 * head.pixel) * outer
    ribbon = _inside((1.0 - depth) * head.brain_surface - 0.03, 1.5 * head.pixel)
    return sulci, np.maximum(lining, ribbon)


def _paint_deep_structures(
    rng: np.random.Generator, head: _Head, tissue: _Contrast, canvas: Field
) -> None:
    """Caudate heads and thalami, then the ventricles, around the centre of the brain."""
    scale = rng.uniform(0.7, 1.35)
    for side in (-1.0, 1.0):
        caudate = _ellipse_level(head, (side * 0.13 * scale, -0.17), (0.06, 0.08))
        thalamus = _ellipse_level(head, (side * 0.09, 0.1), (0.075, 0.1), side * 0.2)
        _paint(canvas, tissue.grey * 1.04, _inside(caudate, 3 * head.pixel))
        _paint(canvas, tissue.grey * 1.08, _inside(thalamus, 3 * head.pixel))
    _paint(canvas, tissue.csf, _ventricles(rng, head, scale))


def _ellipse_level(head: _Head, centre: Point, axes: Point, angle: float = 0.0) -> Field:
    """Signed, roughly metric distance to an ellipse's boundary (negative inside)."""
    du, dv = _rotated(head.u - centre[0], head.v - centre[1], angle)
    return np.asarray((np.hypot(du / axes[0], dv / axes[1]) - 1.0) * min(axes), np.float32)


def _ventricles(rng: np.random.Generator, head: _Head, scale: float) -> Field:
    """Lateral ventricles (frontal horns diverging forwards, bodies, atria) and the third."""
    level = _ellipse_level(head, (0.0, 0.06 * scale), (0.01 * scale, 0.06 * scale))
    for side, size in ((-1.0, scale), (1.0, scale * rng.uniform(0.9, 1.1))):
        parts = (
            ((0.07, -0.13), (0.04, 0.11), 0.4),  # frontal horn
            ((0.075, 0.04), (0.03, 0.12), -0.2),  # body
            ((0.14, 0.19), (0.05, 0.08), -0.6),  # atrium
        )
        for (across, along), (width, length), tilt in parts:
            part = _ellipse_level(
                head,
                (side * across * size, along * size),
                (width * size, length * size),
                side * tilt,
            )
            level = np.minimum(level, part)
    return _inside(level, head.pixel) * head.brain


def _midline_fissure(head: _Head) -> Field:
    """The interhemispheric fissure: a thin CSF line in front of and behind the ventricles."""
    line = _inside(np.abs(head.u) - max(0.008, 0.7 * head.pixel), head.pixel)
    return line * np.clip((np.abs(head.v) / head.brain_surface - 0.45) / 0.1, 0.0, 1.0)


# --------------------------------------------------------------------------- lesions


def _blob_level(
    rng: np.random.Generator, head: _Head, centre: Point, radius: float, irregularity: float
) -> Field:
    """Distance-like level of a blob (negative inside) whose radius wobbles with angle.

    The wobble is a sum of angular harmonics; its size never exceeds
    ``irregularity`` times ``radius``, so the blob fits in ``radius * (1 + irregularity)``.
    """
    du, dv = head.u - centre[0], head.v - centre[1]
    angle = np.arctan2(dv, du)
    orders = np.arange(2, 7)
    amplitudes = rng.uniform(0.0, 1.0, orders.size) / np.sqrt(orders)
    amplitudes *= irregularity / float(np.sum(1.0 / np.sqrt(orders)))
    phases = rng.uniform(0.0, 2.0 * math.pi, orders.size).astype(np.float32)
    harmonics = np.cos(orders.astype(np.float32) * angle[..., np.newaxis] + phases)
    wobble = harmonics @ amplitudes.astype(np.float32)
    return np.asarray(np.hypot(du, dv) - radius * (1.0 + wobble), np.float32)


def _paint_lesion(
    rng: np.random.Generator,
    class_name: str,
    head: _Head,
    tissue: _Contrast,
    canvas: Field,
    scale: float,
) -> Field:
    """Draw the class's lesion into ``canvas``; return its weight (zero for no_tumor).

    Each painter picks where its lesion goes and draws it only inside a pixel
    window around it, which keeps a lesion's cost independent of the image size.
    """
    weight = np.zeros_like(canvas)
    if class_name != NO_TUMOR:
        painter = {GLIOMA: _glioma, MENINGIOMA: _meningioma, PITUITARY: _pituitary}[class_name]
        window, local_weight = painter(rng, head, tissue, canvas, scale)
        weight[window] = local_weight
    return weight


def _glioma(
    rng: np.random.Generator, head: _Head, tissue: _Contrast, canvas: Field, scale: float
) -> tuple[Window, Field]:
    """An irregular hemispheric mass: enhancing rim, often a necrotic core, an oedema halo."""
    side = float(rng.choice([-1.0, 1.0]))
    centre = (side * rng.uniform(0.22, 0.42), rng.uniform(-0.45, 0.45) * head.brain_surface)
    radius = scale * rng.uniform(0.08, 0.17)
    oedema_radius = radius * rng.uniform(1.4, 1.8)
    window = head.window(centre, oedema_radius * 1.5 + 0.1)
    local, area = head.crop(window), canvas[window]
    roughness = 0.08 * radius * local.noise(rng, 0.5 * radius)
    off_midline = _inside(-side * local.u + 0.015, local.pixel)
    hemisphere = off_midline * _inside(local.rho - 0.95 * local.brain_surface, local.pixel)
    oedema = _blob_level(rng, local, centre, oedema_radius, 0.5) + 2.0 * roughness
    oedema_weight = _inside(oedema, 2.0 * local.pixel) * hemisphere
    mass = _blob_level(rng, local, centre, radius, 0.45) + roughness
    mass_weight = _inside(mass, local.pixel) * hemisphere
    heterogeneity = 1.0 + 0.15 * local.noise(rng, 0.09)
    # Oedema tracks along white matter, so it shows most there.
    _paint(area, tissue.oedema * heterogeneity, oedema_weight * (0.55 + 0.45 * local.white))
    _paint(area, tissue.enhancing * heterogeneity, mass_weight)
    if rng.random() < 0.7:
        core = _blob_level(rng, local, centre, radius * rng.uniform(0.4, 0.75), 0.4) + roughness
        _paint(area, tissue.necrosis * heterogeneity, _inside(core, local.pixel) * mass_weight)
    return window, np.maximum(oedema_weight, mass_weight)


def _meningioma(
    rng: np.random.Generator, head: _Head, tissue: _Contrast, canvas: Field, scale: float
) -> tuple[Window, Field]:
    """A round homogeneous mass based on the inner table of the skull, often with a dural tail."""
    angle = rng.uniform(0.0, 2.0 * math.pi)
    direction = (math.cos(angle), math.sin(angle))
    radius = scale * rng.uniform(0.09, 0.18)
    distance = head.radius_along(direction) - radius * rng.uniform(0.2, 0.7)
    centre = (direction[0] * distance, direction[1] * distance)
    window = head.window(centre, 2.3 * radius)
    local, area = head.crop(window), canvas[window]
    mass = _inside(_blob_level(rng, local, centre, radius, 0.12), local.pixel) * local.intracranial
    if rng.random() < 0.6:
        mass = np.maximum(mass, _dural_tail(local, centre, radius))
    _paint(area, tissue.meningioma * (1.0 + 0.03 * local.noise(rng, 0.09)), mass)
    return window, mass


def _dural_tail(head: _Head, centre: Point, radius: float) -> Field:
    """A thin band along the inner table that tapers away from the mass."""
    distance = np.hypot(head.u - centre[0], head.v - centre[1])
    along = np.clip(1.0 - (distance - radius) / (1.2 * radius), 0.0, 1.0)
    band = _inside(head.inner_skull - 0.025 * along - head.rho, head.pixel)
    return np.asarray(band * head.intracranial * np.minimum(1.0, 4.0 * along), np.float32)


def _pituitary(
    rng: np.random.Generator, head: _Head, tissue: _Contrast, canvas: Field, scale: float
) -> tuple[Window, Field]:
    """A small, fairly round mass on the midline, anterior of the centre; sometimes cystic."""
    centre = (rng.normal(0.0, 0.01), -rng.uniform(0.3, 0.45))
    radius = scale * rng.uniform(0.05, 0.08)
    window = head.window(centre, 1.3 * radius)
    local, area = head.crop(window), canvas[window]
    mass = _inside(_blob_level(rng, local, centre, radius, 0.2), local.pixel)
    _paint(area, tissue.pituitary * (1.0 + 0.06 * local.noise(rng, 0.07)), mass)
    if rng.random() < 0.3:
        cyst = _blob_level(rng, local, centre, radius * 0.45, 0.15)
        _paint(area, tissue.csf, _inside(cyst, local.pixel) * mass)
    return window, mass


# --------------------------------------------------------------------------- one slice


def render_slice(
    rng: np.random.Generator,
    class_name: str,
    size: int | tuple[int, int],
    domain: Domain = "source",
    lesion_scale: float = 1.0,
) -> tuple[Image, Mask]:
    """Render one axial slice of ``class_name`` and its lesion mask.

    ``size`` is the side of a square image or its ``(height, width)``. Returns a
    float32 image in [0, 1] and a boolean mask of every pixel the lesion touches
    (tumour, necrosis, oedema, dural tail, anti-aliased edge included; all False
    for no_tumor), so pixels outside the mask are exactly those of the same head
    without the lesion, up to the blur.

    ``rng`` is split into independent streams for anatomy, lesion and
    acquisition, so the same generator state renders the same head, contrast and
    noise for every class: only the lesion differs.
    """
    _require(class_name in CLASS_NAMES, f"unknown class {class_name!r}")
    _require(domain in _DOMAINS, f"domain must be one of {sorted(_DOMAINS)}, got {domain!r}")
    shape = (size, size) if isinstance(size, int) else size
    _require(min(shape) >= 8, f"size must be at least 8 pixels, got {size!r}")
    _require(lesion_scale > 0, f"lesion_scale must be positive, got {lesion_scale!r}")
    style = _DOMAINS[domain]
    anatomy_rng, lesion_rng, scan_rng = rng.spawn(3)
    tissue = _draw_contrast(scan_rng, style)
    head = _draw_head(anatomy_rng, shape, style.rotation_deg)
    canvas = _paint_head(anatomy_rng, head, tissue)
    lesion = _paint_lesion(lesion_rng, class_name, head, tissue, canvas, lesion_scale)
    return _acquire(scan_rng, canvas, style), lesion > 0.0


def _draw_contrast(rng: np.random.Generator, style: _DomainStyle) -> _Contrast:
    weights = np.asarray([weight for _, weight in style.sequences])
    chosen, _ = style.sequences[int(rng.choice(len(weights), p=weights))]
    return chosen.jittered(rng, style.contrast_spread)


def _acquire(rng: np.random.Generator, canvas: Field, style: _DomainStyle) -> Image:
    """Blur, multiplicative bias field, Rician noise and scanner gain."""
    blur = rng.uniform(0.0, 1.0)
    if blur > 0.3:
        canvas = ndimage.gaussian_filter(canvas, blur)
    bias_field = _smooth_field(rng, canvas.shape, min(canvas.shape) / 2.5)
    bias = np.exp(rng.uniform(*style.bias_strength) * bias_field)
    sigma = rng.uniform(*style.noise_sigma)
    real = canvas * bias + sigma * rng.standard_normal(canvas.shape, np.float32)
    magnitude = np.hypot(real, sigma * rng.standard_normal(canvas.shape, np.float32))
    return np.asarray(np.clip(magnitude * rng.uniform(*style.gain), 0.0, 1.0), np.float32)


# --------------------------------------------------------------------------- files on disk


@dataclass(frozen=True)
class _FileStyle:
    """How one image is stored; drawn independently of its class."""

    height: int
    width: int
    mode: Literal["L", "RGB"]
    format: Literal["JPEG", "PNG"]
    quality: int


@dataclass(frozen=True)
class _Job:
    folder: PurePosixPath
    """Image folder relative to the root, e.g. ``train/glioma`` or ``external/synthetic/yes``."""
    stem: str
    class_name: str
    domain: Domain
    style: _FileStyle
    scene_seed: np.random.SeedSequence
    lesion_scale: float

    @property
    def image_path(self) -> PurePosixPath:
        return self.folder / f"{self.stem}{_IMAGE_SUFFIX[self.style.format]}"

    @property
    def mask_path(self) -> PurePosixPath:
        return PurePosixPath(MASKS_DIR) / self.folder / f"{self.stem}.png"


def mask_path(root: Path, image: Path) -> Path:
    """Where the lesion mask of ``image`` (a file under ``root``) is stored."""
    return root / MASKS_DIR / image.relative_to(root).with_suffix(".png")


def find_mask(image: Path, max_depth: int = 4) -> Path | None:
    """The lesion mask of ``image`` in the synthetic layout, looked up from its folders.

    Tries ``<ancestor>/masks/<path below the ancestor>.png`` for the nearest
    ``max_depth`` ancestors, so masks are found wherever the dataset was moved.
    """
    for ancestor in list(image.parents)[:max_depth]:
        candidate = mask_path(ancestor, image)
        if candidate.is_file():
            return candidate
    return None


def _plan(config: SynthConfig) -> list[_Job]:
    """Every image to write, with its file style and scene seed fixed up front."""
    jobs: list[_Job] = []
    for split, count in config.split_counts().items():
        for class_name in config.class_names:
            folder = PurePosixPath(split, class_name)
            jobs.extend(_job(config, folder, index, "source", class_name) for index in range(count))
    if config.external:
        external = PurePosixPath(EXTERNAL_DIR, config.external_name)
        labels: tuple[tuple[str, str | None], ...] = (
            (TUMOUR_LABEL, None),
            (NO_TUMOUR_LABEL, NO_TUMOR),
        )
        for label, rendered_class in labels:
            jobs.extend(
                _job(config, external / label, index, "external", rendered_class)
                for index in range(config.external)
            )
    return jobs


def _job(
    config: SynthConfig, folder: PurePosixPath, index: int, domain: Domain, class_name: str | None
) -> _Job:
    """One image, seeded by (seed, folder, index) so it never depends on the other images.

    ``class_name`` None draws one of the tumour types (the external "yes" folder).
    """
    key = np.random.SeedSequence(config.seed, spawn_key=(zlib.crc32(str(folder).encode()), index))
    style_seed, scene_seed = key.spawn(2)
    style_rng = np.random.default_rng(style_seed)
    style = _draw_file_style(style_rng, config)
    if class_name is None:
        class_name = str(style_rng.choice(TUMOUR_CLASSES))
    stem = f"{str(folder).replace('/', '_')}_{index:05d}"
    return _Job(folder, stem, class_name, domain, style, scene_seed, config.lesion_scale)


def _draw_file_style(rng: np.random.Generator, config: SynthConfig) -> _FileStyle:
    side = config.image_size * rng.uniform(0.8, 1.25)
    aspect = rng.uniform(0.8, 1.25) if rng.random() < 0.4 else 1.0
    mode: Literal["L", "RGB"] = "RGB" if rng.random() < config.rgb_fraction else "L"
    file_format: Literal["JPEG", "PNG"] = "PNG" if rng.random() < config.png_fraction else "JPEG"
    quality = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
    if not config.vary_size:
        side, aspect = config.image_size, 1.0
    # Never below the smallest image that `data check` accepts, whatever the jitter.
    width, height = (max(MIN_IMAGE_SIDE, round(length)) for length in (side, side * aspect))
    return _FileStyle(width, height, mode, file_format, quality)


def _write_batch(root: Path, jobs: Sequence[_Job]) -> int:
    """Write ``jobs``; BLAS stays on one thread.

    One thread per process because the processes already fill the cores (more
    only oversubscribes them), and so that the matrix products behind the
    smooth fields sum in the same order whatever the machine or worker count.
    """
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    with threadpool_limits(limits=1, user_api="blas"):
        for job in jobs:
            _write_job(root, job)
    return len(jobs)


def _write_job(root: Path, job: _Job) -> None:
    from PIL import Image as PILImage

    rng = np.random.default_rng(job.scene_seed)
    shape = (job.style.height, job.style.width)
    image, mask = render_slice(rng, job.class_name, shape, job.domain, job.lesion_scale)
    grey = PILImage.fromarray(np.round(image * 255.0).astype(np.uint8))
    stored = grey.convert(job.style.mode)
    if job.style.format == "JPEG":
        _save_atomically(stored, root / job.image_path, "JPEG", quality=job.style.quality)
    else:
        _save_atomically(stored, root / job.image_path, "PNG")
    _save_atomically(PILImage.fromarray(mask.astype(np.uint8) * 255), root / job.mask_path, "PNG")


def _save_atomically(image: PILImageType, path: Path, file_format: str, **options: int) -> None:
    """Encode in memory, then write through a temporary file and a rename."""
    buffer = io.BytesIO()
    image.save(buffer, format=file_format, **options)
    atomic_write_bytes(path, buffer.getvalue())


# --------------------------------------------------------------------------- the dataset


def write_synthetic_dataset(
    root: Path,
    config: SynthConfig,
    *,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    force: bool = False,
) -> SynthSummary:
    """Write the synthetic dataset in the standard layout under ``root``, with masks.

    Layout: ``<root>/{train,val,test}/<class>/<stem>.{jpg,png}``, optionally
    ``<root>/external/<external_name>/{yes,no}/``, and a mask for every image at
    ``<root>/masks/<same folders>/<stem>.png``; ``<root>/synth.json`` records the
    config and every file written.

    A non-empty ``root`` is refused unless ``force``; then the files listed in
    its ``synth.json`` (a previous synthetic run) are removed first and anything
    else is left alone. ``workers`` defaults to the CPU count; the output is
    byte-identical for any number of workers.
    """
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    started = time.perf_counter()
    _prepare_root(root, force=force)
    jobs = _plan(config)
    _write_manifest(root, config, jobs, seconds=None)
    completed = 0
    for finished in _run(root, jobs, workers or os.cpu_count() or 1):
        completed += finished
        if progress is not None:
            progress(completed, len(jobs))
    seconds = time.perf_counter() - started
    _write_manifest(root, config, jobs, seconds=seconds)
    return SynthSummary(root, _class_counts(config), _external_counts(config), seconds)


def _class_counts(config: SynthConfig) -> dict[str, dict[str, int]]:
    return {
        split: dict.fromkeys(config.class_names, count)
        for split, count in config.split_counts().items()
    }


def _external_counts(config: SynthConfig) -> dict[str, int]:
    if not config.external:
        return {}
    return dict.fromkeys((TUMOUR_LABEL, NO_TUMOUR_LABEL), config.external)


def _prepare_root(root: Path, *, force: bool) -> None:
    if root.exists() and not root.is_dir():
        raise UsageError(f"{root} is a file; give a folder for the synthetic dataset")
    if root.is_dir() and any(root.iterdir()):
        if not force:
            raise UsageError(
                f"{root} is not empty; choose an empty folder or pass --force to write into it"
            )
        _remove_previous_run(root)
    root.mkdir(parents=True, exist_ok=True)


def _remove_previous_run(root: Path) -> None:
    """Delete the files a previous synthetic run recorded in its manifest, nothing else."""
    try:
        listed = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    resolved_root = root.resolve()
    folders: set[Path] = set()
    for relative in listed:
        path = (root / str(relative)).resolve()
        if path.is_relative_to(resolved_root) and path.is_file():
            path.unlink()
            folders.update(p for p in path.parents if p.is_relative_to(resolved_root))
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if folder != resolved_root and not any(folder.iterdir()):
            folder.rmdir()


def _write_manifest(
    root: Path, config: SynthConfig, jobs: Sequence[_Job], *, seconds: float | None
) -> None:
    """Record the config and the files; written before the images so a crash can be cleaned."""
    from mritumor import __version__

    manifest = {
        "generator": "mritumor.data.synth",
        "mritumor_version": __version__,
        "complete": seconds is not None,
        "seconds": seconds,
        "config": asdict(config),
        "files": [str(path) for job in jobs for path in (job.image_path, job.mask_path)],
    }
    atomic_write_text(root / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")


def _run(root: Path, jobs: Sequence[_Job], workers: int) -> Iterator[int]:
    """Write ``jobs`` and yield how many finished after each batch."""
    batch_size = max(1, min(_BATCH_SIZE, math.ceil(len(jobs) / (4 * workers))))
    batches = [jobs[start : start + batch_size] for start in range(0, len(jobs), batch_size)]
    if workers == 1 or len(batches) <= 1:
        for batch in batches:
            yield _write_batch(root, batch)
        return
    # spawn, not fork: the caller may hold TensorFlow threads that a fork would copy mid-flight.
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(min(workers, len(batches)), mp_context=context)
    try:
        futures = [pool.submit(_write_batch, root, batch) for batch in batches]
        for future in as_completed(futures):
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
