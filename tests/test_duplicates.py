"""Fingerprints of single files, the vectorised pair search and duplicate grouping."""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image, ImageFilter

from helpers import save, smooth_image, write_bomb
from mritumor.data.duplicates import hashing, perceptual
from mritumor.data.duplicates.groups import (
    DEFAULT_RADIUS,
    MIN_SIMILARITY,
    DuplicateGraph,
    duplicate_groups,
)
from mritumor.data.duplicates.hashing import ImageRecord, ProblemKind, hash_image, image_hashes
from mritumor.data.duplicates.perceptual import (
    THUMBNAIL_SHAPE,
    candidate_pairs,
    detail_vectors,
    hamming_distance,
    hamming_pairs,
    perceptual_hash,
    popcount,
    popcount_by_table,
    thumbnail,
    thumbnail_hash,
)
from mritumor.data.synth.render import render_slice


def jpeg_bytes(pixels: NDArray[np.uint8], quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def test_a_png_is_fingerprinted_with_its_header_facts(tmp_path: Path) -> None:
    record = hash_image(save(tmp_path / "scan.png", smooth_image(0, size=40)))

    assert record.usable and record.problem is None
    assert (record.format, record.mode, record.width, record.height) == ("PNG", "RGB", 40, 40)
    assert record.size_bytes == (tmp_path / "scan.png").stat().st_size
    assert record.phash is not None and 0 <= record.phash < 2**64
    assert record.thumbnail is not None and len(record.thumbnail) == 32 * 32


def test_the_phash_is_computed_from_the_stored_thumbnail(tmp_path: Path) -> None:
    pixels = smooth_image(20, size=100)
    record = hash_image(save(tmp_path / "scan.png", pixels))
    small = thumbnail(pixels)

    assert small.shape == THUMBNAIL_SHAPE and small.dtype == np.uint8
    assert record.thumbnail == small.tobytes()
    assert record.phash == thumbnail_hash(small) == perceptual_hash(pixels)


def test_same_pixels_in_another_format_have_equal_pixel_and_perceptual_hashes(
    tmp_path: Path,
) -> None:
    pixels = smooth_image(1)
    png = hash_image(save(tmp_path / "a.png", pixels))
    bmp = hash_image(save(tmp_path / "a.bmp", pixels, "BMP"))

    assert png.sha256 != bmp.sha256
    assert png.pixel_sha256 == bmp.pixel_sha256
    assert png.phash == bmp.phash == perceptual_hash(pixels)


def test_png_data_named_jpg_is_not_a_problem(tmp_path: Path) -> None:
    record = hash_image(save(tmp_path / "actually png.jpg", smooth_image(2)))

    assert record.problem is None
    assert record.format == "PNG"


@pytest.mark.parametrize(
    ("name", "content", "kind"),
    [
        ("empty.jpg", b"", "zero_bytes"),
        ("notes.jpg", b"this is a text file, not a JPEG\n", "not_an_image"),
        ("Thumbs.db", bytes(range(256)) * 4, "not_an_image"),
    ],
)
def test_files_that_are_not_images_are_classified(
    tmp_path: Path, name: str, content: bytes, kind: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)

    record = hash_image(path)

    assert record.problem == kind
    assert not record.usable
    assert record.error


def test_a_jpeg_cut_to_60_percent_is_truncated(tmp_path: Path) -> None:
    data = jpeg_bytes(smooth_image(3, size=128))
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) * 6 // 10])

    record = hash_image(path)

    assert record.problem == "truncated"
    assert record.format == "JPEG"  # the header was still readable
    assert "truncated" in (record.error or "")


def test_loading_truncated_images_stays_off_globally(tmp_path: Path) -> None:
    from PIL import ImageFile

    path = tmp_path / "cut.jpg"
    data = jpeg_bytes(smooth_image(3, size=128))
    path.write_bytes(data[: len(data) // 2])
    hash_image(path)

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_an_image_with_a_non_image_extension_is_reported_but_fingerprinted(
    tmp_path: Path,
) -> None:
    record = hash_image(save(tmp_path / "scan.txt", smooth_image(4), "PNG"))

    assert record.problem == "not_an_image"
    assert "PNG image named .txt" in (record.error or "")
    assert record.phash is not None


def test_an_image_over_the_pixel_limit_is_too_large(tmp_path: Path) -> None:
    record = hash_image(write_bomb(tmp_path / "bomb.png"))

    assert (record.problem, record.usable) == ("too_large", False)
    assert record.error == "over the 89478485-pixel limit (decompression-bomb guard)"
    assert record.sha256 is not None and record.phash is None


def test_an_image_pillow_warns_about_is_too_large_with_its_header_facts(tmp_path: Path) -> None:
    record = hash_image(write_bomb(tmp_path / "large.png", 10_000))

    assert record.problem == "too_large"
    assert record.error == (
        "10000x10000 pixels is over the 89478485-pixel limit (decompression-bomb guard)"
    )
    assert (record.format, record.mode, record.width, record.height) == ("PNG", "1", 10_000, 10_000)


def test_an_image_under_32_pixels_is_too_small_but_fingerprinted(tmp_path: Path) -> None:
    tiny = hash_image(save(tmp_path / "tiny.png", smooth_image(11, size=64)[:1, :1]))
    narrow = hash_image(save(tmp_path / "narrow.png", smooth_image(12, size=64)[:, :31]))
    edge = hash_image(save(tmp_path / "edge.png", smooth_image(13, size=32)))

    assert (tiny.problem, tiny.error) == (
        "too_small",
        "1x1 pixels, smaller than the 32-pixel minimum side",
    )
    assert tiny.phash is not None and not tiny.usable
    assert (narrow.problem, narrow.width, narrow.height) == ("too_small", 31, 64)
    assert edge.problem is None and edge.usable


def test_width_and_height_are_those_of_the_upright_image(tmp_path: Path) -> None:
    path = tmp_path / "sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90° clockwise
    Image.fromarray(smooth_image(14, size=64)[:40]).save(path, format="JPEG", exif=exif.tobytes())

    record = hash_image(path)

    assert (record.format, record.width, record.height) == ("JPEG", 40, 64)


def test_perceptual_hash_reads_grayscale_in_any_shape() -> None:
    gray = smooth_image(5)[..., 0]

    assert (
        perceptual_hash(gray)
        == perceptual_hash(gray[..., np.newaxis])
        == perceptual_hash(np.stack([gray] * 3, axis=-1))
    )


@pytest.mark.parametrize(
    "transform",
    [
        pytest.param(lambda image: Image.open(io.BytesIO(jpeg_bytes(image, 70))), id="jpeg q70"),
        pytest.param(lambda image: Image.fromarray(image).resize((60, 60)), id="resize 64->60"),
        pytest.param(
            lambda image: Image.fromarray(np.clip(image.astype(int) + 3, 0, 255).astype(np.uint8)),
            id="brightness +3",
        ),
    ],
)
def test_near_copies_stay_within_the_default_radius(
    transform: Callable[[NDArray[np.uint8]], Image.Image],
) -> None:
    original = smooth_image(6)
    copy = np.asarray(transform(original).convert("RGB"))

    distance = hamming_distance(perceptual_hash(original), perceptual_hash(copy))

    assert distance <= DEFAULT_RADIUS


def test_distinct_images_are_far_outside_the_default_radius() -> None:
    hashes = [perceptual_hash(smooth_image(seed)) for seed in range(10, 16)]

    distances = [hamming_distance(a, b) for a, b in itertools.combinations(hashes, 2)]

    assert min(distances) > 2 * DEFAULT_RADIUS


def test_popcount_table_agrees_with_numpy() -> None:
    values = np.random.default_rng(0).integers(0, 2**63, 1000, dtype=np.uint64) * np.uint64(2)
    values[:3] = [0, 2**64 - 1, 1 << 63]

    assert np.array_equal(popcount_by_table(values), popcount(values))
    assert popcount_by_table(values[:3]).tolist() == [0, 64, 1]


def brute_force_pairs(hashes: list[int], radius: int) -> set[tuple[int, int, int]]:
    return {
        (i, j, hamming_distance(hashes[i], hashes[j]))
        for i, j in itertools.combinations(range(len(hashes)), 2)
        if hamming_distance(hashes[i], hashes[j]) <= radius
    }


def with_neighbours(count: int, seed: int) -> list[int]:
    """Random hashes, each followed by a copy with a few bits flipped."""
    rng = np.random.default_rng(seed)
    hashes = []
    for value in rng.integers(0, 2**63, count, dtype=np.uint64).tolist():
        flips = rng.choice(64, size=int(rng.integers(0, 7)), replace=False)
        hashes += [value, value ^ sum(1 << int(bit) for bit in flips)]
    return hashes


@pytest.mark.parametrize("block_elements", [1 << 22, 7, 150])
def test_hamming_pairs_matches_a_brute_force_search(
    block_elements: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(perceptual, "PAIR_BLOCK_ELEMENTS", block_elements)
    hashes = with_neighbours(40, seed=block_elements)

    i, j, d = hamming_pairs(np.array(hashes, dtype=np.uint64), 4)

    assert set(zip(i.tolist(), j.tolist(), d.tolist(), strict=True)) == brute_force_pairs(hashes, 4)


def test_hamming_pairs_of_nothing_is_empty() -> None:
    i, j, d = hamming_pairs(np.empty(0, dtype=np.uint64), 4)

    assert len(i) == len(j) == len(d) == 0


@pytest.mark.parametrize("radius", [-1, 65])
def test_a_radius_outside_the_hash_is_refused(radius: int) -> None:
    with pytest.raises(ValueError, match="radius"):
        hamming_pairs(np.zeros(2, dtype=np.uint64), radius)


def test_candidate_pairs_expand_shared_hashes_like_a_brute_force_search() -> None:
    rng = np.random.default_rng(3)
    hashes = with_neighbours(20, seed=3)
    hashes += [hashes[int(index)] for index in rng.integers(0, len(hashes), 15)]  # shared values

    i, j, d = candidate_pairs(np.array(hashes, dtype=np.uint64), 4)

    found = list(zip(i.tolist(), j.tolist(), d.tolist(), strict=True))
    assert len(found) == len(set(found))
    assert set(found) == brute_force_pairs(hashes, 4)


def test_candidate_pairs_of_nothing_is_empty() -> None:
    i, j, d = candidate_pairs(np.empty(0, dtype=np.uint64), 8)

    assert len(i) == len(j) == len(d) == 0


def test_detail_vectors_are_unit_length_and_a_flat_thumbnail_has_none() -> None:
    detailed = thumbnail(smooth_image(21))
    flat = np.full(THUMBNAIL_SHAPE, 90, dtype=np.uint8)

    vectors = detail_vectors(np.stack([detailed, flat, detailed // 2 + 40]))

    assert np.linalg.norm(vectors[0]) == pytest.approx(1.0, abs=1e-5)
    assert not vectors[1].any()
    assert vectors[0] @ vectors[2] == pytest.approx(1.0, abs=0.01)  # same detail, other window


DETAILED = thumbnail(smooth_image(22)).tobytes()


def record(
    name: str,
    phash: int | None,
    problem: ProblemKind | None = None,
    small: bytes = DETAILED,
    pixels: str | None = None,
) -> ImageRecord:
    """A record whose thumbnail is ``small`` and whose pixel hash is its name (or ``pixels``)."""
    return ImageRecord(
        Path(name),
        1,
        "sha",
        pixel_sha256=pixels or name,
        phash=phash,
        thumbnail=small,
        problem=problem,
    )


def test_duplicate_groups_are_transitive() -> None:
    a = 0
    b = a ^ 0b1111  # 4 bits from a
    c = b ^ 0b11110000  # 4 bits from b, 8 from a
    records = [
        record("a", a),
        record("far", 2**64 - 1),
        record("c", c),
        record("b", b),
        record("broken", None, "truncated"),
        record("a again", a),
    ]

    groups = duplicate_groups(records, radius=4)

    assert groups[0] == groups[2] == groups[3] == groups[5]
    assert len({groups[0], groups[1], groups[4]}) == 3
    assert groups == [0, 1, 0, 0, 2, 0]  # numbered by first appearance


def test_candidates_whose_detail_differs_are_not_near_duplicates() -> None:
    records = [
        record("a", 0, small=thumbnail(smooth_image(30)).tobytes()),
        record("b", 0b11, small=thumbnail(smooth_image(31)).tobytes()),  # 2 bits from a
        record("c", 0b11, small=thumbnail(smooth_image(30)).tobytes()),
    ]

    graph = DuplicateGraph(records)

    assert graph.candidate_count == 3
    assert graph.group_ids() == [0, 1, 0]
    [match] = graph.neighbours(int(graph.image_of[0]))
    assert (match.image, match.distance) == (graph.image_of[2], 2)
    assert match.similarity == pytest.approx(1.0)


def test_exact_copies_share_a_group_even_without_detail() -> None:
    flat = np.zeros(THUMBNAIL_SHAPE, dtype=np.uint8).tobytes()
    records = [
        record("black", 0, small=flat),
        record("black copy", 0, small=flat, pixels="black"),
        record("other black", 0, small=flat),  # different pixels, no detail to confirm
    ]

    assert duplicate_groups(records) == [0, 0, 1]


def phantom(seed: int, class_name: str = "glioma") -> NDArray[np.uint8]:
    image, _ = render_slice(np.random.default_rng(seed), class_name, 256)
    return np.asarray(Image.fromarray(np.round(image * 255).astype(np.uint8)).convert("RGB"))


Edit = Callable[[Image.Image], Image.Image]


def pointwise(function: Callable[[NDArray[np.float64]], NDArray[np.float64]]) -> Edit:
    return lambda image: Image.fromarray(
        np.clip(function(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
    )


EDITS: dict[str, Edit] = {
    "jpeg q50": lambda image: Image.open(io.BytesIO(jpeg_bytes(np.asarray(image), 50))),
    "resize 50%": lambda image: image.resize((image.width // 2, image.height // 2)),
    "resize 110%": lambda image: image.resize((image.width * 11 // 10, image.height * 11 // 10)),
    "brightness +10": pointwise(lambda values: values + 10),
    "contrast x1.2": pointwise(lambda values: values * 1.2),
    "gamma 0.8": pointwise(lambda values: 255 * (values / 255) ** 0.8),
    "blur": lambda image: image.filter(ImageFilter.GaussianBlur(1)),
}


@pytest.mark.parametrize("edit", EDITS.values(), ids=EDITS.keys())
def test_an_edited_copy_of_a_phantom_is_a_confirmed_near_duplicate(edit: Edit) -> None:
    original = phantom(40)
    copy = np.asarray(edit(Image.fromarray(original)).convert("RGB"))
    small = np.stack([thumbnail(original), thumbnail(copy)])

    distance = hamming_distance(thumbnail_hash(small[0]), thumbnail_hash(small[1]))
    first, second = detail_vectors(small)

    assert distance <= DEFAULT_RADIUS
    assert first @ second >= MIN_SIMILARITY


def test_distinct_phantoms_are_candidates_but_never_confirmed() -> None:
    classes = ("glioma", "meningioma", "no_tumor", "pituitary")
    images = [phantom(seed, classes[seed % 4]) for seed in range(60)]
    records = [
        record(str(index), thumbnail_hash(small), small=small.tobytes())
        for index, small in enumerate(thumbnail(image) for image in images)
    ]

    graph = DuplicateGraph(records)

    assert graph.candidate_count > 0  # the pHash alone would call these duplicates
    assert graph.group_ids() == list(range(len(records)))


def test_image_hashes_in_worker_processes_equal_hashing_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hashing, "CHUNK_SIZE", 2)
    paths = [save(tmp_path / f"image {seed}.png", smooth_image(seed, 32)) for seed in range(5)]
    (tmp_path / "empty.png").touch()
    paths.append(tmp_path / "empty.png")
    calls: list[tuple[int, int]] = []

    parallel = image_hashes(
        paths, workers=2, progress=lambda done, total: calls.append((done, total))
    )

    assert parallel == image_hashes(paths, workers=1)
    assert [record.path for record in parallel] == paths
    assert calls == [(2, 6), (4, 6), (6, 6)]


def test_workers_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="workers"):
        image_hashes([tmp_path / "x.png"], workers=0)


def test_a_corrupted_image_is_unreadable(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(smooth_image(7)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[100:140] = bytes(40)
    path = tmp_path / "corrupted.png"
    path.write_bytes(bytes(data))

    assert hash_image(path).problem == "unreadable"


def test_a_file_that_cannot_be_read_is_unreadable(tmp_path: Path) -> None:
    record = hash_image(tmp_path)  # a folder: reading its bytes fails

    assert (record.problem, record.sha256) == ("unreadable", None)
