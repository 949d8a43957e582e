"""Lesions by class: glioma, meningioma and pituitary masses painted into a phantom head.

* glioma: an irregular intra-axial mass in one hemisphere, with an enhancing
  rim around a necrotic core (or a heterogeneous solid mass) inside an oedema halo;
* meningioma: a well-circumscribed homogeneous extra-axial mass whose base sits
  on the inner table of the skull, often with a dural tail;
* pituitary: a small mass on the midline, anterior of the centre;
* no_tumor: none.
"""

from __future__ import annotations

import math

import numpy as np

from mritumor.core.classes import CLASS_NAMES
from mritumor.data.synth.anatomy import Head, Point, Window
from mritumor.data.synth.contrast import Contrast
from mritumor.data.synth.drawing import Field, inside, paint

GLIOMA, MENINGIOMA, NO_TUMOR, PITUITARY = CLASS_NAMES
TUMOUR_CLASSES = (GLIOMA, MENINGIOMA, PITUITARY)


def _blob_level(
    rng: np.random.Generator, head: Head, centre: Point, radius: float, irregularity: float
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


def paint_lesion(
    rng: np.random.Generator,
    class_name: str,
    head: Head,
    tissue: Contrast,
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
    rng: np.random.Generator, head: Head, tissue: Contrast, canvas: Field, scale: float
) -> tuple[Window, Field]:
    """An irregular hemispheric mass: enhancing rim, often a necrotic core, an oedema halo."""
    side = float(rng.choice([-1.0, 1.0]))
    centre = (side * rng.uniform(0.22, 0.42), rng.uniform(-0.45, 0.45) * head.brain_surface)
    radius = scale * rng.uniform(0.08, 0.17)
    oedema_radius = radius * rng.uniform(1.4, 1.8)
    window = head.window(centre, oedema_radius * 1.5 + 0.1)
    local, area = head.crop(window), canvas[window]
    roughness = 0.08 * radius * local.noise(rng, 0.5 * radius)
    off_midline = inside(-side * local.u + 0.015, local.pixel)
    hemisphere = off_midline * inside(local.rho - 0.95 * local.brain_surface, local.pixel)
    oedema = _blob_level(rng, local, centre, oedema_radius, 0.5) + 2.0 * roughness
    oedema_weight = inside(oedema, 2.0 * local.pixel) * hemisphere
    mass = _blob_level(rng, local, centre, radius, 0.45) + roughness
    mass_weight = inside(mass, local.pixel) * hemisphere
    heterogeneity = 1.0 + 0.15 * local.noise(rng, 0.09)
    # Oedema tracks along white matter, so it shows most there.
    paint(area, tissue.oedema * heterogeneity, oedema_weight * (0.55 + 0.45 * local.white))
    paint(area, tissue.enhancing * heterogeneity, mass_weight)
    if rng.random() < 0.7:
        core = _blob_level(rng, local, centre, radius * rng.uniform(0.4, 0.75), 0.4) + roughness
        paint(area, tissue.necrosis * heterogeneity, inside(core, local.pixel) * mass_weight)
    return window, np.maximum(oedema_weight, mass_weight)


def _meningioma(
    rng: np.random.Generator, head: Head, tissue: Contrast, canvas: Field, scale: float
) -> tuple[Window, Field]:
    """A round homogeneous mass based on the inner table of the skull, often with a dural tail."""
    angle = rng.uniform(0.0, 2.0 * math.pi)
    direction = (math.cos(angle), math.sin(angle))
    radius = scale * rng.uniform(0.09, 0.18)
    distance = head.radius_along(direction) - radius * rng.uniform(0.2, 0.7)
    centre = (direction[0] * distance, direction[1] * distance)
    window = head.window(centre, 2.3 * radius)
    local, area = head.crop(window), canvas[window]
    mass = inside(_blob_level(rng, local, centre, radius, 0.12), local.pixel) * local.intracranial
    if rng.random() < 0.6:
        mass = np.maximum(mass, _dural_tail(local, centre, radius))
    paint(area, tissue.meningioma * (1.0 + 0.03 * local.noise(rng, 0.09)), mass)
    return window, mass


def _dural_tail(head: Head, centre: Point, radius: float) -> Field:
    """A thin band along the inner table that tapers away from the mass."""
    distance = np.hypot(head.u - centre[0], head.v - centre[1])
    along = np.clip(1.0 - (distance - radius) / (1.2 * radius), 0.0, 1.0)
    band = inside(head.inner_skull - 0.025 * along - head.rho, head.pixel)
    return np.asarray(band * head.intracranial * np.minimum(1.0, 4.0 * along), np.float32)


def _pituitary(
    rng: np.random.Generator, head: Head, tissue: Contrast, canvas: Field, scale: float
) -> tuple[Window, Field]:
    """A small, fairly round mass on the midline, anterior of the centre; sometimes cystic."""
    centre = (rng.normal(0.0, 0.01), -rng.uniform(0.3, 0.45))
    radius = scale * rng.uniform(0.05, 0.08)
    window = head.window(centre, 1.3 * radius)
    local, area = head.crop(window), canvas[window]
    mass = inside(_blob_level(rng, local, centre, radius, 0.2), local.pixel)
    paint(area, tissue.pituitary * (1.0 + 0.06 * local.noise(rng, 0.07)), mass)
    if rng.random() < 0.3:
        cyst = _blob_level(rng, local, centre, radius * 0.45, 0.15)
        paint(area, tissue.csf, inside(cyst, local.pixel) * mass)
    return window, mass
