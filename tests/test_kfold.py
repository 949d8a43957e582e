"""k-fold cross-validation: fold assignment, the inner carve, aggregation and the command.

The end-to-end runs are tiny (32 px, small_cnn, 8 images per class, one epoch,
batches of 8) and run one at a time: four trainings in all.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import SyntheticData
from mritumor.core.environment import ENV_PREFIX
from mritumor.core.errors import UsageError
from mritumor.engine import kfold, kfold_summary

CLASSES = ("glioma", "meningioma", "no_tumor", "pituitary")
TINY: dict[str, Any] = {
    "data.image_size": 32,
    "model.backbone": "small_cnn",
    "model.weights": "none",
    "train.epochs": 1,
    "train.freeze_backbone_epochs": 0,
    "train.batch_size": 8,
    "inference.batch_size": 8,
    "train.early_stopping_patience": 0,
    "train.precision": "float32",
    "data.cache": "memory",
}


# --------------------------------------------------------------------------- pure parts


def hand_built() -> tuple[list[int], list[int]]:
    """3 classes of 12 samples; a few pairs of duplicates (same class) share a group."""
    labels = [label for label in range(3) for _ in range(12)]
    groups = list(range(len(labels)))
    for a, b in ((0, 1), (5, 6), (13, 14), (30, 31)):
        groups[b] = groups[a]
    return labels, groups


def test_assign_folds_covers_every_sample_once_and_keeps_groups_whole() -> None:
    labels, groups = hand_built()
    folds = kfold.assign_folds(labels, groups, 3, seed=7)
    assert len(folds) == len(labels)
    assert set(folds.tolist()) == {1, 2, 3}
    fold_of_group: dict[int, set[int]] = {}
    for group, fold in zip(groups, folds.tolist(), strict=True):
        fold_of_group.setdefault(group, set()).add(fold)
    assert all(len(found) == 1 for found in fold_of_group.values())
    for label in range(3):
        expected = labels.count(label) / 3
        per_fold = Counter(f for f, y in zip(folds.tolist(), labels, strict=True) if y == label)
        assert all(abs(per_fold[f] - expected) <= 1 for f in (1, 2, 3)), per_fold


def test_assign_folds_is_reproducible_by_seed() -> None:
    labels, groups = hand_built()
    first = kfold.assign_folds(labels, groups, 3, seed=7)
    assert np.array_equal(first, kfold.assign_folds(labels, groups, 3, seed=7))
    others = [kfold.assign_folds(labels, groups, 3, seed=s) for s in range(8, 12)]
    assert any(not np.array_equal(first, other) for other in others)


@pytest.mark.parametrize(("folds", "phrase"), [(1, "at least 2"), (11, "smallest class")])
def test_bad_fold_counts_are_usage_errors(folds: int, phrase: str) -> None:
    labels, groups = hand_built()  # class 0 has 12 samples in 10 groups
    with pytest.raises(UsageError, match=phrase):
        kfold.assign_folds(labels, groups, folds, seed=0)
    kfold.assign_folds(labels, groups, 10, seed=0)


def test_inner_carve_never_uses_the_held_out_fold() -> None:
    labels, groups = hand_built()
    folds = kfold.assign_folds(labels, groups, 3, seed=1).tolist()
    for fold in (1, 2, 3):
        fit, select = kfold.inner_carve(labels, groups, folds, fold, seed=1 + fold, splits=3)
        held = {i for i, f in enumerate(folds) if f == fold}
        assert not held & set(fit.tolist())
        assert not held & set(select.tolist())
        assert not set(fit.tolist()) & set(select.tolist())
        assert set(fit.tolist()) | set(select.tolist()) | held == set(range(len(labels)))
        assert select.size and fit.size
        assert not {groups[i] for i in fit} & {groups[i] for i in select}


def test_summary_matches_hand_computation() -> None:
    scores = [0.8, 0.9, 0.7]
    summary = kfold_summary.summarize(scores)
    mean = (0.8 + 0.9 + 0.7) / 3
    std = math.sqrt(((0.8 - mean) ** 2 + (0.9 - mean) ** 2 + (0.7 - mean) ** 2) / 2)
    half = 4.302652729911275 * std / math.sqrt(3)  # t_{0.975, 2}
    assert summary.mean == pytest.approx(mean)
    assert summary.std == pytest.approx(std) == pytest.approx(0.1)
    assert summary.ci_low == pytest.approx(mean - half)
    assert summary.ci_high == pytest.approx(mean + half)
    single = kfold_summary.summarize([0.5])
    assert single.mean == 0.5 and math.isnan(single.std) and math.isnan(single.ci_low)


def test_fold_metrics_and_aggregate() -> None:
    truth = [0, 0, 1, 2]
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.1, 0.7, 0.2], [0.3, 0.3, 0.4]])
    metrics = kfold_summary.fold_metrics(truth, probs, 3)
    assert metrics.accuracy == pytest.approx(0.75)
    assert metrics.balanced_accuracy == pytest.approx((0.5 + 1 + 1) / 3)
    # F1: class 0 = 2/3 (p=1, r=.5), class 1 = 2/3 (p=.5, r=1), class 2 = 1
    assert metrics.macro_f1 == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert metrics.loss == pytest.approx(-np.log([0.9, 0.2, 0.7, 0.4]).mean())
    table = {
        f: kfold_summary.FoldMetrics(a, a, a, 1 - a, 4) for f, a in ((1, 0.8), (2, 0.9), (3, 0.7))
    }
    summary = kfold_summary.aggregate(table)
    assert summary["accuracy"].mean == pytest.approx(0.8)
    assert summary["loss"].mean == pytest.approx(0.2)


def test_the_slices_of_one_case_share_a_fold(tmp_path: Path) -> None:
    """Slices cut from one volume (a ``case`` column in the manifests) never straddle folds."""
    from helpers import save, smooth_image
    from mritumor.config.loading import load_settings
    from mritumor.data.manifests import write_manifest

    root = tmp_path / "data"
    for split in ("train", "val"):
        rows = []
        for offset, name in enumerate(CLASSES):
            for index in range(6):
                seed = 100 * offset + index + (50 if split == "val" else 0)
                path = save(root / split / name / f"{index}.png", smooth_image(seed, 40))
                case = f"{name}-{split}-{index // 3}"  # two cases of three slices a class
                rows.append({"path": path.relative_to(root).as_posix(), "label": name,
                             "source": "", "case": case})  # fmt: skip
        write_manifest(root / f"manifests/{split}.csv", rows, ("path", "label", "source", "case"))
    settings = load_settings(None, {"paths": {"data_dir": root}, "seed": 3}).settings
    pool = kfold.prepare_pool(settings, 3)
    folds_of_case: dict[str, set[int]] = {}
    for path, fold in zip(pool.paths, pool.folds, strict=True):
        split, name = path.parts[-3], path.parts[-2]
        folds_of_case.setdefault(f"{name}-{split}-{int(path.stem) // 3}", set()).add(fold)
    assert len(folds_of_case) == 16
    assert all(len(folds) == 1 for folds in folds_of_case.values()), folds_of_case


def test_aggregation_imports_no_tensorflow() -> None:
    import subprocess

    code = (
        "import sys, mritumor.engine.kfold as k, mritumor.engine.kfold_summary as s;"
        "s.summarize([1.0, 2.0]); k.assign_folds([0,0,1,1], [0,1,2,3], 2, 0);"
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


# --------------------------------------------------------------------------- end to end


@dataclass(frozen=True)
class Tiny:
    data: Path
    runs: Path
    planted: dict[Path, Path]
    """Copy -> original (same class)."""

    def args(self) -> list[str]:
        out = ["--data", str(self.data), "--set", f"paths.runs_dir={self.runs}"]
        for key, value in TINY.items():
            out += ["--set", f"{key}={value}"]
        return out


@pytest.fixture(scope="module")
def tiny(synthetic_data: SyntheticData, tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    root = tmp_path_factory.mktemp("kfold")
    # A copy: copies of images are planted in it.
    synthetic_data.copy(
        root / "data", train=6, val=2, test=1, image_size=40, seed=3, vary_size=False
    )
    planted: dict[Path, Path] = {}
    for name, (source_split, target_split) in zip(
        ("glioma", "pituitary"), (("train", "val"), ("train", "train")), strict=True
    ):
        original = sorted((root / "data" / source_split / name).iterdir())[0]
        copy = root / "data" / target_split / name / f"planted copy{original.suffix}"
        shutil.copyfile(original, copy)
        planted[copy] = original
    return Tiny(root / "data", root / "runs", planted)


def invoke(args: list[str]) -> Any:
    from mritumor.cli.main import app

    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.upper().startswith(ENV_PREFIX):
                patch.delenv(name)
        return CliRunner().invoke(app, args)


@pytest.fixture
def train_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    from mritumor.engine import training

    calls: list[Path] = []
    real = training.train

    def counting(settings: Any, run_dir: Path, **kwargs: Any) -> Any:
        calls.append(run_dir)
        return real(settings, run_dir, **kwargs)

    monkeypatch.setattr(training, "train", counting)
    yield calls


@pytest.fixture(scope="module")
def full_run(tiny: Tiny) -> Path:
    result = invoke(["kfold", "--folds", "3", "-q", "--name", "cv", *tiny.args()])
    assert result.exit_code == 0, result.output
    assert "mean ± std" in result.output
    return tiny.runs / "cv"


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_kfold_reports_three_folds_with_oof_and_grouped_folds(tiny: Tiny, full_run: Path) -> None:
    summary = json.loads((full_run / kfold_summary.SUMMARY_FILE).read_text())
    assert summary["folds_scored"] == [1, 2, 3]
    for name in kfold_summary.METRICS:
        entry = summary["summary"][name]
        assert entry["ci_low"] <= entry["mean"] <= entry["ci_high"]
    pooled = {
        p.as_posix()
        for split in ("train", "val")
        for p in (tiny.data / split).rglob("*")
        if p.is_file()
    }
    oof = read_csv(full_run / kfold_summary.OOF_FILE)
    assert sorted(row["path"] for row in oof) == sorted(pooled)
    assert set(oof[0]) == {"path", "fold", "true", "predicted", *(f"p_{c}" for c in CLASSES)}
    for row in oof:
        assert sum(float(row[f"p_{c}"]) for c in CLASSES) == pytest.approx(1, abs=1e-4)
    folds = read_csv(full_run / kfold.FOLDS_FILE)
    by_path = {row["path"]: row for row in folds}
    for copy, original in tiny.planted.items():
        assert by_path[copy.as_posix()]["group"] == by_path[original.as_posix()]["group"]
    fold_of_group: dict[str, set[str]] = {}
    for row in folds:
        fold_of_group.setdefault(row["group"], set()).add(row["fold"])
    assert all(len(found) == 1 for found in fold_of_group.values())
    assert {row["fold"] for row in oof} == {"1", "2", "3"}
    for row in oof:
        assert by_path[row["path"]]["fold"] == row["fold"]
    assert (full_run / "reports" / kfold_summary.SUMMARY_FIGURE).stat().st_size > 0
    for fold in (1, 2, 3):
        folder = full_run / f"fold-{fold}"
        assert (folder / "model.keras").is_file() and (folder / "bundle.json").is_file()
        held = {row["path"] for row in read_csv(folder / "splits" / "test.csv")}
        seen = {row["path"] for row in read_csv(folder / "splits" / "train.csv")}
        seen |= {row["path"] for row in read_csv(folder / "splits" / "val.csv")}
        assert held and not held & seen
        assert held == {row["path"] for row in folds if row["fold"] == str(fold)}


def test_resume_skips_finished_folds(full_run: Path, train_calls: list[Path]) -> None:
    before = {f: (full_run / f"fold-{f}" / "bundle.json").stat().st_mtime_ns for f in (1, 2, 3)}
    result = invoke(["kfold", "--resume", str(full_run), "-q"])
    assert result.exit_code == 0, result.output
    assert train_calls == []
    after = {f: (full_run / f"fold-{f}" / "bundle.json").stat().st_mtime_ns for f in (1, 2, 3)}
    assert before == after
    assert "already scored" in result.output


def test_single_fold_then_resume(tiny: Tiny, train_calls: list[Path]) -> None:
    result = invoke(["kfold", "--folds", "3", "--fold", "2", "-q", "--name", "one", *tiny.args()])
    assert result.exit_code == 0, result.output
    run = tiny.runs / "one"
    assert [path.name for path in train_calls] == ["fold-2"]
    assert not (run / "fold-1").exists() and not (run / "fold-3").exists()
    summary = json.loads((run / kfold_summary.SUMMARY_FILE).read_text())
    assert summary["folds_scored"] == [2]
    assert summary["summary"]["accuracy"]["std"] is None
    oof = read_csv(run / kfold_summary.OOF_FILE)
    assert oof and {row["fold"] for row in oof} == {"2"}
    again = invoke(["kfold", "--resume", str(run), "--fold", "2", "-q"])
    assert again.exit_code == 0, again.output
    assert [path.name for path in train_calls] == ["fold-2"]


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["--folds", "1"], "at least 2"),
        (["--folds", "3", "--fold", "4"], "--fold must be from 1 to 3"),
        (["--folds", "50"], "smallest class"),
    ],
)
def test_bad_input_is_one_line_usage_error(tiny: Tiny, args: list[str], phrase: str) -> None:
    result = invoke(["kfold", *args, "--name", "bad", *tiny.args()])
    assert result.exit_code == 2, result.output
    assert phrase in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tiny.runs / "bad").exists()


def test_a_fold_held_by_another_process_is_refused_and_left_alone(full_run: Path) -> None:
    """`kfold --fold K` on two hosts by mistake: the second stops instead of sharing fold K."""
    from mritumor.run.lock import claimed_run

    folder = full_run / "fold-1"
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    with claimed_run(folder, fresh=False):
        result = invoke(["kfold", "--resume", str(full_run), "--fold", "1", "-q"])
    assert result.exit_code == 2
    assert f"run directory {folder} is in use by another mritumor process" in result.output
    assert "Traceback" not in result.output
    assert {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()} == before


# --------------------------------------------------------------------------- folds on several hosts


def test_collect_lists_the_missing_folds_then_summarises_them_all(
    full_run: Path, tmp_path: Path
) -> None:
    run = Path(shutil.copytree(full_run, tmp_path / "cv copy"))
    (run / kfold_summary.SUMMARY_FILE).unlink()
    for fold in (1, 3):
        (run / f"fold-{fold}" / kfold_summary.FOLD_RESULT_FILE).rename(
            run / f"fold-{fold}" / "aside.json"
        )
    missing = invoke(["kfold", "--collect", str(run)])
    assert missing.exit_code == 2, missing.output
    assert "has 1 of 3 folds scored; missing: 1, 3" in missing.output
    assert f"mritumor kfold --resume {run} --fold K" in missing.output
    assert not (run / kfold_summary.SUMMARY_FILE).exists()

    for fold in (1, 3):
        (run / f"fold-{fold}" / "aside.json").rename(
            run / f"fold-{fold}" / kfold_summary.FOLD_RESULT_FILE
        )
    collected = invoke(["kfold", "--collect", str(run)])
    assert collected.exit_code == 0, collected.output
    assert "(3/3 folds)" in collected.output and "mean ± std" in collected.output
    summary = json.loads((run / kfold_summary.SUMMARY_FILE).read_text())
    original = json.loads((full_run / kfold_summary.SUMMARY_FILE).read_text())
    assert summary["summary"] == original["summary"]
    assert len(read_csv(run / kfold_summary.OOF_FILE)) == len(read_csv(full_run / kfold.FOLDS_FILE))


def test_hosts_with_the_same_name_share_one_run_fold_by_fold(
    tiny: Tiny, train_calls: list[Path]
) -> None:
    """`kfold --name cv --fold K` on each host: the first draws the folds, the next joins."""
    for fold in ("1", "3"):
        result = invoke(
            ["kfold", "--folds", "3", "--fold", fold, "-q", "--name", "hosts", *tiny.args()]
        )
        assert result.exit_code == 0, result.output
    run = tiny.runs / "hosts"
    assert [path.name for path in train_calls] == ["fold-1", "fold-3"]
    summary = json.loads((run / kfold_summary.SUMMARY_FILE).read_text())
    assert summary["folds_scored"] == [1, 3]

    other = invoke(
        [
            "kfold",
            "--folds",
            "3",
            "--fold",
            "2",
            "-q",
            "--name",
            "hosts",
            *tiny.args(),
            "--seed",
            "9",
        ]
    )
    assert other.exit_code == 2, other.output
    assert "was started with other settings (seed)" in other.output
    assert not (run / "fold-2").exists()


def test_kfold_refuses_multiworker_before_making_a_run(tiny: Tiny) -> None:
    result = invoke(
        ["kfold", "--folds", "3", "--strategy", "multiworker", "--name", "mw", *tiny.args()]
    )
    assert result.exit_code == 2, result.output
    assert "kfold does not train a fold across hosts" in result.output
    assert not (tiny.runs / "mw").exists()


def test_a_host_waits_for_the_folds_another_is_drawing_then_gives_up(
    tiny: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mritumor.cli import kfold as command
    from mritumor.run.lock import claimed_run

    monkeypatch.setattr(command, "JOIN_WAIT_SECONDS", 0.3)
    monkeypatch.setattr(command, "JOIN_POLL_SECONDS", 0.1)
    folder = tiny.runs / "drawing"
    folder.mkdir(parents=True)
    with claimed_run(folder, fresh=True, run_file=kfold.FOLDS_FILE):
        result = invoke(
            ["kfold", "--folds", "3", "--fold", "2", "-q", "--name", "drawing", *tiny.args()]
        )
    assert result.exit_code == 2, result.output
    assert "waiting for another host to draw the folds" in result.output
    assert "has no folds.csv after 0 s" in result.output
    assert sorted(path.name for path in folder.iterdir()) == [".lock"]


def test_a_host_that_loses_the_race_to_make_the_run_waits_for_it(
    tiny: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two hosts see no run; the other one makes the folder first, so this one must wait."""
    from contextlib import contextmanager

    from mritumor.cli import kfold as command
    from mritumor.run.layout import BundleError

    @contextmanager
    def beaten(runs_dir: Path, *args: Any, name: str, **kwargs: Any) -> Iterator[Path]:
        (runs_dir / name).mkdir(parents=True)
        (runs_dir / name / ".lock").touch()
        raise BundleError(f"{runs_dir / name} exists and is not empty")
        yield runs_dir / name

    monkeypatch.setattr(command, "new_run", beaten)
    monkeypatch.setattr(command, "JOIN_WAIT_SECONDS", 0.3)
    monkeypatch.setattr(command, "JOIN_POLL_SECONDS", 0.1)
    result = invoke(["kfold", "--folds", "3", "--fold", "1", "-q", "--name", "raced", *tiny.args()])
    assert result.exit_code == 2, result.output
    assert "waiting for another host to draw the folds" in result.output
    assert "has no folds.csv after 0 s" in result.output
