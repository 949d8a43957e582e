"""3-D volumes on the command line: ``infer`` and ``gradcam`` on NIfTI files and DICOM series
folders, ``data synth --volumes`` and ``data prepare`` of labelled volumes.

Every prediction uses the untrained 32-px small_cnn the infer and gradcam tests share
(``built_run`` on ``PREDICT_DATA``, read-only); the volumes are tiny phantoms
(:func:`mritumor.volumes.synth.render_volume`, 32 x 32 x 12), so the numbers are
recomputed here from the slice rows, not compared with a trained model's.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from helpers import PREDICT_DATA, BuiltRuns, SyntheticData
from mritumor.cli.main import app
from mritumor.core.errors import EXIT_PARTIAL

nibabel = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid  # noqa: E402

from mritumor.volumes.synth import nifti_bytes, render_volume  # noqa: E402

WIDE = {"COLUMNS": "200"}
SIZE = 32
DEPTH = 12
#: 1 mm in-plane, SIZE / DEPTH mm thick, as ``data synth --volumes`` writes them.
SPACING = (1.0, 1.0, SIZE / DEPTH)
MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4")
MISSING_EXTRA = "mritumor[volumes]"


# --------------------------------------------------------------------------- helpers


def invoke(*args: str | Path) -> Any:
    return CliRunner().invoke(app, [str(arg) for arg in args], env=WIDE)


def phantom(class_name: str = "glioma", seed: int = 1, depth: int = DEPTH) -> np.ndarray:
    """``(depth, SIZE, SIZE)`` int16 sections 0-1000, inferior to superior (air at both ends)."""
    volume = render_volume(np.random.SeedSequence(seed), class_name, SIZE, depth)
    return np.rint(volume.image * 1000.0).astype(np.int16)


def write_phantom(path: Path, class_name: str = "glioma", seed: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(nifti_bytes(phantom(class_name, seed), SPACING))
    return path


def write_dicom_slice(path: Path, pixels: np.ndarray, **attributes: Any) -> Path:
    """One uncompressed single-frame MR slice of uint16 ``pixels`` with ``attributes``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:  # pragma: no cover - pydicom 2.x
        ds.is_little_endian = True
        ds.is_implicit_VR = False
        ds.save_as(path, write_like_original=False)
    return path


def verdict_of(document: dict[str, Any], path: Path) -> dict[str, Any]:
    (found,) = [record for record in document["volumes"] if record["path"] == str(path)]
    return found


def slice_number(label: str, path: Path, axis: str) -> int:
    prefix = f"{path}#{axis}"
    assert label.startswith(prefix), (label, prefix)
    return int(label[len(prefix) :])


def one_line_error(result: Any, *needles: str) -> str:
    """The usage error of ``result``: exit code 2, one line on stderr naming every needle."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def run_dir(synthetic_data: SyntheticData, built_run: BuiltRuns) -> Path:
    """The run test_infer_cli.py and test_explain_cli.py predict with (shared: read-only)."""
    return built_run(synthetic_data(**PREDICT_DATA))


@pytest.fixture(scope="module")
def data_root(synthetic_data: SyntheticData) -> Path:
    return synthetic_data(**PREDICT_DATA)


@pytest.fixture(scope="module")
def glioma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A phantom glioma volume, as ``data synth --volumes`` stores it (LPS affine)."""
    return write_phantom(tmp_path_factory.mktemp("volumes") / "glioma-1.nii.gz")


# --------------------------------------------------------------------------- infer


def test_a_volume_stored_flipped_gets_the_same_verdict(
    run_dir: Path, glioma: Path, tmp_path: Path
) -> None:
    stored = nibabel.load(glioma)
    data = np.asarray(stored.dataobj)
    affine = stored.affine.copy()
    # Flip the first array axis and mirror the affine with it: voxel i becomes n-1-i, so
    # the first column changes sign and the origin moves to where voxel n-1 was.
    flipped_affine = affine.copy()
    flipped_affine[:3, 0] = -affine[:3, 0]
    flipped_affine[:3, 3] = affine[:3, 3] + affine[:3, 0] * (data.shape[0] - 1)
    flipped = tmp_path / "flipped.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.ascontiguousarray(data[::-1]), flipped_affine), flipped)
    # The same voxels at the same world coordinates, stored in another order.
    assert nibabel.aff2axcodes(affine) != nibabel.aff2axcodes(flipped_affine)
    assert not np.array_equal(np.asarray(nibabel.load(flipped).dataobj), data)
    corner = np.array([0, 5, 7, 1])
    moved = np.array([data.shape[0] - 1, 5, 7, 1])
    assert np.allclose(affine @ corner, flipped_affine @ moved)

    verdicts = []
    for path in (glioma, flipped):
        result = invoke("infer", path, "--run", run_dir, "--format", "json", "-q")
        assert result.exit_code == 0, result.output
        verdicts.append(verdict_of(json.loads(result.stdout), path))
    original, mirrored = verdicts
    assert original["tumour_score"] == mirrored["tumour_score"]
    assert original["probabilities"] == mirrored["probabilities"]
    assert original["predicted_class"] == mirrored["predicted_class"] is not None
    for key in ("slices", "blank_slices", "scored_slices"):
        assert original[key] == mirrored[key]
    assert len(original["top_slices"]) == 3
    assert [
        (top["slice"], top["tumour_score"], top["predicted_class"])
        for top in original["top_slices"]
    ] == [
        (top["slice"], top["tumour_score"], top["predicted_class"])
        for top in mirrored["top_slices"]
    ]
