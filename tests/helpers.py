"""Small helpers shared by several test modules (images to plant, rich tables to read)."""

from __future__ import annotations

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


def table_names(text: str) -> list[str]:
    """First column of the rows of a rich table."""
    names = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) > 2 and cells[1] and cells[1] != "name":
            names.append(cells[1])
    return names
