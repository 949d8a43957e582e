"""Which labelled images a step scores, how they were used before, and their logits.

Which images each step uses, and why (the reference framework tuned and
reported on the same images):

* ``eval`` reports on ``test`` by default: images that neither trained the
  model nor selected its checkpoint.
* ``calibrate`` and ``threshold`` fit on ``cal`` when the run has one (carved
  from train by ``data.cal_size``; nothing else ever saw it), otherwise on
  ``val``, which also selected the checkpoint: a smaller set spent twice, but no
  training image and no test image.
* Every report lists in ``notes`` the ways its images were used before: scoring
  ``val`` (it picked the checkpoint), scoring the split T or the threshold was
  fitted on (those numbers are then optimistic), or fitting on ``test``.

Scored images that copy a training image are found here too (:func:`training_copies`),
so ``eval`` can report its numbers without them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mritumor.core.errors import MritumorError, UsageError
from mritumor.core.progress import ProgressCallback
from mritumor.data.duplicates.groups import duplicate_groups
from mritumor.data.duplicates.hashing import image_hashes
from mritumor.data.files import subfolders
from mritumor.data.layout import normalise_binary_label
from mritumor.data.splits import (
    BINARY_CLASSES,
    EXTERNAL_SPLITS,
    load_binary_folder,
    load_class_folder,
    load_split,
)
from mritumor.run.splits import list_splits, read_split

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from mritumor.predict.predictor import Predictor
    from mritumor.run.bundle import Bundle

Purpose = str  # "eval", "calibrate" or "threshold"

_TRAINED_ON = ("train", "ext_train")
_SELECTED_ON = ("val", "ext_val")

#: The splits whose images a run learnt from or was selected and calibrated on.
TRAINING_SPLITS = (*_TRAINED_ON, *_SELECTED_ON, "cal")


@dataclass(frozen=True)
class EvalSet:
    """Labelled images to score a run on, and how they were used before."""

    name: str
    """A split name (``test``, ``cal``, ...) or the folder the images came from."""
    paths: tuple[Path, ...]
    labels: NDArray[np.int64]
    """Class indices, or 1 = tumour / 0 = no tumour when :attr:`binary`."""
    binary: bool = False
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Scored:
    """An :class:`EvalSet` with the logits of its readable images."""

    eval_set: EvalSet
    paths: tuple[Path, ...]
    labels: NDArray[np.int64]
    logits: NDArray[np.float64]
    failures: dict[str, str]


def default_split(run_dir: Path, purpose: Purpose) -> str:
    """``test`` for eval. For fitting: ``ext_val`` in a finetune run (the adapted model is
    used on the external domain), else ``cal`` when the run has one, else ``val``."""
    if purpose == "eval":
        return "test"
    stored = list_splits(run_dir)
    return next(name for name in ("ext_val", "cal", "val") if name in stored or name == "val")


def resolve_eval_set(
    run_dir: Path,
    bundle: Bundle,
    spec: str | None,
    data_root: Path,
    *,
    purpose: Purpose,
    allow_binary: bool = False,
) -> EvalSet:
    """The images named by ``spec``: a split of the run, ``test`` of the data root, or a folder.

    A folder holds class sub-folders, or (``allow_binary``) ``yes/`` and ``no/``.
    """
    name = spec or default_split(run_dir, purpose)
    names = bundle.class_names
    if name in EXTERNAL_SPLITS and name in list_splits(run_dir):
        if not allow_binary:
            raise UsageError(f"{name} is a tumour / no-tumour split; this step needs 4 classes")
        split = read_split(run_dir, name, BINARY_CLASSES)
        binary = np.asarray(split.labels, np.int64)
        return EvalSet(name, split.paths, binary, True, _notes(bundle, name, purpose))
    if name in list_splits(run_dir):
        split = read_split(run_dir, name, names, data_root=data_root)
    elif name == "test":
        split = load_split(data_root, "test", names)
    elif Path(name).expanduser().is_dir():
        folder = Path(name).expanduser().resolve()
        if allow_binary and _is_binary_folder(folder):
            paths, labels = load_binary_folder(folder)
            return EvalSet(
                str(folder), paths, np.asarray(labels, np.int64), True, _notes(bundle, "", purpose)
            )
        split = load_class_folder(folder, names)
        name = str(folder)
    else:
        stored = ", ".join(list_splits(run_dir)) or "none"
        raise UsageError(
            f"--split {name!r} is neither a split of {run_dir} (it has: {stored}), "
            "nor test, nor an existing folder"
        )
    return EvalSet(
        name, split.paths, np.asarray(split.labels, np.int64), False, _notes(bundle, name, purpose)
    )


def _is_binary_folder(folder: Path) -> bool:
    # Every sub-folder must be a yes/no label: "no_tumor" alone also reads as "no".
    found = subfolders(folder)
    return bool(found) and all(normalise_binary_label(sub.name) is not None for sub in found)


def _notes(bundle: Bundle, name: str, purpose: Purpose) -> tuple[str, ...]:
    """How the images of split ``name`` were used before, as warnings for the report.

    Raises for fitting on ``ext_holdout``: a finetune run keeps it for reported
    numbers only.
    """
    if purpose != "eval" and name == "ext_holdout":
        raise UsageError(
            f"ext_holdout is kept for reported numbers only; {purpose} on ext_val (the default)"
        )
    notes: list[str] = []
    if name in _TRAINED_ON:
        notes.append("the model was trained on these images: every number here is optimistic")
    if name in _SELECTED_ON and purpose == "eval":
        notes.append(
            f"{name} selected the checkpoint (best {bundle.monitor}) and stopped training early, "
            "so numbers on it are optimistic; report the held-out split"
        )
    elif name in _SELECTED_ON:
        notes.append(
            f"{purpose} fits on {name}, which also selected the checkpoint: one small set used "
            "twice (data.cal_size carves a cal split that nothing else sees)"
        )
    if purpose == "eval":
        if _fitted_on(bundle.temperature_source, name):
            notes.append(
                "the temperature was fitted on these images: calibration metrics are optimistic"
            )
        if _fitted_on(bundle.threshold_info, name):
            notes.append(
                "the threshold was chosen on these images: sensitivity and specificity at it "
                "are optimistic"
            )
    elif name == "test":
        notes.append(
            f"{purpose} fits on test: numbers reported on test afterwards are no longer held out"
        )
    return tuple(notes)


def _fitted_on(info: dict[str, Any] | None, name: str) -> bool:
    return bool(info) and info is not None and info.get("split") == name


def score(
    predictor: Predictor,
    eval_set: EvalSet,
    *,
    batch_size: int,
    progress: ProgressCallback | None = None,
) -> Scored:
    """Logits of every readable image of ``eval_set``; unreadable ones are reported, not fatal."""
    result = predictor.logits(eval_set.paths, batch_size=batch_size, progress=progress)
    if not len(result.kept):
        raise MritumorError(
            f"none of the {len(eval_set.paths)} images of {eval_set.name} is readable"
        )
    return Scored(
        eval_set=eval_set,
        paths=tuple(eval_set.paths[i] for i in result.kept),
        labels=eval_set.labels[result.kept],
        logits=result.logits,
        failures=result.failures,
    )


def training_copies(
    run_dir: Path, bundle: Bundle, scored: Scored, data_root: Path
) -> NDArray[np.bool_] | None:
    """Which scored images are exact or near copies of the run's training images.

    Training images are those of :data:`TRAINING_SPLITS` (a finetune run's
    ``ext_train`` and ``ext_val`` too). Copies form connected groups, as in
    ``data check``: an image that is a near copy of another scored image that
    copies a training image counts as well.

    None for those splits themselves, and when the run's split lists cannot be
    read (its data moved without ``--data``). The public Kaggle Training and
    Testing folders share 344 such groups, so a test accuracy with them in
    measures memory as much as generalisation: ``eval`` reports both.
    """
    if scored.eval_set.name in TRAINING_SPLITS or not scored.paths:
        return None
    seen: list[Path] = []
    try:
        for name in TRAINING_SPLITS:
            if name in list_splits(run_dir):
                names = BINARY_CLASSES if name in EXTERNAL_SPLITS else bundle.class_names
                split = read_split(run_dir, name, names, data_root=data_root)
                seen.extend(split.paths)
    except MritumorError:
        return None
    if not seen:
        return None
    count = len(scored.paths)
    groups = duplicate_groups(image_hashes([*scored.paths, *seen]))
    in_training = set(groups[count:])
    return np.array([group in in_training for group in groups[:count]], dtype=bool)
