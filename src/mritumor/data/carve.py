"""Carving held-out splits from a pool of labelled files: stratified, seeded, duplicates whole.

``data prepare`` carves val (and test) where the source has none, ``train`` carves
``cal`` from train, and ``finetune`` its parts of an external set; all go through
:func:`carve_splits`, so the same seed and files give the same splits everywhere.
"""

from __future__ import annotations

import math
import zlib
from collections import defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np

FilesByLabel = dict[str, list[Path]]
_KeyFunction = Callable[[Path], Hashable]


def carve_splits(
    files_by_label: Mapping[str, Sequence[Path]],
    held_out: Sequence[str],
    fraction: float,
    seed: int,
    *,
    groups: Mapping[Path, Hashable] | None = None,
) -> dict[str, FilesByLabel]:
    """Split each class at random into ``held_out`` splits of ``fraction`` each, rest ``train``.

    Stratified: each held-out split aims at ``round(n * fraction)`` of a class's
    ``n`` files. Each class is shuffled by its own generator, seeded by ``seed``
    and the class name, and the held-out splits are filled in shuffled order.

    ``groups`` gives files a group id (:func:`~mritumor.data.duplicates.groups.duplicate_groups`);
    files sharing one land in the same split. A group takes the place of its first
    file (in sorted order) in the shuffle and goes to the first held-out split it
    fits into without overshooting; a split still short at the end takes any
    remaining group that brings it closer to its size. A group whose files carry
    different labels (a label conflict) stays in ``train``, whole. Files without
    an id stand alone, so without ``groups``, or without duplicates, this is the
    plain file-by-file carve. A class's split does not change when another class
    changes, unless the change makes or breaks a label conflict with its files.
    """
    key = _group_key(groups)
    conflicts = {k for k, _ in conflicting_groups(files_by_label, groups)}
    splits: dict[str, FilesByLabel] = {split: {} for split in ("train", *held_out)}
    for label, files in files_by_label.items():
        ordered = sorted(files)
        rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
        shuffled = [ordered[i] for i in rng.permutation(len(ordered))]
        members: dict[Hashable, list[Path]] = defaultdict(list)
        for path in ordered:
            members[key(path)].append(path)
        units = [members[key(path)] for path in shuffled if members[key(path)][0] == path]
        placed = _fill(
            [unit for unit in units if key(unit[0]) not in conflicts],
            held_out,
            carved_size(len(ordered), fraction),
        )
        placed["train"].extend(p for unit in units if key(unit[0]) in conflicts for p in unit)
        for split, chosen in placed.items():
            splits[split][label] = sorted(chosen)
    return splits


def carved_size(count: int, fraction: float) -> int:
    """Images a held-out split takes of a class of ``count``: ``fraction`` of it, rounded."""
    return int(count * fraction + 0.5)


def _group_key(groups: Mapping[Path, Hashable] | None) -> _KeyFunction:
    """The group a file belongs to: its id in ``groups``, or the file itself."""
    if groups is None:
        return lambda path: path
    return lambda path: groups.get(path, path)


def _fill(
    units: Sequence[Sequence[Path]], held_out: Sequence[str], size: int
) -> dict[str, list[Path]]:
    """Deal ``units`` (groups, in shuffled order) into ``held_out`` splits of ``size`` files."""
    placed: dict[str, list[Path]] = {split: [] for split in ("train", *held_out)}
    left: list[Sequence[Path]] = []
    for unit in units:
        split = next((s for s in held_out if len(placed[s]) + len(unit) <= size), None)
        if split is None:
            left.append(unit)
        else:
            placed[split].extend(unit)
    for split in held_out:  # top up a split that no remaining group fits exactly
        still_left = []
        for unit in left:
            short = size - len(placed[split])
            if abs(short - len(unit)) < short:
                placed[split].extend(unit)
            else:
                still_left.append(unit)
        left = still_left
    placed["train"].extend(path for unit in left for path in unit)
    return placed


def conflicting_groups(
    files_by_label: Mapping[str, Sequence[Path]], groups: Mapping[Path, Hashable] | None
) -> list[tuple[Hashable, tuple[Path, ...]]]:
    """Groups whose files carry more than one label, with their files (sorted).

    ``groups`` gives files a group id, as for :func:`carve_splits`.
    """
    key = _group_key(groups)
    labels: dict[Hashable, set[str]] = defaultdict(set)
    files: dict[Hashable, list[Path]] = defaultdict(list)
    for label, paths in files_by_label.items():
        for path in paths:
            labels[key(path)].add(label)
            files[key(path)].append(path)
    conflicts = [(k, tuple(sorted(files[k]))) for k, found in labels.items() if len(found) > 1]
    return sorted(conflicts, key=lambda conflict: conflict[1])


def smallest_carvable(fraction: float) -> int:
    """The fewest images of a class of which a held-out split takes one (:func:`carved_size`)."""
    count = max(1, math.ceil(0.5 / fraction))
    return count if carved_size(count, fraction) else count + 1


def join_cases(groups: Sequence[Hashable], cases: Sequence[str]) -> list[int]:
    """Group ids that also join the files of one case: duplicates or one case, one group.

    ``groups`` gives each file a group (duplicates share one); ``cases`` its case id
    (``""`` for none; an empty sequence when no file has one). Two files end in one
    group when a chain of shared groups and shared cases links them. Ids are
    numbered from 0 in order of first appearance.
    """
    parent = list(range(len(groups)))

    def root(item: int) -> int:
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    first: dict[tuple[str, Hashable], int] = {}
    for index, group in enumerate(groups):
        links = [("group", group)]
        if cases and cases[index]:
            links.append(("case", cases[index]))
        for key in links:
            if key in first:
                parent[root(index)] = root(first[key])
            else:
                first[key] = index
    numbering: dict[int, int] = {}
    return [numbering.setdefault(root(index), len(numbering)) for index in range(len(groups))]
