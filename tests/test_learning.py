"""A short CPU training on synthetic data learns: the numbers beat chance by a measured floor.

Measured on the 2-core development machine with exactly these settings
(seed 1): val accuracy 0.70, test accuracy 0.667 and tumour-score AUC 0.954
after 20 epochs (about 20 s); seed 2 gave test accuracy 0.60. Chance is 0.25
(four balanced classes) and 0.5 (AUC).

Grad-CAM (the default layer, block4_relu, explaining the true class) put its
maximum inside the lesion mask for 0.51 of the 45 tumour test images with
seeds 1 and 2, with 0.20 and 0.28 of the heat-map energy inside the masks;
the masks cover 6% of the image, so chance is about 0.06 for both. The floors
below leave room for run-to-run noise on other CPUs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import SyntheticData
from mritumor.cli.main import app

ACCURACY_FLOOR = 0.45
AUC_FLOOR = 0.75
POINTING_GAME_FLOOR = 0.3
ENERGY_FLOOR = 0.1
TRAIN_FLAGS = (
    "--backbone", "small_cnn", "--weights", "none", "--freeze-epochs", "0",
    "--epochs", "20", "--batch-size", "16", "--image-size", "64", "--seed", "1",
    "--precision", "float32",
    "--set", "model.pooling=max", "--set", "train.lr=0.003",
    "--set", "augment.rotation=0", "--set", "augment.zoom=0",
    "--set", "train.early_stopping_patience=30",
)  # fmt: skip


FINETUNE_FLAGS = (
    "--epochs", "12", "--lr", "0.001", "--seed", "1", "--set", "train.batch_size=16",
)  # fmt: skip
# Measured with these settings (parent seed 1, split seeds 1 and 2; thresholds by the default
# min_fpr_at_recall, recall >= 0.95 on ext_val; 45 + 45 holdout images):
#   holdout sensitivity 0.956 -> 0.956 and 0.956 -> 0.889 (pinned near the recall target),
#   holdout AUC 0.794 -> 0.873 and 0.802 -> 0.909, specificity 0.31 -> 0.60 and 0.40 -> 0.78,
#   4-class test accuracy 0.667 -> 0.800 and 0.667 -> 0.717.
SENSITIVITY_TOLERANCE = 0.1  # three of 45 tumour images: the largest drop measured was 0.067
FORGETTING_BOUND = 0.1  # largest allowed drop of 4-class test accuracy (measured: rises)


@pytest.fixture(scope="module")
def trained(
    synthetic_data: SyntheticData, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """Synthetic data with a shifted external domain, and a small CNN trained on it (~30 s)."""
    data = synthetic_data(
        train=60, val=15, test=15, image_size=64, lesion_scale=2.5, seed=42, external=150, workers=2
    )
    root = tmp_path_factory.mktemp("learning")
    runs = f"paths.runs_dir={root / 'runs'}"
    result = CliRunner().invoke(
        app, ["train", *TRAIN_FLAGS, "--data", str(data), "--set", runs, "-q"]
    )
    assert result.exit_code == 0, result.output
    return data, root / "runs" / "train-1"


@pytest.mark.slow
def test_small_cnn_beats_chance_and_grad_cam_finds_the_lesions(trained: tuple[Path, Path]) -> None:
    _, run_dir = trained
    evaluated = CliRunner().invoke(app, ["eval", "--run", str(run_dir), "-q"])
    assert evaluated.exit_code == 0, evaluated.output
    summary = json.loads((run_dir / "reports/eval-test/summary.json").read_text())
    assert summary["n_images"] == 60
    assert summary["metrics"]["accuracy"] >= ACCURACY_FLOOR
    assert summary["tumour_vs_no_tumour"]["auc"] >= AUC_FLOOR
    localisation = summary["localisation"]
    assert localisation["images"] == 45 and localisation["layer"] == "block4_relu"
    assert localisation["pointing_game"] >= POINTING_GAME_FLOOR
    assert localisation["energy_inside"] >= ENERGY_FLOOR


@pytest.mark.slow
def test_finetuning_adapts_to_the_external_domain_and_keeps_the_four_classes(
    trained: tuple[Path, Path],
) -> None:
    data, parent = trained
    result = CliRunner().invoke(
        app,
        [
            "finetune", "--run", str(parent), "--external", str(data / "external" / "synthetic"),
            *FINETUNE_FLAGS, "--set", f"paths.runs_dir={parent.parent}", "-q",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(
        (parent.parent / "finetune-1" / "reports" / "finetune_report.json").read_text()
    )
    before, after = report["before"], report["after"]
    assert (
        after["ext_holdout"]["sensitivity"]
        >= before["ext_holdout"]["sensitivity"] - SENSITIVITY_TOLERANCE
    )
    assert after["ext_holdout"]["auc"] > before["ext_holdout"]["auc"]
    assert after["test"]["accuracy"] >= before["test"]["accuracy"] - FORGETTING_BOUND


@pytest.mark.slow
def test_a_volume_with_a_lesion_outranks_the_same_head_without_one(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    """Phantom volumes in matched pairs: each seed renders one head with a lesion of each
    tumour type and once without (:func:`mritumor.volumes.synth.render_volume`), so only the
    lesion differs. Measured with this model (4 seeds x 3 types): top_k_mean and noisy_or
    (k=3) ranked all 12 lesion volumes above their clean twins; max 11 of 12, the twelfth a
    tie, its highest slice lying outside the lesion, where both twins are the same. With 8
    seeds: 24, 24 and 23 of 24 (one tie)."""
    import numpy as np

    from mritumor.volumes.synth import nifti_bytes, render_volume
    from mritumor.volumes.verdict import aggregate

    _, run_dir = trained
    folder = tmp_path / "volumes"
    folder.mkdir()
    for seed in range(4):
        for name in ("glioma", "meningioma", "pituitary", "no_tumor"):
            volume = render_volume(np.random.SeedSequence(seed), name, 64, 24, lesion_scale=2.5)
            voxels = np.rint(volume.image * 1000).astype(np.int16)
            (folder / f"{seed}-{name}.nii.gz").write_bytes(nifti_bytes(voxels, (1.0, 1.0, 2.7)))
    result = CliRunner().invoke(
        app, ["infer", str(folder), "--run", str(run_dir), "--format", "json", "-q"]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    verdicts = {Path(v["path"]).name[: -len(".nii.gz")]: v for v in document["volumes"]}
    assert len(verdicts) == 16 and all(v["aggregation"] == "top_k_mean" for v in verdicts.values())
    slices: dict[str, list[float]] = {}
    for record in document["predictions"]:
        name = Path(record["path"].split("#")[0]).name[: -len(".nii.gz")]
        slices.setdefault(name, []).append(record["tumour_score"])
    for name, verdict in verdicts.items():
        assert verdict["tumour_score"] == pytest.approx(aggregate(slices[name], "top_k_mean", 3))
    # One pair less than measured, for run-to-run noise on other CPUs.
    for method, floor in (("max", 10), ("top_k_mean", 11), ("noisy_or", 11)):
        above = sum(
            aggregate(slices[f"{seed}-{name}"], method, 3)
            > aggregate(slices[f"{seed}-no_tumor"], method, 3)
            for seed in range(4)
            for name in ("glioma", "meningioma", "pituitary")
        )
        assert above >= floor, (method, above)
