"""``mritumor infer`` (mritumor.cli.infer) and the Predictor's TTA, MC dropout, ensembles and
triage (mritumor.predict)."""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import PREDICT_DATA, BuiltRuns, SyntheticData, write_bomb
from mritumor.cli.main import app
from mritumor.core.classes import CLASS_NAMES
from mritumor.core.errors import EXIT_PARTIAL
from mritumor.evaluation import reports
from mritumor.predict.ensemble import NO_TUMOUR, REVIEW, TUMOUR, triage
from mritumor.predict.inputs import ImageInput, gather_scans
from mritumor.predict.predictor import Predictor
from mritumor.run.bundle import update_bundle

WIDE = {"COLUMNS": "200"}


@pytest.fixture(scope="module")
def data_root(synthetic_data: SyntheticData) -> Path:
    return synthetic_data(**PREDICT_DATA)


@pytest.fixture(scope="module")
def runs(data_root: Path, built_run: BuiltRuns) -> tuple[Path, Path, Path]:
    """Two different untrained runs, and one with heavy dropout (shared: read-only)."""
    return (
        built_run(data_root, seed=1),
        built_run(data_root, seed=2),
        built_run(data_root, seed=3, dropout=0.5),
    )


def invoke(*args: str) -> object:
    return CliRunner().invoke(app, list(args), env=WIDE)


def warnings(stderr: str) -> list[str]:
    """stderr without the note that a run without a threshold gives no decision."""
    return [line for line in stderr.splitlines() if not line.startswith("note:")]


def csv_rows(text: str) -> dict[str, dict[str, str]]:
    return {str(Path(row["path"]).resolve()): row for row in csv.DictReader(io.StringIO(text))}


def test_infer_and_eval_give_identical_predictions(
    runs: tuple[Path, ...], data_root: Path, run_copy: Callable[..., Path]
) -> None:
    run_dir = run_copy(runs[0])
    assert invoke("eval", "--run", str(run_dir), "-q").exit_code == 0
    predictions = run_dir / "reports" / "eval-test" / reports.PREDICTIONS_FILE
    evaluated = csv_rows(predictions.read_text(encoding="utf-8"))
    result = invoke(
        "infer", str(data_root / "test"), "--run", str(run_dir), "--format", "csv", "-q"
    )
    assert result.exit_code == 0, result.output
    inferred = csv_rows(result.stdout)
    assert set(inferred) == set(evaluated) and len(inferred) == 12
    for path, row in inferred.items():
        assert row["predicted_class"] == evaluated[path]["predicted_class"]
        for name in CLASS_NAMES:
            assert float(row[f"p_{name}"]) == pytest.approx(
                float(evaluated[path][f"p_{name}"]), abs=2e-6
            )
        assert float(row["tumour_score"]) == pytest.approx(
            float(evaluated[path]["tumour_score"]), abs=2e-6
        )


def test_tta_1_is_plain_inference_and_tta_2_averages_the_flip(
    runs: tuple[Path, ...], data_root: Path
) -> None:
    predictor = Predictor(runs[0])
    inputs = gather_scans([str(data_root / "test" / "glioma")]).images
    plain = predictor.predict(inputs).samples
    np.testing.assert_array_equal(predictor.predict(inputs, tta=1).samples, plain)
    from mritumor.data.images import read_image
    from mritumor.data.input_pipeline import resize_image

    pixels = np.stack(
        [resize_image(read_image(item.path, 3), 32, "pad").numpy() for item in inputs]
    ).astype(np.float32)
    flipped = predictor.model.predict(pixels[:, :, ::-1], verbose=0)
    expected = (predictor.model.predict(pixels, verbose=0) + flipped) / 2
    np.testing.assert_allclose(predictor.predict(inputs, tta=2).samples[0], expected, atol=1e-5)


def test_tta_beyond_the_views_is_a_usage_error(runs: tuple[Path, ...], data_root: Path) -> None:
    result = invoke("infer", str(data_root / "test"), "--run", str(runs[0]), "--tta", "99")
    assert result.exit_code == 2
    assert "--tta takes 1 to 8 views" in result.stderr


def test_mc_dropout_without_dropout_has_zero_spread(
    runs: tuple[Path, ...], data_root: Path
) -> None:
    result = invoke(
        "infer", str(data_root / "test"), "--run", str(runs[0]), "--mc-dropout", "4",
        "--format", "json", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)["predictions"]
    assert all(record["tumour_score_std"] == pytest.approx(0.0, abs=1e-6) for record in records)


def test_mc_dropout_varies_and_keeps_batchnorm_in_inference_mode(
    runs: tuple[Path, ...], data_root: Path
) -> None:
    predictor = Predictor(runs[2])
    inputs = gather_scans([str(data_root / "test")]).images
    plain = predictor.predict(inputs).samples[0]
    samples = predictor.predict(inputs, mc_samples=30, seed=4).samples
    assert samples.shape == (30, 12, 4)
    assert samples.std(axis=0).max() > 1e-3
    # Dropout (inverted) keeps the expected pre-activation; BN in training mode would not.
    np.testing.assert_allclose(samples.mean(axis=0), plain, atol=0.5 * np.abs(plain).max() + 0.05)
    moving_mean = [w for w in predictor.model.weights if "moving_mean" in w.path]
    before = [np.asarray(w).copy() for w in moving_mean]
    predictor.predict(inputs, mc_samples=3)
    for old, weight in zip(before, moving_mean, strict=True):
        np.testing.assert_array_equal(old, np.asarray(weight))


def test_an_ensemble_of_one_equals_its_member(runs: tuple[Path, ...], data_root: Path) -> None:
    args = ("infer", str(data_root / "test"), "--format", "csv", "-q")
    alone = invoke(*args, "--run", str(runs[0]))
    ensemble = invoke(*args, "--ensemble", str(runs[0]))
    assert alone.exit_code == ensemble.exit_code == 0
    assert alone.stdout == ensemble.stdout


def test_an_ensemble_reports_its_spread_and_needs_an_explicit_threshold(
    runs: tuple[Path, ...], data_root: Path
) -> None:
    members = ("--ensemble", str(runs[0]), "--ensemble", str(runs[1]))
    result = invoke("infer", str(data_root / "test"), *members, "--format", "json", "-q")
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)["predictions"]
    assert all("disagreement" in r and "triage" not in r for r in records)
    assert "an ensemble needs --threshold" in result.stderr
    decided = invoke(
        "infer", str(data_root / "test"), *members, "--threshold", "0.5", "--format", "json", "-q"
    )
    records = json.loads(decided.stdout)["predictions"]
    first = Predictor(runs[0])
    second = Predictor(runs[1])
    inputs = gather_scans([str(data_root / "test")]).images
    p1 = first.probabilities(first.predict(inputs).logits)
    p2 = second.probabilities(second.predict(inputs).logits)
    scores = 1.0 - (p1 + p2)[:, CLASS_NAMES.index("no_tumor")] / 2
    np.testing.assert_allclose([r["tumour_score"] for r in records], scores, atol=1e-6)
    spread = np.abs(p1 - p2)[:, CLASS_NAMES.index("no_tumor")]
    np.testing.assert_allclose([r["disagreement"] for r in records], spread, atol=1e-6)


def test_triage_boundaries() -> None:
    scores = np.array([0.39, 0.45, 0.5, 0.55, 0.61, 0.9])
    assert triage(scores, 0.5, 0.1) == [NO_TUMOUR, REVIEW, REVIEW, REVIEW, TUMOUR, TUMOUR]
    spread = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.3])
    assert triage(scores, 0.5, 0.1, spread, 0.2)[-1] == REVIEW
    assert triage(scores, 0.5, 0.0) == [NO_TUMOUR, NO_TUMOUR, TUMOUR, TUMOUR, TUMOUR, TUMOUR]
    assert triage(scores, 0.2, 0.1, spread, 0.2) == [TUMOUR] * 5 + [REVIEW]


def test_the_bundles_threshold_decides(
    runs: tuple[Path, ...], data_root: Path, run_copy: Callable[..., Path]
) -> None:
    run_dir = run_copy(runs[0])
    update_bundle(run_dir, threshold=0.5)
    result = invoke(
        "infer", str(data_root / "test"), "--run", str(run_dir), "--format", "jsonl", "-q"
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    for record in records:
        assert record["decision"] == (TUMOUR if record["tumour_score"] >= 0.5 else NO_TUMOUR)
        assert record["triage"] in (TUMOUR, REVIEW, NO_TUMOUR)


def test_unreadable_files_are_listed_and_the_exit_code_says_so(
    runs: tuple[Path, ...], data_root: Path, tmp_path: Path
) -> None:
    folder = Path(shutil.copytree(data_root / "test" / "glioma", tmp_path / "scans with spaces"))
    (folder / "broken.PNG").write_bytes(b"\x89PNG but not really")
    result = invoke("infer", str(folder), str(tmp_path / "nothing*.jpg"), "--run", str(runs[0]))
    assert result.exit_code == EXIT_PARTIAL, result.output
    assert "broken.PNG" in result.stderr
    assert "no image matches" in result.stderr
    assert result.stdout.count("glioma") >= 3


def test_when_no_input_can_be_read_they_are_listed_with_exit_3(
    runs: tuple[Path, ...], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    result = invoke("infer", str(broken), "--run", str(runs[0]), "--format", "json", "-q")
    assert result.exit_code == EXIT_PARTIAL, result.output
    assert json.loads(result.stdout) == {
        "threshold": None,
        "predictions": [],
        "unreadable": {
            str(broken): f"cannot read image {broken}: not an image file Pillow can identify"
        },
    }


def test_a_decompression_bomb_is_one_unreadable_line_and_the_good_image_is_predicted(
    runs: tuple[Path, ...], data_root: Path, tmp_path: Path
) -> None:
    good = sorted((data_root / "test" / "glioma").iterdir())[0]
    folder = tmp_path / "scans"
    folder.mkdir()
    shutil.copy(good, folder / good.name)
    bomb = write_bomb(folder / "bomb.png")
    result = invoke("infer", str(folder), "--run", str(runs[0]), "--format", "jsonl", "-q")
    assert result.exit_code == EXIT_PARTIAL, result.output
    assert warnings(result.stderr) == [
        "warning: 1 unreadable image(s) skipped:",
        f"  {bomb}: cannot read image {bomb}: over the 89478485-pixel limit "
        "(decompression-bomb guard)",
    ]
    [record] = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["path"] == str(folder / good.name) and record["note"] is None


def test_a_tiny_image_is_predicted_with_a_note(
    runs: tuple[Path, ...], data_root: Path, tmp_path: Path
) -> None:
    from PIL import Image

    folder = Path(shutil.copytree(data_root / "test" / "glioma", tmp_path / "scans"))
    tiny = folder / "tiny.png"
    Image.new("L", (1, 1), 90).save(tiny)
    note = "smaller than 32 px (1x1), upsampled to the model's input"
    args = ("infer", str(folder), "--run", str(runs[0]), "-q")

    as_csv = invoke(*args, "--format", "csv")
    assert as_csv.exit_code == 0, as_csv.output
    rows = csv_rows(as_csv.stdout)
    assert len(rows) == 4 and rows[str(tiny.resolve())]["note"] == note
    assert {row["note"] for path, row in rows.items() if path != str(tiny.resolve())} == {""}
    assert warnings(as_csv.stderr) == [
        "warning: 1 image(s) predicted with a caution:",
        f"  {tiny}: {note}",
    ]
    as_json = invoke(*args, "--format", "json")
    notes = {r["path"]: r["note"] for r in json.loads(as_json.stdout)["predictions"]}
    assert notes[str(tiny)] == note and sum(n is not None for n in notes.values()) == 1
    table = invoke(*args)
    assert table.exit_code == 0 and f"  {tiny}: {note}" in table.stderr
    assert "tiny.png" in table.stdout


def test_no_images_at_all_is_a_usage_error(runs: tuple[Path, ...], tmp_path: Path) -> None:
    result = invoke("infer", str(tmp_path), "--run", str(runs[0]))
    assert result.exit_code == 2
    assert "no images found" in result.stderr


def test_output_file_is_never_overwritten_without_force(
    runs: tuple[Path, ...], data_root: Path, tmp_path: Path
) -> None:
    target = tmp_path / "predictions.json"
    target.write_text("keep me", encoding="utf-8")
    args = ("infer", str(data_root / "test"), "--run", str(runs[0]), "--format", "json", "-q")
    refused = invoke(*args, "--output", str(target))
    assert refused.exit_code == 2 and target.read_text(encoding="utf-8") == "keep me"
    written = invoke(*args, "--output", str(target), "--force")
    assert written.exit_code == 0, written.output
    assert len(json.loads(target.read_text(encoding="utf-8"))["predictions"]) == 12


def test_a_missing_run_is_one_clear_error(data_root: Path, tmp_path: Path) -> None:
    result = invoke("infer", str(data_root / "test"), "--run", str(tmp_path / "gone"))
    assert result.exit_code == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.output


def test_inputs_are_gathered_once_from_files_folders_and_globs(data_root: Path) -> None:
    glioma = data_root / "test" / "glioma"
    first = sorted(glioma.iterdir())[0]
    scans = gather_scans(
        [str(first), str(glioma), str(data_root / "test" / "*" / "*00000*"), "absent/*.png"]
    )
    inputs, missing = scans.images, scans.missing
    assert scans.volumes == []
    paths = [item.path for item in inputs]
    assert len(paths) == len(set(paths)) == 3 + 3
    assert paths[0] == first
    assert missing == ["absent/*.png"]
    assert all(isinstance(item, ImageInput) and item.frame is None for item in inputs)


def test_run_and_ensemble_together_and_a_table_to_a_file_are_refused_up_front(
    runs: tuple[Path, ...], data_root: Path, tmp_path: Path
) -> None:
    test = str(data_root / "test")
    both = invoke("infer", test, "--run", str(runs[0]), "--ensemble", str(runs[1]))
    assert both.exit_code == 2 and "not both" in both.stderr
    table = invoke("infer", test, "--run", str(runs[0]), "-o", str(tmp_path / "p.txt"))
    assert table.exit_code == 2 and "--output needs --format" in table.stderr
    assert "Predicting" not in table.stderr
