"""What a run folder holds, read into plain data for the report and the model card.

Nothing here raises on a missing or unreadable part: the part is recorded in
:attr:`RunFacts.missing` with the command that produces it. Only a folder without a
readable ``bundle.json`` is refused, as it is not a run.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mritumor.core.errors import MritumorError
from mritumor.evaluation.reports import (
    CALIBRATION_DIR,
    CALIBRATION_METRICS_FILE,
    EVAL_DIR_PREFIX,
    FINETUNE_REPORT_FILE,
    SUMMARY_FILE,
    THRESHOLD_DIR,
    THRESHOLD_FILE,
)
from mritumor.run.history import HistoryValue, read_history
from mritumor.run.layout import BundleError, RunLayout
from mritumor.run.splits import list_splits, split_rows

CHECK_FILE = "check.json"
"""``data check``'s default report, in the data root."""

MAX_LEAKS_SHOWN = 20
"""Leaking pairs listed in the report; the rest are in ``check-leaks.csv``."""

COMMANDS = {
    "data": "mritumor data check",
    "training": "mritumor train",
    "eval": "mritumor eval",
    "calibration": "mritumor calibrate",
    "threshold": "mritumor threshold",
    "finetune": "mritumor finetune",
    "gradcam": "mritumor gradcam IMAGES",
    "settings": "mritumor train",
}
"""The command that produces each section, for the sections a run lacks."""


@dataclass(frozen=True)
class Figure:
    """One PNG of the run: a caption and its path."""

    title: str
    path: Path


@dataclass
class EvalSet:
    """One ``reports/eval-<name>/`` folder."""

    name: str
    summary: dict[str, Any]
    figures: list[Figure]


@dataclass
class RunFacts:
    """Everything the report shows; ``None`` or empty where the run lacks it."""

    root: Path
    bundle: dict[str, Any]
    config_text: str | None = None
    split_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    data_check: dict[str, Any] | None = None
    data_check_path: Path | None = None
    history: list[dict[str, HistoryValue]] = field(default_factory=list)
    training_figures: list[Figure] = field(default_factory=list)
    evals: list[EvalSet] = field(default_factory=list)
    calibration: dict[str, Any] | None = None
    calibration_figures: list[Figure] = field(default_factory=list)
    threshold: dict[str, Any] | None = None
    threshold_figures: list[Figure] = field(default_factory=list)
    finetune: dict[str, Any] | None = None
    finetune_figures: list[Figure] = field(default_factory=list)
    gradcam: list[Figure] = field(default_factory=list)
    other_figures: list[Figure] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.root.name

    def figures(self) -> list[Figure]:
        """Every figure, in the order the report shows them."""
        found = [*self.training_figures]
        for eval_set in self.evals:
            found += eval_set.figures
        found += self.calibration_figures + self.threshold_figures + self.finetune_figures
        return found + self.gradcam + self.other_figures


def collect(run_dir: Path) -> RunFacts:
    """Read what ``run_dir`` holds; a :class:`BundleError` only when it is not a run."""
    layout = RunLayout(run_dir)
    facts = RunFacts(root=run_dir, bundle=_read_bundle(layout))
    figures = _Figures()
    facts.config_text = _read_text(layout.config, facts)
    if facts.config_text is None:
        facts.missing["settings"] = COMMANDS["settings"]
    facts.split_counts = _split_counts(layout, facts)
    facts.data_check_path, facts.data_check = _data_check(facts.config_text, facts)
    if facts.data_check is None:
        facts.missing["data"] = COMMANDS["data"]
    facts.history = _history(layout, facts)
    reports = layout.reports
    facts.training_figures = figures(
        ("Accuracy per epoch", reports / "acc_curve.png"),
        ("Loss per epoch", reports / "loss_curve.png"),
    )
    if not facts.history and not facts.training_figures:
        facts.missing["training"] = COMMANDS["training"]
    _collect_evals(facts, reports, figures)
    _collect_steps(facts, reports, figures)
    gradcam = sorted(layout.gradcam.glob("*.png")) if layout.gradcam.is_dir() else []
    facts.gradcam = figures(*((path.stem, path) for path in gradcam))
    if not facts.gradcam:
        facts.missing["gradcam"] = COMMANDS["gradcam"]
    if reports.is_dir():
        rest = [path for path in sorted(reports.rglob("*.png")) if not figures.shown(path)]
        facts.other_figures = figures(*((p.relative_to(reports).as_posix(), p) for p in rest))
    return facts


class _Figures:
    """Makes :class:`Figure` values of the PNGs that exist, and remembers them."""

    def __init__(self) -> None:
        self._seen: set[Path] = set()

    def __call__(self, *items: tuple[str, Path]) -> list[Figure]:
        found = [Figure(title, path) for title, path in items if path.is_file()]
        self._seen.update(figure.path.resolve() for figure in found)
        return found

    def shown(self, path: Path) -> bool:
        return path.resolve() in self._seen


def _collect_evals(facts: RunFacts, reports: Path, figures: _Figures) -> None:
    for folder in sorted(reports.glob(f"{EVAL_DIR_PREFIX}*")):
        summary = _read_json(folder / SUMMARY_FILE, facts)
        if summary is not None:
            shown = figures(*((title, folder / f"{stem}.png") for stem, title in _EVAL_FIGURES))
            facts.evals.append(EvalSet(folder.name[len(EVAL_DIR_PREFIX) :], summary, shown))
    if not facts.evals:
        facts.missing["eval"] = COMMANDS["eval"]


def _collect_steps(facts: RunFacts, reports: Path, figures: _Figures) -> None:
    """calibrate, threshold and finetune: one JSON file and its figures each."""
    calibration = reports / CALIBRATION_DIR
    facts.calibration = _read_json(calibration / CALIBRATION_METRICS_FILE, facts)
    facts.calibration_figures = figures(
        ("Reliability before (T = 1)", calibration / "reliability_diagram_before.png"),
        ("Reliability after", calibration / "reliability_diagram.png"),
        ("Confidence after", calibration / "confidence_hist.png"),
    )
    threshold = reports / THRESHOLD_DIR
    facts.threshold = _read_json(threshold / THRESHOLD_FILE, facts)
    facts.threshold_figures = figures(("Tumour-score ROC", threshold / "threshold_roc.png"))
    facts.finetune = _read_json(reports / FINETUNE_REPORT_FILE, facts)
    facts.finetune_figures = figures(("Before and after", reports / "finetune_comparison.png"))
    for key in ("calibration", "threshold", "finetune"):
        if getattr(facts, key) is None:
            facts.missing[key] = COMMANDS[key]


_EVAL_FIGURES = (
    ("cm", "Confusion matrix"),
    ("cm_norm", "Confusion matrix, normalised by row"),
    ("roc_curves", "ROC, one class against the rest"),
    ("pr_curves", "Precision-recall, one class against the rest"),
    ("reliability_diagram", "Reliability diagram"),
    ("confidence_hist", "Confidence"),
    ("threshold_roc", "Tumour-score ROC"),
    ("error_gallery", "The most confident mistakes"),
)


def _read_bundle(layout: RunLayout) -> dict[str, Any]:
    path = layout.bundle
    if not path.is_file():
        raise BundleError(f"{layout.root} is not a run: it has no bundle.json; pass --run RUN")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise BundleError(f"cannot read {path}: {error}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path} does not hold a JSON object")
    return data


def _read_text(path: Path, facts: RunFacts) -> str | None:
    if not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        facts.problems.append(f"cannot read {path.name}: {error}")
        return None


def _read_json(path: Path, facts: RunFacts) -> dict[str, Any] | None:
    text = _read_text(path, facts)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as error:
        facts.problems.append(f"cannot read {path.relative_to(facts.root)}: {error}")
        return None
    return data if isinstance(data, dict) else None


def _split_counts(layout: RunLayout, facts: RunFacts) -> dict[str, dict[str, int]]:
    """Images per class in each ``splits/<name>.csv``, read whether or not the files still exist."""
    counts: dict[str, dict[str, int]] = {}
    for name in list_splits(layout.root):
        try:
            labels = Counter(row["label"] or "?" for row in split_rows(layout.split(name)))
        except BundleError as error:
            facts.problems.append(str(error))
            continue
        counts[name] = dict(sorted(labels.items()))
    return counts


def _history(layout: RunLayout, facts: RunFacts) -> list[dict[str, HistoryValue]]:
    try:
        return read_history(layout.root)
    except MritumorError as error:
        facts.problems.append(str(error))
        return []


def _data_check(
    config_text: str | None, facts: RunFacts
) -> tuple[Path | None, dict[str, Any] | None]:
    """``data check``'s summary and notes, from ``<paths.data_dir>/check.json`` if it exists."""
    if config_text is None:
        return None, None
    try:
        import yaml

        config = yaml.safe_load(config_text)
        data_dir = Path(config["paths"]["data_dir"])
    except Exception:
        return None, None
    path = data_dir / CHECK_FILE
    report = _read_json(path, facts)
    if report is None:
        return path, None
    leaks = [leak for leak in report.get("leaks") or [] if isinstance(leak, dict)]
    return path, {
        "summary": report.get("summary") or {},
        "leaks": [
            f"{leak.get('kind')}: {leak.get('path_a')} ({leak.get('split_a')}) and "
            f"{leak.get('path_b')} ({leak.get('split_b')})"
            for leak in leaks[:MAX_LEAKS_SHOWN]
        ],
        "leaks_total": len(leaks),
    }
