"""How fast `mritumor data check` hashes files and pairs hashes; how radius and threshold were chosen.

    python benchmarks/check_speed.py                      # speed table (20,000 tiny files)
    python benchmarks/check_speed.py --files 5000 --pairs 20000
    python benchmarks/check_speed.py --radius-study DIR   # near duplicates: copies vs distinct

The speed run writes tiny synthetic PNGs into a temporary standard-layout tree
(2% of them exact or re-encoded copies), times :func:`image_hashes` with one
and with all workers, the full :func:`check_dataset`, and the near-duplicate
search (candidate pairs plus the detail check) on random 64-bit hashes.

The radius study reads every image below DIR (real scans) and prints three tables:
how far common edits move a copy's pHash and how similar its detail stays (what a
near duplicate looks like); how many pairs of the files are candidates within each
radius and how many the detail check confirms, with the most similar pairs listed
for inspection by eye; and the same for every pair of ``--synthetic`` distinct
phantoms written by :func:`write_synthetic_dataset`, none of which may be confirmed.
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import tempfile
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageFilter

from mritumor.core.classes import CLASS_NAMES
from mritumor.data.check.analysis import check_dataset
from mritumor.data.duplicates.groups import DEFAULT_RADIUS, MIN_SIMILARITY, duplicate_groups
from mritumor.data.duplicates.hashing import ImageRecord, image_hashes
from mritumor.data.duplicates.perceptual import (
    HASH_BITS,
    THUMBNAIL_SHAPE,
    detail_vectors,
    hamming_distance,
    hamming_pairs,
    popcount,
    thumbnail,
    thumbnail_hash,
)
from mritumor.data.files import iter_image_files
from mritumor.data.images import read_image
from mritumor.data.synth.writer import SynthConfig, write_synthetic_dataset

Transform = Callable[[Image.Image], Image.Image]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=20_000, help="synthetic files to hash")
    parser.add_argument("--pairs", default="20000,50000,100000", help="hash counts to pair")
    parser.add_argument("--radius", type=int, default=DEFAULT_RADIUS)
    parser.add_argument("--repeat", type=int, default=1, help="report the best of N runs")
    parser.add_argument("--min-similarity", type=float, default=MIN_SIMILARITY)
    parser.add_argument("--radius-study", type=Path, metavar="DIR", help="folder of real scans")
    parser.add_argument("--synthetic", type=int, default=1000, help="phantoms for the study")
    arguments = parser.parse_args()
    if arguments.radius_study is not None:
        radius_study(
            arguments.radius_study,
            arguments.synthetic,
            arguments.radius,
            arguments.min_similarity,
        )
        return
    counts = [int(count) for count in arguments.pairs.split(",")]
    rows = hashing_rows(arguments.files, arguments.radius, arguments.repeat)
    rows += pairing_rows(counts, arguments.radius, arguments.repeat)
    print(f"{os.cpu_count()} CPUs, radius {arguments.radius}, best of {arguments.repeat}\n")
    print(f"| {'step':<52} | {'items':>7} | {'seconds':>7} |")
    print(f"|{'-' * 54}|{'-' * 8}:|{'-' * 8}:|")
    for step, items, seconds in rows:
        print(f"| {step:<52} | {items:>7,} | {seconds:>7.2f} |")


def hashing_rows(count: int, radius: int, repeat: int) -> list[tuple[str, int, float]]:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        paths = write_synthetic_tree(root, count)
        workers = os.cpu_count() or 1
        image_hashes(paths[:8], workers=1)  # imports and first-call costs stay out of the table
        rows = [
            (
                "image_hashes, 1 worker",
                count,
                timed(lambda: image_hashes(paths, workers=1), repeat),
            ),
            (
                f"image_hashes, {workers} workers",
                count,
                timed(lambda: image_hashes(paths, workers=workers), repeat),
            ),
            (
                f"check_dataset, {workers} workers (hash + pair + report)",
                count,
                timed(lambda: check_dataset(root, radius=radius, workers=workers), repeat),
            ),
        ]
    return rows


def write_synthetic_tree(root: Path, count: int) -> list[Path]:
    """Tiny 32x32 PNGs in train/<class>/; every 50th repeats an earlier image as JPEG."""
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        folder = root / "train" / CLASS_NAMES[index % len(CLASS_NAMES)]
        folder.mkdir(parents=True, exist_ok=True)
        seed = index - 7 if index % 50 == 49 else index
        pixels = smooth_image(np.random.default_rng(seed))
        format_ = "JPEG" if seed != index and rng.random() < 0.5 else "PNG"
        path = folder / f"{index:06d}.{'jpg' if format_ == 'JPEG' else 'png'}"
        Image.fromarray(pixels).save(path, format=format_)
        paths.append(path)
    return paths


def smooth_image(rng: np.random.Generator, size: int = 32) -> NDArray[np.uint8]:
    coarse = rng.integers(0, 256, (6, 6), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))


def pairing_rows(counts: list[int], radius: int, repeat: int) -> list[tuple[str, int, float]]:
    rows = []
    for count in counts:
        rng = np.random.default_rng(count)
        hashes = rng.integers(0, 2**63, count, dtype=np.uint64) * 2
        small = rng.integers(0, 256, THUMBNAIL_SHAPE, dtype=np.uint8).tobytes()
        records = [
            ImageRecord(Path(str(i)), 1, "", pixel_sha256=str(i), phash=int(value), thumbnail=small)
            for i, value in enumerate(hashes.tolist())
        ]
        rows.append(
            ("hamming_pairs (XOR + popcount blocks)", count, timed_pairs(hashes, radius, repeat))
        )
        rows.append(
            (
                "duplicate_groups (pairs + detail check + groups)",
                count,
                timed_groups(records, radius, repeat),
            )
        )
    python_count = 3_000
    hashes = np.random.default_rng(1).integers(0, 2**63, python_count, dtype=np.uint64).tolist()
    loop = timed(lambda: python_double_loop(hashes, radius), repeat)
    rows.append(("Python double loop, for comparison", python_count, loop))
    return rows


def timed_pairs(hashes: NDArray[np.uint64], radius: int, repeat: int) -> float:
    return timed(lambda: hamming_pairs(hashes, radius), repeat)


def timed_groups(records: list[ImageRecord], radius: int, repeat: int) -> float:
    return timed(lambda: duplicate_groups(records, radius=radius), repeat)


def python_double_loop(hashes: list[int], radius: int) -> int:
    return sum(1 for a, b in itertools.combinations(hashes, 2) if hamming_distance(a, b) <= radius)


def timed(work: Callable[[], object], repeat: int) -> float:
    """Seconds of the fastest of ``repeat`` runs: other load on the machine only adds time."""
    return min(timeit.repeat(work, number=1, repeat=repeat))


def reencode(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def scaled(image: Image.Image, factor: float) -> Image.Image:
    size = (round(image.width * factor), round(image.height * factor))
    return image.resize(size, Image.Resampling.BILINEAR)


def pointwise(image: Image.Image, function: Callable[[NDArray[np.float64]], object]) -> Image.Image:
    values = np.asarray(function(np.asarray(image, dtype=np.float64)))
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))


def cropped(image: Image.Image, share: float) -> Image.Image:
    left, top = round(image.width * share), round(image.height * share)
    return image.crop((left, top, image.width - left, image.height - top))


#: Edits a copy of a scan may have gone through; those above the line must be found.
TRANSFORMS: dict[str, Transform] = {
    "JPEG quality 90": lambda image: reencode(image, 90),
    "JPEG quality 75": lambda image: reencode(image, 75),
    "JPEG quality 50": lambda image: reencode(image, 50),
    "resize to 95%": lambda image: scaled(image, 0.95),
    "resize to 50%": lambda image: scaled(image, 0.5),
    "resize to 110%": lambda image: scaled(image, 1.1),
    "brightness +3": lambda image: pointwise(image, lambda v: v + 3),
    "brightness +10": lambda image: pointwise(image, lambda v: v + 10),
    "contrast x1.2": lambda image: pointwise(image, lambda v: v * 1.2),
    "gamma 0.8": lambda image: pointwise(image, lambda v: 255 * (v / 255) ** 0.8),
    "Gaussian blur, radius 1": lambda image: image.filter(ImageFilter.GaussianBlur(1)),
}
#: Stronger edits, to show where detection ends.
STRONGER_TRANSFORMS: dict[str, Transform] = {
    "JPEG quality 20": lambda image: reencode(image, 20),
    "resize to 25%": lambda image: scaled(image, 0.25),
    "brightness +25": lambda image: pointwise(image, lambda v: v + 25),
    "contrast x1.5": lambda image: pointwise(image, lambda v: v * 1.5),
    "gamma 0.6": lambda image: pointwise(image, lambda v: 255 * (v / 255) ** 0.6),
    "gamma 1.5": lambda image: pointwise(image, lambda v: 255 * (v / 255) ** 1.5),
    "Gaussian blur, radius 2": lambda image: image.filter(ImageFilter.GaussianBlur(2)),
    "crop 2% of each border": lambda image: cropped(image, 0.02),
}


@dataclass(frozen=True)
class Fingerprints:
    """Thumbnails and pHashes of a set of images, and the detail similarity of every pair."""

    names: list[str]
    thumbnails: NDArray[np.uint8]
    hashes: NDArray[np.uint64]

    @classmethod
    def of_pixels(cls, names: list[str], images: list[NDArray[np.uint8]]) -> Fingerprints:
        thumbnails = np.stack([thumbnail(pixels) for pixels in images])
        hashes = np.array([thumbnail_hash(small) for small in thumbnails], dtype=np.uint64)
        return cls(names, thumbnails, hashes)

    @classmethod
    def of_records(cls, names: list[str], records: list[ImageRecord]) -> Fingerprints:
        thumbnails = np.stack(
            [np.frombuffer(record.thumbnail or b"", np.uint8) for record in records]
        )
        hashes = np.array([record.phash for record in records], dtype=np.uint64)
        return cls(names, thumbnails.reshape(-1, *THUMBNAIL_SHAPE), hashes)

    def all_pairs(
        self,
    ) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.uint8], NDArray[np.float32]]:
        """``(i, j, pHash distance, detail similarity)`` of every pair ``i < j``."""
        first, second, distance = hamming_pairs(self.hashes, HASH_BITS)
        vectors = detail_vectors(self.thumbnails)
        return first, second, distance, (vectors @ vectors.T)[first, second]


def radius_study(folder: Path, synthetic: int, radius: int, min_similarity: float) -> None:
    """How copies of real scans score, and how distinct real scans and phantoms do."""
    paths = list(iter_image_files(folder))
    if len(paths) < 2:
        raise SystemExit(f"need at least two images below {folder} (symlinked folders are skipped)")
    images = [read_image(path) for path in paths]
    scans = Fingerprints.of_pixels([path.relative_to(folder).as_posix() for path in paths], images)
    print(f"{len(paths)} images below {folder}; radius {radius}, min similarity {min_similarity}\n")
    copies_table(scans, images, radius, min_similarity)
    pairs_table(scans, radius, min_similarity)
    phantoms_table(synthetic, radius, min_similarity)


def copies_table(
    scans: Fingerprints, images: list[NDArray[np.uint8]], radius: int, min_similarity: float
) -> None:
    """pHash distance and detail similarity between each scan and an edited copy of it."""
    originals = detail_vectors(scans.thumbnails)
    print("| copy made by | distance: median | max | similarity: min | 1st percentile | found |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, transform in {**TRANSFORMS, **STRONGER_TRANSFORMS}.items():
        copy = [np.asarray(transform(Image.fromarray(pixels)).convert("RGB")) for pixels in images]
        copies = Fingerprints.of_pixels(scans.names, copy)
        distance = popcount(scans.hashes ^ copies.hashes)
        similarity = np.einsum("ij,ij->i", originals, detail_vectors(copies.thumbnails))
        found = (distance <= radius) & (similarity >= min_similarity)
        print(
            f"| {name} | {np.median(distance):.0f} | {distance.max()} | {similarity.min():.3f} "
            f"| {np.percentile(similarity, 1):.3f} | {found.mean():.1%} |"
        )


def pairs_table(scans: Fingerprints, radius: int, min_similarity: float) -> None:
    """Pairs of the real scans: candidates and confirmed pairs per radius, then the closest."""
    first, second, distance, similarity = scans.all_pairs()
    confirmed = similarity >= min_similarity
    print(f"\nPairs of files (of {len(first):,}): candidates within each radius, and confirmed")
    print("| radius | candidates | confirmed |\n|---:|---:|---:|")
    for bits in range(0, 13, 2):
        within = distance <= bits
        print(f"| {bits} | {int(within.sum())} | {int((within & confirmed).sum())} |")
    print(
        f"\nMost similar pairs at any distance (inspect by eye; * = confirmed at radius {radius}):"
    )
    for index in np.argsort(-similarity, kind="stable")[:25]:
        mark = "*" if confirmed[index] and distance[index] <= radius else " "
        print(
            f"  {mark} {similarity[index]:.3f} {distance[index]:2d} bits  "
            f"{scans.names[first[index]]}  {scans.names[second[index]]}"
        )


def phantoms_table(count: int, radius: int, min_similarity: float) -> None:
    """Every pair of ``count`` distinct synthetic phantoms: none may be confirmed."""
    with tempfile.TemporaryDirectory() as folder:
        per_class = max(1, count // len(CLASS_NAMES))
        config = SynthConfig(train=per_class, val=0, test=0, seed=2024)
        write_synthetic_dataset(Path(folder), config, workers=os.cpu_count())
        paths = sorted(path for path in Path(folder, "train").rglob("*") if path.is_file())
        records = image_hashes(paths, workers=os.cpu_count())
    phantoms = Fingerprints.of_records([path.parent.name for path in paths], records)
    first, second, distance, similarity = phantoms.all_pairs()
    same_class = np.array(phantoms.names)[first] == np.array(phantoms.names)[second]
    print(f"\n{len(paths)} distinct synthetic phantoms ({per_class} per class, 256 px), all pairs:")
    print(
        "| pairs | count | similarity: max | 99.9th percentile | within radius | their max | confirmed |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, chosen in (("same class", same_class), ("different classes", ~same_class)):
        scores, near = similarity[chosen], distance[chosen] <= radius
        near_max = f"{scores[near].max():.3f}" if near.any() else "-"
        confirmed = int((near & (scores >= min_similarity)).sum())
        print(
            f"| {label} | {len(scores):,} | {scores.max():.3f} | {np.percentile(scores, 99.9):.3f} "
            f"| {int(near.sum())} | {near_max} | {confirmed} |"
        )


if __name__ == "__main__":
    main()
