"""``data prepare`` for labelled volumes: slices extracted into the standard layout, by case.

The source holds one folder per class, and in it one volume per case::

    <source>/<class>/<case>.nii.gz          (or .nii, or a <case>/ folder of one DICOM series)
    <source>/<class>/<case>_mask.nii.gz     optional lesion mask (``_seg`` also accepted)

Class folders are named as for 2-D data (``glioma``, ``No Tumor``...). Each volume is
cut along ``volumes.axis`` and windowed (:mod:`.slicing`); blank slices are left out.
Which slices keep the case's label:

* a no-tumour case: every non-blank slice;
* a tumour case with a mask: the slices where the lesion covers at least
  :data:`MIN_LESION_SHARE` of the slice. Its other slices are left out (counted),
  not relabelled: a slice of a patient's scan without tumour is not a healthy scan;
* a tumour case without a mask: every non-blank slice, with a warning, since most
  slices of a tumour case do not show the tumour (weak, volume-level labels).

Splits are drawn by case (:func:`~mritumor.data.carve.carve_splits` with the case as
group): val and test each take about ``val_size`` of a class's slices, in whole
cases, so no case has slices in two splits. The case id is the volume's name
without its suffix; the same id under two classes is one patient, kept in train.
Manifests get the columns ``case`` and ``source`` (``<volume>#<axis><k>``), and a
case with a mask gets its slices' masks under ``masks/`` (as ``data synth`` writes
them), for ``eval``'s localisation.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mritumor.core.classes import CLASS_NAMES
from mritumor.core.errors import UsageError
from mritumor.core.progress import ProgressCallback
from mritumor.data.carve import carve_splits
from mritumor.data.files import NO_TUMOUR_LABEL, is_hidden, subfolders
from mritumor.data.image_errors import UnreadableImageError
from mritumor.data.layout import class_of_folder
from mritumor.data.manifests import manifest_path
from mritumor.data.prepare.placement import PlannedFile, place_files, refuse_overwrite
from mritumor.data.prepare.sources import (
    Source,
    existing_source,
    refuse_overlap,
    removed_on_failure,
)
from mritumor.data.synth.writer import MASKS_DIR
from mritumor.volumes.reading import (
    MASK_SUFFIXES,
    Volume,
    dicom_files_in,
    import_nibabel,
    is_dicom_series,
    is_mask_file,
    is_nifti_file,
    read_volume,
    volume_stem,
)
from mritumor.volumes.slicing import SliceOptions, display_plane, slice_volume

#: A tumour case's slice keeps its label when its lesion covers this share of the slice.
MIN_LESION_SHARE = 0.001
_HELD_OUT = ("val", "test")
_NEGATIVE = {"no_tumor", NO_TUMOUR_LABEL}


@dataclass(frozen=True)
class Case:
    """One labelled volume: its id, class, file or series folder, and lesion mask if any."""

    case_id: str
    label: str
    volume: Path
    mask: Path | None


@dataclass(frozen=True)
class VolumePrepareSummary:
    """What :func:`prepare_volumes` wrote; counts are slices (``cases`` counts cases)."""

    source: Path
    target: Path
    counts: dict[str, dict[str, int]]
    cases: dict[str, dict[str, int]]
    blank: int
    lesion_free: int
    """Slices of tumour cases with a mask that show no lesion: left out."""
    unmasked: tuple[str, ...]
    """Tumour cases without a mask: all their non-blank slices carry the label."""
    unreadable: tuple[tuple[Path, str], ...]
    manifests: tuple[Path, ...]
    warnings: tuple[str, ...] = ()
    """The held-out splits left without a class: too few cases of it to carve by case."""


def holds_volumes(source: Path) -> bool:
    """Whether ``source`` is a folder of class folders holding volumes (NIfTI or DICOM series).

    A tree of 2-D DICOM images (``Training/glioma/*.dcm``) is not: its class folders hold
    images of many series, or without a series (:func:`~mritumor.volumes.reading.is_dicom_series`).
    """
    if not source.is_dir():
        return False
    return any(
        is_nifti_file(entry) or (entry.is_dir() and is_dicom_series(entry))
        for folder in subfolders(source)
        for entry in folder.iterdir()
    )


def find_cases(source: Path) -> list[Case]:
    """Every case under the class folders of ``source``, sorted by class then id."""
    cases: list[Case] = []
    for folder in subfolders(source):
        cases.extend(_cases_in(folder, class_of_folder(folder)))
    return cases


def _cases_in(folder: Path, label: str) -> list[Case]:
    """The cases of one class folder; two volumes with one case id are refused."""
    entries = [entry for entry in sorted(folder.iterdir()) if not is_hidden(entry.name)]
    found = [
        entry
        for entry in entries
        if (is_nifti_file(entry) and not is_mask_file(entry))
        or (entry.is_dir() and dicom_files_in(entry))
    ]
    clashes = [stem for stem, n in Counter(map(volume_stem, found)).items() if n > 1]
    if clashes:
        named = ", ".join(entry.name for entry in found if volume_stem(entry) == clashes[0])
        raise UsageError(f"two volumes of case {clashes[0]!r} in {folder} ({named}); keep one")
    volumes = {volume_stem(entry): entry for entry in found}
    masks = {volume_stem(entry): entry for entry in entries if is_mask_file(entry)}
    return [
        Case(stem, label, path, _mask_of(stem, masks)) for stem, path in sorted(volumes.items())
    ]


def _mask_of(stem: str, masks: dict[str, Path]) -> Path | None:
    return next((masks[stem + s] for s in MASK_SUFFIXES if stem + s in masks), None)


@dataclass(frozen=True)
class _Extracted:
    """The PNG slices staged for one case, with the slice each came from."""

    case: Case
    files: list[tuple[Path, str]]
    """Each staged PNG with its manifest ``source`` (``<volume>#<axis><k>``)."""
    blank: int
    lesion_free: int


def prepare_volumes(
    source: Path,
    target: Path,
    *,
    options: SliceOptions,
    val_size: float = 0.15,
    seed: int = 42,
    force: bool = False,
    progress: ProgressCallback | None = None,
) -> VolumePrepareSummary:
    """Extract the slices of the labelled volumes in ``source`` into the standard layout."""
    if not 0.0 < val_size < 0.5:
        raise UsageError(f"val_size must be between 0 and 0.5 for volumes, got {val_size}")
    import_nibabel()  # the missing extra is one line, before anything is made
    source = existing_source(source)
    target = target.expanduser().resolve()
    refuse_overlap(source, target)
    cases = find_cases(source)
    if not cases:
        raise UsageError(f"no volumes in {source} (expected <class>/<case>.nii.gz)")
    splits = ("train", *_HELD_OUT)
    refuse_overwrite(target, splits, force)
    with removed_on_failure(target):
        target.mkdir(parents=True, exist_ok=True)
        return _prepare_cases(cases, source, target, options, val_size, seed, progress)


def _prepare_cases(
    cases: list[Case],
    source: Path,
    target: Path,
    options: SliceOptions,
    val_size: float,
    seed: int,
    progress: ProgressCallback | None,
) -> VolumePrepareSummary:
    """Extract, carve by case and place; the staged slices live in a hidden folder of ``target``."""
    splits = ("train", *_HELD_OUT)
    with tempfile.TemporaryDirectory(prefix=".volumes-", dir=target) as staging:
        extracted, unreadable = _extract_all(cases, Path(staging), options, progress)
        labels = _labels(extracted, cases, unreadable)
        files_by_label: dict[str, list[Path]] = defaultdict(list)
        groups: dict[Path, str] = {}
        details: dict[Path, dict[str, str]] = {}
        case_of: dict[Path, Case] = {}
        for found in extracted:
            for png, origin in found.files:
                files_by_label[found.case.label].append(png)
                groups[png] = found.case.case_id
                details[png] = {"source": origin, "case": found.case.case_id}
                case_of[png] = found.case
        carved = carve_splits(files_by_label, _HELD_OUT, val_size, seed, groups=groups)
        planned = [
            PlannedFile(png, split, label, png.name)
            for split, by_label in carved.items()
            for label, pngs in by_label.items()
            for png in pngs
        ]
        _place_masks(planned, target)
        place_files(
            planned, splits, labels, Source(Path(staging), source, "move"), target, None, details
        )
    slices, case_counts = _counts(planned, labels, case_of)
    return VolumePrepareSummary(
        source=source,
        target=target,
        counts=slices,
        cases=case_counts,
        blank=sum(found.blank for found in extracted),
        lesion_free=sum(found.lesion_free for found in extracted),
        unmasked=tuple(
            f"{c.label}/{c.case_id}"
            for c in (found.case for found in extracted)
            if c.mask is None and c.label not in _NEGATIVE
        ),
        unreadable=tuple(unreadable),
        manifests=tuple(manifest_path(target, split) for split in splits),
        warnings=_shortfalls(case_counts, val_size),
    )


def _extract_all(
    cases: list[Case], staging: Path, options: SliceOptions, progress: ProgressCallback | None
) -> tuple[list[_Extracted], list[tuple[Path, str]]]:
    extracted: list[_Extracted] = []
    unreadable: list[tuple[Path, str]] = []
    for done, case in enumerate(cases, start=1):
        try:
            extracted.append(_extract(case, staging, options))
        except UnreadableImageError as error:
            unreadable.append((case.volume, str(error)))
        if progress is not None:
            progress(done, len(cases))
    return extracted, unreadable


def _extract(case: Case, staging: Path, options: SliceOptions) -> _Extracted:
    """Stage the labelled slices of one case as PNG (and their masks beside, ``.mask.png``)."""
    from PIL import Image

    volume = read_volume(case.volume)
    sliced = slice_volume(volume, options)
    lesions = _mask_planes(case, volume, options, sliced.kept)
    folder = staging / case.label
    folder.mkdir(parents=True, exist_ok=True)
    files: list[tuple[Path, str]] = []
    lesion_free = 0
    for index, pixels in zip(sliced.kept, sliced.pixels, strict=True):
        lesion = lesions.get(index)
        if lesion is not None and case.label not in _NEGATIVE and lesion.mean() < MIN_LESION_SHARE:
            lesion_free += 1
            continue
        name = f"{case.case_id}_{options.axis}{index + 1}"
        png = folder / f"{name}.png"
        Image.fromarray(pixels[..., 0]).save(png)
        if lesion is not None:
            Image.fromarray(lesion.astype(np.uint8) * 255).save(folder / f"{name}.mask.png")
        files.append((png, f"{case.volume}#{options.axis}{index + 1}"))
    return _Extracted(case, files, len(sliced.blank), lesion_free)


def _mask_planes(
    case: Case, volume: Volume, options: SliceOptions, kept: tuple[int, ...]
) -> dict[int, np.ndarray]:
    """The lesion mask of each kept slice, cut as the slice was; empty without a mask."""
    if case.mask is None:
        return {}
    mask = read_volume(case.mask)
    if mask.voxels.shape != volume.voxels.shape:
        raise UnreadableImageError(
            f"the mask {case.mask} has {mask.voxels.shape} voxels, its volume {volume.voxels.shape}"
        )
    if not np.allclose(mask.affine, volume.affine, atol=1e-3):
        raise UnreadableImageError(
            f"the mask {case.mask} does not lie on its volume's voxels: their affines differ "
            f"(axis codes {mask.orientation} and {volume.orientation})"
        )
    inside = (mask.voxels > 0).astype(np.float32) * 255.0
    return {
        index: display_plane(inside, options.axis, index, volume.spacing) > 127 for index in kept
    }


def _labels(
    extracted: list[_Extracted], cases: list[Case], unreadable: list[tuple[Path, str]]
) -> tuple[str, ...]:
    """The classes present, in the standard order; a class left without slices is refused."""
    present = {case.label for case in cases}
    usable = {found.case.label for found in extracted if found.files}
    empty = sorted(present - usable)
    if empty:
        read = {found.case.label for found in extracted}
        reasons = [
            f"{label}: its slices are blank or, where it has masks, show no lesion"
            if label in read
            else f"{label}: every volume is unreadable"
            + (f" (such as {unreadable[0][0]}: {unreadable[0][1]})" if unreadable else "")
            for label in empty
        ]
        raise UsageError(f"no usable slices of {'; '.join(reasons)}")
    return tuple(name for name in CLASS_NAMES if name in present)


def _place_masks(planned: list[PlannedFile], target: Path) -> None:
    """Move each staged slice mask to ``masks/<split>/<class>/<name>.png``, replacing old ones."""
    for split in ("train", *_HELD_OUT):
        shutil.rmtree(target / MASKS_DIR / split, ignore_errors=True)
    for item in planned:
        staged = item.file.with_suffix(".mask.png")
        if staged.is_file():
            destination = target / MASKS_DIR / item.relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            staged.replace(destination)


def _counts(
    planned: list[PlannedFile], labels: tuple[str, ...], case_of: dict[Path, Case]
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
    """Slices, and cases, per split and class."""
    slices = {split: dict.fromkeys(labels, 0) for split in ("train", *_HELD_OUT)}
    cases: dict[str, dict[str, set[str]]] = {
        split: {label: set() for label in labels} for split in slices
    }
    for item in planned:
        slices[item.split][item.label] += 1
        cases[item.split][item.label].add(case_of[item.file].case_id)
    return slices, {
        split: {label: len(ids) for label, ids in by_label.items()}
        for split, by_label in cases.items()
    }


def _shortfalls(cases: dict[str, dict[str, int]], val_size: float) -> tuple[str, ...]:
    """A warning per held-out split left without the cases of some class."""
    warnings = []
    for split in _HELD_OUT:
        missing = [label for label, count in cases[split].items() if count == 0]
        if missing:
            held = {label: sum(cases[s][label] for s in cases) for label in missing}
            listed = ", ".join(f"{label} ({count} case(s) in all)" for label, count in held.items())
            warnings.append(
                f"{split} has no case of {listed}: whole cases of a class are carved only "
                f"when one fits in its share of val_size {val_size}"
            )
    return tuple(warnings)
