"""The ``cal`` split (mritumor.data.splits): carved from train by ``data.cal_size``, persisted
with the run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers import save, smooth_image
from mritumor.config.loading import load_settings
from mritumor.core.classes import CLASS_NAMES
from mritumor.core.errors import UsageError
from mritumor.data.splits import carve_calibration_split, load_split

PER_CLASS = 10


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """10 distinct images per class in train and 2 in val; one exact copy in glioma."""
    root = tmp_path / "data root"
    for split, count in (("train", PER_CLASS), ("val", 2)):
        for offset, name in enumerate(CLASS_NAMES):
            for index in range(count):
                seed = 1000 * offset + index + (500 if split == "val" else 0)
                save(root / split / name / f"{index}.png", smooth_image(seed, 48))
    shutil.copy(root / "train/glioma/0.png", root / "train/glioma/copy of 0.png")
    return root


def test_cal_is_stratified_disjoint_and_keeps_copies_together(data_root: Path) -> None:
    train = load_split(data_root, "train", CLASS_NAMES)
    rest, cal = carve_calibration_split(train, 0.2, seed=3)
    assert set(rest.paths).isdisjoint(cal.paths)
    assert set(rest.paths) | set(cal.paths) == set(train.paths)
    assert cal.name == "cal" and rest.name == "train"
    assert cal.counts() == {"glioma": 2, "meningioma": 2, "no_tumor": 2, "pituitary": 2}
    copies = {data_root / "train/glioma/0.png", data_root / "train/glioma/copy of 0.png"}
    assert copies <= set(cal.paths) or copies <= set(rest.paths)
    again, _ = carve_calibration_split(train, 0.2, seed=3)
    assert again == rest


def test_a_cal_size_too_small_to_carve_anything_is_a_usage_error(data_root: Path) -> None:
    train = load_split(data_root, "train", CLASS_NAMES)
    with pytest.raises(UsageError, match=r"data.cal_size=0.01 carves no image"):
        carve_calibration_split(train, 0.01, seed=3)


def test_a_fresh_run_persists_cal_and_test_next_to_train_and_val(
    data_root: Path, tmp_path: Path
) -> None:
    from mritumor.engine import training

    shutil.copytree(data_root / "val", data_root / "test")
    settings = load_settings(
        None, {"paths": {"data_dir": data_root}, "data": {"cal_size": 0.2}}
    ).settings
    splits = training._splits(settings, tmp_path / "run", resume=False)
    assert [split.name for split in splits] == ["train", "val", "cal", "test"]
    train, _, cal, _ = splits
    assert len(train) + len(cal) == 4 * PER_CLASS + 1
    assert set(train.paths).isdisjoint(cal.paths)
