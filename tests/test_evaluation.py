"""``mritumor eval``, ``calibrate`` and ``threshold`` on a small untrained run.

The run is built, not trained (a small_cnn saved with its bundle and splits),
so every test checks wiring and files: the numbers the reports hold are
recomputed here from predictions.csv with scikit-learn or by hand.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score
from typer.testing import CliRunner

from helpers import BuiltRuns, SyntheticData
from mritumor import plots
from mritumor.cli.main import app
from mritumor.core.classes import CLASS_NAMES
from mritumor.evaluation import reports
from mritumor.evaluation.eval_sets import default_split
from mritumor.run.bundle import read_bundle, update_bundle
from mritumor.run.layout import BUNDLE_FILE
from mritumor.run.splits import read_split
from mritumor.stats.calibration import softmax

WIDE = {"COLUMNS": "200"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVAL_FILES = (
    reports.SUMMARY_FILE,
    reports.PREDICTIONS_FILE,
    reports.REPORT_FILE,
    reports.CONFUSION_CSV,
    plots.CM_FILE,
    plots.CM_NORM_FILE,
    plots.ROC_FILE,
    plots.PR_FILE,
    plots.RELIABILITY_FILE,
    plots.CONFIDENCE_HIST_FILE,
    plots.ERROR_GALLERY_FILE,
)


@pytest.fixture(scope="module")
def data_root(synthetic_data: SyntheticData) -> Path:
    return synthetic_data(train=6, val=5, test=6, image_size=40, seed=3, external=6)


@pytest.fixture
def run_dir(data_root: Path, built_run: BuiltRuns, run_copy: Callable[..., Path]) -> Path:
    """A private copy: calibrate and threshold change bundle.json."""
    return run_copy(built_run(data_root), "my runs/train-1")


def invoke(*args: str) -> object:
    return CliRunner().invoke(app, list(args), env=WIDE)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def read_json(path: Path) -> dict[str, object]:
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- eval


def test_eval_writes_every_report_of_the_test_split(run_dir: Path, data_root: Path) -> None:
    result = invoke("eval", "--run", str(run_dir), "--set", f"paths.data_dir={data_root}")
    assert result.exit_code == 0, result.output
    report_dir = run_dir / "reports" / "eval-test"
    for name in EVAL_FILES:
        assert (report_dir / name).is_file(), name
        if name.endswith(".png"):
            assert (report_dir / name).read_bytes()[:8] == PNG_SIGNATURE
    rows = read_csv(report_dir / reports.PREDICTIONS_FILE)
    assert len(rows) == 4 * 6
    assert "accuracy [95% CI]" in result.stdout
    assert str(report_dir) in result.stdout.replace("\n", "")


def test_eval_summary_agrees_with_sklearn_on_its_own_predictions(
    run_dir: Path, data_root: Path
) -> None:
    assert invoke("eval", "--run", str(run_dir), "-q").exit_code == 0
    report_dir = run_dir / "reports" / "eval-test"
    rows = read_csv(report_dir / reports.PREDICTIONS_FILE)
    true = [CLASS_NAMES.index(row["true_class"]) for row in rows]
    predicted = [CLASS_NAMES.index(row["predicted_class"]) for row in rows]
    metrics = read_json(report_dir / reports.SUMMARY_FILE)["metrics"]
    assert isinstance(metrics, dict)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(true, predicted))
    assert metrics["macro_f1"] == pytest.approx(
        f1_score(true, predicted, average="macro", zero_division=0)
    )
    assert metrics["cohen_kappa"] == pytest.approx(cohen_kappa_score(true, predicted))
    low, high = metrics["accuracy_ci95"]
    assert low <= metrics["accuracy"] <= high


def test_predictions_hold_calibrated_probabilities_and_the_tumour_score(
    run_dir: Path, data_root: Path
) -> None:
    update_bundle(run_dir, temperature=2.0)
    assert invoke("eval", "--run", str(run_dir), "-q").exit_code == 0
    rows = read_csv(run_dir / "reports" / "eval-test" / reports.PREDICTIONS_FILE)
    for row in rows:
        probabilities = [float(row[f"p_{name}"]) for name in CLASS_NAMES]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
        assert float(row["tumour_score"]) == pytest.approx(1.0 - float(row["p_no_tumor"]), abs=1e-5)
        assert row["predicted_class"] == CLASS_NAMES[int(np.argmax(probabilities))]
    summary = read_json(run_dir / "reports" / "eval-test" / reports.SUMMARY_FILE)
    assert summary["temperature"] == 2.0


def test_eval_logits_equal_the_models_own_on_the_same_pixels(run_dir: Path) -> None:
    """The Predictor feeds the model exactly what the training pipeline would."""
    from mritumor.data.images import read_image
    from mritumor.data.input_pipeline import resize_image
    from mritumor.predict.predictor import Predictor

    predictor = Predictor(run_dir)
    paths = read_split(run_dir, "test", CLASS_NAMES).paths[:5]
    logits = predictor.logits(paths, batch_size=2).logits
    pixels = np.stack([resize_image(read_image(p, 3), 32, "pad").numpy() for p in paths])
    expected = predictor.model.predict(pixels.astype(np.float32), verbose=0)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        predictor.probabilities(logits), softmax(expected, predictor.temperature), atol=1e-6
    )


def test_eval_on_val_notes_that_val_selected_the_checkpoint(run_dir: Path) -> None:
    result = invoke("eval", "--run", str(run_dir), "--split", "val", "-q")
    assert result.exit_code == 0, result.output
    summary = read_json(run_dir / "reports" / "eval-val" / reports.SUMMARY_FILE)
    assert any("selected the checkpoint" in note for note in summary["notes"])  # type: ignore[union-attr]
    assert "selected the checkpoint" in result.stderr


def test_eval_of_a_folder_with_spaces_writes_reports_named_after_it(
    run_dir: Path, data_root: Path, tmp_path: Path
) -> None:
    folder = Path(shutil.copytree(data_root / "test", tmp_path / "site B scans"))
    result = invoke("eval", "--run", str(run_dir), "--split", str(folder), "-q")
    assert result.exit_code == 0, result.output
    (report_dir,) = (run_dir / "reports").glob("eval-site B scans-*")
    summary = read_json(report_dir / reports.SUMMARY_FILE)
    assert summary["split"] == str(folder.resolve())
    assert summary["n_images"] == 24


def test_eval_reports_accuracy_without_copies_of_training_images(
    run_dir: Path, data_root: Path, tmp_path: Path
) -> None:
    folder = Path(shutil.copytree(data_root / "test", tmp_path / "site with copies"))
    train = read_split(run_dir, "train", CLASS_NAMES)
    copied = []
    for index in (0, 7, 13):  # one exact copy, under another name, from three classes
        source, label = train.paths[index], CLASS_NAMES[train.labels[index]]
        copied.append(Path(shutil.copy(source, folder / label / f"copy {index}.png")))
    result = invoke("eval", "--run", str(run_dir), "--split", str(folder))
    assert result.exit_code == 0, result.output
    (report_dir,) = (run_dir / "reports").glob("eval-site with copies-*")
    summary = read_json(report_dir / reports.SUMMARY_FILE)
    without = summary["without_training_copies"]
    assert isinstance(without, dict)
    assert (summary["n_images"], without["n_copies"], without["n_images"]) == (27, 3, 24)
    listed = read_csv(report_dir / reports.TRAINING_COPIES_FILE)
    assert sorted(Path(row["path"]).name for row in listed) == sorted(p.name for p in copied)
    rows = read_csv(report_dir / reports.PREDICTIONS_FILE)
    kept = [row for row in rows if not Path(row["path"]).name.startswith("copy ")]
    expected = accuracy_score(
        [row["true_class"] for row in kept], [row["predicted_class"] for row in kept]
    )
    assert without["accuracy"] == pytest.approx(expected)
    low, high = without["accuracy_ci95"]
    assert low <= without["accuracy"] <= high
    assert "accuracy without 3 copies of training images" in result.stdout


def test_eval_of_distinct_images_reports_no_copies_and_val_is_not_checked(run_dir: Path) -> None:
    assert invoke("eval", "--run", str(run_dir), "-q").exit_code == 0
    test = read_json(run_dir / "reports" / "eval-test" / reports.SUMMARY_FILE)
    assert test["without_training_copies"] == {  # phantoms are all distinct
        "n_copies": 0,
        "n_images": test["n_images"],
        "accuracy": test["metrics"]["accuracy"],  # type: ignore[index]
        "accuracy_ci95": test["metrics"]["accuracy_ci95"],  # type: ignore[index]
        "macro_f1": pytest.approx(test["metrics"]["macro_f1"]),  # type: ignore[index]
    }
    assert invoke("eval", "--run", str(run_dir), "--split", "val", "-q").exit_code == 0
    val = read_json(run_dir / "reports" / "eval-val" / reports.SUMMARY_FILE)
    assert "without_training_copies" not in val


def test_external_eval_reports_auc_without_copies_of_training_images(
    run_dir: Path, data_root: Path, tmp_path: Path
) -> None:
    external = Path(shutil.copytree(data_root / "external" / "synthetic", tmp_path / "ext"))
    train = read_split(run_dir, "train", CLASS_NAMES)
    no_tumour = [
        p for p, y in zip(train.paths, train.labels, strict=True) if CLASS_NAMES[y] == "no_tumor"
    ]
    shutil.copy(no_tumour[0], external / "no" / "seen in training.png")
    result = invoke("eval", "--run", str(run_dir), "--external", str(external), "-q")
    assert result.exit_code == 0, result.output
    (report_dir,) = (run_dir / "reports").glob("eval-ext-*")
    summary = read_json(report_dir / reports.SUMMARY_FILE)
    without = summary["without_training_copies"]
    assert isinstance(without, dict)
    assert (without["n_copies"], without["n_images"]) == (1, 12)
    assert 0.0 <= without["auc"] <= 1.0


def test_unreadable_images_are_listed_and_skipped(
    run_dir: Path, tmp_path: Path, data_root: Path
) -> None:
    folder = Path(shutil.copytree(data_root / "test", tmp_path / "scans"))
    (folder / "glioma" / "broken.jpg").write_bytes(b"not an image")
    result = invoke("eval", "--run", str(run_dir), "--split", str(folder), "-q")
    assert result.exit_code == 0, result.output
    assert "broken.jpg" in result.stderr
    (report_dir,) = (run_dir / "reports").glob("eval-scans-*")
    summary = read_json(report_dir / reports.SUMMARY_FILE)
    assert summary["n_images"] == 24
    assert summary["n_unreadable"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--split", "holdout"), "neither a split of"),
        (("--run", "no such run"), "run directory no such run does not exist"),
    ],
)
def test_bad_run_or_split_is_one_line_exit_2(
    run_dir: Path, args: tuple[str, ...], message: str
) -> None:
    result = invoke("eval", "--run", str(run_dir), *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_a_bundle_of_another_schema_version_is_refused(run_dir: Path) -> None:
    data = read_json(run_dir / BUNDLE_FILE)
    data["schema_version"] = 99
    (run_dir / BUNDLE_FILE).write_text(json.dumps(data), encoding="utf-8")
    result = invoke("eval", "--run", str(run_dir))
    assert result.exit_code == 2
    assert "schema" in result.stderr


def test_a_model_that_does_not_match_its_bundle_is_refused(run_dir: Path) -> None:
    update_bundle(run_dir, image_size=64)
    result = invoke("eval", "--run", str(run_dir))
    assert result.exit_code == 2
    assert "mixes files of different runs" in result.stderr


def test_the_newest_run_is_the_default(run_dir: Path) -> None:
    result = invoke("eval", "--set", f"paths.runs_dir={run_dir.parent}", "-q")
    assert result.exit_code == 0, result.output
    assert (run_dir / "reports" / "eval-test" / reports.SUMMARY_FILE).is_file()


# --------------------------------------------------------------------------- calibrate


def test_calibrate_writes_the_temperature_into_the_bundle_and_the_metrics(
    run_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "mine.yaml"
    config.write_text("calibration:\n  n_bins: 10\n", encoding="utf-8")
    before = config.read_bytes()
    result = invoke("--config", str(config), "calibrate", "--run", str(run_dir), "-q")
    assert result.exit_code == 0, result.output
    assert config.read_bytes() == before
    report_dir = run_dir / "reports" / reports.CALIBRATION_DIR
    metrics = read_json(report_dir / reports.CALIBRATION_METRICS_FILE)
    bundle = read_bundle(run_dir)
    assert metrics["T"] == pytest.approx(bundle.temperature)
    assert metrics["n_bins"] == 10
    assert metrics["split"] == "val"
    before_nll = metrics["before"]["NLL"]  # type: ignore[index]
    assert metrics["after"]["NLL"] <= before_nll + 1e-12  # type: ignore[index]
    assert {"ECE", "MCE", "BrierScore", "NLL"} <= set(metrics)
    assert bundle.temperature_source is not None
    assert bundle.temperature_source["split"] == "val"
    for name in (plots.RELIABILITY_FILE, reports.RELIABILITY_BEFORE_FILE):
        assert (report_dir / name).read_bytes()[:8] == PNG_SIGNATURE


def test_calibrate_fits_on_cal_when_the_run_has_one(run_dir: Path) -> None:
    shutil.copy(run_dir / "splits" / "val.csv", run_dir / "splits" / "cal.csv")
    assert default_split(run_dir, "calibrate") == "cal"
    assert invoke("calibrate", "--run", str(run_dir), "-q").exit_code == 0
    assert read_bundle(run_dir).temperature_source["split"] == "cal"  # type: ignore[index]
    result = invoke("eval", "--run", str(run_dir), "--split", "cal", "-q")
    summary = read_json(run_dir / "reports" / "eval-cal" / reports.SUMMARY_FILE)
    assert any("temperature was fitted on these images" in n for n in summary["notes"])  # type: ignore[union-attr]
    assert result.exit_code == 0


def test_calibrating_on_test_warns_that_test_is_spent(run_dir: Path) -> None:
    result = invoke("calibrate", "--run", str(run_dir), "--split", "test", "-q")
    assert result.exit_code == 0, result.output
    assert "no longer held out" in result.stderr


def test_calibrate_clears_a_threshold_chosen_at_the_old_temperature(run_dir: Path) -> None:
    assert invoke("threshold", "--run", str(run_dir), "--strategy", "youden", "-q").exit_code == 0
    assert read_bundle(run_dir).threshold is not None
    result = invoke("calibrate", "--run", str(run_dir), "-q")
    assert result.exit_code == 0, result.output
    bundle = read_bundle(run_dir)
    assert bundle.threshold is None and bundle.threshold_info is None
    assert "run `mritumor threshold` again" in result.stderr


# --------------------------------------------------------------------------- threshold


def test_threshold_writes_the_operating_point_into_the_bundle(run_dir: Path) -> None:
    result = invoke(
        "threshold", "--run", str(run_dir), "--strategy", "youden", "--set",
        "threshold.bootstrap_samples=50", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = read_json(run_dir / "reports" / "threshold" / reports.THRESHOLD_FILE)
    bundle = read_bundle(run_dir)
    assert bundle.threshold == report["threshold"]
    assert bundle.threshold_info is not None
    assert bundle.threshold_info["strategy"] == "youden"
    assert bundle.threshold_info["split"] == "val"
    assert report["tp"] + report["fn"] == report["n_tumour"] == 15  # type: ignore[operator]
    assert report["tp"] + report["fp"] + report["tn"] + report["fn"] == 20  # type: ignore[operator]
    assert set(report["ci95"]) == {"sensitivity", "specificity"}  # type: ignore[arg-type]
    png = run_dir / "reports" / "threshold" / plots.THRESHOLD_ROC_FILE
    assert png.read_bytes()[:8] == PNG_SIGNATURE


def test_eval_reports_sensitivity_at_the_bundles_threshold(run_dir: Path) -> None:
    assert invoke("threshold", "--run", str(run_dir), "--strategy", "youden", "-q").exit_code == 0
    assert invoke("eval", "--run", str(run_dir), "-q").exit_code == 0
    report_dir = run_dir / "reports" / "eval-test"
    binary = read_json(report_dir / reports.SUMMARY_FILE)["tumour_vs_no_tumour"]
    rows = read_csv(report_dir / reports.PREDICTIONS_FILE)
    threshold = read_bundle(run_dir).threshold
    assert threshold is not None
    tumour = [row["true_class"] != "no_tumor" for row in rows]
    called = [float(row["tumour_score"]) >= threshold for row in rows]
    assert [row["decision"] == "tumour" for row in rows] == called
    tp = sum(t and c for t, c in zip(tumour, called, strict=True))
    assert binary["at_threshold"]["tp"] == tp  # type: ignore[index]


def test_threshold_on_an_external_yes_no_folder(run_dir: Path, data_root: Path) -> None:
    external = data_root / "external" / "synthetic"
    result = invoke(
        "threshold", "--run", str(run_dir), "--data", str(external), "--strategy", "youden", "-q"
    )
    assert result.exit_code == 0, result.output
    report = read_json(run_dir / "reports" / "threshold" / reports.THRESHOLD_FILE)
    assert report["n_images"] == 12 and report["n_tumour"] == 6


def test_threshold_on_tumour_images_only_is_a_clear_error(run_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "only yes"
    (folder / "yes").mkdir(parents=True)
    for index in range(3):
        Image.new("L", (40, 40), 60 + index).save(folder / "yes" / f"{index}.png")
    result = invoke("threshold", "--run", str(run_dir), "--data", str(folder), "-q")
    assert result.exit_code == 2, result.output
    assert "no tumour" in result.stderr or "no-tumour" in result.stderr
    assert read_bundle(run_dir).threshold is None


# --------------------------------------------------------------------------- model files


def test_only_keras_files_are_loaded(tmp_path: Path) -> None:
    from mritumor.core.errors import MritumorError, UsageError
    from mritumor.run.model_file import load_model

    with pytest.raises(UsageError, match="refused"):
        load_model(tmp_path / "model.h5")
    with pytest.raises(UsageError, match="not found"):
        load_model(tmp_path / "model.keras")
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    with pytest.raises(MritumorError, match=r"broken.keras is damaged \(9 bytes, not a complete"):
        load_model(tmp_path / "broken.keras")
