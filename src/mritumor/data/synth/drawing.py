"""Drawing primitives of the phantoms: smooth random fields, soft masks, blending, rotation.

Every shape is a *level* (negative inside) turned into an anti-aliased weight by
:func:`inside`, and blended into the canvas by :func:`paint`. Fields are float32
at run time: half the memory traffic of float64.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

Field = NDArray[np.floating[Any]]


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], spacing: float) -> Field:
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


def inside(level: Field | float, edge: float) -> Field:
    """Soft indicator of ``level < 0`` with an anti-aliasing ramp ``edge`` wide."""
    ramp = 0.5 - np.asarray(level, dtype=np.float32) / edge
    return np.clip(ramp, 0.0, 1.0, out=ramp)


def paint(canvas: Field, value: Field | float, weight: Field) -> None:
    """Alpha-blend ``value`` into ``canvas`` where ``weight`` is 1, in place."""
    canvas += weight * (value - canvas)


def rotated(u: Field, v: Field, angle: float) -> tuple[Field, Field]:
    cos, sin = math.cos(angle), math.sin(angle)
    return cos * u + sin * v, -sin * u + cos * v
