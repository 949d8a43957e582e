"""The run folder on disk: the names of the files in it, and how run folders are named,
numbered, created and found.

Every command that produces a model writes one folder, and inference needs nothing else::

    runs/train-3/
      model.keras             best checkpoint (loads with safe_mode=True)
      last.keras              latest state, for --resume
      bundle.json             how to use the model: classes, input, temperature, threshold, ...
      config.yaml             the resolved settings that produced it
      splits/<name>.csv       the exact files of every split (path, label, relpath)
      history.csv             per-epoch metrics; training_history.json in the reference format
      reports/                figures and JSON; report.html (``mritumor report``)
      MODEL_CARD.md           the model card, written with the report
      .lock                   held by the process writing the run (see :mod:`mritumor.run.lock`)

:class:`RunLayout` is the one place that creates run folders. Numbered folders
(``train-1``, ``train-2``, ...) are made with an exclusive ``mkdir``, so two runs never
share one; a ``--name`` folder that already holds a run is never reused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mritumor.core.errors import UsageError

BUNDLE_FILE = "bundle.json"
MODEL_FILE = "model.keras"
LAST_FILE = "last.keras"
CONFIG_FILE = "config.yaml"
SPLITS_DIR = "splits"
REPORTS_DIR = "reports"
HISTORY_FILE = "history.csv"
HISTORY_JSON = "training_history.json"
MODEL_CARD_FILE = "MODEL_CARD.md"
REPORT_HTML_FILE = "report.html"
LOCK_FILE = ".lock"
"""Held by the process that writes the run; not run content."""

TRAIN_HINT = "train a model first: mritumor train"
_MAX_MKDIR_ATTEMPTS = 1000


class BundleError(UsageError):
    """A run directory or bundle.json that cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run folder, ``root``."""

    root: Path

    @classmethod
    def create(
        cls, runs_dir: Path, command: str, *, name: str | None = None, exist_ok: bool = False
    ) -> RunLayout:
        """A fresh run folder, created now.

        Without ``name``: ``runs_dir/<command>-<n>``, ``n`` one more than the largest
        existing ``n`` for that command (gaps are not refilled), made with an exclusive
        ``mkdir``: if another process takes that number first, the next one is tried, so an
        existing folder is never reused (``exist_ok`` does not apply). With ``name``:
        ``runs_dir/<name>``; an existing non-empty folder is a :class:`BundleError` unless
        ``exist_ok``, and one that already holds a run (a ``bundle.json``) always is.
        """
        check_folder_name(command, "command")
        if name is not None:
            check_folder_name(name, "run name")
            return cls._named(runs_dir / name, exist_ok=exist_ok)
        _make_runs_dir(runs_dir)
        number = _largest_run_number(runs_dir, command) + 1
        for _ in range(_MAX_MKDIR_ATTEMPTS):
            candidate = runs_dir / f"{command}-{number}"
            try:
                candidate.mkdir()
            except FileExistsError:
                number += 1
                continue
            return cls(candidate)
        raise BundleError(
            f"could not create a new {command} run directory in {runs_dir} "
            f"after {_MAX_MKDIR_ATTEMPTS} attempts; choose a name with --name"
        )

    @classmethod
    def ensured(cls, run_dir: Path) -> RunLayout:
        """``run_dir``, created with its parents when missing: a folder that is filled in over
        several invocations (a kfold fold, the pipeline's own runs)."""
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise BundleError(f"{run_dir} exists and is not a directory; move it away") from None
        return cls(run_dir)

    @classmethod
    def _named(cls, run_dir: Path, *, exist_ok: bool) -> RunLayout:
        _make_runs_dir(run_dir.parent)
        layout = cls(run_dir)
        try:
            run_dir.mkdir()
        except FileExistsError:
            if not run_dir.is_dir():
                raise BundleError(
                    f"{run_dir} exists and is not a directory; choose another --name"
                ) from None
            if layout.bundle.exists():
                raise BundleError(
                    f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                    "or choose another --name"
                ) from None
            if not exist_ok and any(path.name != LOCK_FILE for path in run_dir.iterdir()):
                raise BundleError(
                    f"run directory {run_dir} already exists and is not empty; "
                    "choose another --name, or pass --exist-ok to add to it"
                ) from None
        return layout

    @property
    def bundle(self) -> Path:
        return self.root / BUNDLE_FILE

    @property
    def model(self) -> Path:
        """The best checkpoint."""
        return self.root / MODEL_FILE

    @property
    def last(self) -> Path:
        """The latest training state, optimizer included, for ``--resume``."""
        return self.root / LAST_FILE

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def splits(self) -> Path:
        return self.root / SPLITS_DIR

    def split(self, name: str) -> Path:
        """The file list of split ``name``."""
        return self.splits / f"{name}.csv"

    @property
    def reports(self) -> Path:
        return self.root / REPORTS_DIR

    @property
    def gradcam(self) -> Path:
        """Where ``gradcam`` and ``pipeline`` write their Grad-CAM panels by default."""
        return self.reports / "gradcam"

    @property
    def report(self) -> Path:
        """The self-contained HTML report that ``mritumor report`` writes by default."""
        return self.reports / REPORT_HTML_FILE

    @property
    def model_card(self) -> Path:
        """``MODEL_CARD.md``, written with the report from the same files."""
        return self.root / MODEL_CARD_FILE

    @property
    def history(self) -> Path:
        return self.root / HISTORY_FILE

    @property
    def history_json(self) -> Path:
        """The history in the reference framework's (Keras ``History.history``) shape."""
        return self.root / HISTORY_JSON

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE


def latest_run(runs_dir: Path, command: str | None = None) -> Path:
    """The newest run directory in ``runs_dir`` that holds a bundle.json.

    Newest by the bundle's ``created`` time, then by the number in the folder
    name. ``command`` keeps only runs of that command (the bundle's ``command``,
    or the folder name when bundle.json cannot be parsed: reading the bundle
    reports that problem when the run is used).
    """
    candidates: list[tuple[float, int, str, Path]] = []
    if runs_dir.is_dir():
        for entry in runs_dir.iterdir():
            bundle_file = RunLayout(entry).bundle
            if not bundle_file.is_file():
                continue
            info = _peek(bundle_file)
            run_command = info.get("command")
            if not isinstance(run_command, str):
                run_command = _command_of_folder(entry.name)
            if command is not None and run_command != command:
                continue
            candidates.append(
                (_timestamp(info.get("created")), _run_number(entry.name), entry.name, entry)
            )
    if not candidates:
        what = "run" if command is None else f"{command} run"
        where = f"in {runs_dir}" if runs_dir.is_dir() else f"({runs_dir} does not exist)"
        raise BundleError(f"no {what} with a {BUNDLE_FILE} {where}; {TRAIN_HINT}, or pass --run")
    return max(candidates)[-1]


def check_folder_name(name: str, what: str) -> None:
    """Refuse a ``name`` that is not exactly one folder name (a path, ``..``, padding)."""
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or name != name.strip()
    ):
        raise BundleError(f"invalid {what} {name!r}: use one folder name, without slashes")


def parse_time(text: str) -> datetime | None:
    """An ISO 8601 time (``Z`` allowed; no zone reads as UTC), or None when it is not one."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _peek(bundle_file: Path) -> dict[str, Any]:
    """The parsed bundle.json, or {} when it cannot be read (no error: just a candidate)."""
    try:
        data = json.loads(bundle_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _timestamp(value: Any) -> float:
    moment = parse_time(value) if isinstance(value, str) else None
    return moment.timestamp() if moment is not None else float("-inf")


def _run_number(folder: str) -> int:
    match = re.fullmatch(r".+-([0-9]+)", folder)
    return int(match.group(1)) if match else -1


def _command_of_folder(folder: str) -> str | None:
    match = re.fullmatch(r"(.+)-[0-9]+", folder)
    return match.group(1) if match else None


def _largest_run_number(runs_dir: Path, command: str) -> int:
    pattern = re.compile(rf"{re.escape(command)}-([0-9]+)")
    numbers = [
        int(match.group(1))
        for entry in runs_dir.iterdir()
        if (match := pattern.fullmatch(entry.name)) is not None
    ]
    return max(numbers, default=0)


def _make_runs_dir(runs_dir: Path) -> None:
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise BundleError(
            f"{runs_dir} exists and is not a directory; set paths.runs_dir to a folder"
        ) from None
