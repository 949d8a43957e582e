"""Saving what the data check found: the JSON report, and every leaking pair as CSV.

``data check`` writes the JSON report (default ``ROOT/check.json``, :func:`write_report`)
and beside it ``<report>-leaks.csv`` (:func:`leaks_path`, :func:`write_leaks`). Paths
are relative to the dataset root, with forward slashes.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

from mritumor.core.fsutil import atomic_write_text
from mritumor.data.check.analysis import (
    CheckReport,
    DuplicateGroup,
    FileRecord,
    LeakagePair,
    NearPair,
    Problem,
    SizeRange,
)
from mritumor.data.duplicates.hashing import PROBLEM_KINDS

SCHEMA_VERSION = 1
#: Every leaking pair, beside the JSON report: ``kind, distance, similarity, kept, leaking_copy``.
LEAKS_SUFFIX = "-leaks.csv"


def report_json(report: CheckReport) -> dict[str, Any]:
    """A JSON-ready dict of everything the check found."""
    root = report.root
    return {
        "schema_version": SCHEMA_VERSION,
        "root": str(root),
        "radius": report.radius,
        "min_similarity": report.min_similarity,
        "summary": _summary_json(report),
        "class_counts": report.class_counts,
        "imbalance_ratio": {
            split: _finite_or_none(ratio) for split, ratio in report.imbalance_ratios.items()
        },
        "modes": report.modes,
        "sizes": {"width": _range_json(report.widths), "height": _range_json(report.heights)},
        "problems": [_problem_json(problem, root) for problem in report.problems],
        "groups": [_group_json(group, root) for group in report.groups],
        "leaks": [_leak_json(leak, root) for leak in report.leaks],
        "label_conflicts": [group.id for group in report.label_conflicts],
        "files": [_file_json(file, root) for file in report.files],
    }


def _summary_json(report: CheckReport) -> dict[str, Any]:
    problem_counts = Counter(problem.kind for problem in report.problems)
    return {
        "files": len(report.files),
        "usable_images": len(report.usable),
        "problems": {kind: problem_counts[kind] for kind in PROBLEM_KINDS},
        "exact_groups": len(report.exact_groups),
        "near_groups": len(report.near_groups),
        "near_candidates": report.near_candidates,
        "near_pairs": sum(len(group.near_pairs) for group in report.groups),
        "leaks": len(report.leaks),
        "label_conflicts": len(report.label_conflicts),
        "has_leakage": report.has_leakage,
    }


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _problem_json(problem: Problem, root: Path) -> dict[str, Any]:
    return {
        "path": _relative(problem.path, root),
        "split": problem.split,
        "class": problem.class_name,
        "kind": problem.kind,
        "message": problem.message,
    }


def _group_json(group: DuplicateGroup, root: Path) -> dict[str, Any]:
    return {
        "id": group.id,
        "kind": group.kind,
        "splits": list(group.splits),
        "label_conflict": group.has_label_conflict,
        "files": [_relative(file.path, root) for file in group.files],
        "near_pairs": [_near_pair_json(pair, root) for pair in group.near_pairs],
    }


def _near_pair_json(pair: NearPair, root: Path) -> dict[str, Any]:
    return {
        "path_a": _relative(pair.a.path, root),
        "path_b": _relative(pair.b.path, root),
        "distance": pair.distance,
        "similarity": round(pair.similarity, 4),
    }


def _leak_json(leak: LeakagePair, root: Path) -> dict[str, Any]:
    return {
        "kind": leak.kind,
        "distance": leak.distance,
        "similarity": round(leak.similarity, 4),
        "path_a": _relative(leak.a.path, root),
        "split_a": leak.a.split,
        "class_a": leak.a.class_name,
        "path_b": _relative(leak.b.path, root),
        "split_b": leak.b.split,
        "class_b": leak.b.class_name,
    }


def _file_json(file: FileRecord, root: Path) -> dict[str, Any]:
    image = file.image
    return {
        "path": _relative(file.path, root),
        "split": file.split,
        "class": file.class_name,
        "tumour": file.tumour,
        "group": file.group,
        "bytes": image.size_bytes,
        "sha256": image.sha256,
        "pixel_sha256": image.pixel_sha256,
        "phash": None if image.phash is None else f"{image.phash:016x}",
        "format": image.format,
        "mode": image.mode,
        "width": image.width,
        "height": image.height,
        "problem": image.problem,
    }


def _range_json(size: SizeRange | None) -> dict[str, float] | None:
    if size is None:
        return None
    return {"min": size.minimum, "median": size.median, "max": size.maximum}


def _finite_or_none(value: float) -> float | None:
    """JSON has no infinity; an empty class makes the imbalance ratio ``null``."""
    return value if value != float("inf") else None


def write_report(report: CheckReport, path: Path) -> None:
    """Save :func:`report_json` to ``path`` atomically."""
    atomic_write_text(path, json.dumps(report_json(report), indent=2) + "\n")


def write_leaks(report: CheckReport, path: Path) -> None:
    """Save :func:`leaks_csv` to ``path`` atomically, a header alone when nothing leaks.

    Written on every check, so no list from an earlier check is left behind.
    """
    atomic_write_text(path, leaks_csv(report))


def leaks_path(report_path: Path) -> Path:
    """Where ``data check`` puts the leakage CSV: beside the JSON report, named after it
    (``check.json`` -> ``check-leaks.csv``), so a ``--report`` of the user's own never
    replaces a file of theirs that happens to be called leaks.csv."""
    return report_path.with_name(report_path.stem + LEAKS_SUFFIX)


def leaks_csv(report: CheckReport) -> str:
    """Every leaking pair, one row each, paths relative to the root (the copy kept first)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("kind", "distance", "similarity", "kept", "leaking_copy"))
    for leak in report.leaks:
        kept, leaking = (_relative(file.path, report.root) for file in (leak.a, leak.b))
        writer.writerow((leak.kind, leak.distance, f"{leak.similarity:.4f}", kept, leaking))
    return buffer.getvalue()
