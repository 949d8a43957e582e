"""3-D volumes: NIfTI and DICOM series read to RAS+, slicing and windowing, the volume verdict,
phantom volumes, and ``prepare_volumes``'s case-grouped splits.

Every volume here is tiny (at most 64 px, 16 slices) and built in the test: NIfTI files with
nibabel, DICOM series with pydicom (the ``write_dicom`` pattern of test_dicom.py). No
TensorFlow is imported.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

nibabel = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

from pydicom.uid import generate_uid  # noqa: E402

from helpers import save, smooth_image, write_dicom  # noqa: E402
from mritumor.core.errors import UsageError  # noqa: E402
from mritumor.data.dicom import VoiWindow  # noqa: E402
from mritumor.data.image_errors import UnreadableImageError  # noqa: E402
from mritumor.predict.ensemble import Predictions  # noqa: E402
from mritumor.predict.inputs import gather_scans  # noqa: E402
from mritumor.predict.volumes import VolumeOptions, VolumeVerdict, slice_inputs, verdicts  # noqa: E402
from mritumor.volumes import reading  # noqa: E402
from mritumor.volumes.prepare import (  # noqa: E402
    MIN_LESION_SHARE,
    find_cases,
    holds_volumes,
    prepare_volumes,
)
from mritumor.volumes.reading import (  # noqa: E402
    MISSING_EXTRA,
    Volume,
    import_nibabel,
    is_dicom_series,
    is_mask_file,
    is_nifti_file,
    read_nifti,
    read_volume,
    volume_stem,
)
from mritumor.volumes.slicing import (  # noqa: E402
    SliceOptions,
    VolumeSlices,
    display_plane,
    foreground_share,
    slice_volume,
    square_pixels,
    window_voxels,
)
from mritumor.volumes.synth import (  # noqa: E402
    VolumeSynthConfig,
    nifti_bytes,
    render_volume,
    write_phantom_volumes,
)
from mritumor.volumes.verdict import aggregate, top_slices  # noqa: E402

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
#: Every slice kept, the full value range windowed: exact pixels to compare.
EXACT = SliceOptions(percentiles=(0.0, 100.0), min_foreground=0.0)


# --------------------------------------------------------------------------- builders


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nibabel.save(nibabel.Nifti1Image(data, affine), path)
    return path


def lps_object(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Stored values 0..1000 indexed ``[x, y, z]`` in DICOM's LPS patient coordinates."""
    return np.random.default_rng(seed).integers(0, 1001, shape, dtype=np.uint16)


def write_slice(
    path: Path,
    pixels: np.ndarray,
    *,
    series: str,
    position: tuple[float, float, float] | None = None,
    orientation: tuple[float, ...] | None = AXIAL,
    pixel_spacing: tuple[float, float] = (1.0, 1.0),
    **attributes: Any,
) -> Path:
    """One grey single-frame MR slice of a series, ``pixels`` ``(rows, columns)`` as uint16."""
    if orientation is not None:
        attributes["ImageOrientationPatient"] = list(orientation)
    if position is not None:
        attributes["ImagePositionPatient"] = list(position)
    return write_dicom(
        path,
        np.asarray(pixels, dtype=np.uint16),
        SeriesInstanceUID=series,
        PixelSpacing=list(pixel_spacing),
        **attributes,
    )


def write_axial_series(
    folder: Path,
    lps: np.ndarray,
    *,
    z_positions: list[float] | None = None,
    names: list[str] | None = None,
    pixel_spacing: tuple[float, float] = (1.0, 1.0),
    **attributes: Any,
) -> list[Path]:
    """``lps[x, y, z]`` as axial slices: slice k holds ``lps[:, :, k].T`` (rows run along y)."""
    folder.mkdir(parents=True, exist_ok=True)
    depth = lps.shape[2]
    z_positions = z_positions or [float(k) for k in range(depth)]
    names = names or [f"slice{k:02d}.dcm" for k in range(depth)]
    series = generate_uid()
    return [
        write_slice(
            folder / names[k],
            lps[:, :, k].T,
            series=series,
            position=(0.0, 0.0, z_positions[k]),
            pixel_spacing=pixel_spacing,
            InstanceNumber=depth - k,  # backwards: the position, not this, must order them
            **attributes,
        )
        for k in range(depth)
    ]


def lesion_share_of(path: Path) -> float:
    return float(np.mean(np.asarray(Image.open(path)) > 127))


# --------------------------------------------------------------------------- NIfTI orientation


def ras_object() -> np.ndarray:
    """A random volume ``[x, y, z]`` in RAS+, 5 x 6 x 7 voxels (no two axes alike)."""
    return np.random.default_rng(1).uniform(0.0, 1000.0, (5, 6, 7)).astype(np.float32)


def test_flipped_and_permuted_nifti_read_as_the_original(tmp_path: Path) -> None:
    data = ras_object()
    spacing = np.diag([1.0, 1.0, 2.0, 1.0])  # 2 mm slices, so the axes cannot be mixed up
    original = write_nifti(tmp_path / "ras.nii.gz", data, spacing)
    # Flipped along x: voxel i lies at x = 4 - i, so stored[i] = data[4 - i].
    flip = spacing.copy()
    flip[0, 0], flip[0, 3] = -1.0, 4.0
    flipped = write_nifti(tmp_path / "las.nii.gz", np.ascontiguousarray(data[::-1]), flip)
    # Permuted: stored[k, i, j] = data[i, j, k]; voxel (a, b, c) lies at (b, c, 2a).
    permute = np.zeros((4, 4))
    permute[0, 1], permute[1, 2], permute[2, 0], permute[3, 3] = 1.0, 1.0, 2.0, 1.0
    permuted = write_nifti(
        tmp_path / "sra.nii.gz", np.ascontiguousarray(data.transpose(2, 0, 1)), permute
    )

    volumes = [read_nifti(path) for path in (original, flipped, permuted)]

    assert [v.orientation for v in volumes] == ["RAS", "LAS", "SRA"]
    reference = slice_volume(volumes[0], EXACT)
    for volume in volumes:
        assert volume.kind == "nifti"
        assert volume.voxels.dtype == np.float32
        assert volume.spacing == (1.0, 1.0, 2.0)
        np.testing.assert_array_equal(volume.voxels, data)
        sliced = slice_volume(volume, EXACT)
        assert sliced.count == 7 and sliced.kept == tuple(range(7))
        for got, want in zip(sliced.pixels, reference.pixels, strict=True):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("stored", "corner"),
    [
        ((0, 0), (0, 0)),  # LPS i=0 is the patient's right, j=0 anterior: top left
        ((5, 0), (0, -1)),  # left anterior: top right
        ((0, 7), (-1, 0)),  # right posterior: bottom left
    ],
)
def test_axial_display_is_radiological(
    tmp_path: Path, stored: tuple[int, int], corner: tuple[int, int]
) -> None:
    # Stored LPS-like (world x = -i, y = -j, z = k), as DICOM-derived files often are.
    data = np.zeros((6, 8, 10), np.float32)
    data[stored[0], stored[1], 9] = 1000.0  # k = 9: the most superior slice
    volume = read_nifti(write_nifti(tmp_path / "dot.nii.gz", data, np.diag([-1, -1, 1, 1.0])))

    assert volume.orientation == "LPS"
    assert volume.voxels.shape == (6, 8, 10)
    sliced = slice_volume(volume, EXACT)
    plane = sliced.pixels[9][..., 0]
    assert plane.shape == (8, 6)  # rows run along y (8), columns along x (6)
    assert plane[corner] == 255
    assert int(plane.sum()) == 255  # nowhere else
    assert not any(p.any() for p in sliced.pixels[:9])


def test_anterior_right_superior_is_top_left_in_every_plane(tmp_path: Path) -> None:
    data = np.zeros((6, 8, 10), np.float32)
    data[0, 0, 9] = 1000.0  # stored LPS: right, anterior, superior
    volume = read_nifti(write_nifti(tmp_path / "dot.nii.gz", data, np.diag([-1, -1, 1, 1.0])))
    assert volume.voxels[5, 7, 9] == 1000.0  # RAS+: the largest x, y and z

    scaled, _ = window_voxels(volume, EXACT)
    # Each plane through the voxel: axial z=9, coronal y=7, sagittal x=5.
    for axis, index, shape in (
        ("axial", 9, (8, 6)),
        ("coronal", 7, (10, 6)),
        ("sagittal", 5, (10, 8)),
    ):
        plane = display_plane(scaled, axis, index)
        assert plane.shape == shape, axis
        assert plane[0, 0] == 255 and int(plane.sum()) == 255, axis


# --------------------------------------------------------------------------- NIfTI files


def test_four_d_nifti_of_one_volume_is_squeezed(tmp_path: Path) -> None:
    data = ras_object()
    path = write_nifti(tmp_path / "one.nii.gz", data[..., np.newaxis], np.eye(4))
    volume = read_volume(path)
    assert volume.voxels.shape == (5, 6, 7)
    np.testing.assert_array_equal(volume.voxels, data)


def test_four_d_nifti_of_two_volumes_is_refused(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "two.nii.gz", np.zeros((4, 4, 3, 2), np.float32), np.eye(4))
    with pytest.raises(UnreadableImageError, match="not one 3-D volume") as caught:
        read_volume(path)
    assert str(path) in str(caught.value) and "(4, 4, 3, 2)" in str(caught.value)


def test_damaged_nifti_is_unreadable_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti header at all" * 20))
    with pytest.raises(UnreadableImageError, match="cannot read NIfTI file") as caught:
        read_volume(path)
    assert str(path) in str(caught.value)


def test_non_finite_voxels_become_zero(tmp_path: Path) -> None:
    data = np.ones((3, 3, 3), np.float32)
    data[0, 0, 0], data[1, 1, 1], data[2, 2, 2] = np.nan, np.inf, -np.inf
    volume = read_volume(write_nifti(tmp_path / "nan.nii", data, np.eye(4)))
    assert np.isfinite(volume.voxels).all()
    assert volume.voxels.sum() == 24.0  # 27 ones, three of them replaced by 0


@pytest.mark.parametrize(
    ("name", "nifti", "mask", "stem"),
    [
        ("case-1.nii.gz", True, False, "case-1"),
        ("Case-1.NII", True, False, "Case-1"),
        ("case-1_mask.nii.gz", True, True, "case-1_mask"),
        ("case-1_SEG.nii", True, True, "case-1_SEG"),
        ("case-1.nii.gz.bak", False, False, "case-1.nii.gz.bak"),
        (".hidden.nii.gz", False, False, ".hidden"),
    ],
)
def test_volume_file_names(tmp_path: Path, name: str, nifti: bool, mask: bool, stem: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"")
    assert is_nifti_file(path) is nifti
    assert is_mask_file(path) is mask
    assert volume_stem(path) == stem


def test_missing_extra_is_one_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nibabel", None)  # import nibabel -> ImportError
    with pytest.raises(UsageError) as caught:
        import_nibabel()
    assert str(caught.value) == MISSING_EXTRA
    assert "pip install 'mritumor[volumes]'" in MISSING_EXTRA


# --------------------------------------------------------------------------- DICOM series


def test_dicom_series_reads_as_the_same_nifti(tmp_path: Path) -> None:
    lps = lps_object((6, 7, 8))
    write_axial_series(tmp_path / "series", lps, RescaleSlope=2, RescaleIntercept=-100)
    modality = lps.astype(np.float32) * 2 - 100  # the voxels are the rescaled values
    # Same geometry as a NIfTI: voxel (i, j, k) at LPS (i, j, k), i.e. RAS (-i, -j, k).
    nifti = write_nifti(tmp_path / "same.nii.gz", modality, np.diag([-1, -1, 1, 1.0]))

    dicom, other = read_volume(tmp_path / "series"), read_volume(nifti)

    assert dicom.kind == "dicom" and dicom.orientation == "LPS" and dicom.notes == ()
    assert dicom.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(dicom.voxels, modality[::-1, ::-1, :])  # to RAS+
    np.testing.assert_array_equal(dicom.voxels, other.voxels)
    # Stored 0 at LPS (5, 6, 0) -> RAS index (0, 0, 0), rescaled 2 * stored - 100.
    assert dicom.voxels[0, 0, 0] == 2.0 * lps[5, 6, 0] - 100.0
    options = SliceOptions(min_foreground=0.0)
    ours, theirs = slice_volume(dicom, options), slice_volume(other, options)
    assert ours.window == theirs.window == "percentile 0.5-99.5"
    assert ours.kept == theirs.kept == tuple(range(8))
    for got, want in zip(ours.pixels, theirs.pixels, strict=True):
        np.testing.assert_array_equal(got, want)


def test_sagittal_series_reads_as_the_axial_one(tmp_path: Path) -> None:
    lps = lps_object((6, 7, 8), seed=3)
    write_axial_series(tmp_path / "axial", lps)
    # Sagittal slices of the same object: slice a at x = a; columns run posterior (+y),
    # rows run inferior (-z) from z = 7, so pixel [r, c] = lps[a, c, 7 - r]. The normal
    # cross((0,1,0), (0,0,-1)) = (-1,0,0) makes the order along it x descending.
    folder = tmp_path / "sagittal"
    folder.mkdir()
    series = generate_uid()
    for a in range(6):
        write_slice(
            folder / f"s{a}.dcm",
            lps[a, :, ::-1].T,
            series=series,
            position=(float(a), 0.0, 7.0),
            orientation=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
        )

    axial, sagittal = read_volume(tmp_path / "axial"), read_volume(folder)

    assert sagittal.orientation == "PIR"  # (column, row, slice) = posterior, inferior, right
    assert sagittal.spacing == axial.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(sagittal.voxels, axial.voxels)


def test_pixel_spacing_is_rows_then_columns(tmp_path: Path) -> None:
    lps = lps_object((4, 5, 6))
    # PixelSpacing = (between rows, between columns) = (y, x): 2 mm along y, 0.5 along x.
    write_axial_series(
        tmp_path / "s", lps, z_positions=[3.0 * k for k in range(6)], pixel_spacing=(2.0, 0.5)
    )
    volume = read_volume(tmp_path / "s")
    assert volume.spacing == (0.5, 2.0, 3.0)
    # An axial plane, 5 rows (y) of 2 mm by 4 columns (x) of 0.5 mm, resampled to 0.5 mm:
    # round(5 * 2 / 0.5) = 20 rows, 4 columns.
    assert slice_volume(volume, EXACT).pixels[0].shape == (20, 4, 1)


@pytest.mark.parametrize(
    ("z_positions", "missing"),
    [
        ([0, 2, 4, 6, 8, 10, 12, 14], None),  # no gap
        ([0, 2, 4, 6, 9, 11, 13, 15], None),  # a step of 3 = 1.5 x 2: not over the limit
        ([0, 2, 4, 6, 10, 12, 14, 16], 1),  # 4 mm: round(4 / 2) - 1 = 1 missing
        ([0, 2, 4, 6, 12, 14, 16, 18], 2),  # 6 mm: round(6 / 2) - 1 = 2 missing
    ],
)
def test_missing_slices_are_noted(
    tmp_path: Path, z_positions: list[float], missing: int | None
) -> None:
    lps = lps_object((4, 5, 8))
    # Names shuffled, so the files' order on disk is not their order along z.
    order = np.random.default_rng(9).permutation(8)
    names = [f"im{order[k]}.dcm" for k in range(8)]
    write_axial_series(
        tmp_path / "s", lps, z_positions=[float(z) for z in z_positions], names=names
    )

    volume = read_volume(tmp_path / "s")

    np.testing.assert_array_equal(volume.voxels, lps[::-1, ::-1, :])  # order by z, not name
    assert volume.spacing[2] == 2.0  # the median step; the gap is not filled in
    if missing is None:
        assert volume.notes == ()
        return
    (note,) = volume.notes
    step = z_positions[4] - z_positions[3]
    assert note == (
        f"about {missing} slice(s) missing between {names[3]} and {names[4]}: "
        f"a step of {step:g} mm where the series steps 2"
    )


def test_file_order_on_disk_does_not_change_the_voxels(tmp_path: Path) -> None:
    lps = lps_object((4, 5, 6), seed=4)
    write_axial_series(tmp_path / "sorted", lps)
    write_axial_series(tmp_path / "shuffled", lps, names=[f"{n}.dcm" for n in "fbdaec"])
    sorted_, shuffled = read_volume(tmp_path / "sorted"), read_volume(tmp_path / "shuffled")
    np.testing.assert_array_equal(shuffled.voxels, sorted_.voxels)
    np.testing.assert_array_equal(shuffled.voxels, lps[::-1, ::-1, :])


def test_without_geometry_the_instance_number_orders(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    series = generate_uid()
    planes = [np.full((3, 4), 10 * (k + 1), np.uint16) for k in range(4)]
    for k, name in enumerate("dbca"):  # instance k + 1 in a file whose name sorts elsewhere
        write_slice(
            folder / f"{name}.dcm", planes[k], series=series, orientation=None, InstanceNumber=k + 1
        )

    volume = read_volume(folder)

    assert any("ordered by Instance Number" in note for note in volume.notes)
    assert volume.voxels.shape == (4, 3, 4)
    np.testing.assert_array_equal(volume.voxels[0, 0, :], [10, 20, 30, 40])


def test_without_geometry_or_instance_number_it_is_unreadable(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    series = generate_uid()
    for name in "ab":
        write_slice(
            folder / f"{name}.dcm", np.ones((3, 3), np.uint16), series=series, orientation=None
        )
    with pytest.raises(UnreadableImageError, match="neither") as caught:
        read_volume(folder)
    assert str(folder) in str(caught.value)


def test_sagittal_series_without_positions_is_ordered_or_refused(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    series = generate_uid()
    for k in range(4):  # sagittal cosines, Instance Numbers, no Image Position (Patient)
        write_slice(
            folder / f"s{k}.dcm",
            np.full((5, 6), 10 * k, np.uint16),
            series=series,
            orientation=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
            InstanceNumber=k + 1,
        )
    volume = read_volume(folder)  # by Instance Number, stacked along the files' own normal
    assert sorted(volume.voxels.shape) == [4, 5, 6]
    # Columns along +y LPS (posterior), rows along -z (inferior), stacked along their
    # normal cross((0, 1, 0), (0, 0, -1)) = (-1, 0, 0), the patient's right.
    assert volume.orientation == "PIR"
    assert any("ordered by Instance Number, its orientation" in note for note in volume.notes)


def test_the_first_voi_window_is_kept_and_used(tmp_path: Path) -> None:
    lps = np.full((4, 4, 3), 40, np.uint16)
    lps[0, 0, 0], lps[1, 1, 1] = 0, 240
    # The lowest slice (z = 0) is c.dcm: the first along the normal, not by name.
    paths = write_axial_series(
        tmp_path / "s",
        lps,
        names=["c.dcm", "a.dcm", "b.dcm"],
        WindowCenter=[40, 100],
        WindowWidth=[400, 50],
    )
    for path in paths[1:]:  # the other slices carry another window
        dataset = pydicom.dcmread(path)
        dataset.WindowCenter, dataset.WindowWidth = 100, 50
        dataset.save_as(path)

    volume = read_volume(tmp_path / "s")
    sliced = slice_volume(volume, SliceOptions(min_foreground=0.0))

    assert volume.window == VoiWindow(40.0, 400.0, "LINEAR")
    assert sliced.window == "DICOM 40/400"
    values = {int(v) for plane in sliced.pixels for v in np.unique(plane)}
    # ((40 - 39.5) / 399 + 0.5) * 255 = 127.8 -> 128; 0 -> (-39.5/399 + .5) * 255 = 102.25 -> 102;
    # 240 -> (200.5 / 399 + .5) * 255 = 255.6 -> 255 (clipped).
    assert values == {102, 128, 255}
    assert slice_volume(volume, SliceOptions(window="percentile")).window == "percentile 0.5-99.5"


def test_two_series_in_one_folder_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    for k, series in enumerate(["1.2.3", "1.2.3", "1.2.4"]):
        write_slice(
            folder / f"{k}.dcm", np.ones((3, 3), np.uint16), series=series, position=(0, 0, k)
        )
    assert not is_dicom_series(folder)
    with pytest.raises(UnreadableImageError, match="2 series") as caught:
        read_volume(folder)
    message = str(caught.value)
    assert str(folder) in message and "1.2.3 (2 files)" in message and "1.2.4 (1 files)" in message


def test_two_files_at_one_position_are_refused(tmp_path: Path) -> None:
    lps = lps_object((3, 3, 3))
    write_axial_series(tmp_path / "s", lps, z_positions=[0.0, 1.0, 1.0])
    with pytest.raises(UnreadableImageError, match="same position"):
        read_volume(tmp_path / "s")


def test_slices_of_different_sizes_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    series = generate_uid()
    write_slice(folder / "a.dcm", np.ones((3, 4), np.uint16), series=series, position=(0, 0, 0))
    write_slice(folder / "b.dcm", np.ones((3, 5), np.uint16), series=series, position=(0, 0, 1))
    with pytest.raises(UnreadableImageError, match=r"b\.dcm is 5x3 pixels, the first slice 4x3"):
        read_volume(folder)


def test_a_damaged_file_is_named(tmp_path: Path) -> None:
    write_axial_series(tmp_path / "s", lps_object((3, 3, 3)))
    damaged = tmp_path / "s" / "slice01.dcm"
    damaged.write_bytes(b"\0" * 64)
    assert not is_dicom_series(tmp_path / "s")
    with pytest.raises(UnreadableImageError, match="cannot read DICOM file") as caught:
        read_volume(tmp_path / "s")
    assert str(damaged) in str(caught.value)


def test_is_dicom_series(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_axial_series(tmp_path / "s", lps_object((3, 3, 3)))
    assert is_dicom_series(tmp_path / "s")
    assert not is_dicom_series(tmp_path / "s" / "slice00.dcm")  # a file, not a folder
    one = tmp_path / "one"
    one.mkdir()
    write_slice(one / "a.dcm", np.ones((3, 3), np.uint16), series="1.2", position=(0, 0, 0))
    assert not is_dicom_series(one)
    with pytest.raises(UnreadableImageError, match="it holds 1 DICOM file") as caught:
        read_volume(one)
    assert str(one) in str(caught.value)
    monkeypatch.setattr(reading, "pydicom_available", lambda: False)
    assert not is_dicom_series(tmp_path / "s")


# --------------------------------------------------------------------------- slicing


def flat_volume(voxels: np.ndarray, **changes: Any) -> Volume:
    fields: dict[str, Any] = {
        "source": Path("scan.nii.gz"),
        "kind": "nifti",
        "voxels": voxels.astype(np.float32),
        "affine": np.eye(4),
        "spacing": (1.0, 1.0, 1.0),
        "orientation": "RAS",
    }
    return Volume(**{**fields, **changes})


def test_percentile_window_over_all_voxels() -> None:
    volume = flat_volume(np.arange(100, dtype=np.float32).reshape(5, 5, 4))
    scaled, described = window_voxels(volume, SliceOptions(percentiles=(10.0, 90.0)))
    assert described == "percentile 10-90"
    # np.percentile of 0..99: 10 % -> 9.9, 90 % -> 89.1; v -> (v - 9.9) * 255 / 79.2.
    flat = scaled.reshape(-1)
    assert flat[0] == 0.0 and flat[9] == 0.0  # below 9.9: clipped to 0
    assert flat[50] == pytest.approx((50 - 9.9) * 255 / 79.2, abs=1e-3)  # 129.11
    assert flat[99] == 255.0 and flat[90] == 255.0  # above 89.1: clipped
    # A constant volume has no range to map: all zeros.
    constant, _ = window_voxels(flat_volume(np.full((3, 3, 3), 7.0)), SliceOptions())
    assert not constant.any()


def test_dicom_window_needs_one() -> None:
    with pytest.raises(UsageError, match="--window dicom") as caught:
        window_voxels(flat_volume(np.ones((2, 2, 2))), SliceOptions(window="dicom"))
    assert "NIfTI" in str(caught.value) and "--window percentile" in str(caught.value)
    series = flat_volume(np.ones((2, 2, 2)), kind="dicom")
    with pytest.raises(UsageError, match="without one"):
        window_voxels(series, SliceOptions(window="dicom"))


def test_blank_slices_by_foreground_share() -> None:
    voxels = np.zeros((20, 20, 4), np.float32)
    voxels[5:9, 5:10, 0] = 100.0  # a 4 x 5 block: the 3 x 3 median drops its 4 corners
    voxels[5:10, 5:10, 1] = 100.0  # a 5 x 5 block: 25 - 4 = 21 of 400 pixels, 0.0525
    voxels[::3, ::3, 2] = 100.0  # 49 isolated bright pixels, as noise is: none counts
    voxels[:, :, 3] = 100.0
    sliced = slice_volume(flat_volume(voxels), SliceOptions(percentiles=(0.0, 100.0)))
    # 16 of 400 = 0.04 < 0.05: blank; 0.0525: kept; the spikes: blank; all: kept.
    assert (sliced.count, sliced.kept, sliced.blank) == (4, (1, 3), (0, 2))
    assert all(p.shape == (20, 20, 1) and p.dtype == np.uint8 for p in sliced.pixels)
    assert int(sliced.pixels[0].sum()) == 25 * 255
    # The foreground level is 0.1 * 255 = 25.5: 26 is tissue, 25 is not.
    assert foreground_share(np.full((4, 4), 26, np.uint8)) == 1.0
    assert foreground_share(np.full((4, 4), 25, np.uint8)) == 0.0
    assert foreground_share(np.zeros((0, 3), np.uint8)) == 0.0


def test_square_pixels_resample_to_the_finer_spacing() -> None:
    plane = np.tile(np.arange(4, dtype=np.float32)[:, np.newaxis] * 10, (1, 6))  # rows 0..30
    resized = square_pixels(plane, row_mm=2.0, column_mm=1.0)
    # round(4 * 2 / 1) = 8 rows, round(6 * 1 / 1) = 6 columns; bilinear keeps the ends.
    assert resized.shape == (8, 6)
    np.testing.assert_allclose(resized[[0, -1], 0], [0.0, 30.0], atol=1e-4)
    assert (np.diff(resized[:, 0]) >= 0).all()
    assert square_pixels(plane, row_mm=1.005, column_mm=1.0) is plane  # within 1 %
    # Side views of thick slices are stretched along z, the axial view is not.
    scaled = np.zeros((4, 5, 6), np.float32)  # X=4, Y=5, Z=6 with 3 mm slices
    spacing = (1.0, 1.0, 3.0)
    assert display_plane(scaled, "axial", 0, spacing).shape == (5, 4)
    assert display_plane(scaled, "coronal", 0, spacing).shape == (18, 4)  # 6 * 3 rows
    assert display_plane(scaled, "sagittal", 0, spacing).shape == (18, 5)


# --------------------------------------------------------------------------- verdict

SCORES = [0.2, 0.9, 0.5, 0.9, 0.1]


@pytest.mark.parametrize(
    ("method", "k", "expected"),
    [
        ("max", 3, 0.9),
        ("top_k_mean", 1, 0.9),
        ("top_k_mean", 3, (0.9 + 0.9 + 0.5) / 3),  # 0.7667
        ("top_k_mean", 10, 2.6 / 5),  # fewer than k scores: all of them, 0.52
        ("noisy_or", 2, 1 - 0.1 * 0.1),  # 0.99
        ("noisy_or", 3, 1 - 0.1 * 0.1 * 0.5),  # 0.995
        ("noisy_or", 10, 1 - 0.8 * 0.1 * 0.5 * 0.1 * 0.9),  # 0.9964
    ],
)
def test_aggregate_by_hand(method: Any, k: int, expected: float) -> None:
    assert aggregate(SCORES, method, k) == pytest.approx(expected, abs=1e-12)


def test_top_slices_highest_first_ties_to_the_earlier() -> None:
    assert top_slices(SCORES, 3).tolist() == [1, 3, 2]
    assert top_slices(SCORES, 9).tolist() == [1, 3, 2, 0, 4]
    # 40 scores (quicksort territory, not insertion sort): ties still go to the earlier.
    assert top_slices([0.5] * 20 + [0.9] * 20, 4).tolist() == [20, 21, 22, 23]
    with pytest.raises(ValueError, match="at least 1"):
        top_slices(SCORES, 0)


@pytest.mark.parametrize("method", ["max", "top_k_mean", "noisy_or"])
def test_no_scored_slice_has_no_verdict(method: Any) -> None:
    assert math.isnan(aggregate([], method, 3))


@pytest.mark.parametrize("bad", [[0.5, 1.2], [-0.1], [0.3, float("nan")], [float("inf")]])
def test_scores_outside_the_unit_interval_are_refused(bad: list[float]) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        aggregate(bad, "max", 1)


def test_aggregate_refuses_2d_scores_and_unknown_methods() -> None:
    with pytest.raises(ValueError, match="1-D"):
        aggregate([[0.1, 0.2]], "max", 1)
    with pytest.raises(ValueError, match="aggregation must be one of max, top_k_mean, noisy_or"):
        aggregate([0.1], "mean", 1)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- phantom volumes


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"count": 0}, "at least 1"),
        ({"image_size": 16}, "image_size"),
        ({"depth": 4}, "depth"),
        ({"lesion_scale": 5.0}, "lesion_scale"),
        ({"class_names": ("glioma", "cat")}, "unknown classes"),
    ],
)
def test_synth_config_ranges(changes: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        VolumeSynthConfig(**changes)


def test_tumour_and_healthy_phantoms_share_the_head() -> None:
    for seed in range(3):
        tumour = render_volume(np.random.SeedSequence(seed), "glioma", 32, 12)
        healthy = render_volume(np.random.SeedSequence(seed), "no_tumor", 32, 12)
        assert tumour.image.shape == (12, 32, 32) and tumour.image.dtype == np.float32
        assert tumour.image.min() >= 0.0 and tumour.image.max() <= 1.0
        assert tumour.mask.any() and not healthy.mask.any()
        # Sections the lesion does not reach are identical; in the others only the pixels
        # near the lesion (the blur spreads it) may differ.
        untouched = ~tumour.mask.any(axis=(1, 2))
        np.testing.assert_array_equal(tumour.image[untouched], healthy.image[untouched])
        assert untouched[[0, -1]].all()  # the air at both ends
        far = ~tumour.mask
        assert np.abs(tumour.image - healthy.image)[far].max() < 0.1
        assert np.abs(tumour.image - healthy.image)[tumour.mask].max() > 0.1


def test_nifti_bytes_round_trip_to_the_display_sections(tmp_path: Path) -> None:
    sections = np.random.default_rng(2).integers(0, 1001, (5, 6, 7)).astype(np.int16)
    path = tmp_path / "s.nii.gz"
    path.write_bytes(nifti_bytes(sections, (1.0, 1.0, 2.5)))

    volume = read_volume(path)

    assert volume.orientation == "LPS" and volume.spacing == (1.0, 1.0, 2.5)
    assert volume.voxels.shape == (7, 6, 5)  # (columns, rows, sections) in RAS+
    scaled, _ = window_voxels(volume, EXACT)
    low, high = float(sections.min()), float(sections.max())
    for index, section in enumerate(sections):  # each axial plane shows its section as drawn
        expected = np.rint((section - low) * 255 / (high - low)).astype(np.uint8)
        np.testing.assert_array_equal(
            display_plane(scaled, "axial", index, volume.spacing), expected
        )


def test_write_phantom_volumes_layout_and_refusal(tmp_path: Path) -> None:
    root = tmp_path / "phantoms"
    config = VolumeSynthConfig(
        count=2, image_size=32, depth=8, seed=1, class_names=("glioma", "no_tumor")
    )
    assert write_phantom_volumes(root, config) == {"glioma": 2, "no_tumor": 2}

    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.nii.gz"))
    assert names == [
        f"{c}/{c}-{k:03d}{m}.nii.gz"
        for c in ("glioma", "no_tumor")
        for k in (0, 1)
        for m in ("", "_mask")
    ]
    manifest = json.loads((root / "synth.json").read_text())
    assert sorted(manifest["files"]) == names and manifest["config"]["depth"] == 8
    glioma, mask = (
        read_volume(root / "glioma/glioma-000.nii.gz"),
        read_volume(root / "glioma/glioma-000_mask.nii.gz"),
    )
    assert glioma.voxels.shape == mask.voxels.shape == (32, 32, 8)
    assert glioma.spacing == (1.0, 1.0, 4.0)  # 32 / 8 mm sections
    assert glioma.voxels.min() >= 0 and glioma.voxels.max() <= 1000
    assert set(np.unique(mask.voxels)) == {0.0, 1.0}
    assert not read_volume(root / "no_tumor/no_tumor-000_mask.nii.gz").voxels.any()

    before = (root / "glioma/glioma-000.nii.gz").read_bytes()
    with pytest.raises(UsageError, match="not empty"):
        write_phantom_volumes(root, config)
    write_phantom_volumes(root, config, force=True)
    assert (root / "glioma/glioma-000.nii.gz").read_bytes() == before  # same seed, same bytes


def test_phantom_air_ends_are_blank(tmp_path: Path) -> None:
    config = VolumeSynthConfig(
        count=2, image_size=64, depth=16, seed=1, class_names=("glioma", "no_tumor")
    )
    write_phantom_volumes(tmp_path, config)
    # A section is air when |2.3 * ((k + 0.5) / 16 - 0.5)| >= 0.95: k = 0 gives 1.078 (air),
    # k = 1 gives 0.934 (head); by symmetry only k = 0 and k = 15 are air.
    for path in sorted(tmp_path.glob("*/*[0-9].nii.gz")):
        sliced = slice_volume(read_volume(path), SliceOptions())
        assert sliced.blank == (0, 15), path.name
        assert sliced.kept == tuple(range(1, 15)), path.name


# --------------------------------------------------------------------------- prepare


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 phantom volumes (with masks) per class, 32 px, 12 sections; read-only."""
    root = tmp_path_factory.mktemp("phantoms") / "volumes"
    write_phantom_volumes(root, VolumeSynthConfig(count=5, image_size=32, depth=12, seed=3))
    return root


def read_rows(target: Path, split: str) -> tuple[list[str], list[dict[str, str]]]:
    with (target / "manifests" / f"{split}.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


@pytest.mark.parametrize(("seed", "val_size"), [(42, 0.15), (1, 0.2), (7, 0.3)])
def test_case_grouped_splits(
    phantom_root: Path, tmp_path: Path, seed: int, val_size: float
) -> None:
    summary = prepare_volumes(
        phantom_root, tmp_path / "out", options=SliceOptions(), val_size=val_size, seed=seed
    )
    target = summary.target

    cases_of: dict[str, set[str]] = {}
    for split in ("train", "val", "test"):
        columns, rows = read_rows(target, split)
        assert columns == ["path", "label", "source", "case"]
        assert len(rows) == sum(summary.counts[split].values())
        cases_of[split] = {row["case"] for row in rows}
        for label, count in summary.cases[split].items():
            assert count == len({r["case"] for r in rows if r["label"] == label})
        for row in rows:
            name = Path(row["path"]).stem  # <case>_axial<k>
            case, _, k = name.rpartition("_axial")
            assert row["path"] == f"{split}/{row['label']}/{name}.png"
            assert case == row["case"] and row["case"].startswith(row["label"] + "-")
            volume = phantom_root.resolve() / row["label"] / f"{case}.nii.gz"
            assert row["source"] == f"{volume}#axial{k}"
            assert 1 <= int(k) <= 12  # 1-based slice numbers of 12 sections
            pixels = np.asarray(Image.open(target / row["path"]))
            mask = target / "masks" / row["path"]  # every phantom case has a mask
            assert mask.is_file(), mask
            assert np.asarray(Image.open(mask)).shape == pixels.shape == (32, 32)
            if row["label"] != "no_tumor":
                assert lesion_share_of(mask) >= MIN_LESION_SHARE

    # No case in two splits, and each of the 20 cases in one.
    assert not cases_of["train"] & cases_of["val"]
    assert not cases_of["train"] & cases_of["test"]
    assert not cases_of["val"] & cases_of["test"]
    every = {
        f"{c}-{k:03d}" for c in ("glioma", "meningioma", "no_tumor", "pituitary") for k in range(5)
    }
    assert cases_of["train"] | cases_of["val"] | cases_of["test"] == every
    assert all(cases_of[split] for split in ("train", "val", "test"))
    # Every section is accounted for: 20 cases x 12 sections.
    kept = sum(sum(by_label.values()) for by_label in summary.counts.values())
    assert kept + summary.blank + summary.lesion_free == 20 * 12
    assert summary.unmasked == () and summary.unreadable == ()


def test_a_case_without_mask_keeps_every_non_blank_slice(
    phantom_root: Path, tmp_path: Path
) -> None:
    source = tmp_path / "src"
    for folder in ("glioma", "no_tumor"):
        (source / folder).mkdir(parents=True)
        for path in (phantom_root / folder).glob(f"{folder}-00[01]*"):
            (source / folder / path.name).write_bytes(path.read_bytes())
    (source / "glioma" / "glioma-000_mask.nii.gz").unlink()
    blank = slice_volume(read_volume(source / "glioma" / "glioma-000.nii.gz"), SliceOptions()).blank

    summary = prepare_volumes(source, tmp_path / "out", options=SliceOptions(), seed=0)

    assert summary.unmasked == ("glioma/glioma-000",)
    rows = [r for s in ("train", "val", "test") for r in read_rows(summary.target, s)[1]]
    unmasked = sorted(
        int(r["source"].rpartition("#axial")[2]) for r in rows if r["case"] == "glioma-000"
    )
    assert unmasked == [k + 1 for k in range(12) if k not in blank]  # all non-blank slices
    assert not list((summary.target / "masks").rglob("glioma-000_*"))
    masked = [r for r in rows if r["case"] == "glioma-001"]
    assert 0 < len(masked) < 10  # only the slices through its lesion


def test_unreadable_volume_is_reported_and_skipped(phantom_root: Path, tmp_path: Path) -> None:
    source = tmp_path / "src"
    for folder in ("glioma", "no_tumor"):
        (source / folder).mkdir(parents=True)
        for path in (phantom_root / folder).glob(f"{folder}-000*"):
            (source / folder / path.name).write_bytes(path.read_bytes())
    (source / "glioma" / "broken.nii.gz").write_bytes(b"garbage")
    (source / "glioma" / "glioma-001.nii.gz").write_bytes(
        (phantom_root / "glioma" / "glioma-001.nii.gz").read_bytes()
    )
    write_nifti(
        source / "glioma" / "glioma-001_mask.nii.gz", np.zeros((4, 5, 6), np.uint8), np.eye(4)
    )

    summary = prepare_volumes(source, tmp_path / "out", options=SliceOptions(), seed=0)

    (broken, reason), (mismatched, why) = summary.unreadable
    assert broken.name == "broken.nii.gz" and "cannot read NIfTI file" in reason
    assert mismatched.name == "glioma-001.nii.gz"
    assert "glioma-001_mask.nii.gz has (4, 5, 6) voxels, its volume (32, 32, 12)" in why
    assert sum(summary.cases[s]["glioma"] for s in ("train", "val", "test")) == 1


def test_one_case_id_under_two_classes_stays_in_train(phantom_root: Path, tmp_path: Path) -> None:
    source = tmp_path / "src"
    for folder in ("glioma", "no_tumor"):
        (source / folder).mkdir(parents=True)
        for path in (phantom_root / folder).glob(f"{folder}-*"):
            (source / folder / path.name).write_bytes(path.read_bytes())
    # The same patient id under no_tumor as well: one patient, two labels.
    for suffix in ("", "_mask"):
        (source / "no_tumor" / f"glioma-001{suffix}.nii.gz").write_bytes(
            (phantom_root / "no_tumor" / f"no_tumor-000{suffix}.nii.gz").read_bytes()
        )

    summary = prepare_volumes(source, tmp_path / "out", options=SliceOptions(), val_size=0.3)

    where = {
        (row["label"], row["case"]): split
        for split in ("train", "val", "test")
        for row in read_rows(summary.target, split)[1]
    }
    assert where[("glioma", "glioma-001")] == where[("no_tumor", "glioma-001")] == "train"
    assert {"val", "test"} <= set(where.values())  # the other cases are still split


def test_prepare_refuses_bad_input(phantom_root: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="val_size"):
        prepare_volumes(phantom_root, tmp_path / "out", options=SliceOptions(), val_size=0.5)
    odd = tmp_path / "odd"
    (odd / "kittens").mkdir(parents=True)
    (odd / "kittens" / "a.nii.gz").write_bytes(
        (phantom_root / "glioma" / "glioma-000.nii.gz").read_bytes()
    )
    with pytest.raises(UsageError, match="unknown class folder 'kittens'"):
        prepare_volumes(odd, tmp_path / "out", options=SliceOptions())


def test_rerun_needs_force(phantom_root: Path, tmp_path: Path) -> None:
    source = tmp_path / "src"
    for folder in ("glioma", "no_tumor"):
        (source / folder).mkdir(parents=True)
        for path in (phantom_root / folder).glob(f"{folder}-00[01]*"):
            (source / folder / path.name).write_bytes(path.read_bytes())
    first = prepare_volumes(source, tmp_path / "out", options=SliceOptions(), seed=0)
    with pytest.raises(UsageError, match="already holds"):
        prepare_volumes(source, tmp_path / "out", options=SliceOptions(), seed=0)
    again = prepare_volumes(source, tmp_path / "out", options=SliceOptions(), seed=0, force=True)
    assert again.counts == first.counts and again.cases == first.cases


def test_find_cases_and_holds_volumes(phantom_root: Path, tmp_path: Path) -> None:
    cases = find_cases(phantom_root)
    assert len(cases) == 20
    first = cases[0]
    assert (first.case_id, first.label) == ("glioma-000", "glioma")
    assert first.mask is not None and first.mask.name == "glioma-000_mask.nii.gz"
    assert holds_volumes(phantom_root)

    source = tmp_path / "src"
    write_axial_series(source / "No Tumor" / "patient-7", lps_object((3, 3, 3)))
    (source / "No Tumor" / "patient-7_seg.nii").write_bytes(b"")
    assert holds_volumes(source)
    (case,) = find_cases(source)
    assert (case.case_id, case.label) == ("patient-7", "no_tumor")
    assert case.volume.is_dir() and case.mask is not None and case.mask.name == "patient-7_seg.nii"

    images = tmp_path / "images" / "glioma"
    images.mkdir(parents=True)
    (images / "a.png").write_bytes(b"")
    assert not holds_volumes(tmp_path / "images")
    assert not holds_volumes(tmp_path / "nowhere")


def test_small_phantoms_air_ends_are_blank(phantom_root: Path) -> None:
    for path in sorted(phantom_root.glob("*/*[0-9].nii.gz")):
        blank = slice_volume(read_volume(path), SliceOptions()).blank
        assert {0, 11} <= set(blank), f"{path.name}: blank {blank}"


def test_a_localizer_among_the_slices_is_refused(tmp_path: Path) -> None:
    """Files of two orientations are not one stack: one line naming the folder."""
    folder = tmp_path / "s"
    folder.mkdir()
    series = generate_uid()
    for k in range(3):
        write_slice(folder / f"ax{k}.dcm", np.full((4, 4), k, np.uint16), series=series,
                    position=(0.0, 0.0, float(k)), InstanceNumber=k + 1)  # fmt: skip
    write_slice(folder / "localizer.dcm", np.zeros((4, 4), np.uint16), series=series,
                position=(0.0, 0.0, 0.0), orientation=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0))  # fmt: skip
    with pytest.raises(UnreadableImageError, match=r"different .* Image Orientation") as error:
        read_volume(folder)
    assert str(folder) in str(error.value)


def test_two_files_with_one_instance_number_and_no_positions_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    series = generate_uid()
    for name, number in (("a.dcm", 1), ("b.dcm", 2), ("c.dcm", 2)):
        write_slice(folder / name, np.zeros((4, 4), np.uint16), series=series, orientation=None,
                    InstanceNumber=number)  # fmt: skip
    with pytest.raises(UnreadableImageError, match="share an Instance Number"):
        read_volume(folder)


# --------------------------------------------------------------------------- review fixes


def test_telling_a_series_needs_pydicom_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the dicom extra but not the volumes one, folders of 2-D DICOM images still work."""
    write_axial_series(tmp_path / "s", lps_object((3, 3, 3)))
    monkeypatch.setitem(sys.modules, "nibabel", None)
    assert is_dicom_series(tmp_path / "s")
    scans = gather_scans([str(tmp_path)])
    assert (scans.images, scans.volumes) == ([], [tmp_path / "s"])
    with pytest.raises(UsageError, match=r"mritumor\[volumes\]"):
        read_volume(tmp_path / "s")


def test_files_without_a_series_uid_are_images(tmp_path: Path) -> None:
    """Anonymised 2-D DICOM images (no Series Instance UID) are not one series."""
    for k in range(3):
        path = write_slice(tmp_path / f"{k}.dcm", np.full((4, 4), k, np.uint16), series="1.2",
                           position=(0.0, 0.0, float(k)))  # fmt: skip
        dataset = pydicom.dcmread(path)
        del dataset.SeriesInstanceUID
        dataset.save_as(path)
    assert not is_dicom_series(tmp_path)
    assert [item.path.name for item in gather_scans([str(tmp_path)]).images] == [
        "0.dcm", "1.dcm", "2.dcm"
    ]  # fmt: skip


def test_a_series_folder_does_not_hide_what_lies_below_it(tmp_path: Path) -> None:
    top = tmp_path / "top"
    write_axial_series(top, lps_object((3, 3, 3)))
    save(top / "extra.png", smooth_image(1, 40))
    (top / "sub").mkdir()
    write_nifti(top / "sub" / "v.nii.gz", ras_object(), np.eye(4))
    write_nifti(top / "sub" / "v_mask.nii.gz", ras_object(), np.eye(4))
    save(top / "sub" / "img.png", smooth_image(2, 40))
    scans = gather_scans([str(top)])
    assert scans.volumes == [top, top / "sub" / "v.nii.gz"]
    assert sorted(item.path.name for item in scans.images) == ["extra.png", "img.png"]


def test_globs_skip_masks_and_the_files_of_a_series(tmp_path: Path) -> None:
    write_axial_series(tmp_path / "s", lps_object((3, 3, 3)))
    write_nifti(tmp_path / "v.nii.gz", ras_object(), np.eye(4))
    write_nifti(tmp_path / "v_mask.nii.gz", ras_object(), np.eye(4))
    everything = gather_scans([f"{tmp_path}/**"])
    assert everything.images == [] and set(everything.volumes) == {
        tmp_path / "s",
        tmp_path / "v.nii.gz",
    }
    named = gather_scans([str(tmp_path / "s"), str(tmp_path / "s" / "slice00.dcm")])
    assert (named.images, named.volumes) == ([], [tmp_path / "s"])
    assert gather_scans([f"{tmp_path}/*.nii.gz"]).volumes == [tmp_path / "v.nii.gz"]


@pytest.mark.parametrize("spacing", [(0.0, 1.0), (-1.0, 1.0)])
def test_pixel_spacing_must_be_positive(tmp_path: Path, spacing: tuple[float, float]) -> None:
    write_axial_series(tmp_path / "s", lps_object((3, 3, 3)), pixel_spacing=spacing)
    with pytest.raises(UnreadableImageError, match=r"Pixel Spacing .* is not two positive"):
        read_volume(tmp_path / "s")


def test_an_instance_numbered_series_stepping_by_two_has_no_gap(tmp_path: Path) -> None:
    for k in range(4):  # Instance Numbers 2, 4, 6, 8: a regular series, not a gappy one
        write_slice(tmp_path / f"{k}.dcm", np.full((4, 4), k, np.uint16), series="1.2.3",
                    orientation=None, InstanceNumber=2 * (k + 1))  # fmt: skip
    notes = read_volume(tmp_path).notes
    assert len(notes) == 1 and "ordered by Instance Number" in notes[0]


def test_window_dicom_refuses_a_window_too_narrow_to_use(tmp_path: Path) -> None:
    write_axial_series(tmp_path / "s", lps_object((3, 3, 3)), WindowCenter=40, WindowWidth=0.5)
    volume = read_volume(tmp_path / "s")
    with pytest.raises(UsageError, match=r"window \(40/0.5\) is too narrow"):
        window_voxels(volume, SliceOptions(window="dicom"))
    assert window_voxels(volume, SliceOptions(window="auto"))[1] == "percentile 0.5-99.5"


def test_a_mask_on_another_grid_is_refused(phantom_root: Path, tmp_path: Path) -> None:
    """Same shape, other affine: a mask that would be read flipped against its volume."""
    source = tmp_path / "source"
    shutil.copytree(phantom_root, source)
    mask = source / "glioma" / "glioma-000_mask.nii.gz"
    image = nibabel.load(mask)
    nibabel.save(nibabel.Nifti1Image(np.asarray(image.dataobj), np.eye(4)), mask)
    summary = prepare_volumes(source, tmp_path / "out", options=SliceOptions(), val_size=0.2)
    (unreadable,) = summary.unreadable
    assert unreadable[0] == source / "glioma" / "glioma-000.nii.gz"
    assert "does not lie on its volume's voxels" in unreadable[1]


def test_two_volumes_of_one_case_are_refused(phantom_root: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(phantom_root, source)
    gz = source / "glioma" / "glioma-000.nii.gz"
    (source / "glioma" / "glioma-000.nii").write_bytes(gzip.decompress(gz.read_bytes()))
    with pytest.raises(UsageError, match=r"two volumes of case 'glioma-000' .*glioma-000.nii, "):
        prepare_volumes(source, tmp_path / "out", options=SliceOptions())
    assert not (tmp_path / "out").exists()


def test_the_class_follows_the_decision() -> None:
    """max over slices says tumour while the top slices' mean favours no_tumor: the class is
    then the likeliest tumour class; below the threshold it is the negative class."""
    names = ("glioma", "meningioma", "no_tumor", "pituitary")
    probabilities = np.array(
        [[0.50, 0.40, 0.05, 0.05], [0.05, 0.05, 0.85, 0.05], [0.05, 0.05, 0.85, 0.05]]
    )
    sliced = VolumeSlices(
        Path("v.nii.gz"), (), "axial", 3, (0, 1, 2), (np.zeros((2, 2, 1)),) * 3, (), ""
    )
    labels = tuple(item.label for item in slice_inputs(sliced))

    def verdict(threshold: float | None) -> VolumeVerdict:
        predictions = Predictions(
            labels=labels, class_names=names, probabilities=probabilities,
            tumour_score=1 - probabilities[:, 2], entropy=np.zeros(3), score_std=None,
            disagreement=None, threshold=threshold, decision=None, triage=None, failures={},
        )  # fmt: skip
        options = VolumeOptions(aggregation="max", top_k=3)
        (found,) = verdicts(predictions, [sliced], options, band=0.0, negative_class="no_tumor")
        return found

    # Mean over the 3 slices: glioma 0.2, meningioma 0.167, no_tumor 0.583; score max = 0.95.
    assert verdict(0.5).decision == "tumour" and verdict(0.5).predicted_class == "glioma"
    assert verdict(0.99).decision == "no tumour" and verdict(0.99).predicted_class == "no_tumor"
    assert verdict(None).predicted_class == "no_tumor"
