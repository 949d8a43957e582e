"""The phantom head: pose, proportions, and the anatomy painted into a canvas.

Head-frame coordinates ``u`` (left-right) and ``v`` (anterior, negative, to
posterior) are in units of the head's anterior-posterior half-length; the
lesions (:mod:`.lesions`) are placed in the same frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from mritumor.data.synth.contrast import Contrast
from mritumor.data.synth.drawing import Field, inside, paint, rotated, smooth_field

_EGG = 0.05  # heads are wider at the back: half-width grows by this share per unit of v

Point = tuple[float, float]
Window = tuple[slice, slice]


@dataclass(frozen=True)
class Pose:
    """Where the head sits in the image: centre (pixels), pixels per head unit, rotation."""

    row: float
    col: float
    scale: float
    angle: float

    def head_coordinates(self, shape: tuple[int, int]) -> tuple[Field, Field]:
        rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
        return rotated((cols - self.col) / self.scale, (rows - self.row) / self.scale, self.angle)

    def pixel_of(self, point: Point) -> Point:
        """Image (row, col) of a head-frame point: the inverse of :meth:`head_coordinates`."""
        col, row = rotated(np.asarray(point[0]), np.asarray(point[1]), -self.angle)
        return self.row + float(row) * self.scale, self.col + float(col) * self.scale


@dataclass
class Head:
    """Head-frame coordinates of every pixel, and the anatomy that lesions depend on.

    ``u`` runs left-right and ``v`` from anterior (negative, image top) to
    posterior, in units of the head's anterior-posterior half-length.
    """

    pose: Pose
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
        return inside(self.rho - self.brain_surface, self.pixel)

    @property
    def intracranial(self) -> Field:
        return inside(self.rho - self.inner_skull, self.pixel)

    def noise(self, rng: np.random.Generator, feature: float) -> Field:
        """A smooth unit field over this head's pixels with blobs ``feature`` head units apart."""
        return smooth_field(rng, self.u.shape, feature * self.pose.scale)

    def window(self, centre: Point, radius: float) -> Window:
        """The pixel box holding the disc of ``radius`` head units around ``centre``."""
        row, col = self.pose.pixel_of(centre)
        reach = radius * self.pose.scale + 2.0
        height, width = self.u.shape
        rows = slice(max(0, int(row - reach)), max(0, min(height, int(row + reach) + 1)))
        cols = slice(max(0, int(col - reach)), max(0, min(width, int(col + reach) + 1)))
        return rows, cols

    def crop(self, window: Window) -> Head:
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


def draw_head(
    rng: np.random.Generator,
    shape: tuple[int, int],
    max_rotation_deg: float,
    extent: float = 1.0,
) -> Head:
    """A head with random size, position, rotation and proportions.

    ``extent`` shrinks the head drawn (a section of a phantom volume away from its centre).
    """
    pose = Pose(
        row=(shape[0] - 1) / 2.0 + rng.uniform(-0.04, 0.04) * shape[0],
        col=(shape[1] - 1) / 2.0 + rng.uniform(-0.04, 0.04) * shape[1],
        scale=rng.uniform(0.76, 0.9) * min(shape) / 2.0 * extent,
        angle=math.radians(rng.uniform(-max_rotation_deg, max_rotation_deg)),
    )
    u, v = pose.head_coordinates(shape)
    half_width = rng.uniform(0.76, 0.86)
    skull_outer = 1.0 - rng.uniform(0.05, 0.08)  # under the scalp
    inner_skull = skull_outer - rng.uniform(0.04, 0.07)
    return Head(
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


def paint_head(rng: np.random.Generator, head: Head, tissue: Contrast) -> Field:
    """Scalp, skull with diploe, CSF rim and brain, each blended over the one outside it."""
    canvas = np.zeros_like(head.u)
    scalp = tissue.scalp * (1.0 + 0.08 * head.noise(rng, 0.3))
    paint(canvas, scalp, inside(head.rho - 1.0, head.pixel))
    paint(canvas, tissue.skull, inside(head.rho - head.skull_outer, head.pixel))
    # The diploe: the marrow band in the middle 40 % of the skull's thickness.
    thickness = head.skull_outer - head.inner_skull
    middle = head.inner_skull + 0.5 * thickness
    diploe = inside(np.abs(head.rho - middle) - 0.2 * thickness, head.pixel)
    paint(canvas, tissue.diploe * rng.uniform(0.6, 1.0), diploe)
    paint(canvas, tissue.csf, head.intracranial)
    paint(canvas, _parenchyma(rng, head, tissue), head.brain)
    return canvas


def _parenchyma(rng: np.random.Generator, head: Head, tissue: Contrast) -> Field:
    """Cortex and white matter, deep nuclei, ventricles and the midline fissure."""
    sulci, cortex = _gyri(rng, head)
    head.white = 1.0 - cortex
    canvas = tissue.grey + head.white * (tissue.white - tissue.grey)
    canvas *= 1.0 + 0.03 * head.noise(rng, 0.045)
    paint(canvas, tissue.csf, sulci)
    centre = head.window((0.0, 0.05), 0.55)
    _paint_deep_structures(rng, head.crop(centre), tissue, canvas[centre])
    paint(canvas, tissue.csf, _midline_fissure(head))
    return canvas


def _gyri(rng: np.random.Generator, head: Head) -> tuple[Field, Field]:
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
    sulci = inside(along_surface - rng.uniform(0.003, 0.008), head.pixel) * outer
    lining = inside(along_surface - rng.uniform(0.022, 0.03), 1.5 * head.pixel) * outer
    ribbon = inside((1.0 - depth) * head.brain_surface - 0.03, 1.5 * head.pixel)
    return sulci, np.maximum(lining, ribbon)


def _paint_deep_structures(
    rng: np.random.Generator, head: Head, tissue: Contrast, canvas: Field
) -> None:
    """Caudate heads and thalami, then the ventricles, around the centre of the brain."""
    scale = rng.uniform(0.7, 1.35)
    for side in (-1.0, 1.0):
        caudate = _ellipse_level(head, (side * 0.13 * scale, -0.17), (0.06, 0.08))
        thalamus = _ellipse_level(head, (side * 0.09, 0.1), (0.075, 0.1), side * 0.2)
        paint(canvas, tissue.grey * 1.04, inside(caudate, 3 * head.pixel))
        paint(canvas, tissue.grey * 1.08, inside(thalamus, 3 * head.pixel))
    paint(canvas, tissue.csf, _ventricles(rng, head, scale))


def _ellipse_level(head: Head, centre: Point, axes: Point, angle: float = 0.0) -> Field:
    """Signed, roughly metric distance to an ellipse's boundary (negative inside)."""
    du, dv = rotated(head.u - centre[0], head.v - centre[1], angle)
    return np.asarray((np.hypot(du / axes[0], dv / axes[1]) - 1.0) * min(axes), np.float32)


def _ventricles(rng: np.random.Generator, head: Head, scale: float) -> Field:
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
    return inside(level, head.pixel) * head.brain


def _midline_fissure(head: Head) -> Field:
    """The interhemispheric fissure: a thin CSF line in front of and behind the ventricles."""
    line = inside(np.abs(head.u) - max(0.008, 0.7 * head.pixel), head.pixel)
    return line * np.clip((np.abs(head.v) / head.brain_surface - 0.45) / 0.1, 0.0, 1.0)
