"""DICOM frames: modality LUT, VOI window, MONOCHROME1, multi-frame, colour, errors."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset  # noqa: E402

from helpers import write_dicom  # noqa: E402
from mritumor.core.errors import UsageError  # noqa: E402
from mritumor.data.dicom import (  # noqa: E402
    DICOM_SUFFIXES,
    is_dicom_file,
    pydicom_available,
    read_dicom_frames,
)
from mritumor.data.image_errors import ImageTooLargeError, UnreadableImageError  # noqa: E402
from mritumor.data.images import read_image  # noqa: E402

RAMP = np.arange(1001, dtype=np.uint16).reshape(1, 1001)  # stored values 0..1000


def noise(seed: int) -> np.ndarray:
    """A 40-row, 48-column frame of stored values 0..1000, different for every seed."""
    return np.random.default_rng(seed).integers(0, 1001, (40, 48), dtype=np.uint16)


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1, written out piecewise, rounded to the nearest integer."""
    x = np.asarray(x, dtype=np.float64)
    low = center - 0.5 - (width - 1) / 2
    high = center - 0.5 + (width - 1) / 2
    middle = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.rint(np.where(x <= low, 0, np.where(x > high, 255, middle))).astype(np.uint8)


def only_frame(path: Path, channels: int = 1) -> np.ndarray:
    frames = read_dicom_frames(path, channels=channels)
    assert len(frames) == 1
    assert frames[0].dtype == np.uint8
    return frames[0]


def test_linear_window_from_the_file(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "ramp.dcm", RAMP, WindowCenter=500, WindowWidth=200)
    out = only_frame(path)[0, :, 0].astype(int)

    assert (out[:401] == 0).all()  # x <= c - 0.5 - (w-1)/2 = 400
    assert (out[600:] == 255).all()  # x > c - 0.5 + (w-1)/2 = 599
    assert (np.diff(out[400:601]) >= 0).all()
    assert out[401] == 1  # ((401 - 499.5) / 199 + 0.5) * 255 = 1.28
    assert out[450] == 64  # 64.07
    assert out[500] == 128  # 128.14
    assert out[599] == 255
    np.testing.assert_array_equal(out, linear_window(RAMP[0], 500, 200))


def test_multi_valued_window_takes_the_first(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "ramp.dcm", RAMP, WindowCenter=[500, 100], WindowWidth=[200, 50])
    np.testing.assert_array_equal(only_frame(path)[0, :, 0], linear_window(RAMP[0], 500, 200))


def test_monochrome1_is_inverted_after_the_window(tmp_path: Path) -> None:
    window = {"WindowCenter": 500, "WindowWidth": 200}
    two = only_frame(write_dicom(tmp_path / "m2.dcm", RAMP, "MONOCHROME2", **window))
    one = only_frame(write_dicom(tmp_path / "m1.dcm", RAMP, "MONOCHROME1", **window))
    np.testing.assert_array_equal(one, 255 - two)
    assert one[0, 0, 0] == 255 and one[0, -1, 0] == 0


def test_rescale_is_applied_before_the_window(tmp_path: Path) -> None:
    # Stored 0..1000 -> rescaled -1000..1000; the window is in rescaled units.
    path = write_dicom(
        tmp_path / "ct.dcm",
        RAMP,
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=0,
        WindowWidth=200,
    )
    out = only_frame(path)[0, :, 0]
    rescaled = RAMP[0].astype(np.float64) * 2 - 1000
    np.testing.assert_array_equal(out, linear_window(rescaled, 0, 200))
    assert out[449] == 0  # rescaled -102
    assert out[500] == 128  # rescaled 0
    assert out[551] == 255  # rescaled 102


def test_linear_exact_and_sigmoid_functions(tmp_path: Path) -> None:
    exact = only_frame(
        write_dicom(
            tmp_path / "exact.dcm",
            RAMP,
            WindowCenter=500,
            WindowWidth=200,
            VOILUTFunction="LINEAR_EXACT",
        )
    )[0, :, 0]
    x = RAMP[0].astype(np.float64)
    expected = np.rint(np.clip(((x - 500) / 200 + 0.5) * 255, 0, 255))
    np.testing.assert_array_equal(exact, expected)

    sigmoid = only_frame(
        write_dicom(
            tmp_path / "sigmoid.dcm",
            RAMP,
            WindowCenter=500,
            WindowWidth=200,
            VOILUTFunction="SIGMOID",
        )
    )[0, :, 0]
    expected = np.rint(255 / (1 + np.exp(-4 * (x - 500) / 200)))
    np.testing.assert_array_equal(sigmoid, expected)


def test_without_a_window_the_frame_is_min_max_scaled(tmp_path: Path) -> None:
    pixels = np.array([[-200, -100], [0, 300]], dtype=np.int16)
    out = only_frame(write_dicom(tmp_path / "signed.dcm", pixels))[..., 0]
    np.testing.assert_array_equal(out, np.rint((pixels + 200) / 500 * 255))
    assert out.min() == 0 and out.max() == 255


def test_a_constant_frame_becomes_zeros(tmp_path: Path) -> None:
    out = only_frame(write_dicom(tmp_path / "flat.dcm", np.full((3, 4), 700, np.uint16)))
    assert out.shape == (3, 4, 1)
    assert not out.any()


def test_each_frame_of_a_multi_frame_file(tmp_path: Path) -> None:
    ramp = np.arange(20, dtype=np.uint16).reshape(4, 5)
    pixels = np.stack([ramp, ramp[::-1, ::-1] * 3, np.full((4, 5), 9, np.uint16)])
    frames = read_dicom_frames(write_dicom(tmp_path / "volume.dcm", pixels), channels=1)

    assert len(frames) == 3
    assert all(frame.shape == (4, 5, 1) and frame.dtype == np.uint8 for frame in frames)
    expected = np.rint(ramp / 19 * 255)
    np.testing.assert_array_equal(frames[0][..., 0], expected)
    np.testing.assert_array_equal(frames[1][..., 0], expected[::-1, ::-1])
    assert not frames[2].any()


def test_enhanced_multi_frame_uses_each_frames_functional_groups(tmp_path: Path) -> None:
    def item(**attributes: Any) -> Dataset:
        ds = Dataset()
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        return ds

    shared = item(PixelValueTransformationSequence=[item(RescaleSlope=2, RescaleIntercept=-1000)])
    per_frame = [
        item(FrameVOILUTSequence=[item(WindowCenter=0, WindowWidth=200)]),
        item(FrameVOILUTSequence=[item(WindowCenter=500, WindowWidth=1001)]),
    ]
    path = write_dicom(
        tmp_path / "enhanced.dcm",
        np.stack([RAMP, RAMP]),
        SharedFunctionalGroupsSequence=[shared],
        PerFrameFunctionalGroupsSequence=per_frame,
    )
    first, second = read_dicom_frames(path, channels=1)
    rescaled = RAMP[0].astype(np.float64) * 2 - 1000
    np.testing.assert_array_equal(first[0, :, 0], linear_window(rescaled, 0, 200))
    np.testing.assert_array_equal(second[0, :, 0], linear_window(rescaled, 500, 1001))


def test_channels_one_and_three_for_grey(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "ramp.dcm", RAMP, WindowCenter=500, WindowWidth=200)
    grey = only_frame(path, channels=1)
    rgb = only_frame(path, channels=3)
    assert grey.shape == (1, 1001, 1)
    assert rgb.shape == (1, 1001, 3)
    for plane in range(3):
        np.testing.assert_array_equal(rgb[..., plane], grey[..., 0])


def test_rgb_keeps_colour_and_its_luminance_matches_pillow(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
    path = write_dicom(tmp_path / "colour.dcm", pixels, "RGB")
    np.testing.assert_array_equal(only_frame(path, channels=3), pixels)
    luminance = np.asarray(Image.fromarray(pixels, "RGB").convert("L"))
    np.testing.assert_array_equal(only_frame(path, channels=1)[..., 0], luminance)


def test_rgb_multi_frame(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(2, 3, 4, 3), dtype=np.uint8)
    frames = read_dicom_frames(write_dicom(tmp_path / "colour.dcm", pixels, "RGB"))
    assert len(frames) == 2
    for frame, expected in zip(frames, pixels, strict=True):
        np.testing.assert_array_equal(frame, expected)


def test_ybr_full_colour_is_converted_to_rgb(tmp_path: Path) -> None:
    try:
        processing = importlib.import_module("pydicom.pixels.processing")
    except ImportError:  # pydicom 2.x
        processing = importlib.import_module("pydicom.pixel_data_handlers.util")
    convert_color_space = processing.convert_color_space

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
    ybr = convert_color_space(pixels, "RGB", "YBR_FULL")
    out = only_frame(write_dicom(tmp_path / "ybr.dcm", ybr, "YBR_FULL"), channels=3)
    assert np.abs(out.astype(int) - pixels.astype(int)).max() <= 2


def test_dicom_files_are_recognised_by_suffix_in_any_case(tmp_path: Path) -> None:
    assert DICOM_SUFFIXES == (".dcm", ".dicom")
    upper = write_dicom(tmp_path / "SCAN.DCM", RAMP)
    mixed = write_dicom(tmp_path / "scan two.Dicom", RAMP)
    assert is_dicom_file(upper) and is_dicom_file(mixed)
    assert only_frame(upper).shape == (1, 1001, 1)

    (tmp_path / "scan.png").write_bytes(b"")
    (tmp_path / "folder.dcm").mkdir()
    (tmp_path / ".hidden.dcm").write_bytes(upper.read_bytes())
    (tmp_path / "noext").write_bytes(upper.read_bytes())
    for name in ("scan.png", "folder.dcm", ".hidden.dcm", "noext", "missing.dcm"):
        assert not is_dicom_file(tmp_path / name), name


def test_a_corrupt_file_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "broken.dcm"
    path.write_bytes(np.random.default_rng(2).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    with pytest.raises(UnreadableImageError, match=r"broken\.dcm") as caught:
        read_dicom_frames(path)
    assert "\n" not in str(caught.value)


def test_truncated_pixel_data_is_unreadable(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "short.dcm", RAMP)
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(UnreadableImageError, match=r"short\.dcm"):
        read_dicom_frames(path)


def test_a_file_without_pixel_data_is_unreadable(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "report.dcm", RAMP)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(UnreadableImageError, match="no pixel data"):
        read_dicom_frames(path)


def test_a_missing_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(UnreadableImageError, match=r"nothing\.dcm"):
        read_dicom_frames(tmp_path / "nothing.dcm")


def test_channels_must_be_one_or_three(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="channels"):
        read_dicom_frames(write_dicom(tmp_path / "ramp.dcm", RAMP), channels=2)


def test_without_pydicom_the_message_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_dicom(tmp_path / "ramp.dcm", RAMP)
    for name in [name for name in sys.modules if name.startswith("pydicom.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pydicom", None)

    assert not pydicom_available()
    with pytest.raises(UsageError, match=r"mritumor\[dicom\]") as caught:
        read_dicom_frames(path)
    assert caught.value.exit_code == 2


def test_importing_the_module_does_not_import_pydicom() -> None:
    code = "import sys, mritumor.data.dicom; sys.exit('pydicom' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_a_pipeline_over_dicom_files_without_pydicom_is_one_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mritumor.core.preprocessing import Preprocessing
    from mritumor.data import dicom
    from mritumor.data.input_pipeline import PipelineOptions, build_pipeline
    from mritumor.data.splits import SplitFiles

    monkeypatch.setattr(dicom, "pydicom_available", lambda: False)
    split = SplitFiles("test", (tmp_path / "scan.DCM",), (0,), ("a", "b"))
    (tmp_path / "scan.DCM").write_bytes(b"DICM")
    preprocessing = Preprocessing(image_size=8, channels=1, resize="plain")
    options = PipelineOptions(preprocessing=preprocessing, batch_size=1, seed=0)
    with pytest.raises(UsageError, match=r"mritumor\[dicom\]"):
        build_pipeline(split, options)


def test_a_dicom_frame_over_the_pixel_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "huge.dcm", noise(1))
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 10_000  # the header says 100 megapixels; the pixels are never read
    ds.save_as(path)

    with pytest.raises(ImageTooLargeError) as caught:
        read_dicom_frames(path)
    assert str(caught.value) == (
        f"cannot read image {path}: 10000x10000 pixels is over the 89478485-pixel limit "
        "(decompression-bomb guard)"
    )


def test_data_check_reads_a_dicom_file_as_training_does(tmp_path: Path) -> None:
    from mritumor.data.check.analysis import check_dataset
    from mritumor.data.duplicates.hashing import hash_image, pixel_hash

    folder = tmp_path / "data" / "train" / "glioma"
    folder.mkdir(parents=True)
    path = write_dicom(folder / "scan.dcm", noise(2))

    record = hash_image(path)

    assert record.problem is None and record.usable
    assert (record.format, record.mode, record.width, record.height) == ("DICOM", None, 48, 40)
    assert record.pixel_sha256 == pixel_hash(read_image(path))
    report = check_dataset(tmp_path / "data", workers=1)
    assert not report.problems and report.modes == {"DICOM": 1}
    assert report.class_counts == {"train": {"glioma": 1}}


def test_data_prepare_places_dicom_files(tmp_path: Path) -> None:
    from mritumor.data.prepare.plan import prepare

    folder = tmp_path / "src" / "glioma"
    folder.mkdir(parents=True)
    for seed in range(4):
        write_dicom(folder / f"scan {seed}.dcm", noise(10 + seed))

    summary = prepare(tmp_path / "src", tmp_path / "data")

    assert summary.left_out == () and summary.warnings == ()
    assert summary.counts == {
        "train": {"glioma": 2},
        "val": {"glioma": 1},
        "test": {"glioma": 1},
    }
