"""Grouped, stratified k-fold cross-validation over the train and val splits pooled.

Fold assignment: the train and val images are pooled; exact and near duplicates
(:func:`mritumor.data.duplicates.groups.duplicate_groups`) form groups, joined with the
slices of each case where the manifests name cases (:func:`mritumor.data.carve.join_cases`),
and scikit-learn's ``StratifiedGroupKFold(shuffle=True, random_state=seed)`` deals the
groups out to the folds, so neither a duplicate pair nor a case straddles a fold boundary.

Checkpoint selection, honestly: a fold's held-out part is never seen before it
is scored. Inside each fold an *inner* validation part is carved from the
fold's training portion (again stratified and grouped, seeded with
``seed + fold``, about ``1/folds`` of it); :func:`mritumor.engine.training.train`
trains on the rest and selects its checkpoint (``model.keras``) and stops early
on that inner part. The held-out fold is then scored once with that
checkpoint. Selecting the epoch on the held-out fold and scoring it there too
would be optimistic.

Layout of a run::

    runs/kfold-<n>/
      config.yaml            the resolved settings
      folds.csv              path, label, group, fold (every pooled image)
      inner/fold-<k>/manifests/{train,val}.csv   what fold k trained and selected on
      fold-<k>/              a full train bundle; splits/test.csv is the held-out fold,
                             trained.json marks finished training, fold_result.json
                             and oof_predictions.csv the scored fold
      oof_predictions.csv    path, fold, true, predicted, p_<class>... (folds present)
      kfold_summary.json     per-fold metrics, mean, std (ddof=1), 95% t interval
      reports/kfold_summary.png

A fold with a ``fold_result.json`` is skipped on a rerun (``resume=True``);
one trained but not scored is only scored; one interrupted mid-training
continues from its ``last.keras``.

The per-fold metrics and their summary are :mod:`mritumor.engine.kfold_summary`.
Fold assignment and the inner carve import no TensorFlow.
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from numpy.typing import NDArray

from mritumor.core.errors import ConfigError, UsageError
from mritumor.core.fsutil import atomic_write_text
from mritumor.data.carve import join_cases
from mritumor.data.duplicates.groups import duplicate_groups
from mritumor.data.duplicates.hashing import image_hashes
from mritumor.data.manifests import manifest_path, write_manifest
from mritumor.data.splits import SplitFiles, load_split
from mritumor.engine.kfold_summary import (
    FOLD_RESULT_FILE,
    OOF_FILE,
    FoldMetrics,
    Summary,
    aggregate,
    fold_dir,
    fold_metrics,
    oof_header,
    read_fold_metrics,
    write_summary,
)
from mritumor.predict.predictor import Predictor
from mritumor.run.bundle import read_bundle, write_config
from mritumor.run.layout import RunLayout
from mritumor.run.lock import claimed_run, clear_run_dir
from mritumor.run.splits import write_splits
from mritumor.stats.calibration import softmax

if TYPE_CHECKING:
    from mritumor.config.schema import Settings
    from mritumor.engine.callbacks import TrainingObserver

FOLDS_FILE = "folds.csv"
TRAINED_MARKER = "trained.json"
INNER_DIR = "inner"
HELDOUT_SPLIT = "test"


# --------------------------------------------------------------------------- fold assignment


def check_fold_count(labels: Sequence[int], groups: Sequence[int], folds: int) -> None:
    """UsageError unless ``2 <= folds <=`` the number of groups of the smallest class."""
    if folds < 2:
        raise UsageError(f"--folds must be at least 2, got {folds}")
    per_class: dict[int, set[int]] = {}
    for label, group in zip(labels, groups, strict=True):
        per_class.setdefault(label, set()).add(group)
    if not per_class:
        raise UsageError("no images to split into folds")
    smallest = min(len(found) for found in per_class.values())
    if folds > smallest:
        raise UsageError(
            f"--folds {folds} is more than the smallest class has distinct images "
            f"(groups of duplicates or of one case): {smallest}; use --folds {smallest} or fewer"
        )


def assign_folds(
    labels: Sequence[int], groups: Sequence[int], folds: int, seed: int
) -> NDArray[np.int64]:
    """The 1-based fold of every sample: stratified by label, whole groups per fold."""
    check_fold_count(labels, groups, folds)
    return _grouped_split(labels, groups, folds, seed)


def inner_carve(
    labels: Sequence[int],
    groups: Sequence[int],
    fold_of: Sequence[int],
    fold: int,
    *,
    seed: int,
    splits: int,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Indices ``(fit, select)`` inside fold ``fold``'s training portion.

    ``select`` (about ``1/splits`` of the portion, stratified, whole groups) is
    where the checkpoint is chosen; the held-out fold is in neither.
    """
    portion = np.flatnonzero(np.asarray(fold_of) != fold)
    portion_labels = [labels[i] for i in portion.tolist()]
    portion_groups = [groups[i] for i in portion.tolist()]
    distinct = len(set(portion_groups))
    if distinct < 2:
        raise UsageError(f"fold {fold} has too few distinct images left to carve a val part")
    inner = _grouped_split(portion_labels, portion_groups, max(2, min(splits, distinct)), seed)
    return portion[inner != 1], portion[inner == 1]


def _grouped_split(
    labels: Sequence[int], groups: Sequence[int], folds: int, seed: int
) -> NDArray[np.int64]:
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold_of = np.zeros(len(labels), dtype=np.int64)
    placeholder = np.zeros((len(labels), 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class" on tiny sets
        for number, (_, test) in enumerate(splitter.split(placeholder, labels, groups), start=1):
            fold_of[test] = number
    return fold_of


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Pool:
    """The pooled images with their labels, duplicate groups and folds."""

    paths: tuple[Path, ...]
    labels: tuple[int, ...]
    groups: tuple[int, ...]
    folds: tuple[int, ...]

    @property
    def fold_count(self) -> int:
        return max(self.folds)


@dataclass
class KFoldResult:
    run_dir: Path
    fold_count: int
    metrics: dict[int, FoldMetrics]
    """Every fold scored so far (also those of earlier invocations)."""
    summary: dict[str, Summary]
    trained: list[int]
    skipped: list[int]
    interrupted: bool = False


class KFoldObserver(Protocol):
    def on_fold_begin(self, fold: int, folds: int, action: str) -> TrainingObserver | None:
        """``action``: train, resume, score or skip; may return a per-fold training observer."""

    def on_fold_end(self, fold: int, metrics: FoldMetrics | None) -> None: ...


def pooled_images(settings: Settings) -> tuple[list[Path], list[int], list[str]]:
    """The train and val files of ``settings.paths.data_dir``, absolute, with their cases."""
    names = settings.data.class_names
    paths: list[Path] = []
    labels: list[int] = []
    cases: list[str] = []
    for split in ("train", "val"):
        files = load_split(settings.paths.data_dir, split, names)
        paths.extend(Path(os.path.abspath(path)) for path in files.paths)  # noqa: PTH100
        labels.extend(files.labels)
        cases.extend(files.cases or [""] * len(files))
    return paths, labels, cases


def prepare_pool(settings: Settings, folds: int) -> Pool:
    """Pool train + val, group duplicates and the slices of each case, and assign folds
    (raises UsageError on bad --folds)."""
    paths, labels, cases = pooled_images(settings)
    groups = join_cases(duplicate_groups(image_hashes(paths)), cases)
    fold_of = assign_folds(labels, groups, folds, settings.seed)
    return Pool(tuple(paths), tuple(labels), tuple(groups), tuple(int(f) for f in fold_of))


def write_folds(run_dir: Path, pool: Pool, class_names: Sequence[str]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("path", "label", "group", "fold"))
    for path, label, group, fold in zip(
        pool.paths, pool.labels, pool.groups, pool.folds, strict=True
    ):
        writer.writerow((path.as_posix(), class_names[label], group, fold))
    target = run_dir / FOLDS_FILE
    atomic_write_text(target, buffer.getvalue())
    return target


def read_folds(run_dir: Path, class_names: Sequence[str]) -> Pool:
    file = run_dir / FOLDS_FILE
    if not file.is_file():
        raise UsageError(f"{run_dir} is not a kfold run: {file} not found")
    index = {name: position for position, name in enumerate(class_names)}
    with file.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    try:
        return Pool(
            paths=tuple(Path(row["path"]) for row in rows),
            labels=tuple(index[row["label"]] for row in rows),
            groups=tuple(int(row["group"]) for row in rows),
            folds=tuple(int(row["fold"]) for row in rows),
        )
    except (KeyError, ValueError) as error:
        raise UsageError(f"{file} is damaged ({error}); start a new kfold run") from None


def start_run(settings: Settings, run_dir: Path, folds: int) -> Pool:
    """Write config.yaml and folds.csv into a new (empty) run directory."""
    pool = prepare_pool(settings, folds)
    write_config(run_dir, settings)
    write_folds(run_dir, pool, settings.data.class_names)
    return pool


def check_fold_number(fold: int | None, folds: int) -> None:
    if fold is not None and not 1 <= fold <= folds:
        raise UsageError(f"--fold must be from 1 to {folds}, got {fold}")


def check_strategy(settings: Settings) -> None:
    """k-fold spreads over hosts fold by fold, not with one fold across hosts."""
    if settings.train.strategy == "multiworker":
        raise ConfigError(
            "kfold does not train a fold across hosts: run `mritumor kfold --name RUN --fold K` "
            "on each host (one fold each, into a shared runs folder), then "
            "`mritumor kfold --collect RUN`; --strategy mirrored uses every GPU of a host"
        )


def collect(run_dir: Path, class_names: Sequence[str]) -> KFoldResult:
    """The summary of a run whose folds were trained apart (``--fold K`` on several hosts).

    Written only when every fold is scored; otherwise a :class:`UsageError` lists the
    missing folds and how to run them.
    """
    pool = read_folds(run_dir, class_names)
    folds = pool.fold_count
    scored = read_fold_metrics(run_dir, folds)
    missing = [fold for fold in range(1, folds + 1) if fold not in scored]
    if missing:
        listed = ", ".join(str(fold) for fold in missing)
        raise UsageError(
            f"{run_dir} has {len(scored)} of {folds} folds scored; missing: {listed}. Run "
            f"`mritumor kfold --resume {run_dir} --fold K` for each (K = {listed}), "
            "then collect again"
        )
    metrics = write_summary(run_dir, class_names, folds)
    return KFoldResult(
        run_dir=run_dir,
        fold_count=folds,
        metrics=metrics,
        summary=aggregate(metrics),
        trained=[],
        skipped=sorted(metrics),
    )


def run_folds(
    settings: Settings,
    run_dir: Path,
    pool: Pool,
    *,
    only_fold: int | None = None,
    observer: KFoldObserver | None = None,
) -> KFoldResult:
    """Train and score every fold (or ``only_fold``) not finished yet, then summarise."""
    check_strategy(settings)
    folds = pool.fold_count
    check_fold_number(only_fold, folds)
    trained: list[int] = []
    skipped: list[int] = []
    interrupted = False
    for fold in [only_fold] if only_fold is not None else range(1, folds + 1):
        outcome = _run_fold(settings, run_dir, pool, fold, observer)
        if outcome == "interrupted":
            interrupted = True
            break
        (skipped if outcome == "skip" else trained).append(fold)
    metrics = write_summary(run_dir, settings.data.class_names, folds)
    return KFoldResult(
        run_dir=run_dir,
        fold_count=folds,
        metrics=metrics,
        summary=aggregate(metrics),
        trained=trained,
        skipped=skipped,
        interrupted=interrupted,
    )


def _fold_state(folder: Path, epochs: int) -> str:
    """skip (scored), score (trained), resume (part-trained) or train (nothing usable)."""
    if (folder / FOLD_RESULT_FILE).is_file():
        return "skip"
    if not RunLayout(folder).bundle.is_file():
        return "train"
    done = read_bundle(folder).epochs_completed
    if (folder / TRAINED_MARKER).is_file() or done >= epochs:
        return "score" if RunLayout(folder).model.is_file() else "train"
    return "resume" if RunLayout(folder).last.is_file() else "train"


def _run_fold(
    settings: Settings,
    run_dir: Path,
    pool: Pool,
    fold: int,
    observer: KFoldObserver | None,
) -> str:
    """Train, resume or score one fold while holding its lock: ``kfold --fold K`` on
    another host, or a second ``--resume``, is refused rather than sharing the folder."""
    folder = fold_dir(run_dir, fold)
    with claimed_run(RunLayout.ensured(folder).root, fresh=False):
        return _run_claimed_fold(settings, run_dir, pool, fold, observer)


def _run_claimed_fold(
    settings: Settings,
    run_dir: Path,
    pool: Pool,
    fold: int,
    observer: KFoldObserver | None,
) -> str:
    from mritumor.engine import training

    folder = fold_dir(run_dir, fold)
    action = _fold_state(folder, settings.train.epochs)
    train_observer = observer.on_fold_begin(fold, pool.fold_count, action) if observer else None
    if action == "skip":
        if observer is not None:
            observer.on_fold_end(fold, None)
        return action
    fold_settings = _fold_settings(settings, run_dir, pool, fold)
    if action in ("train", "resume"):
        if action == "train":
            clear_run_dir(folder)
        result = training.train(
            fold_settings, folder, resume=action == "resume", observer=train_observer
        )
        if result.interrupted:
            return "interrupted"
        atomic_write_text(
            folder / TRAINED_MARKER,
            json.dumps(
                {
                    "epochs_completed": result.epochs_completed,
                    "best_epoch": result.best_epoch,
                    "best_value": result.best_value,
                },
                indent=2,
            ),
        )
    metrics = _score_fold(fold_settings, folder, pool, fold)
    if observer is not None:
        observer.on_fold_end(fold, metrics)
    return action


def _fold_settings(settings: Settings, run_dir: Path, pool: Pool, fold: int) -> Settings:
    """Settings whose data root holds manifests of the fold's inner train and val parts."""
    fit, select = inner_carve(
        pool.labels,
        pool.groups,
        pool.folds,
        fold,
        seed=settings.seed + fold,
        splits=pool.fold_count,
    )
    root = run_dir / INNER_DIR / f"fold-{fold}"
    names = settings.data.class_names
    for split, indices in (("train", fit), ("val", select)):
        rows = ({"path": pool.paths[i].as_posix(), "label": names[pool.labels[i]]} for i in indices)
        write_manifest(manifest_path(root, split), rows, columns=("path", "label"))
    paths = settings.paths.model_copy(update={"data_dir": root})
    # A fold is scored, not calibrated: all of its training part trains.
    data = settings.data.model_copy(update={"cal_size": 0.0})
    return settings.model_copy(update={"paths": paths, "data": data})


def heldout_split(pool: Pool, fold: int, class_names: Sequence[str]) -> SplitFiles:
    chosen = [i for i, f in enumerate(pool.folds) if f == fold]
    return SplitFiles(
        name=HELDOUT_SPLIT,
        paths=tuple(pool.paths[i] for i in chosen),
        labels=tuple(pool.labels[i] for i in chosen),
        class_names=tuple(class_names),
    )


def _score_fold(settings: Settings, folder: Path, pool: Pool, fold: int) -> FoldMetrics:
    """Score the held-out fold with the fold's checkpoint; write its predictions and metrics."""
    names = settings.data.class_names
    split = heldout_split(pool, fold, names)
    write_splits(folder, settings.paths.data_dir, [split])
    scored = Predictor(folder).logits(split.paths, batch_size=settings.inference.batch_size)
    logits, kept, failed = scored.logits, scored.kept.tolist(), scored.failures
    truth = [split.labels[i] for i in kept]
    probabilities = softmax(logits)
    metrics = fold_metrics(truth, probabilities, len(names))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(oof_header(names))
    for row, i in enumerate(kept):
        writer.writerow(
            (
                split.paths[i].as_posix(),
                fold,
                names[split.labels[i]],
                names[int(probabilities[row].argmax())],
                *(f"{p:.6f}" for p in probabilities[row]),
            )
        )
    atomic_write_text(folder / OOF_FILE, buffer.getvalue())
    payload = {"fold": fold, **asdict(metrics), "unreadable": sorted(failed)}
    atomic_write_text(folder / FOLD_RESULT_FILE, json.dumps(payload, indent=2))
    return metrics
