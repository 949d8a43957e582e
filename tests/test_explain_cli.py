"""``mritumor gradcam``, ``infer --gradcam`` and eval's localisation on synthetic masks."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from helpers import PREDICT_DATA, BuiltRuns, SyntheticData, write_bomb
from mritumor.cli.main import app
from mritumor.core.errors import EXIT_PARTIAL

WIDE = {"COLUMNS": "200"}


@pytest.fixture(scope="module")
def data_root(synthetic_data: SyntheticData) -> Path:
    """The data test_infer_cli.py predicts on; its first run is the run here too."""
    return synthetic_data(**PREDICT_DATA)


@pytest.fixture
def run_dir(data_root: Path, built_run: BuiltRuns, run_copy: Callable[..., Path]) -> Path:
    return run_copy(built_run(data_root), "train-1")


def invoke(*args: str) -> object:
    return CliRunner().invoke(app, list(args), env=WIDE)


def test_gradcam_writes_a_panel_and_a_map_per_image(run_dir: Path, data_root: Path) -> None:
    result = invoke(
        "gradcam", str(data_root / "test" / "glioma"), "--run", str(run_dir), "--npy", "-q"
    )
    assert result.exit_code == 0, result.output
    folder = run_dir / "reports" / "gradcam"
    panels = sorted(folder.glob("*.png"))
    maps = sorted(folder.glob("*.npy"))
    assert len(panels) == len(maps) == 3
    with Image.open(panels[0]) as panel:
        assert panel.format == "PNG" and panel.width > 3 * panel.height / 2
    heatmap = np.load(maps[0])
    assert heatmap.shape == (32, 32) and heatmap.min() >= 0.0 and heatmap.max() <= 1.0
    assert "3 panel(s) at layer block4_relu" in result.stdout


def test_same_stems_in_different_folders_get_distinct_panels(
    run_dir: Path, data_root: Path, tmp_path: Path
) -> None:
    first = sorted((data_root / "test" / "glioma").iterdir())[0]
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(first, tmp_path / folder / "scan.jpg")
    out = tmp_path / "panels out"
    result = invoke(
        "gradcam",
        str(tmp_path / "a"),
        str(tmp_path / "b"),
        "--run",
        str(run_dir),
        "-o",
        str(out),
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["scan_2_gradcam.png", "scan_gradcam.png"]


def test_panels_never_replace_the_input_images(
    run_dir: Path, data_root: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    first = sorted((data_root / "test" / "glioma").iterdir())[0]
    shutil.copy(first, folder / "case_gradcam.png")
    shutil.copy(first, folder / "case.png")
    before = (folder / "case_gradcam.png").read_bytes()
    result = invoke("gradcam", str(folder), "--run", str(run_dir), "-o", str(folder))
    assert result.exit_code == 2 and "would replace the input image" in result.stderr
    assert (folder / "case_gradcam.png").read_bytes() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--class", "astrocytoma"), "not one of the model's classes"),
        (("--layer", "logits"), "convolutional feature map"),
        (("--layer", "block4_rleu"), "did you mean 'block4_relu'"),
        (("--method", "cam"), "--method must be one of gradcam, gradcam++"),
    ],
)
def test_bad_options_are_one_line_usage_errors(
    run_dir: Path, data_root: Path, args: tuple[str, ...], message: str
) -> None:
    result = invoke("gradcam", str(data_root / "test" / "glioma"), "--run", str(run_dir), *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output


def test_a_corrupt_file_is_skipped_and_the_exit_code_says_so(
    run_dir: Path, data_root: Path, tmp_path: Path
) -> None:
    folder = Path(shutil.copytree(data_root / "test" / "pituitary", tmp_path / "scans"))
    (folder / "zero.jpg").write_bytes(b"")
    out = tmp_path / "out"
    result = invoke(
        "gradcam", str(folder), "--run", str(run_dir), "-o", str(out), "--method", "gradcam++"
    )
    assert result.exit_code == EXIT_PARTIAL, result.output
    assert "zero.jpg" in result.stderr
    assert len(list(out.glob("*.png"))) == 3


def test_a_decompression_bomb_is_skipped_like_any_unreadable_file(
    run_dir: Path, data_root: Path, tmp_path: Path
) -> None:
    folder = Path(shutil.copytree(data_root / "test" / "glioma", tmp_path / "scans"))
    bomb = write_bomb(folder / "bomb.png")
    out = tmp_path / "out"
    result = invoke("gradcam", str(folder), "--run", str(run_dir), "-o", str(out), "-q")
    assert result.exit_code == EXIT_PARTIAL, result.output
    assert f"  {bomb}: cannot read image {bomb}: over the 89478485-pixel limit" in result.stderr
    assert "Traceback" not in result.output and "DecompressionBomb" not in result.output
    assert len(list(out.glob("*.png"))) == 3


def test_infer_can_write_panels_too(run_dir: Path, data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "cams"
    result = invoke(
        "infer", str(data_root / "test" / "meningioma"), "--run", str(run_dir), "--gradcam", str(out),
        "--format", "jsonl", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 3
    assert len(list(out.glob("*.png"))) == 3


def test_eval_reports_localisation_where_lesion_masks_exist(run_dir: Path, data_root: Path) -> None:
    result = invoke("eval", "--run", str(run_dir), "--set", "evaluation.bootstrap_samples=0", "-q")
    assert result.exit_code == 0, result.output
    summary = json.loads((run_dir / "reports" / "eval-test" / "summary.json").read_text())
    found = summary["localisation"]
    assert found["images"] == 9  # the tumour images of test; no_tumor has no lesion
    assert 0.0 <= found["pointing_game"] <= 1.0 and 0.0 <= found["energy_inside"] <= 1.0
    assert "pointing game" in result.stdout
    off = invoke("eval", "--run", str(run_dir), "--set", "evaluation.localisation=false", "-q")
    assert off.exit_code == 0
    summary = json.loads((run_dir / "reports" / "eval-test" / "summary.json").read_text())
    assert "localisation" not in summary
