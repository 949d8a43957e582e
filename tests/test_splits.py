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


# --------------------------------------------------------------------------- cases


def test_join_cases_links_duplicates_and_cases_into_one_group() -> None:
    from mritumor.data.carve import join_cases

    # Files 0-1 share a duplicate group; 1 and 3 share case "a"; 4 has case "b" alone;
    # so {0, 1, 3} is one group, then 2, then 4, numbered in order of appearance.
    assert join_cases([7, 7, 8, 9, 10], ["", "a", "", "a", "b"]) == [0, 0, 1, 0, 2]
    assert join_cases([5, 6, 5], []) == [0, 1, 0]


def _with_cases(root: Path, case_of: dict[str, str]) -> None:
    """A train manifest naming a case per file (as `data prepare` of volumes writes); the
    class is part of the id, since one id under two classes is one patient."""
    from mritumor.data.manifests import write_manifest

    rows = [
        {"path": path.relative_to(root).as_posix(), "label": path.parent.name, "source": "",
         "case": f"{path.parent.name} {case_of[path.stem]}" if path.stem in case_of else ""}
        for path in sorted((root / "train").rglob("*.png"))
    ]  # fmt: skip
    write_manifest(root / "manifests/train.csv", rows, ("path", "label", "source", "case"))


def test_cal_keeps_the_slices_of_one_case_together(data_root: Path) -> None:
    # Images 2k and 2k+1 of a class are case k: a cal of 20 % (2 images a class) takes
    # whole cases, never one image of a case.
    _with_cases(data_root, {str(i): f"case {i // 2}" for i in range(PER_CLASS)})
    train = load_split(data_root, "train", CLASS_NAMES)
    assert len(set(train.cases)) == 4 * 5 + 1  # 5 cases a class, and "" for "copy of 0"
    rest, cal = carve_calibration_split(train, 0.2, seed=3)
    for name in CLASS_NAMES:
        in_cal = {
            case for path, case in zip(cal.paths, cal.cases, strict=True) if name in path.parts
        }
        in_rest = {
            case for path, case in zip(rest.paths, rest.cases, strict=True) if name in path.parts
        }
        assert in_cal and not (in_cal & in_rest) - {""}, name
