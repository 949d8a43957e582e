"""Fingerprints of image files and the search for duplicates among them.

Every file gets four fingerprints:

* ``sha256`` of the file bytes (what a backup tool would compare);
* ``pixel_sha256`` of the decoded pixels, exactly as the input pipeline sees them
  (:func:`mritumor.data.files.read_image`, RGB). Two files with equal pixel hashes
  are *exact* duplicates even when their bytes differ: a PNG re-saved as BMP, or a
  PNG copy named ``.jpg``;
* a 32x32 grayscale ``thumbnail`` (:func:`thumbnail`);
* a 64-bit perceptual hash (pHash) of that thumbnail: a 2-D DCT, and the 8x8
  lowest-frequency coefficients compared with their median, one bit each.
  Re-encoding, slight resizing or a small brightness change moves few bits;
  different photographs differ in about half of them.

Near duplicates are found in two steps. Pairs whose pHashes differ in at most
``radius`` bits (Hamming distance) are *candidates*: the search is vectorised,
XOR and popcount over blocks of a ``uint64`` array, so it never loops over pairs
in Python. The low frequencies a pHash keeps are much alike for every brain MRI
(a bright oval on a dark background), so unrelated scans can be candidates too.
Each candidate is therefore *confirmed* by the detail similarity of the two
thumbnails (:func:`detail_vectors`): the correlation of what is left after the
shared shape is blurred away, at least ``min_similarity`` for a near duplicate.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, NamedTuple, get_args

import numpy as np
from numpy.typing import NDArray

from mritumor.core.progress import ProgressCallback
from mritumor.data.files import (
    IMAGE_EXTENSIONS,
    MIN_IMAGE_SIDE,
    ImageTooLargeError,
    NotAnImageError,
    UnreadableImageError,
    decode_image,
    read_header,
)

ProblemKind = Literal[
    "unreadable", "truncated", "zero_bytes", "not_an_image", "too_large", "too_small"
]
PROBLEM_KINDS: tuple[ProblemKind, ...] = get_args(ProblemKind)

#: Largest pHash Hamming distance that makes a pair a near-duplicate candidate. On 400
#: Kaggle Masoud scans (docs/data/check.md) re-encoded, resized, brightened, blurred and
#: gamma-corrected copies stay within 6 bits; 8 leaves a margin for stronger edits, which
#: the detail check (:data:`MIN_SIMILARITY`) makes affordable.
DEFAULT_RADIUS = 8
#: Smallest detail similarity (:func:`detail_vectors`) that confirms a candidate. Measured
#: (docs/data/check.md): copies of real scans made by those edits score at least 0.990 and
#: the scans saved twice in the Kaggle sample at least 0.979; no pair of 1,000 distinct
#: synthetic phantoms scores above 0.955, and no pair of distinct real scans above 0.949
#: (two adjacent slices of one series).
MIN_SIMILARITY = 0.97
#: Standard deviations, in thumbnail pixels, of the two blurs whose difference is the
#: detail (:func:`detail_vectors`): finer than the first is pixel noise and JPEG blocking,
#: coarser than the second is the head's outline, which every scan shares.
DETAIL_SIGMAS = (0.5, 2.0)
HASH_BITS = 64
THUMBNAIL_SHAPE = (32, 32)
HASH_LOW_FREQUENCIES = 8
#: Files per task sent to a worker process: large enough to amortise pickling,
#: small enough for a progress bar that moves.
CHUNK_SIZE = 64
#: XORs per block of the pair search (512 KiB of uint64): bounded memory at any n.
PAIR_BLOCK_ELEMENTS = 1 << 16
#: Candidate pairs per block of the detail check (16 MiB per float32 array).
VERIFY_BLOCK_PAIRS = 1 << 12

_BYTE_POPCOUNT = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint8)


@dataclass(frozen=True)
class ImageRecord:
    """What one file is: its size, hashes and header facts, or why it cannot be used.

    ``problem`` is ``None`` for a usable image: one the input pipeline loads, at least
    :data:`~mritumor.data.files.MIN_IMAGE_SIDE` pixels on each side; only those take
    part in the duplicate search. The hashes and header facts are filled in as far
    as the file allowed (an image with a non-image extension or too small still has
    them; a DICOM file has format ``DICOM`` and no mode). Width and height are those
    of the upright image.
    ``thumbnail`` holds the 32x32 grayscale thumbnail's bytes (uint8, row by row).
    """

    path: Path
    size_bytes: int
    sha256: str | None
    pixel_sha256: str | None = None
    phash: int | None = None
    thumbnail: bytes | None = None
    format: str | None = None
    mode: str | None = None
    width: int | None = None
    height: int | None = None
    problem: ProblemKind | None = None
    error: str | None = None

    @property
    def usable(self) -> bool:
        """True when the pipeline can load the file and it has a pHash and a thumbnail."""
        return self.problem is None and self.phash is not None and self.thumbnail is not None


def hash_image(path: Path) -> ImageRecord:
    """Fingerprint one file; a file that is not a usable image gives a record with a problem."""
    try:
        data = path.read_bytes()
    except OSError as error:
        return ImageRecord(path, 0, None, problem="unreadable", error=str(error))
    record = ImageRecord(path, len(data), hashlib.sha256(data).hexdigest())
    if not data:
        return _with_problem(record, "zero_bytes", "the file is empty (0 bytes)")
    with warnings.catch_warnings():
        # Pillow warns about truncated TIFFs, odd EXIF and large images; the record says it.
        warnings.simplefilter("ignore")
        return _decode(record)


def _decode(record: ImageRecord) -> ImageRecord:
    """Read the file through :func:`~mritumor.data.files.read_image`, as the pipeline does."""
    try:
        decoded = decode_image(record.path, channels=3)
    except UnreadableImageError as error:
        reason = _reason(error, record.path)
        return _with_problem(_with_header(record), _problem_kind(error, reason), reason)
    pixels = decoded.pixels
    height, width = pixels.shape[:2]
    small = thumbnail(pixels)
    record = replace(
        record,
        format=decoded.format,
        mode=decoded.mode,
        width=width,
        height=height,
        pixel_sha256=pixel_hash(pixels),
        phash=thumbnail_hash(small),
        thumbnail=small.tobytes(),
    )
    suffix = record.path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        message = (
            f"a {decoded.format} image named {suffix or 'without an extension'}, which the "
            f"input pipeline skips; rename it to one of {', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
        return _with_problem(record, "not_an_image", message)
    if min(width, height) < MIN_IMAGE_SIDE:
        message = f"{width}x{height} pixels, smaller than the {MIN_IMAGE_SIDE}-pixel minimum side"
        return _with_problem(record, "too_small", message)
    return record


def _with_header(record: ImageRecord) -> ImageRecord:
    """The format, mode and size a file's header gives, where Pillow can read it."""
    header = read_header(record.path)
    if header is None:
        return record
    return replace(
        record, format=header.format, mode=header.mode, width=header.width, height=header.height
    )


def _problem_kind(error: UnreadableImageError, reason: str) -> ProblemKind:
    """Pillow says "image file is truncated" or "Truncated File Read" for cut-off files."""
    if isinstance(error, NotAnImageError):
        return "not_an_image"
    if isinstance(error, ImageTooLargeError):
        return "too_large"
    return "truncated" if "truncated" in reason.lower() else "unreadable"


def _reason(error: UnreadableImageError, path: Path) -> str:
    """The error without its "cannot read image PATH: " prefix: the record names the file."""
    message = str(error)
    for prefix in (f"cannot read image {path}: ", f"cannot read DICOM file {path}: "):
        message = message.removeprefix(prefix)
    return message


def _with_problem(record: ImageRecord, kind: ProblemKind, message: str) -> ImageRecord:
    return replace(record, problem=kind, error=message)


def pixel_hash(pixels: NDArray[np.uint8]) -> str:
    """SHA-256 of an image's shape and pixel bytes: equal only for identical pixels."""
    digest = hashlib.sha256(repr(pixels.shape).encode("ascii"))
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


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


def image_hashes(
    paths: Iterable[Path],
    *,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> list[ImageRecord]:
    """Fingerprint every file, in order, with ``workers`` processes (default: one per CPU).

    Files go to the workers in chunks of :data:`CHUNK_SIZE`; ``progress`` is called
    with the number of files done after each chunk. ``workers=1`` hashes in this
    process, which is also what happens when there is only one chunk.
    """
    chunks = _chunks(list(paths), CHUNK_SIZE)
    total = sum(len(chunk) for chunk in chunks)
    processes = min(_worker_count(workers), len(chunks))
    if processes <= 1:
        return _collect(map(_hash_chunk, chunks), total, progress)
    with ProcessPoolExecutor(max_workers=processes) as pool:
        return _collect(pool.map(_hash_chunk, chunks), total, progress)


def _collect(
    chunks: Iterator[list[ImageRecord]], total: int, progress: ProgressCallback | None
) -> list[ImageRecord]:
    records: list[ImageRecord] = []
    for chunk in chunks:
        records.extend(chunk)
        if progress is not None:
            progress(len(records), total)
    return records


def _hash_chunk(paths: list[Path]) -> list[ImageRecord]:
    return [hash_image(path) for path in paths]


def _chunks(paths: list[Path], size: int) -> list[list[Path]]:
    return [paths[start : start + size] for start in range(0, len(paths), size)]


def _worker_count(workers: int | None) -> int:
    if workers is None:
        return (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    return workers


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


class NearMatch(NamedTuple):
    """A confirmed near duplicate of an image: the other image, pHash distance, similarity."""

    image: int
    distance: int
    similarity: float


class DuplicateGraph:
    """Usable records joined when they show the same image, exactly or nearly.

    Records with identical pixels collapse onto one *image* (``image_of``), so
    exact copies are joined whatever their thumbnails. Images whose pHashes lie
    within ``radius`` bits are candidates (:func:`candidate_pairs`); a candidate
    is a near duplicate when its detail similarity is at least ``min_similarity``.
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
