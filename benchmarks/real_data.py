"""A recipe on real scans, end to end: prepare, train, calibrate, evaluate; one Markdown row.

    python benchmarks/real_data.py KAGGLE_DIR --recipe cpu-fast
    python benchmarks/real_data.py KAGGLE_DIR --recipe cpu-best --work /tmp/bench

KAGGLE_DIR is the masoud dataset as Kaggle ships it: ``Training/<class>/`` and,
where you have it, ``Testing/<class>/``. Without a Testing folder, a test split
of ``--test-size`` is carved from Training first (stratified, seeded, exact and
near duplicates kept on one side), so the row is still measured on images that
neither training nor checkpoint selection saw. Every step is the ``mritumor``
command a user would type, run as a child process; the training step is timed
by the wall clock, from start to the saved model.

The row gives the recipe, the training wall time, the validation accuracy of
the saved checkpoint, test accuracy with its 95% bootstrap interval, macro-F1,
the test ECE before and after temperature scaling (T fitted on the run's cal
split, else val), and test accuracy once the test images that copy a training
image are removed: the public Training and Testing folders share 344 groups of
exact or near duplicates.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _measure import child_env, cpu_model, usable_cores

SPLIT_FOLDERS = {"train": "Training", "test": "Testing"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="Kaggle-layout folder (Training/, Testing/).")
    parser.add_argument("--recipe", default="cpu-fast", help="Recipe to train (default cpu-fast).")
    parser.add_argument("--work", type=Path, default=Path("real-data-bench"), help="Work folder.")
    parser.add_argument(
        "--test-size",
        type=float,
        default=0.15,
        help="Share of Training carved as test when there is no Testing/.",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Extra settings for train, e.g. train.epochs=5 (repeatable).",
    )
    args = parser.parse_args()

    work = args.work.resolve()
    data, runs = work / "data", work / "runs"
    source, test_origin = _kaggle_source(args.source.resolve(), work, args.test_size, args.seed)
    if not (data / "train").is_dir():
        _mritumor("data", "prepare", str(source), "--out", str(data), "--seed", str(args.seed))
    run = runs / f"{args.recipe}-seed{args.seed}"
    sets = [f"--set=paths.runs_dir={runs}", *(f"--set={a}" for a in args.assignments)]
    started = time.perf_counter()
    _mritumor(
        "train",
        "--recipe",
        args.recipe,
        "--data",
        str(data),
        "--seed",
        str(args.seed),
        "--name",
        run.name,
        "--quiet",
        *sets,
    )
    train_seconds = time.perf_counter() - started
    common = ["--run", str(run), "--quiet", f"--set=paths.data_dir={data}"]
    before = _eval(common, run)
    _mritumor("calibrate", *common)
    after = _eval(common, run)
    bundle = json.loads((run / "bundle.json").read_text())
    row = _row(args.recipe, train_seconds, bundle, before, after)
    print(
        f"\nMachine: {cpu_model()}, {usable_cores()} cores; precision "
        f"{bundle['extra'].get('precision', {}).get('policy')}; test split: {test_origin}\n"
    )
    print(
        "| recipe | train wall time | val accuracy | test accuracy [95% CI] | test macro-F1 "
        "| test ECE before -> after | test accuracy without copies of training images |"
    )
    print("|---|---|---|---|---|---|---|")
    print(row)


def _kaggle_source(source: Path, work: Path, test_size: float, seed: int) -> tuple[Path, str]:
    """``source`` itself when it has Testing/, else a symlinked copy with a carved Testing/."""
    if (source / SPLIT_FOLDERS["test"]).is_dir():
        return source, f"{source / SPLIT_FOLDERS['test']}"
    training = source / SPLIT_FOLDERS["train"]
    if not training.is_dir():
        raise SystemExit(f"{source} has no {SPLIT_FOLDERS['train']}/ folder")
    carved = work / "source"
    if not carved.is_dir():
        _carve_test(training, carved, test_size, seed)
    return carved, f"{test_size:.0%} of {training}, carved with duplicates kept together"


def _carve_test(training: Path, target: Path, test_size: float, seed: int) -> None:
    from mritumor.data.carve import carve_splits
    from mritumor.data.duplicates.groups import duplicate_groups
    from mritumor.data.duplicates.hashing import image_hashes
    from mritumor.data.files import iter_image_files, subfolders

    by_label = {folder.name: list(iter_image_files(folder)) for folder in subfolders(training)}
    paths = [path for files in by_label.values() for path in files]
    groups = dict(zip(paths, duplicate_groups(image_hashes(paths)), strict=True))
    carved = carve_splits(by_label, ("test",), test_size, seed, groups=groups)
    partial = target.with_name(target.name + ".partial")
    for split, files_by_label in carved.items():
        for label, files in files_by_label.items():
            folder = partial / SPLIT_FOLDERS[split] / label
            folder.mkdir(parents=True, exist_ok=True)
            for path in files:
                (folder / path.name).symlink_to(path)
    partial.rename(target)


def _mritumor(*arguments: str) -> None:
    command = [sys.executable, "-m", "mritumor", *arguments]
    print("$ mritumor " + " ".join(arguments), file=sys.stderr, flush=True)
    done = subprocess.run(command, env=child_env(), check=False)
    if done.returncode != 0:
        raise SystemExit(f"mritumor {arguments[0]} failed (exit status {done.returncode})")


def _eval(common: list[str], run: Path) -> dict[str, Any]:
    _mritumor("eval", "--split", "test", *common)
    summary: dict[str, Any] = json.loads(
        (run / "reports" / "eval-test" / "summary.json").read_text()
    )
    return summary


def _row(
    recipe: str,
    seconds: float,
    bundle: dict[str, Any],
    before: dict[str, Any],
    after: dict[str, Any],
) -> str:
    metrics = after["metrics"]
    low, high = metrics["accuracy_ci95"]
    val = bundle["extra"].get("best_value")
    without = after.get("without_training_copies", {})
    clean = (
        f"{without['accuracy']:.3f} ({without['n_images']} images, {without['n_copies']} removed)"
        if without.get("accuracy") is not None
        else "no copies found"
    )
    return (
        f"| {recipe} | {seconds / 60:.1f} min | {val:.3f} | {metrics['accuracy']:.3f} "
        f"[{low:.3f}, {high:.3f}] | {metrics['macro_f1']:.3f} | "
        f"{before['calibration']['ECE']:.3f} -> {after['calibration']['ECE']:.3f} | {clean} |"
    )


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
