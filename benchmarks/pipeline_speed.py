"""Input-pipeline throughput: decode + resize + augment at 224 px, against a plain PIL loop.

Run: python benchmarks/pipeline_speed.py [--images 512] [--source-size 512]

Both sides do the same work per image: decode the file (Pillow), resize to
224 x 224, and apply a random flip and a small rotation. The pipeline runs
without a cache, so every epoch pays the decode; with the default memory cache
only the first epoch does.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mritumor.config.schema import AugmentSettings
from mritumor.core.classes import CLASS_NAMES
from mritumor.core.environment import import_tensorflow
from mritumor.data.images import read_image
from mritumor.data.splits import load_split


def write_images(root: Path, count: int, size: int) -> None:
    """Smooth random grayscale and RGB JPEGs, spread over four class folders."""
    rng = np.random.default_rng(0)
    for index in range(count):
        folder = root / "train" / CLASS_NAMES[index % len(CLASS_NAMES)]
        folder.mkdir(parents=True, exist_ok=True)
        noise = rng.random((size // 8, size // 8))
        image = Image.fromarray((noise * 255).astype(np.uint8)).resize((size, size))
        if index % 2:
            image = image.convert("RGB")
        image.save(folder / f"{index}.jpg", quality=90)


def pil_loop(paths: list[Path], size: int) -> float:
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for path in paths:
        image = Image.fromarray(read_image(path, 3)).resize((size, size), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image = image.rotate(rng.uniform(-18, 18), resample=Image.Resampling.BILINEAR)
        np.asarray(image, dtype=np.float32)
    return len(paths) / (time.perf_counter() - start)


def pipeline_epochs(root: Path, size: int, cache: str, epochs: int) -> list[float]:
    """Images/s of each of ``epochs`` passes over the training pipeline."""
    import_tensorflow()
    from mritumor.core.preprocessing import Preprocessing
    from mritumor.data.input_pipeline import PipelineOptions, build_pipeline

    split = load_split(root, "train", CLASS_NAMES)
    augment = AugmentSettings(zoom=0.0, brightness=0.0, contrast=0.0)
    options = PipelineOptions(
        preprocessing=Preprocessing(image_size=size, channels=3, resize="plain"),
        batch_size=32,
        seed=0,
        cache=cache,  # type: ignore[arg-type]
        augment=augment,
    )
    dataset = build_pipeline(split, options).dataset
    rates = []
    for _ in range(epochs):
        start = time.perf_counter()
        count = sum(int(batch[0].shape[0]) for batch in dataset)
        rates.append(count / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--source-size", type=int, default=512)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_images(root, args.images, args.source_size)
        paths = sorted((root / "train").rglob("*.jpg"))
        baseline = pil_loop(paths, args.size)
        uncached = pipeline_epochs(root, args.size, "none", 2)[-1]
        first, cached = pipeline_epochs(root, args.size, "memory", 2)
    print(f"{args.images} JPEGs of {args.source_size} px -> {args.size} px, flip + rotation")
    print("| method | images/s | vs PIL loop |\n|---|---|---|")
    print(f"| PIL loop (decode, resize, augment) | {baseline:.0f} | 1.00 |")
    rows = (
        ("pipeline, no cache", uncached),
        ("pipeline, memory cache, first epoch", first),
        ("pipeline, memory cache, later epochs", cached),
    )
    for name, rate in rows:
        print(f"| {name} | {rate:.0f} | {rate / baseline:.2f} |")


if __name__ == "__main__":
    main()
