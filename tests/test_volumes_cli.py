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

from helpers import PREDICT_DATA, BuiltRuns, SyntheticData, write_dicom
from mritumor.cli.main import app
from mritumor.core.errors import EXIT_PARTIAL
from mritumor.predict.ensemble import NO_TUMOUR, REVIEW

nibabel = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

from pydicom.uid import generate_uid  # noqa: E402

from mritumor.volumes.synth import nifti_bytes, render_volume  # noqa: E402

WIDE = {"COLUMNS": "200"}
SIZE = 32
DEPTH = 12
#: 1 mm in-plane, SIZE / DEPTH mm thick, as ``data synth --volumes`` writes them.
SPACING = (1.0, 1.0, SIZE / DEPTH)
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


def test_slice_rows_add_up_to_the_volume_row(run_dir: Path, glioma: Path) -> None:
    result = invoke("infer", glioma, "--run", run_dir, "--format", "jsonl", "-q")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    slices = [line for line in lines if line["kind"] == "slice"]
    (volume,) = [line for line in lines if line["kind"] == "volume"]
    assert len(lines) == len(slices) + 1 and lines[-1] is volume  # slices first, then verdicts
    assert volume["path"] == str(glioma) and volume["axis"] == "axial"
    assert volume["slices"] == DEPTH and volume["blank_slices"] >= 2  # air at both ends
    assert len(slices) == volume["scored_slices"] == volume["slices"] - volume["blank_slices"]
    numbers = [slice_number(line["path"], glioma, "axial") for line in slices]
    assert numbers == sorted(set(numbers)) and numbers[0] > 1 and numbers[-1] < DEPTH
    scores = {number: line["tumour_score"] for number, line in zip(numbers, slices, strict=True)}

    best = sorted(scores, key=lambda n: -scores[n])[:3]
    assert volume["aggregation"] == "top_k_mean" and volume["top_k"] == 3
    assert volume["tumour_score"] == pytest.approx(np.mean([scores[n] for n in best]), abs=1e-12)
    assert [top["slice"] for top in volume["top_slices"]] == best
    assert [top["label"] for top in volume["top_slices"]] == [f"{glioma}#axial{n}" for n in best]
    assert [top["tumour_score"] for top in volume["top_slices"]] == [scores[n] for n in best]
    by_number = dict(zip(numbers, slices, strict=True))
    mean = {
        name: np.mean([by_number[n]["probabilities"][name] for n in best])
        for name in volume["probabilities"]
    }
    assert volume["probabilities"] == pytest.approx(mean, abs=1e-12)
    assert volume["predicted_class"] == max(mean, key=mean.__getitem__)
    assert volume["decision"] is None and volume["triage"] is None  # the run has no threshold


def test_csv_rows_with_the_max_aggregation_and_a_threshold(run_dir: Path, glioma: Path) -> None:
    threshold = 0.99
    result = invoke(
        "infer", glioma, "--run", run_dir, "--format", "csv", "--threshold", str(threshold),
        "--set", "volumes.aggregation=max", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert next(csv.reader(io.StringIO(result.stdout)))[0] == "kind"
    slices = [row for row in rows if row["kind"] == "slice"]
    (volume,) = [row for row in rows if row["kind"] == "volume"]
    assert len(rows) == len(slices) + 1
    assert volume["path"] == str(glioma)
    numbers = [slice_number(row["path"], glioma, "axial") for row in slices]
    assert len(set(numbers)) == len(numbers) and set(numbers) <= set(range(1, DEPTH + 1))
    blank = DEPTH - len(slices)
    assert blank >= 2
    note = volume["note"]
    assert note.startswith(f"max (k=3) of {len(slices)} axial slices ({blank} blank of {DEPTH}")

    scores = [float(row["tumour_score"]) for row in slices]
    assert float(volume["tumour_score"]) == pytest.approx(max(scores), abs=1e-6)
    highest = numbers[int(np.argmax(scores))]
    assert f"top slices: {highest} " in note
    # The same threshold as the slices: every slice and the volume fall short of 0.99.
    assert max(scores) < threshold
    assert {row["decision"] for row in rows} == {NO_TUMOUR}
    assert {row["triage"] for row in rows} <= {NO_TUMOUR, REVIEW}
    assert volume["triage"] != ""


def test_a_dicom_series_with_a_missing_slice_is_one_volume(run_dir: Path, tmp_path: Path) -> None:
    sections = phantom("glioma", seed=2, depth=9).astype(np.uint16)
    series = tmp_path / "series"
    series.mkdir()
    uid, study = generate_uid(), generate_uid()
    for k in range(9):
        if k == 4:  # a slice lost on the way: positions step 2.5 mm, then 5 mm here
            continue
        write_dicom(
            series / f"IM{8 - k:02d}.dcm",  # names in the opposite order to the positions
            sections[k],
            SeriesInstanceUID=uid,
            StudyInstanceUID=study,
            InstanceNumber=k + 1,
            ImagePositionPatient=[0.0, 0.0, 2.5 * k],
            ImageOrientationPatient=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            PixelSpacing=[1.0, 1.0],
            SliceThickness=2.5,
            WindowCenter=300,
            WindowWidth=600,
        )
    # The same eight sections as a NIfTI file (same orientation, axes and spacing).
    reference = tmp_path / "reference.nii.gz"
    reference.write_bytes(nifti_bytes(np.delete(sections, 4, axis=0), (1.0, 1.0, 2.5)))

    result = invoke(
        "infer", series, reference, "--run", run_dir, "--format", "json", "--window",
        "percentile", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert len(document["volumes"]) == 2
    assert {record["kind"] for record in document["predictions"]} == {"slice"}
    assert not any(record["path"].endswith(".dcm") for record in document["predictions"])
    verdict, expected = verdict_of(document, series), verdict_of(document, reference)
    assert verdict["slices"] == 8 and verdict["window"] == "percentile 0.5-99.5"
    (note,) = verdict["notes"]
    assert note.startswith("about 1 slice(s) missing between IM05.dcm and IM03.dcm")
    assert f"warning: {series}: {note}" in result.stderr
    assert not expected["notes"]
    # Ordered by position (not by file name), the series is the reference volume.
    for key in ("slices", "blank_slices", "scored_slices", "predicted_class"):
        assert verdict[key] == expected[key]
    assert verdict["tumour_score"] == pytest.approx(expected["tumour_score"], abs=1e-6)
    assert [top["slice"] for top in verdict["top_slices"]] == [
        top["slice"] for top in expected["top_slices"]
    ]
    assert all(top["label"].startswith(f"{series}#axial") for top in verdict["top_slices"])

    # --window auto takes the series' own window.
    result = invoke("infer", series, "--run", run_dir, "--format", "json", "-q")
    assert result.exit_code == 0, result.output
    assert verdict_of(json.loads(result.stdout), series)["window"] == "DICOM 300/600"


def test_coronal_slices_cut_across_the_in_plane_axis(run_dir: Path, glioma: Path) -> None:
    result = invoke(
        "infer", glioma, "--run", run_dir, "--axis", "coronal", "--format", "json", "-q"
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    verdict = verdict_of(document, glioma)
    # Axially the phantom has DEPTH slices; coronally as many as it is deep front to back.
    assert verdict["axis"] == "coronal" and verdict["slices"] == SIZE != DEPTH
    labels = [record["path"] for record in document["predictions"]]
    assert len(labels) == verdict["scored_slices"] == SIZE - verdict["blank_slices"]
    numbers = [slice_number(label, glioma, "coronal") for label in labels]
    assert len(set(numbers)) == len(numbers) and set(numbers) <= set(range(1, SIZE + 1))
    assert all(top["label"] == f"{glioma}#coronal{top['slice']}" for top in verdict["top_slices"])


def test_an_unreadable_volume_leaves_the_others_predicted(
    run_dir: Path, glioma: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    good = Path(shutil.copy(glioma, folder / "good.nii.gz"))
    bad = folder / "x.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file, nor gzip" * 8)
    result = invoke("infer", folder, "--run", run_dir, "--format", "json", "-q")
    assert result.exit_code == EXIT_PARTIAL, result.output
    document = json.loads(result.stdout)
    assert [verdict["path"] for verdict in document["volumes"]] == [str(good)]
    assert verdict_of(document, good)["predicted_class"] is not None
    assert all(record["path"].startswith(f"{good}#axial") for record in document["predictions"])
    assert "1 unreadable image(s) skipped" in result.stderr
    assert f"{bad}: cannot read NIfTI file {bad}" in result.stderr


def test_an_unreadable_volume_is_listed_in_the_json_document(
    run_dir: Path, glioma: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(glioma, folder / "good.nii.gz")
    (folder / "x.nii.gz").write_bytes(b"garbage" * 40)
    (folder / "y.png").write_bytes(b"garbage" * 40)
    result = invoke("infer", folder, "--run", run_dir, "--format", "json", "-q")
    assert result.exit_code == EXIT_PARTIAL, result.output
    unreadable = json.loads(result.stdout)["unreadable"]
    assert str(folder / "y.png") in unreadable  # an image is listed ...
    assert "cannot read NIfTI file" in unreadable.get(str(folder / "x.nii.gz"), "")  # ... a volume?


def test_a_folder_of_images_and_a_volume_gets_both_tables(
    run_dir: Path, data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    folder = Path("mixed")
    images = sorted((data_root / "test" / "glioma").iterdir())[:2]
    for image in images:
        (folder / "2d").mkdir(parents=True, exist_ok=True)
        shutil.copy(image, folder / "2d" / image.name)
    write_phantom(folder / "3d" / "case-7.nii.gz", "meningioma", seed=3)
    mask = render_volume(np.random.SeedSequence(3), "meningioma", SIZE, DEPTH).mask
    (folder / "3d" / "case-7_mask.nii.gz").write_bytes(nifti_bytes(mask.astype(np.uint8), SPACING))

    result = invoke("infer", folder, "--run", run_dir, "--gradcam", "cams", "-q")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert text.count("Predictions") == 1 and text.count("Volumes (top_k_mean, k=3, axial)") == 1
    predictions, volumes = text.split("Volumes (")
    for image in images:
        assert f"mixed/2d/{image.name}" in predictions
    assert "case-7.nii.gz" in volumes and "#axial" not in text  # slices only in the files
    assert "_mask" not in text  # a lesion mask beside its volume is not a scan
    assert "with 1 volume montage(s)" in result.stderr
    written = sorted(path.name for path in Path("cams").iterdir())
    assert "case-7_gradcam_montage.png" in written and len(written) == len(images) + 1


# --------------------------------------------------------------------------- gradcam


def test_gradcam_writes_one_montage_per_volume(run_dir: Path, glioma: Path, tmp_path: Path) -> None:
    out = tmp_path / "cams"
    result = invoke("gradcam", glioma, "--run", run_dir, "--out", out, "-q")
    assert result.exit_code == 0, result.output
    assert [path.name for path in out.iterdir()] == ["glioma-1_gradcam_montage.png"]
    with Image.open(out / "glioma-1_gradcam_montage.png") as montage:
        montage.load()
        assert montage.format == "PNG" and montage.width > montage.height  # 3 columns, 2 rows
    assert "0 panel(s) and 1 volume montage(s) at layer block4_relu" in result.stdout


# --------------------------------------------------------------------------- data


def test_synthesised_volumes_are_prepared_into_splits_by_case(tmp_path: Path) -> None:
    source, target = tmp_path / "volumes", tmp_path / "prepared"
    result = invoke(
        "data", "synth", "--volumes", "3", "--image-size", str(SIZE), "--depth", str(DEPTH),
        "--out", source,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    classes = ("glioma", "meningioma", "no_tumor", "pituitary")
    cases = {f"{name}-{k:03d}" for name in classes for k in range(3)}
    for case in cases:
        label = case.rsplit("-", 1)[0]
        assert (source / label / f"{case}.nii.gz").is_file()
        assert (source / label / f"{case}_mask.nii.gz").is_file()

    result = invoke("data", "prepare", source, "--out", target, "--val-size", "0.3")
    assert result.exit_code == 0, result.output
    seen: dict[str, set[str]] = {}
    for split in ("train", "val", "test"):
        text = (target / "manifests" / f"{split}.csv").read_text(encoding="utf-8")
        rows = list(csv.DictReader(io.StringIO(text)))
        assert rows and {"path", "label", "source", "case"} <= set(rows[0])
        for row in rows:
            png = target / row["path"]
            assert png.is_file() and Path(row["path"]).parts[:2] == (split, row["label"])
            assert row["case"].rsplit("-", 1)[0] == row["label"]
            volume = source / row["label"] / f"{row['case']}.nii.gz"
            assert slice_number(row["source"], volume, "axial") in range(1, DEPTH + 1)
            with Image.open(png) as image:
                assert image.size == (SIZE, SIZE)
            if row["label"] != "no_tumor":  # a tumour case keeps only slices showing its lesion
                with Image.open(target / "masks" / row["path"]) as mask:
                    assert np.asarray(mask).any()
        seen[split] = {row["case"] for row in rows}
    assert seen["train"].isdisjoint(seen["val"]) and seen["train"].isdisjoint(seen["test"])
    assert seen["val"].isdisjoint(seen["test"])
    assert set().union(*seen.values()) == cases  # every case, and no mask taken for one


def test_synth_refuses_2d_counts_with_volumes(tmp_path: Path) -> None:
    out = tmp_path / "volumes"
    result = invoke("data", "synth", "--volumes", "1", "--train", "3", "--out", out)
    one_line_error(result, "--train", "--volumes")
    assert not out.exists()


def test_options_that_would_do_nothing_are_refused(glioma: Path, tmp_path: Path) -> None:
    """Image-only options of `data prepare` on volumes, `--depth` without `--volumes`."""
    source = tmp_path / "labelled"
    (source / "glioma").mkdir(parents=True)
    shutil.copy(glioma, source / "glioma" / glioma.name)
    out = tmp_path / "prepared"
    result = invoke("data", "prepare", source, "--out", out, "--name", "site-b", "--copy")
    assert one_line_error(result) == "error: --name, --copy apply to images; volumes are sliced"
    result = invoke("data", "synth", "--depth", "20", "--out", tmp_path / "synth")
    assert one_line_error(result) == "error: --depth applies to --volumes only"
    assert not out.exists() and not (tmp_path / "synth").exists()


def test_a_blank_volume_has_empty_cells_for_its_score(run_dir: Path, tmp_path: Path) -> None:
    air = tmp_path / "air.nii.gz"
    air.write_bytes(nifti_bytes(np.zeros((6, 32, 32), np.int16), (1.0, 1.0, 1.0)))
    result = invoke("infer", air, "--run", run_dir, "--format", "csv", "-q")
    assert result.exit_code == 0, result.output
    (row,) = list(csv.DictReader(io.StringIO(result.stdout)))
    assert row["kind"] == "volume" and row["tumour_score"] == "" and row["predicted_class"] == ""
    assert "no slice was scored: all 6 are blank" in row["note"]


@pytest.mark.parametrize("command", ["infer", "synth", "prepare"])
def test_without_the_volumes_extra_the_message_names_it(
    command: str,
    run_dir: Path,
    glioma: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = tmp_path / "labelled"
    (source / "glioma").mkdir(parents=True)
    shutil.copy(glioma, source / "glioma" / glioma.name)
    arguments = {
        "infer": ["infer", glioma, "--run", run_dir, "-q"],
        "synth": ["data", "synth", "--volumes", "1", "--out", tmp_path / "synth"],
        "prepare": ["data", "prepare", source, "--out", tmp_path / "prepared"],
    }[command]
    monkeypatch.setitem(sys.modules, "nibabel", None)
    line = one_line_error(invoke(*arguments), MISSING_EXTRA)
    assert line == (
        "error: reading 3-D volumes needs nibabel and pydicom: pip install 'mritumor[volumes]'"
    )
    assert not (tmp_path / "synth").exists() and not (tmp_path / "prepared").exists()
