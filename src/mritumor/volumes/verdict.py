"""One tumour score for a volume from the tumour scores of its slices.

A 2-D classifier scores each slice; a volume needs one number. Three
aggregations, chosen by ``volumes.aggregation`` (``k`` is ``volumes.top_k``):

* ``max``: the highest slice score. The most sensitive: one convincing slice is
  enough, and so is one false-positive slice; it rises with the number of slices.
* ``top_k_mean``: the mean of the ``k`` highest slice scores. A lesion has to show
  on about ``k`` slices; a single stray slice counts for ``1/k``.
* ``noisy_or``: ``1 - prod(1 - s)`` over the ``k`` highest scores, the chance that
  at least one of them is a tumour if the slices were independent. They are not
  (neighbouring slices show the same lesion), so it overstates; it is limited to
  the top ``k`` because over all slices it approaches 1 for any long scan.

Fewer than ``k`` scored slices use all of them. A volume with no scored slice has
no verdict (NaN).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mritumor.core.volume_terms import AGGREGATIONS, Aggregation

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, NDArray


def top_slices(scores: ArrayLike, k: int) -> NDArray[np.intp]:
    """Positions of the ``k`` highest scores, highest first; ties go to the earlier slice."""
    values = np.asarray(scores, dtype=np.float64)
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    order = np.argsort(-values, kind="stable")
    return np.asarray(order[:k], dtype=np.intp)


def aggregate(scores: ArrayLike, method: Aggregation, k: int) -> float:
    """The volume's tumour score from its slice scores (see the module's documentation)."""
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"slice scores must be 1-D, not shape {values.shape}")
    if values.size == 0:
        return float("nan")
    if np.any((values < 0.0) | (values > 1.0)) or not np.all(np.isfinite(values)):
        raise ValueError("slice scores must lie in [0, 1]")
    top = values[top_slices(values, k)]
    if method == "max":
        return float(top[0])
    if method == "top_k_mean":
        return float(top.mean())
    if method == "noisy_or":
        return float(1.0 - np.prod(1.0 - top))
    raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, not {method!r}")
