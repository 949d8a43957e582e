"""``mritumor demo --quick`` end to end, and ``mritumor pipeline`` skipping what is up to date."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mritumor.cli.main import app
from mritumor.engine.pipeline import FINETUNE_RUN, STATE_FILE, TRAIN_RUN
from mritumor.report.render import number

WIDE = {"COLUMNS": "250"}
#: Numbers are printed to 3 decimals: half a unit of the last, and a hair for 0.0625 -> "0.062".
PRINTED = 5e-4 + 1e-12


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "demo out"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--quick", "-q"], env=WIDE)
    assert result.exit_code == 0, result.output
    return out, result.stdout


def row(stdout: str, name: str) -> str:
    """The value cell of the results table row that starts with ``name``."""
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) > 2 and cells[1] == name:
            return cells[2]
    raise AssertionError(f"no row {name!r} in:\n{stdout}")


def numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+\.\d+", text)]


def load(path: Path) -> dict:  # type: ignore[type-arg]
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def test_the_demo_writes_every_report(demo: tuple[Path, str]) -> None:
    out, _ = demo
    train, tuned = out / "runs" / TRAIN_RUN, out / "runs" / FINETUNE_RUN
    for path in (
        out / "data" / "check.json",
        train / "model.keras",
        train / "reports" / "calibration" / "calibration_metrics.json",
        train / "reports" / "threshold" / "threshold_optimization.json",
        train / "reports" / "eval-test" / "summary.json",
        train / "reports" / "eval-test" / "cm.png",
        tuned / "reports" / "finetune_report.json",
        tuned / "reports" / "eval-ext_holdout" / "summary.json",
        tuned / "reports" / "example_predictions.json",
        tuned / "reports" / "report.html",
        tuned / "MODEL_CARD.md",
        train / "reports" / "report.html",
        train / "MODEL_CARD.md",
    ):
        assert path.is_file(), path
    assert len(list((tuned / "reports" / "gradcam").glob("*.png"))) == 4
    report = (tuned / "reports" / "report.html").read_text(encoding="utf-8")
    assert report.count("data:image/png;base64,") == len(list((tuned / "reports").rglob("*.png")))
    finetune = load(tuned / "reports" / "finetune_report.json")
    cells = dict(re.findall(r'data-source="finetune_report\.json#([^"]+)">([^<]*)<', report))
    assert len(cells) == 6
    for keys, text in cells.items():
        value = functools.reduce(lambda part, key: part[key], keys.split("."), finetune)
        assert text == number(value), keys
    assert f"Report: {tuned / 'reports' / 'report.html'}" in " ".join(demo[1].split())
    state = load(out / "runs" / STATE_FILE)
    assert list(state) == [
        "check", "train", "calibrate", "threshold", "eval", "finetune",
        "finetune calibrate", "finetune threshold", "finetune eval", "infer", "gradcam",
        "report",
    ]  # fmt: skip


def test_the_printed_numbers_are_those_in_the_reports(demo: tuple[Path, str]) -> None:
    out, stdout = demo
    reports = out / "runs" / TRAIN_RUN / "reports"
    summary = load(reports / "eval-test" / "summary.json")
    calibration = load(reports / "calibration" / "calibration_metrics.json")
    finetune = load(out / "runs" / FINETUNE_RUN / "reports" / "finetune_report.json")
    metrics = summary["metrics"]
    assert numbers(row(stdout, "test accuracy [95% CI]")) == pytest.approx(
        [metrics["accuracy"], *metrics["accuracy_ci95"]], abs=PRINTED
    )
    assert numbers(row(stdout, "test macro-F1")) == pytest.approx(
        [metrics["macro_f1"]], abs=PRINTED
    )
    assert numbers(row(stdout, "ECE on val, before -> after")) == pytest.approx(
        [calibration["before"]["ECE"], calibration["after"]["ECE"]], abs=PRINTED
    )
    at = summary["tumour_vs_no_tumour"]["at_threshold"]
    assert numbers(row(stdout, "test sensitivity / specificity")) == pytest.approx(
        [at["sensitivity"], at["specificity"]], abs=PRINTED
    )
    assert numbers(row(stdout, "Grad-CAM pointing game (test tumours)")) == pytest.approx(
        [summary["localisation"]["pointing_game"]], abs=PRINTED
    )
    assert numbers(row(stdout, "external holdout sensitivity, before -> after")) == pytest.approx(
        [
            finetune["before"]["ext_holdout"]["sensitivity"],
            finetune["after"]["ext_holdout"]["sensitivity"],
        ],
        abs=PRINTED,
    )


def test_a_second_run_skips_every_step_and_force_reruns_them(demo: tuple[Path, str]) -> None:
    out, _ = demo
    again = CliRunner().invoke(app, ["demo", "--out", str(out), "--quick", "-q"], env=WIDE)
    assert again.exit_code == 0, again.output
    assert again.stdout.count("skipped") == 12 and " ran " not in again.stdout


def test_pipeline_stops_at_the_first_failure_with_a_clear_message(tmp_path: Path) -> None:
    config = tmp_path / "my config.yaml"
    config.write_text(
        f"paths:\n  data_dir: {tmp_path / 'nothing'}\n  runs_dir: {tmp_path / 'runs'}\n"
    )
    result = CliRunner().invoke(app, ["pipeline", "--config", str(config), "-q"], env=WIDE)
    assert result.exit_code == 2, result.output
    assert "pipeline step" in result.stderr and "Traceback" not in result.output


def test_pipeline_refuses_to_replace_a_run_it_did_not_make(
    demo: tuple[Path, str], tmp_path: Path
) -> None:
    out, _ = demo
    runs = tmp_path / "runs"
    (runs / TRAIN_RUN).mkdir(parents=True)
    (runs / TRAIN_RUN / "mine.txt").write_text("keep", encoding="utf-8")
    config = tmp_path / "c.yaml"
    config.write_text(
        f"paths:\n  data_dir: {out / 'data'}\n  runs_dir: {runs}\n"
        "model:\n  backbone: small_cnn\n  weights: none\ndata:\n  image_size: 32\n"
        "train:\n  epochs: 1\n  freeze_backbone_epochs: 0\n"
    )
    result = CliRunner().invoke(app, ["pipeline", "--config", str(config), "-q"], env=WIDE)
    assert result.exit_code == 2, result.output
    assert "was not made by `mritumor pipeline`" in result.stderr
    assert (runs / TRAIN_RUN / "mine.txt").read_text(encoding="utf-8") == "keep"


def test_a_step_that_reruns_reruns_every_step_after_it(demo: tuple[Path, str]) -> None:
    out, _ = demo
    (out / "runs" / TRAIN_RUN / "reports" / "calibration" / "calibration_metrics.json").unlink()
    again = CliRunner().invoke(app, ["demo", "--out", str(out), "--quick", "-q"], env=WIDE)
    assert again.exit_code == 0, again.output
    statuses = [
        cells[2]
        for line in again.stdout.splitlines()
        if len(cells := [c.strip() for c in line.split("│")]) > 3 and cells[2] in ("ran", "skipped")
    ]
    assert statuses == ["skipped", "skipped"] + ["ran"] * 10


def test_the_data_stamp_follows_the_images_not_the_checks_own_report(tmp_path: Path) -> None:
    from mritumor.config.loading import load_settings
    from mritumor.engine.pipeline import _data_stamp

    root = tmp_path / "data"
    (root / "train" / "glioma").mkdir(parents=True)
    (root / "train" / "glioma" / "a.png").write_bytes(b"one")
    settings = load_settings(None, {"paths": {"data_dir": root}}).settings
    first = _data_stamp(settings)
    (root / "check.json").write_text("{}")
    assert _data_stamp(settings) == first
    (root / "train" / "glioma" / "b.png").write_bytes(b"two")
    assert _data_stamp(settings) != first


def test_pipeline_refuses_multiworker_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"paths:\n  data_dir: {tmp_path / 'data'}\n  runs_dir: {tmp_path / 'runs'}\n"
        "train:\n  strategy: multiworker\n"
    )
    result = CliRunner().invoke(app, ["pipeline", "--config", str(config), "-q"], env=WIDE)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: pipeline runs on one host")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
