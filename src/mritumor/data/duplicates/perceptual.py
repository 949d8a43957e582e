"""Perceptual hashes of images, the search for pairs of close hashes, and detail similarity.

The pHash of an image is taken from its 32x32 grayscale thumbnail (:func:`thumbnail`):
a 2-D DCT, and the 8x8 lowest-frequency coefficients compared with their median, one
bit each. Re-encoding, slight resizing or a small brightness change moves few bits;
different photographs differ in about half of them.

Pairs whose pHashes differ in at most ``radius`` bits (Hamming distance) are found by
:func:`candidate_pairs`: the search is vectorised, XOR and popcount over blocks of a
``uint64`` array, so it never loops over pairs in Python. The low frequencies a pHash
keeps are much alike for every brain MRI (a bright oval on a dark background), so
unrelated scans can be candidates too; the detail similarity of two thumbnails
(:func:`detail_vectors`) tells them apart. How the two are combined into duplicate
groups is :mod:`mritumor.data.duplicates.groups`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

#: Standard deviations, in thumbnail pixels, of the two blurs whose difference is the
#: detail (:func:`detail_vectors`): finer than the first is pixel noise and JPEG blocking,
#: coarser than the second is the head's outline, which every scan shares.
DETAIL_SIGMAS = (0.5, 2.0)
HASH_BITS = 64
THUMBNAIL_SHAPE = (32, 32)
HASH_LOW_FREQUENCIES = 8
#: XORs per block of the pair search (512 KiB of uint64): bounded memory at any n.
PAIR_BLOCK_ELEMENTS = 1 << 16
#: Candidate pairs per block of the detail check (16 MiB per float32 array).
VERIFY_BLOCK_PAIRS = 1 << 12

_BYTE_POPCOUNT = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint8)


def thumbnail(pixels: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """The 32x32 grayscale thumbnail of an ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` image.

    Both the pHash and the detail check look at it. The shrink is Lanczos after
    a box reduction to at most twice the size (``reducing_gap``), five times
    faster than Lanczos alone on 512x512 scans and as robust.
    """
    from PIL import Image

    planes = pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels
    gray = Image.fromarray(np.ascontiguousarray(planes)).convert("L")
    small = gray.resize(THUMBNAIL_SHAPE, Image.Resampling.LANCZOS, reducing_gap=2.0)
    return np.asarray(small, dtype=np.uint8)


def thumbnail_hash(small: NDArray[np.uint8]) -> int:
    """64-bit pHash of a thumbnail: 2-D DCT-II, the 8x8 lowest frequencies against their median.

    The first coefficient is the most significant bit.
    """
    import scipy.fft

    spectrum = scipy.fft.dct(scipy.fft.dct(small.astype(np.float64), axis=0), axis=1)
    low = spectrum[:HASH_LOW_FREQUENCIES, :HASH_LOW_FREQUENCIES]
    bits = np.packbits(low > np.median(low))
    return int.from_bytes(bits.tobytes(), "big")


def perceptual_hash(pixels: NDArray[np.uint8]) -> int:
    """64-bit pHash of an image: :func:`thumbnail_hash` of its :func:`thumbnail`."""
    return thumbnail_hash(thumbnail(pixels))


def hamming_distance(a: int, b: int) -> int:
    """Number of bits in which two hashes differ."""
    return (a ^ b).bit_count()


def popcount(values: NDArray[np.uint64]) -> NDArray[np.uint8]:
    """Set bits per element; ``np.bitwise_count`` on NumPy >= 2, a byte table before."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values)
    return popcount_by_table(values)


def popcount_by_table(values: NDArray[np.uint64]) -> NDArray[np.uint8]:
    """Set bits per element through a 256-entry table over the bytes (NumPy 1.x)."""
    as_bytes = np.ascontiguousarray(values).view(np.uint8).reshape(*values.shape, 8)
    counts: NDArray[np.uint8] = _BYTE_POPCOUNT[as_bytes].sum(axis=-1, dtype=np.uint8)
    return counts


def hamming_pairs(
    hashes: NDArray[np.uint64], radius: int
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.uint8]]:
    """Every pair ``i < j`` with ``popcount(hashes[i] ^ hashes[j]) <= radius``.

    Returns ``(i, j, distance)``. Rows are processed in blocks of
    :data:`PAIR_BLOCK_ELEMENTS` XORs against the rest of the array, so time grows
    with n²/2 but memory stays bounded.
    """
    _check_radius(radius)
    count = len(hashes)
    rows = max(1, PAIR_BLOCK_ELEMENTS // max(count, 1))
    found_i, found_j, found_d = [], [], []
    for start in range(0, count, rows):
        stop = min(start + rows, count)
        distances = popcount(hashes[start:stop, np.newaxis] ^ hashes[np.newaxis, start:])
        row, column = np.nonzero(distances <= radius)
        upper = column > row  # column index is relative to ``start``, like the row index
        found_i.append(row[upper] + start)
        found_j.append(column[upper] + start)
        found_d.append(distances[row[upper], column[upper]])
    if not found_i:
        empty = np.empty(0, dtype=np.intp)
        return empty, empty.copy(), np.empty(0, dtype=np.uint8)
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_d)


def _check_radius(radius: int) -> None:
    if not 0 <= radius <= HASH_BITS:
        raise ValueError(f"radius must be between 0 and {HASH_BITS} bits, got {radius}")


def candidate_pairs(
    hashes: NDArray[np.uint64], radius: int
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.uint8]]:
    """Every pair ``i < j`` of ``hashes`` within ``radius`` bits, equal hashes included.

    :func:`hamming_pairs` runs over the distinct values only; each pair of values
    found, and each value that several hashes share (at distance 0), is then
    expanded into every pair of the hashes holding them. Returns ``(i, j, distance)``.
    """
    values, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    near_a, near_b, near_distance = hamming_pairs(values, radius)
    shared = np.flatnonzero(counts > 1)
    value_a = np.concatenate([near_a, shared])
    value_b = np.concatenate([near_b, shared])
    distance = np.concatenate([near_distance, np.zeros(len(shared), dtype=np.uint8)])
    holders = np.argsort(inverse.ravel(), kind="stable")  # hash indices, grouped by value
    starts = np.cumsum(counts) - counts
    sizes = counts[value_a] * counts[value_b]
    pair = np.repeat(np.arange(len(value_a)), sizes)
    offset = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    width = counts[value_b][pair]
    first = holders[starts[value_a][pair] + offset // width]
    second = holders[starts[value_b][pair] + offset % width]
    # A shared value pairs its holders with themselves and in both orders: keep i < j once.
    keep = (value_a[pair] != value_b[pair]) | (first < second)
    return (
        np.minimum(first, second)[keep],
        np.maximum(first, second)[keep],
        distance[pair][keep],
    )


def detail_vectors(thumbnails: NDArray[np.uint8]) -> NDArray[np.float32]:
    """The detail of each ``(32, 32)`` thumbnail as a unit vector, one row per thumbnail.

    Detail is the difference of two Gaussian blurs of the thumbnail
    (:data:`DETAIL_SIGMAS`), shifted to zero mean and scaled to unit length, so that
    the dot product of two rows is the Pearson correlation of their details. Every
    brain MRI is a bright oval on a dark background: whole thumbnails of unrelated
    scans correlate at up to 0.98, which is why the coarse blur is taken away; what
    is left (ventricles, sulci, skull, lesions, 1-6 thumbnail pixels across) tells
    scans apart, while the fine blur keeps re-encoding noise out. A flat thumbnail
    has no detail and gives the zero vector, which is similar to nothing.
    """
    from scipy import ndimage

    stack = thumbnails.reshape(-1, *THUMBNAIL_SHAPE).astype(np.float32)
    fine, coarse = (ndimage.gaussian_filter(stack, (0, sigma, sigma)) for sigma in DETAIL_SIGMAS)
    detail = (fine - coarse).reshape(len(stack), -1)
    detail -= detail.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(detail, axis=1, keepdims=True)
    unit: NDArray[np.float32] = np.divide(
        detail, norms, out=np.zeros_like(detail), where=norms > 1e-3
    )
    return unit


def detail_similarities(
    thumbnails: NDArray[np.uint8], first: NDArray[np.intp], second: NDArray[np.intp]
) -> NDArray[np.float32]:
    """Detail similarity of each pair ``(thumbnails[first[k]], thumbnails[second[k]])``.

    In blocks of :data:`VERIFY_BLOCK_PAIRS`, so memory stays bounded however many
    candidates the pHash search returns.
    """
    similarities = np.empty(len(first), dtype=np.float32)
    for start in range(0, len(first), VERIFY_BLOCK_PAIRS):
        block = slice(start, start + VERIFY_BLOCK_PAIRS)
        a = detail_vectors(thumbnails[first[block]])
        b = detail_vectors(thumbnails[second[block]])
        similarities[block] = np.einsum("ij,ij->i", a, b)
    return similarities
