"""How fast `mritumor data check` hashes files and pairs hashes, and how the radius was chosen.

    python benchmarks/check_speed.py                      # speed table (20,000 tiny files)
    python benchmarks/check_speed.py --files 5000 --pairs 20000
    python benchmarks/check_speed.py --radius-study DIR   # pHash distances on real scans

The speed run writes tiny synthetic PNGs into a temporary standard-layout tree
(2% of them exact or re-encoded copies), times :func:`image_hashes` with one
and with all workers, the full :func:`check_dataset`, and the near-duplicate
pair search on random 64-bit hashes of several sizes.

The radius study hashes every image below DIR, prints how far common
re-encodings move a pHash (the distances a near duplicate shows) and how many
pairs of the distinct files fall within each radius (the false matches, once
the true duplicates among them are removed by eye).
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageFilter

from mritumor.data.check import check_dataset
from mritumor.data.files import iter_image_files, read_image
from mritumor.data.hashing import (
    DEFAULT_RADIUS,
    ImageRecord,
    duplicate_groups,
    hamming_distance,
    hamming_pairs,
    image_hashes,
    perceptual_hash,
)

CLASSES = ("glioma", "meningioma", "no_tumor", "pituitary")
Transform = Callable[[Image.Image], Image.Image]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=20_000, help="synthetic files to hash")
    parser.add_argument("--pairs", default="20000,50000,100000", help="hash counts to pair")
    parser.add_argument("--radius", type=int, default=DEFAULT_RADIUS)
    parser.add_argument("--repeat", type=int, default=1, help="report the best of N runs")
    parser.add_argument("--radius-study", type=Path, metavar="DIR", help="folder of real scans")
    arguments = parser.parse_args()
    if arguments.radius_study is not None:
        radius_study(arguments.radius_study)
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
        folder = root / "train" / CLASSES[index % len(CLASSES)]
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
        hashes = np.random.default_rng(count).integers(0, 2**63, count, dtype=np.uint64) * 2
        records = [
            ImageRecord(Path(str(index)), 1, "", pixel_sha256=str(index), phash=int(value))
            for index, value in enumerate(hashes.tolist())
        ]
        rows.append(
            ("hamming_pairs (XOR + popcount blocks)", count, timed_pairs(hashes, radius, repeat))
        )
        rows.append(
            ("duplicate_groups (pairs + components)", count, timed_groups(records, radius, repeat))
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
    "crop 2% of each border": lambda image: image.crop(
        (image.width // 50, image.height // 50, image.width * 49 // 50, image.height * 49 // 50)
    ),
}


def radius_study(folder: Path) -> None:
    """Distances of transformed copies, then counts of distinct pairs within each radius."""
    paths = list(iter_image_files(folder))
    if len(paths) < 2:
        raise SystemExit(f"need at least two images below {folder} (symlinked folders are skipped)")
    images = [Image.fromarray(read_image(path)) for path in paths]
    originals = [perceptual_hash(np.asarray(image)) for image in images]
    print(f"{len(paths)} images below {folder}\n")
    print("| copy made by | median | p99 | max | share within 4 | share within 6 |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, transform in TRANSFORMS.items():
        distances = np.array(
            [
                hamming_distance(original, perceptual_hash(np.asarray(transform(image))))
                for original, image in zip(originals, images, strict=True)
            ]
        )
        print(
            f"| {name} | {np.median(distances):.0f} | {np.percentile(distances, 99):.0f} "
            f"| {distances.max()} | {np.mean(distances <= 4):.1%} | {np.mean(distances <= 6):.1%} |"
        )
    first, second, distance = hamming_pairs(np.array(originals, dtype=np.uint64), 12)
    total = len(paths) * (len(paths) - 1) // 2
    print(f"\nPairs of files (of {total:,}) within each radius; inspect these by eye:")
    for radius in range(0, 13, 2):
        print(f"  radius {radius:2d}: {int(np.sum(distance <= radius)):5d}")
    print("\nClosest pairs:")
    for index in np.argsort(distance, kind="stable")[:30]:
        a, b = paths[first[index]], paths[second[index]]
        print(f"  {distance[index]:2d}  {a.relative_to(folder)}  {b.relative_to(folder)}")


if __name__ == "__main__":
    main()
