"""Small helpers shared by several test modules (images to plant, rich tables to read, runs)."""

from __future__ import annotations

import functools
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

if TYPE_CHECKING:
    from mritumor.run.bundle import Bundle


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
    from mritumor.config.loading import load_settings
    from mritumor.core.classes import CLASS_NAMES
    from mritumor.data.splits import load_split
    from mritumor.models.classifier import build_classifier
    from mritumor.run.bundle import new_bundle, write_bundle, write_config
    from mritumor.run.layout import MODEL_FILE
    from mritumor.run.splits import write_splits

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
    build_classifier(settings).save(run_dir / MODEL_FILE)
    splits = [load_split(data_root, name, CLASS_NAMES) for name in ("train", "val", "test")]
    write_config(run_dir, settings)
    write_splits(run_dir, data_root, splits)
    write_bundle(run_dir, new_bundle(settings, "train"))
    return run_dir


def make_bundle(**changes: Any) -> Bundle:
    """A valid 4-class bundle (fixed time, versions and commit); ``changes`` replace fields."""
    from mritumor.core.classes import CLASS_NAMES
    from mritumor.run.bundle import Bundle

    values: dict[str, Any] = {
        "command": "train",
        "class_names": list(CLASS_NAMES),
        "negative_class": "no_tumor",
        "image_size": 224,
        "channels": 3,
        "resize": "pad",
        "backbone": "v2b0",
        "created": "2025-01-02T03:04:05+00:00",
        "versions": {"mritumor": "0.1.0"},
        "git_commit": None,
        **changes,
    }
    return Bundle(**values)
