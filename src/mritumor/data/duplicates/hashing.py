"""Fingerprints of image files: what each file is, read as the input pipeline reads it.

Every file gets four fingerprints:

* ``sha256`` of the file bytes (what a backup tool would compare);
* ``pixel_sha256`` of the decoded pixels, exactly as the input pipeline sees them
  (:func:`mritumor.data.images.read_image`, RGB). Two files with equal pixel hashes
  are *exact* duplicates even when their bytes differ: a PNG re-saved as BMP, or a
  PNG copy named ``.jpg``;
* a 32x32 grayscale ``thumbnail`` and its 64-bit perceptual hash (pHash), for the
  near-duplicate search (:mod:`mritumor.data.duplicates.perceptual`, :mod:`mritumor.data.duplicates.groups`).

A file that is not a usable image gets a record that says why (:data:`PROBLEM_KINDS`).
Files are fingerprinted in worker processes (:func:`image_hashes`).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np
from numpy.typing import NDArray

from mritumor.core.progress import ProgressCallback
from mritumor.data.duplicates.perceptual import thumbnail, thumbnail_hash
from mritumor.data.files import IMAGE_EXTENSIONS
from mritumor.data.image_errors import ImageTooLargeError, NotAnImageError, UnreadableImageError
from mritumor.data.images import MIN_IMAGE_SIDE, decode_image, read_header

ProblemKind = Literal[
    "unreadable", "truncated", "zero_bytes", "not_an_image", "too_large", "too_small"
]
PROBLEM_KINDS: tuple[ProblemKind, ...] = get_args(ProblemKind)

#: Files per task sent to a worker process: large enough to amortise pickling,
#: small enough for a progress bar that moves.
CHUNK_SIZE = 64


@dataclass(frozen=True)
class ImageRecord:
    """What one file is: its size, hashes and header facts, or why it cannot be used.

    ``problem`` is ``None`` for a usable image: one the input pipeline loads, at least
    :data:`~mritumor.data.images.MIN_IMAGE_SIDE` pixels on each side; only those take
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
    """Read the file through :func:`~mritumor.data.images.read_image`, as the pipeline does."""
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

    The workers are spawned, not forked: ``eval`` hashes after TensorFlow has started
    its threads, and a fork copies whatever lock one of them held at that moment,
    which can leave the child waiting on it for ever.
    """
    chunks = _chunks(list(paths), CHUNK_SIZE)
    total = sum(len(chunk) for chunk in chunks)
    processes = min(_worker_count(workers), len(chunks))
    if processes <= 1:
        return _collect(map(_hash_chunk, chunks), total, progress)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
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
