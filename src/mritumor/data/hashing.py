"""Fingerprints of image files and the search for duplicates among them.

Every file gets three fingerprints:

* ``sha256`` of the file bytes (what a backup tool would compare);
* ``pixel_sha256`` of the decoded pixels, exactly as the input pipeline sees them
  (:func:`mritumor.data.files.read_image`, RGB). Two files with equal pixel hashes
  are *exact* duplicates even when their bytes differ: a PNG re-saved as BMP, or a
  PNG copy named ``.jpg``;
* a 64-bit perceptual hash (pHash) for *near* duplicates: the image is converted
  to grayscale, shrunk to 32x32, transformed with a 2-D DCT, and the 8x8
  lowest-frequency coefficients are compared with their median, one bit each.
  Re-encoding, slight resizing or a small brightness change moves few bits;
  different images differ in about half of them.

Near duplicates are pairs whose pHashes differ in at most ``radius`` bits
(Hamming distance). The pair search is vectorised: XOR and popcount over blocks
of a ``uint64`` array, so it never loops over pairs in Python.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np
from numpy.typing import NDArray

from mritumor.data.files import IMAGE_EXTENSIONS, UnreadableImageError, read_image
from mritumor.progress import ProgressCallback

ProblemKind = Literal["unreadable", "truncated", "zero_bytes", "not_an_image"]
PROBLEM_KINDS: tuple[ProblemKind, ...] = get_args(ProblemKind)

#: Largest pHash Hamming distance still called a near duplicate, measured on 400 Kaggle
#: Masoud scans (docs/data/check.md): re-encoded, resized, blurred and brightened copies
#: stay within 4 bits (gamma 0.8: 96%); of the 9 pairs of files within 4 bits, 8 are one
#: scan saved twice and 1 is two adjacent slices, while at 6 bits 9 of 20 pairs differ.
DEFAULT_RADIUS = 4
HASH_BITS = 64
HASH_SHAPE = (32, 32)
HASH_LOW_FREQUENCIES = 8
#: Files per task sent to a worker process: large enough to amortise pickling,
#: small enough for a progress bar that moves.
CHUNK_SIZE = 64
#: XORs per block of the pair search (512 KiB of uint64): bounded memory at any n.
PAIR_BLOCK_ELEMENTS = 1 << 16

_BYTE_POPCOUNT = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint8)


@dataclass(frozen=True)
class ImageRecord:
    """What one file is: its size, hashes and header facts, or why it cannot be used.

    ``problem`` is ``None`` for a file the input pipeline can load; only those take
    part in the duplicate search. The hashes and header facts are filled in as far
    as the file allowed (an image with a non-image extension still has them).
    """

    path: Path
    size_bytes: int
    sha256: str | None
    pixel_sha256: str | None = None
    phash: int | None = None
    format: str | None = None
    mode: str | None = None
    width: int | None = None
    height: int | None = None
    problem: ProblemKind | None = None
    error: str | None = None

    @property
    def usable(self) -> bool:
        """True when the pipeline can load the file and it has a perceptual hash."""
        return self.problem is None and self.phash is not None


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
        return _decode(record, data)


def _decode(record: ImageRecord, data: bytes) -> ImageRecord:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            format_, mode, (width, height) = image.format, image.mode, image.size
    except UnidentifiedImageError:
        return _with_problem(record, "not_an_image", "not an image Pillow can identify")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return _with_problem(record, _decode_problem(error), str(error))
    record = replace(record, format=format_, mode=mode, width=width, height=height)
    try:
        pixels = read_image(record.path, channels=3)
    except UnreadableImageError as error:
        message = str(error).removeprefix(f"cannot read image {record.path}: ")
        return _with_problem(record, _decode_problem(error), message)
    record = replace(record, pixel_sha256=pixel_hash(pixels), phash=perceptual_hash(pixels))
    suffix = record.path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        message = (
            f"a {format_} image named {suffix or 'without an extension'}, which the input "
            f"pipeline skips; rename it to one of {', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
        return _with_problem(record, "not_an_image", message)
    return record


def _decode_problem(error: Exception) -> ProblemKind:
    """Pillow says "image file is truncated" or "Truncated File Read" for cut-off files."""
    return "truncated" if "truncated" in str(error).lower() else "unreadable"


def _with_problem(record: ImageRecord, kind: ProblemKind, message: str) -> ImageRecord:
    return replace(record, problem=kind, error=message)


def pixel_hash(pixels: NDArray[np.uint8]) -> str:
    """SHA-256 of an image's shape and pixel bytes: equal only for identical pixels."""
    digest = hashlib.sha256(repr(pixels.shape).encode("ascii"))
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


def perceptual_hash(pixels: NDArray[np.uint8]) -> int:
    """64-bit pHash of an ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` uint8 image.

    Grayscale, 32x32, 2-D DCT-II, the 8x8 lowest frequencies against their
    median; the first coefficient is the most significant bit. The shrink is
    Lanczos after a box reduction to at most twice the size (``reducing_gap``),
    five times faster than Lanczos alone on 512x512 scans and as robust.
    """
    import scipy.fft
    from PIL import Image

    planes = pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels
    gray = Image.fromarray(np.ascontiguousarray(planes)).convert("L")
    small = np.asarray(
        gray.resize(HASH_SHAPE, Image.Resampling.LANCZOS, reducing_gap=2.0), np.float64
    )
    spectrum = scipy.fft.dct(scipy.fft.dct(small, axis=0), axis=1)
    low = spectrum[:HASH_LOW_FREQUENCIES, :HASH_LOW_FREQUENCIES]
    bits = np.packbits(low > np.median(low))
    return int.from_bytes(bits.tobytes(), "big")


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


class HashGraph:
    """Usable records joined when their perceptual hashes lie within ``radius`` bits.

    Records are collapsed onto their distinct pHash values first (exact copies
    share one value), the pair search runs over those values, and groups are the
    connected components of the resulting graph: if a~b and b~c, then a, b and c
    share a group even when a and c are further apart than the radius.
    """

    def __init__(self, records: Sequence[ImageRecord], radius: int) -> None:
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        usable = [index for index, record in enumerate(records) if record.usable]
        hashes = np.array([records[index].phash for index in usable], dtype=np.uint64)
        values, inverse = np.unique(hashes, return_inverse=True)
        self.radius = radius
        self.values: NDArray[np.uint64] = values
        self.value_of: NDArray[np.intp] = np.full(len(records), -1, dtype=np.intp)
        self.value_of[usable] = inverse
        first, second, distance = hamming_pairs(values, radius)
        # Distinct values are at least one bit apart, so no stored distance is a sparse zero.
        edges = coo_matrix((distance, (first, second)), shape=(len(values), len(values)))
        self._adjacency = (edges + edges.T).tocsr()
        self._component: NDArray[np.intp] = connected_components(self._adjacency, directed=False)[1]

    def neighbours(self, value: int) -> list[tuple[int, int]]:
        """``(other value, distance)`` for every distinct hash within the radius of ``value``."""
        start, stop = self._adjacency.indptr[value], self._adjacency.indptr[value + 1]
        others = self._adjacency.indices[start:stop]
        distances = self._adjacency.data[start:stop]
        return [(int(other), int(d)) for other, d in zip(others, distances, strict=True)]

    def group_ids(self) -> list[int]:
        """A group id per record, numbered by first appearance; unusable records stand alone."""
        numbering: dict[tuple[str, int], int] = {}
        ids = []
        for index, value in enumerate(self.value_of.tolist()):
            key = ("component", int(self._component[value])) if value >= 0 else ("alone", index)
            ids.append(numbering.setdefault(key, len(numbering)))
        return ids


def duplicate_groups(records: Sequence[ImageRecord], *, radius: int = DEFAULT_RADIUS) -> list[int]:
    """A group id per record such that exact and near duplicates share a group.

    Meant for grouped cross-validation (``StratifiedGroupKFold(groups=...)``): no
    duplicate pair can then straddle a fold boundary. Files that are not usable
    images each get a group of their own.
    """
    return HashGraph(records, radius).group_ids()
