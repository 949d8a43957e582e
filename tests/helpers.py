"""Small helpers shared by several test modules (images to plant, rich tables to read)."""

from __future__ import annotations

import functools
import struct
import zlib
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image


def smooth_image(seed: int, size: int = 64) -> NDArray[np.uint8]:
    """A random smooth RGB image: distinct seeds give unrelated low frequencies."""
    coarse = np.random.default_rng(seed).integers(0, 256, (6, 6), dtype=np.uint8)
    gray = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(gray.convert("RGB"))


def save(path: Path, pixels: NDArray[np.uint8], format: str = "PNG", **options: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=format, **options)
    return path


@functools.cache
def blank_png(width: int, height: int) -> bytes:
    """A valid black PNG of any size, 1 bit per pixel, built row by row: a few KB.

    A 14000x14000 one (a decompression bomb to Pillow) costs no memory to make;
    Pillow only has to read its header to refuse it.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        checksum = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + checksum

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    row = bytes(1 + (width + 7) // 8)  # filter type 0, then the packed bits
    compressor = zlib.compressobj(9)
    rows, rest = divmod(height, 256)
    data = b"".join(compressor.compress(row * 256) for _ in range(rows))
    data += compressor.compress(row * rest) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def write_bomb(path: Path, side: int = 14_000) -> Path:
    """``path`` holding :func:`blank_png` of ``side`` x ``side`` pixels (Pillow's limit: 9459²)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blank_png(side, side))
    return path


def table_names(text: str) -> list[str]:
    """First column of the rows of a rich table."""
    names = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) > 2 and cells[1] and cells[1] != "name":
            names.append(cells[1])
    return names


def build_run(run_dir: Path, data_root: Path, *, dropout: float = 0.0, seed: int = 1) -> Path:
    """A run directory as ``train`` leaves it, holding an untrained 32-px small_cnn.

    Built, not trained: tests of eval, infer and friends check wiring and
    files, and recompute the numbers themselves. TensorFlow is imported here,
    only by the modules that use this.
    """
    from mritumor.config.settings import load_settings
    from mritumor.data.files import CLASS_NAMES
    from mritumor.data.splits import load_split
    from mritumor.models.classifier import build_classifier
    from mritumor.run import bundle as bundles

    settings = load_settings(
        None,
        {
            "model": {"backbone": "small_cnn", "weights": "none", "dropout": dropout},
            "data": {"image_size": 32},
            "paths": {"data_dir": data_root},
            "seed": seed,
        },
    ).settings
    import keras

    keras.utils.set_random_seed(seed)
    run_dir.mkdir(parents=True)
    build_classifier(settings).save(run_dir / bundles.MODEL_FILE)
    splits = [load_split(data_root, name, CLASS_NAMES) for name in ("train", "val", "test")]
    bundles.write_config(run_dir, settings)
    bundles.write_splits(run_dir, data_root, splits)
    bundles.write_bundle(run_dir, bundles.new_bundle(settings, "train"))
    return run_dir
