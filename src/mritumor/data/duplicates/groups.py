"""Duplicate groups: files that show the same image, exactly or nearly.

Files with identical decoded pixels (:attr:`~mritumor.data.duplicates.hashing.ImageRecord.pixel_sha256`)
are exact duplicates. Near duplicates are found in two steps: pairs whose pHashes lie
within ``radius`` bits are *candidates* (:func:`~mritumor.data.duplicates.perceptual.candidate_pairs`),
and each candidate is *confirmed* by the detail similarity of the two thumbnails
(:func:`~mritumor.data.duplicates.perceptual.detail_vectors`): the correlation of what is left after
the shared shape is blurred away, at least ``min_similarity`` for a near duplicate.
``prepare``, ``check``, ``kfold`` and ``finetune`` share these groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from mritumor.data.duplicates.hashing import ImageRecord
from mritumor.data.duplicates.perceptual import (
    THUMBNAIL_SHAPE,
    candidate_pairs,
    detail_similarities,
)

#: Largest pHash Hamming distance that makes a pair a near-duplicate candidate. On 400
#: Kaggle Masoud scans (docs/data/check.md) re-encoded, resized, brightened, blurred and
#: gamma-corrected copies stay within 6 bits; 8 leaves a margin for stronger edits, which
#: the detail check (:data:`MIN_SIMILARITY`) makes affordable.
DEFAULT_RADIUS = 8
#: Smallest detail similarity (:func:`~mritumor.data.duplicates.perceptual.detail_vectors`) that
#: confirms a candidate. Measured (docs/data/check.md): copies of real scans made by those
#: edits score at least 0.990 and the scans saved twice in the Kaggle sample at least 0.979;
#: no pair of 1,000 distinct synthetic phantoms scores above 0.955, and no pair of distinct
#: real scans above 0.949 (two adjacent slices of one series).
MIN_SIMILARITY = 0.97


class NearMatch(NamedTuple):
    """A confirmed near duplicate of an image: the other image, pHash distance, similarity."""

    image: int
    distance: int
    similarity: float


class DuplicateGraph:
    """Usable records joined when they show the same image, exactly or nearly.

    Records with identical pixels collapse onto one *image* (``image_of``), so
    exact copies are joined whatever their thumbnails. Images whose pHashes lie
    within ``radius`` bits are candidates
    (:func:`~mritumor.data.duplicates.perceptual.candidate_pairs`); a candidate is a near
    duplicate when its detail similarity is at least ``min_similarity``.
    Groups are the connected components: if a~b and b~c, then a, b and c share
    a group even when a and c are not near duplicates of each other.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        radius: int = DEFAULT_RADIUS,
        min_similarity: float = MIN_SIMILARITY,
    ) -> None:
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        self.image_of, images = _distinct_images(records)
        hashes = np.array([image.phash for image in images], dtype=np.uint64)
        thumbnails = b"".join(image.thumbnail or b"" for image in images)
        stack = np.frombuffer(thumbnails, np.uint8).reshape(-1, *THUMBNAIL_SHAPE)
        first, second, distance = candidate_pairs(hashes, radius)
        similarity = detail_similarities(stack, first, second)
        confirmed = similarity >= min_similarity
        #: Pairs of distinct images within the radius, confirmed or not.
        self.candidate_count = len(first)
        self._matches = _matches_by_image(
            first[confirmed], second[confirmed], distance[confirmed], similarity[confirmed]
        )
        edges = coo_matrix(
            (np.ones(int(confirmed.sum())), (first[confirmed], second[confirmed])),
            shape=(len(images), len(images)),
        )
        self._component: NDArray[np.intp] = connected_components(edges, directed=False)[1]

    def neighbours(self, image: int) -> list[NearMatch]:
        """The confirmed near duplicates of ``image``, most similar first."""
        return self._matches.get(image, [])

    def group_ids(self) -> list[int]:
        """A group id per record, numbered by first appearance; unusable records stand alone."""
        numbering: dict[tuple[str, int], int] = {}
        ids = []
        for index, image in enumerate(self.image_of.tolist()):
            key = ("component", int(self._component[image])) if image >= 0 else ("alone", index)
            ids.append(numbering.setdefault(key, len(numbering)))
        return ids


def _distinct_images(
    records: Sequence[ImageRecord],
) -> tuple[NDArray[np.intp], list[ImageRecord]]:
    """Each record's image (``-1`` when unusable), and the first record of each image.

    An image is a distinct pixel hash: exact copies share one, whatever else they share.
    """
    usable = [index for index, record in enumerate(records) if record.usable]
    pixel_keys = np.array([records[index].pixel_sha256 for index in usable], dtype=str)
    _, first_holder, inverse = np.unique(pixel_keys, return_index=True, return_inverse=True)
    image_of = np.full(len(records), -1, dtype=np.intp)
    image_of[usable] = inverse.ravel()
    return image_of, [records[usable[index]] for index in first_holder]


def _matches_by_image(
    first: NDArray[np.intp],
    second: NDArray[np.intp],
    distance: NDArray[np.uint8],
    similarity: NDArray[np.float32],
) -> dict[int, list[NearMatch]]:
    """Both directions of each confirmed pair, most similar first.

    A Python loop, which is fine: confirmed pairs are true near duplicates, few by nature.
    """
    matches: dict[int, list[NearMatch]] = {}
    for a, b, bits, score in zip(
        first.tolist(), second.tolist(), distance.tolist(), similarity.tolist(), strict=True
    ):
        matches.setdefault(a, []).append(NearMatch(b, bits, score))
        matches.setdefault(b, []).append(NearMatch(a, bits, score))
    for found in matches.values():
        found.sort(key=lambda match: (-match.similarity, match.distance, match.image))
    return matches


def duplicate_groups(
    records: Sequence[ImageRecord],
    *,
    radius: int = DEFAULT_RADIUS,
    min_similarity: float = MIN_SIMILARITY,
) -> list[int]:
    """A group id per record such that exact and near duplicates share a group.

    Meant for grouped cross-validation (``StratifiedGroupKFold(groups=...)``): no
    duplicate pair can then straddle a fold boundary. Files that are not usable
    images each get a group of their own. ``radius`` and ``min_similarity`` are
    those of :class:`DuplicateGraph`.
    """
    return DuplicateGraph(records, radius, min_similarity).group_ids()
