"""The one image reader (mritumor.data.images): pixel limit, EXIF orientation, tiny images."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import save, write_bomb
from mritumor.data.image_errors import ImageTooLargeError, UnreadableImageError
from mritumor.data.images import (
    MIN_IMAGE_SIDE,
    decode_image,
    image_size,
    read_image,
    small_image_note,
)

LIMIT = Image.MAX_IMAGE_PIXELS
ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Over twice Pillow's limit (Pillow raises), over it (Pillow warns), and under it."""
    folder = tmp_path_factory.mktemp("bombs")
    return {
        "error": write_bomb(folder / "huge.png", 14_000),
        "warning": write_bomb(folder / "large.png", 10_000),
        "fine": write_bomb(folder / "big.png", 8_000),
    }


def test_an_image_over_twice_the_limit_is_one_unreadable_error(bombs: dict[str, Path]) -> None:
    path = bombs["error"]
    with pytest.raises(ImageTooLargeError) as raised:
        read_image(path)
    assert str(raised.value) == (
        f"cannot read image {path}: over the {LIMIT}-pixel limit (decompression-bomb guard)"
    )
    assert isinstance(raised.value, UnreadableImageError)


def test_an_image_pillow_only_warns_about_is_refused_alike(bombs: dict[str, Path]) -> None:
    path = bombs["warning"]
    # The filters in force, recorded: Pillow's warning would only repeat the error.
    with (
        warnings.catch_warnings(record=True) as caught,
        pytest.raises(ImageTooLargeError) as raised,
    ):
        read_image(path, channels=1)
    assert str(raised.value) == (
        f"cannot read image {path}: 10000x10000 pixels is over the {LIMIT}-pixel limit "
        "(decompression-bomb guard)"
    )
    assert not caught
    with warnings.catch_warnings(), pytest.raises(ImageTooLargeError, match="pixel limit"):
        warnings.simplefilter("error")  # as under `python -W error`: Pillow raises its warning
        read_image(path, channels=1)


def test_an_image_under_the_limit_still_loads(bombs: dict[str, Path]) -> None:
    pixels = read_image(bombs["fine"], channels=1)

    assert pixels.shape == (8_000, 8_000, 1) and pixels.max() == 0


def jpeg_with_orientation(path: Path, pixels: np.ndarray, orientation: int | None) -> Path:
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    Image.fromarray(pixels).save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return path


def test_exif_orientation_6_is_read_upright(tmp_path: Path) -> None:
    stored = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high; the right half white
    stored[:, 20:] = 255
    sideways = jpeg_with_orientation(tmp_path / "sideways.jpg", stored, 6)
    plain = jpeg_with_orientation(tmp_path / "plain.jpg", stored, None)

    upright = read_image(sideways)

    assert upright.shape == (40, 20, 3)  # height and width swapped
    # Orientation 6: the camera was turned, the picture is shown rotated 90° clockwise.
    np.testing.assert_array_equal(upright, np.rot90(read_image(plain), k=-1))
    assert upright[:20].mean() < 30 and upright[20:].mean() > 225  # the white half at the bottom
    assert decode_image(sideways).format == "JPEG"


def test_an_exif_block_pillow_cannot_parse_leaves_the_image_as_stored(tmp_path: Path) -> None:
    stored = np.zeros((20, 40, 3), np.uint8)
    path = tmp_path / "odd exif.jpg"
    Image.fromarray(stored).save(path, format="JPEG", exif=b"Exif\x00\x00not a TIFF header")

    assert read_image(path).shape == (20, 40, 3)


def test_a_tiny_image_loads_with_a_note(tmp_path: Path) -> None:
    tiny = save(tmp_path / "tiny.png", np.full((1, 1, 3), 200, np.uint8))
    edge = save(tmp_path / "edge.png", np.zeros((MIN_IMAGE_SIDE, 90, 3), np.uint8))

    assert read_image(tiny).shape == (1, 1, 3)
    assert image_size(tiny) == (1, 1)
    assert small_image_note(tiny) == "smaller than 32 px (1x1), upsampled to the model's input"
    assert small_image_note(edge) is None


def test_image_size_reads_the_header_only(bombs: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("not an image\n", encoding="utf-8")

    assert image_size(bombs["warning"]) == (10_000, 10_000)
    assert image_size(bombs["error"]) is None  # Pillow refuses to open it at all
    assert image_size(tmp_path / "notes.jpg") is None
    assert small_image_note(tmp_path / "notes.jpg") is None
