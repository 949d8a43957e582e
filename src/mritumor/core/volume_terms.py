"""The words of the ``volumes`` settings: the slicing axis, the window and the aggregation.

Declared once here, where the settings (:mod:`mritumor.config.schema`) and the volumes room
(:mod:`mritumor.volumes`) both read them.
"""

from __future__ import annotations

from typing import Literal, get_args

Axis = Literal["axial", "coronal", "sagittal"]
"""The anatomical plane slices are cut in."""
AXES: tuple[Axis, ...] = get_args(Axis)
WindowMethod = Literal["auto", "percentile", "dicom"]
"""How voxel values become 0-255: a DICOM series' own window, or volume percentiles."""
WINDOW_METHODS: tuple[WindowMethod, ...] = get_args(WindowMethod)
Aggregation = Literal["max", "top_k_mean", "noisy_or"]
"""How slice tumour scores become the volume's."""
AGGREGATIONS: tuple[Aggregation, ...] = get_args(Aggregation)
