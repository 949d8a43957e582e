"""Class balance: loss weights and oversampling, in plain NumPy."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray


def class_weights(labels: ArrayLike, num_classes: int) -> NDArray[np.float64]:
    """``w_c = N / (C * n_c)``: each class contributes equally to the loss.

    A class absent from ``labels`` gets weight 0 (it has no samples to weight)
    rather than infinity.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(float)
    total = counts.sum()
    weights = np.zeros(num_classes)
    present = counts > 0
    weights[present] = total / (num_classes * counts[present])
    return weights


def oversample_indices(labels: ArrayLike, seed: int) -> NDArray[np.int64]:
    """Indices that repeat minority-class samples until every class matches the largest.

    Every original sample appears at least once; the extra draws are random
    (seeded) without replacement where possible, and the result is sorted by
    original index so that the caller's shuffling alone decides the order.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    target = int(np.bincount(labels).max()) if labels.size else 0
    chosen: list[NDArray[np.int64]] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        extra = target - members.size
        repeats, remainder = divmod(extra, members.size)
        draws = [np.tile(members, 1 + repeats), rng.choice(members, remainder, replace=False)]
        chosen.append(np.concatenate(draws))
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)
