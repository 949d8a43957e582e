"""The run directory, which is the model bundle.

Every command that produces a model writes one directory, and inference needs
nothing else (the keras-hub preset idea: weights plus JSON that says how to use
them)::

    runs/train-3/
      model.keras             best checkpoint (loads with safe_mode=True)
      last.keras              latest state, for --resume
      bundle.json             how to use the model: classes, input, temperature, threshold, ...
      config.yaml             the resolved settings that produced it
      splits/<name>.csv       the exact files of every split (path, label, relpath)
      history.csv             per-epoch metrics; training_history.json in the reference format
      reports/                figures and JSON

Run directories are numbered per command (``train-1``, ``train-2``, ...) and
created with an exclusive ``mkdir``, so two runs never share one. Every file is
written through a temporary file and a rename: a crash leaves the old file or
the new one, never half of either. Later commands add to a run (``calibrate``
writes the temperature, ``threshold`` the operating point) through
:func:`update_bundle`; nothing the user owns is rewritten.

This module imports no TensorFlow: reading a bundle, listing runs and choosing
the newest one stay fast.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import hashlib
import io
import json
import math
import numbers
import os
import platform
import re
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mritumor import __version__
from mritumor.core.errors import UsageError
from mritumor.core.fsutil import atomic_write_text, json_safe
from mritumor.data.splits import SplitFiles

if TYPE_CHECKING:
    from mritumor.config.settings import Settings

SCHEMA_VERSION = 1
#: The oldest bundle schema this version still reads (older ones need migrating code).
MIN_SCHEMA_VERSION = 1

BUNDLE_FILE = "bundle.json"
MODEL_FILE = "model.keras"
LAST_FILE = "last.keras"
CONFIG_FILE = "config.yaml"
SPLITS_DIR = "splits"
REPORTS_DIR = "reports"
HISTORY_FILE = "history.csv"
HISTORY_JSON = "training_history.json"
#: Held by the process that writes the run (see :mod:`mritumor.run.lock`); not run content.
LOCK_FILE = ".lock"

TRAIN_HINT = "train a model first: mritumor train"

#: Keys every bundle.json must have; the other fields have defaults, so a bundle
#: written before a field existed still reads.
REQUIRED_KEYS = (
    "schema_version",
    "command",
    "created",
    "class_names",
    "negative_class",
    "image_size",
    "channels",
    "resize",
    "backbone",
)
RESIZE_MODES = ("plain", "pad")

#: History columns in this order first; any others follow, each metric beside its val_ twin.
HISTORY_COLUMNS = ("epoch", "stage", "lr", "loss", "accuracy", "val_loss", "val_accuracy")
_INTEGER_HISTORY_COLUMNS = frozenset({"epoch", "stage"})
#: A history cell: a metric, the epoch number, or text such as the stage name.
HistoryValue = float | int | str
#: Split files listed in this order first, the rest alphabetically.
_SPLIT_ORDER = ("train", "val", "cal", "test")
_SPLIT_COLUMNS = ("path", "label", "relpath")

#: Distributions that provide TensorFlow, in the order they are looked up.
_TENSORFLOW_DISTRIBUTIONS = (
    "tensorflow",
    "tensorflow-cpu",
    "tensorflow-gpu",
    "tensorflow-macos",
    "tensorflow-intel",
    "tf-nightly",
)
_NOT_INSTALLED = "not installed"
_MAX_MKDIR_ATTEMPTS = 1000
_GIT_TIMEOUT_S = 2.0
_COMMIT = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")

#: schema_version n -> a function that turns an n-bundle dict into an (n + 1)-bundle dict.
_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


class BundleError(UsageError):
    """A run directory or bundle.json that cannot be used; the message says why and what to do."""


# --------------------------------------------------------------------------- provenance


def environment_versions() -> dict[str, str]:
    """Versions of mritumor, TensorFlow, Keras, Python and NumPy, without importing them."""
    tensorflow = _NOT_INSTALLED
    for distribution in _TENSORFLOW_DISTRIBUTIONS:
        tensorflow = _distribution_version(distribution)
        if tensorflow != _NOT_INSTALLED:
            break
    return {
        "mritumor": __version__,
        "tensorflow": tensorflow,
        "keras": _distribution_version("keras"),
        "python": platform.python_version(),
        "numpy": _distribution_version("numpy"),
    }


def git_commit(cwd: Path | None = None) -> str | None:
    """``git rev-parse HEAD`` in ``cwd``; None outside a repository, without git, or on a hang."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    commit = result.stdout.strip()
    if result.returncode != 0 or not _COMMIT.match(commit):
        return None
    return commit


def utc_now() -> str:
    """The current UTC time in ISO 8601, to the second: ``2025-01-31T12:00:00+00:00``."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Bundle:
    """What a model needs besides its weights: the contents of ``bundle.json``.

    Only :data:`REQUIRED_KEYS` must be present in the file; a missing optional
    key takes the default below. Keys this version does not know are kept and
    written back unchanged, so an older mritumor that updates a newer bundle of
    the same schema loses nothing; new fields belong in ``extra`` until the
    schema version is raised.
    """

    command: str
    """The command that produced the run: ``train``, ``finetune``, ``kfold``, ..."""
    class_names: list[str]
    """Class names in the order of the model's outputs."""
    negative_class: str
    """The class whose complement is the tumour score ``1 - p(negative_class)``."""
    image_size: int
    channels: int
    resize: str
    """``plain`` (stretch to a square) or ``pad`` (keep the aspect ratio)."""
    backbone: str
    """Canonical registry name (not an alias)."""
    schema_version: int = SCHEMA_VERSION
    created: str = field(default_factory=utc_now)
    """UTC ISO 8601 time the run started."""
    temperature: float = 1.0
    """Temperature T of ``softmax(z / T)``; ``calibrate`` writes it."""
    temperature_source: dict[str, Any] | None = None
    """How T was fitted, e.g. ``{"split": "cal", "n": 123, "nll_before": .., "nll_after": ..}``."""
    threshold: float | None = None
    """Operating point on the calibrated tumour score; None until ``threshold`` runs."""
    threshold_info: dict[str, Any] | None = None
    """How the threshold was chosen: strategy, constraints, split."""
    dataset_fingerprint: str = ""
    versions: dict[str, str] = field(default_factory=environment_versions)
    """Package versions; a new Bundle records the running ones (see :func:`environment_versions`)."""
    git_commit: str | None = field(default_factory=git_commit)
    """The commit of the working directory's git repository when the bundle was created."""
    parent: str | None = None
    """The parent bundle's run directory (``finetune``)."""
    monitor: str = "val_loss"
    """The metric that selected ``model.keras``."""
    best_epoch: int | None = None
    """1-based epoch of ``model.keras``."""
    epochs_completed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    """Forward-compatible additions, free-form."""
    _unknown: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """Top-level keys this version does not know, written back as read."""

    @property
    def negative_index(self) -> int:
        """Output index of :attr:`negative_class`."""
        return self.class_names.index(self.negative_class)

    @property
    def resize_mode(self) -> Literal["plain", "pad"]:
        """:attr:`resize` as the input pipeline's type (validated to be one of the two)."""
        return "pad" if self.resize == "pad" else "plain"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(image_size, image_size, channels)``."""
        return (self.image_size, self.image_size, self.channels)

    def problems(self) -> list[str]:
        """What is wrong with the field values; empty when the bundle is usable."""
        found = [
            f"{key!r} {problem}"
            for key, problem in (
                (key, check(getattr(self, key))) for key, check in _FIELD_CHECKS.items()
            )
            if problem
        ]
        if not found and self.negative_class not in self.class_names:
            found.append(
                f"'negative_class' {self.negative_class!r} is not one of "
                f"class_names {self.class_names}"
            )
        return found

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``bundle.json`` (a deep copy), schema_version first."""
        self._raise_if_invalid()
        values = dataclasses.asdict(self)
        unknown = values.pop("_unknown")
        ordered = {key: values.pop(key) for key in ("schema_version", "command", "created")}
        ordered.update(values)
        for key, value in unknown.items():
            ordered.setdefault(key, value)
        return ordered

    def to_json(self) -> str:
        """``bundle.json`` text: strict JSON (non-finite numbers become null), indented."""
        return json.dumps(json_safe(self.to_dict()), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any, *, source: str = BUNDLE_FILE) -> Bundle:
        """Check, migrate and load a parsed bundle.json; ``source`` names it in errors."""
        if not isinstance(data, dict):
            raise BundleError(f"{source}: expected a JSON object, found {_json_type(data)}")
        data = _migrated(data, source)
        missing = [key for key in REQUIRED_KEYS if key not in data]
        if missing:
            raise BundleError(
                f"{source} lacks required key(s) {', '.join(missing)}; "
                "the file is damaged or was not written by mritumor"
            )
        names = _field_names()
        # Provenance a file lacks stays unknown rather than being taken from this process.
        known: dict[str, Any] = {"versions": {}, "git_commit": None}
        known.update((key, value) for key, value in data.items() if key in names)
        unknown = {key: value for key, value in data.items() if key not in names}
        temperature = known.get("temperature")
        if isinstance(temperature, int) and not isinstance(temperature, bool):
            known["temperature"] = _as_float(temperature)
        bundle = cls(**known, _unknown=unknown)
        bundle._raise_if_invalid(source)
        return bundle

    @classmethod
    def from_json(cls, text: str, *, source: str = BUNDLE_FILE) -> Bundle:
        """Parse ``bundle.json`` text; every problem is one :class:`BundleError` line."""
        restore = "restore it from a backup or re-run the command that wrote it"
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise BundleError(
                f"{source} is not valid JSON (line {error.lineno}, column {error.colno}: "
                f"{error.msg}); {restore}"
            ) from None
        except (ValueError, RecursionError) as error:  # a 5000-digit number, nesting too deep
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise BundleError(f"{source} cannot be read as JSON ({reason}); {restore}") from None
        return cls.from_dict(data, source=source)

    def _raise_if_invalid(self, source: str = "bundle") -> None:
        problems = self.problems()
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise BundleError(f"{source}: {problems[0]}{more}")


def new_bundle(settings: Settings, command: str, **fields: Any) -> Bundle:
    """A bundle for a new run of ``command`` described by ``settings``.

    Fills the data and model fields from the settings (the backbone by its
    canonical name); like every new :class:`Bundle` it records the creation
    time, package versions and git commit. ``fields`` sets any other field
    (``parent=...``, ``dataset_fingerprint=...``).
    """
    from mritumor.models.registry import registry

    values: dict[str, Any] = {
        "command": command,
        "class_names": list(settings.data.class_names),
        "negative_class": settings.data.negative_class,
        "image_size": settings.data.image_size,
        "channels": settings.data.channels,
        "resize": settings.data.resize,
        "backbone": registry.get(settings.model.backbone).name,
        "monitor": settings.train.monitor,
    }
    _reject_unknown_fields(fields)
    values.update(fields)
    return Bundle(**values)


# --------------------------------------------------------------------------- run directories


def new_run_dir(
    runs_dir: Path, command: str, *, exist_ok: bool = False, name: str | None = None
) -> Path:
    """Create and return a fresh run directory.

    Without ``name``: ``runs_dir/<command>-<n>``, ``n`` one more than the largest
    existing ``n`` for that command (gaps are not refilled), made with an
    exclusive ``mkdir``: if another process takes that number first, the next
    one is tried, so an existing directory is never reused (``exist_ok`` does not
    apply). With ``name``: ``runs_dir/<name>``; an existing non-empty directory
    is a :class:`BundleError` unless ``exist_ok``, and one that already holds a
    run (a ``bundle.json``) always is, so runs never overwrite each other.
    """
    _check_folder_name(command, "command")
    if name is not None:
        _check_folder_name(name, "run name")
        return _named_run_dir(runs_dir / name, exist_ok=exist_ok)
    _make_runs_dir(runs_dir)
    number = _largest_run_number(runs_dir, command) + 1
    for _ in range(_MAX_MKDIR_ATTEMPTS):
        candidate = runs_dir / f"{command}-{number}"
        try:
            candidate.mkdir()
        except FileExistsError:
            number += 1
            continue
        return candidate
    raise BundleError(
        f"could not create a new {command} run directory in {runs_dir} "
        f"after {_MAX_MKDIR_ATTEMPTS} attempts; choose a name with --name"
    )


def latest_run(runs_dir: Path, command: str | None = None) -> Path:
    """The newest run directory in ``runs_dir`` that holds a bundle.json.

    Newest by the bundle's ``created`` time, then by the number in the folder
    name. ``command`` keeps only runs of that command (the bundle's ``command``,
    or the folder name when bundle.json cannot be parsed: :func:`read_bundle`
    reports that problem when the run is used).
    """
    candidates: list[tuple[float, int, str, Path]] = []
    if runs_dir.is_dir():
        for entry in runs_dir.iterdir():
            bundle_file = entry / BUNDLE_FILE
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


def read_bundle(run_dir: Path) -> Bundle:
    """The bundle of ``run_dir``; a :class:`BundleError` line for every way it can be unusable."""
    bundle_file = _bundle_file(run_dir)
    try:
        text = bundle_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise BundleError(f"cannot read {bundle_file}: {error}") from None
    return Bundle.from_json(text, source=str(bundle_file))


def write_bundle(run_dir: Path, bundle: Bundle) -> Path:
    """Write ``run_dir/bundle.json`` atomically (checked first); returns its path."""
    text = bundle.to_json()
    path = run_dir / BUNDLE_FILE
    atomic_write_text(path, text)
    return path


def update_bundle(run_dir: Path, **changes: Any) -> Bundle:
    """Read the bundle, replace the given fields, check and write it back atomically.

    ``update_bundle(run, temperature=1.7, temperature_source={...})``. An unknown
    field name or an invalid value raises before anything is written; a failure
    while writing leaves the old bundle.json in place.
    """
    _reject_unknown_fields(changes)
    if "schema_version" in changes:
        raise BundleError("schema_version is set by mritumor and cannot be changed")
    bundle = dataclasses.replace(read_bundle(run_dir), **changes)
    write_bundle(run_dir, bundle)
    return bundle


def check_class_names(
    bundle: Bundle, class_names: Sequence[str], *, what: str = "the data"
) -> None:
    """Raise a :class:`BundleError` unless ``class_names`` equals the bundle's, in order.

    The model's outputs are positional: the same names in another order would
    silently mislabel every prediction.
    """
    expected, given = list(bundle.class_names), list(class_names)
    if expected == given:
        return
    if sorted(expected) == sorted(given) and len(expected) == len(given):
        raise BundleError(
            f"{what} lists the classes in the order {given}, but the model's outputs are "
            f"{expected}; set data.class_names to {expected}"
        )
    missing = [name for name in expected if name not in given]
    extra = [name for name in given if name not in expected]
    details = "; ".join(
        part
        for part in (
            f"missing {', '.join(missing)}" if missing else "",
            f"unknown to the model: {', '.join(extra)}" if extra else "",
        )
        if part
    )
    raise BundleError(
        f"{what} has classes {given} but the model was trained on {expected} ({details}); "
        "use data with the model's classes or train a new model"
    )


# --------------------------------------------------------------------------- config and splits


def write_config(run_dir: Path, settings: Settings) -> Path:
    """Write the resolved settings to ``run_dir/config.yaml``; usable again as ``--config``."""
    from mritumor.config.yaml_file import settings_yaml

    header = (
        f"# The resolved settings of this run, written by mritumor {__version__}.\n"
        "# Pass this file to --config to repeat the run.\n"
    )
    path = run_dir / CONFIG_FILE
    atomic_write_text(path, header + settings_yaml(settings))
    return path


def write_splits(run_dir: Path, root: Path, splits: Iterable[SplitFiles]) -> list[Path]:
    """Write ``run_dir/splits/<name>.csv`` for every split; returns the paths written.

    Columns: ``path`` (absolute, POSIX; symlinks kept as links, since a prepared
    layout is made of them), ``label`` (class name) and ``relpath`` (the path
    relative to the data ``root``, empty for files outside it), which lets
    :func:`read_split` find the files again after the data folder moved.
    """
    root_abs = _absolute(root)
    written: list[Path] = []
    for split in splits:
        _check_folder_name(split.name, "split name")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(_SPLIT_COLUMNS)
        for path, label in zip(split.paths, split.labels, strict=True):
            absolute = _absolute(path)
            writer.writerow(
                [absolute.as_posix(), split.class_names[label], _relative_to(absolute, root_abs)]
            )
        target = run_dir / SPLITS_DIR / f"{split.name}.csv"
        atomic_write_text(target, buffer.getvalue())
        written.append(target)
    return written


def list_splits(run_dir: Path) -> list[str]:
    """Names of the splits stored in ``run_dir`` (train, val, cal, test first)."""
    folder = run_dir / SPLITS_DIR
    if not folder.is_dir():
        return []
    names = [path.stem for path in folder.glob("*.csv") if not path.name.startswith(".")]
    return sorted(
        names,
        key=lambda n: (_SPLIT_ORDER.index(n) if n in _SPLIT_ORDER else len(_SPLIT_ORDER), n),
    )


def read_split(
    run_dir: Path, name: str, class_names: Sequence[str], *, data_root: Path | None = None
) -> SplitFiles:
    """The files of split ``name`` exactly as the run used them.

    A listed file that no longer exists is looked up again under ``data_root``
    by its ``relpath`` (the data folder moved); any still missing is an error.
    """
    file = run_dir / SPLITS_DIR / f"{name}.csv"
    if not file.is_file():
        stored = list_splits(run_dir)
        has = f"it has {', '.join(stored)}" if stored else f"it has no {SPLITS_DIR}/ folder"
        raise BundleError(f"run {run_dir} has no {name} split ({file} not found); {has}")
    try:
        with file.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing_columns = {"path", "label"} - set(reader.fieldnames or [])
            if missing_columns:
                raise BundleError(
                    f"{file} lacks column(s) {', '.join(sorted(missing_columns))}; "
                    "the file is damaged"
                )
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise BundleError(f"cannot read {file}: {error}") from None

    index = {class_name: position for position, class_name in enumerate(class_names)}
    paths: list[Path] = []
    labels: list[int] = []
    absent: list[Path] = []
    for line, row in enumerate(rows, start=2):
        label = row.get("label") or ""
        if label not in index:
            raise BundleError(
                f"{file} line {line}: label {label!r} is not one of the classes {list(class_names)}"
            )
        if not row.get("path"):
            raise BundleError(f"{file} line {line}: empty path")
        path = Path(row["path"])
        if not path.is_file() and data_root is not None and row.get("relpath"):
            moved = data_root / row["relpath"]
            if moved.is_file():
                path = moved
        if not path.is_file():
            absent.append(path)
        paths.append(path)
        labels.append(index[label])
    if absent:
        raise BundleError(
            f"{file} lists {len(absent)} file(s) that no longer exist, first {absent[0]}; "
            "restore them, or if the data folder moved, give its new location "
            "(paths.data_dir)"
        )
    if not paths:
        raise BundleError(f"{file} lists no files")
    return SplitFiles(
        name=name, paths=tuple(paths), labels=tuple(labels), class_names=tuple(class_names)
    )


def dataset_fingerprint(splits: Iterable[SplitFiles]) -> str:
    """``sha256:<hex>`` over (split, path, label, file size) of every file, sorted.

    Paths are taken relative to the deepest folder common to all files, so the
    fingerprint survives moving the data folder but changes when a file is added,
    removed, resized, relabelled or moved to another split. Raises
    :class:`BundleError` naming a file that cannot be read.
    """
    records = [
        (split.name, _absolute(path), split.class_names[label])
        for split in splits
        for path, label in zip(split.paths, split.labels, strict=True)
    ]
    base = _common_folder([path for _, path, _ in records])
    entries: list[tuple[str, str, str, int]] = []
    for split_name, path, class_name in records:
        try:
            size = path.stat().st_size
        except OSError as error:
            raise BundleError(f"cannot fingerprint the dataset: {path}: {error}") from None
        entries.append((split_name, _relative_to(path, base) or path.as_posix(), class_name, size))
    digest = hashlib.sha256()
    for entry in sorted(entries):
        digest.update(json.dumps(entry, ensure_ascii=False).encode("utf-8") + b"\n")
    return f"sha256:{digest.hexdigest()}"


# --------------------------------------------------------------------------- history


def write_history(run_dir: Path, rows: Sequence[Mapping[str, HistoryValue]]) -> tuple[Path, Path]:
    """Write ``history.csv`` and ``training_history.json``, both atomically.

    One row per epoch: numbers, plus text such as ``stage`` (``frozen``/``full``).
    ``epoch`` is 1-based (the row's position when absent). Columns:
    :data:`HISTORY_COLUMNS` that occur, then every other key, each metric
    followed by its ``val_`` twin. The JSON has the reference framework's (Keras
    ``History.history``) shape, one list per key (``loss``, ``accuracy``,
    ``val_loss``, ... and ``epoch``, ``stage``); ``null`` where a row lacks the key
    or the value is not finite (strict JSON has no NaN; the CSV keeps ``nan``).
    """
    full_rows = [
        {"epoch": position, **{key: _history_scalar(key, value) for key, value in row.items()}}
        for position, row in enumerate(rows, start=1)
    ]
    columns = _history_columns(full_rows)

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in full_rows:
        writer.writerow([_csv_value(row.get(column)) for column in columns])
    lists = {column: [_json_value(row.get(column)) for row in full_rows] for column in columns}
    csv_path = run_dir / HISTORY_FILE
    json_path = run_dir / HISTORY_JSON
    atomic_write_text(csv_path, buffer.getvalue())
    atomic_write_text(json_path, json.dumps(lists, indent=2, allow_nan=False) + "\n")
    return csv_path, json_path


def read_history(run_dir: Path) -> list[dict[str, HistoryValue]]:
    """The rows of ``history.csv``, for a resumed run to append to; [] when there is none yet.

    Integral ``epoch`` and ``stage`` values come back as int, other numbers as
    float, text (``stage``) as str; empty cells are left out of the row.
    """
    path = run_dir / HISTORY_FILE
    if not path.is_file():
        return []
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            raw_rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise BundleError(f"cannot read {path}: {error}") from None
    return [
        {
            column: _parse_history_value(column, text)
            for column, text in raw.items()
            if column is not None and isinstance(text, str) and text != ""
        }
        for raw in raw_rows
    ]


# --------------------------------------------------------------------------- helpers


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_float(value: int) -> float:
    """An integer beyond the float range is inf, which the checks then refuse by name."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_nonempty_str(value: Any) -> str | None:
    return (
        None
        if isinstance(value, str) and value.strip()
        else f"must be a non-empty string, got {value!r}"
    )


def _check_str(value: Any) -> str | None:
    return None if isinstance(value, str) else f"must be a string, got {value!r}"


def _check_optional_str(value: Any) -> str | None:
    return (
        None
        if value is None or isinstance(value, str)
        else f"must be a string or null, got {value!r}"
    )


def _check_optional_dict(value: Any) -> str | None:
    return (
        None
        if value is None or isinstance(value, dict)
        else f"must be an object or null, got {value!r}"
    )


def _check_dict(value: Any) -> str | None:
    return None if isinstance(value, dict) else f"must be an object, got {value!r}"


def _check_schema_version(value: Any) -> str | None:
    return None if _is_int(value) else f"must be an integer, got {value!r}"


def _check_created(value: Any) -> str | None:
    if isinstance(value, str) and _parse_time(value) is not None:
        return None
    return f"must be an ISO 8601 time, got {value!r}"


def _check_class_names(value: Any) -> str | None:
    if not (isinstance(value, list) and all(isinstance(n, str) and n for n in value)):
        return f"must be a list of class names, got {value!r}"
    if len(value) < 2:
        return f"must name at least 2 classes, got {value!r}"
    if len(set(value)) != len(value):
        return f"must not repeat a class, got {value!r}"
    return None


def _check_image_size(value: Any) -> str | None:
    return None if _is_int(value) and value > 0 else f"must be a positive integer, got {value!r}"


def _check_channels(value: Any) -> str | None:
    return None if _is_int(value) and value in (1, 3) else f"must be 1 or 3, got {value!r}"


def _check_resize(value: Any) -> str | None:
    return (
        None
        if value in RESIZE_MODES
        else f"must be one of {', '.join(RESIZE_MODES)}, got {value!r}"
    )


def _check_temperature(value: Any) -> str | None:
    if _is_number(value) and math.isfinite(value) and value > 0:
        return None
    return f"must be a positive number, got {value!r}"


def _check_threshold(value: Any) -> str | None:
    if value is None or (_is_number(value) and 0.0 <= value <= 1.0):
        return None
    return f"must be a number in [0, 1] or null, got {value!r}"


def _check_versions(value: Any) -> str | None:
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return None
    return f"must map package names to version strings, got {value!r}"


def _check_best_epoch(value: Any) -> str | None:
    if value is None or (_is_int(value) and value >= 1):
        return None
    return f"must be a positive integer or null, got {value!r}"


def _check_epochs_completed(value: Any) -> str | None:
    return (
        None if _is_int(value) and value >= 0 else f"must be a non-negative integer, got {value!r}"
    )


_FIELD_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "schema_version": _check_schema_version,
    "command": _check_nonempty_str,
    "created": _check_created,
    "class_names": _check_class_names,
    "negative_class": _check_str,
    "image_size": _check_image_size,
    "channels": _check_channels,
    "resize": _check_resize,
    "backbone": _check_nonempty_str,
    "temperature": _check_temperature,
    "temperature_source": _check_optional_dict,
    "threshold": _check_threshold,
    "threshold_info": _check_optional_dict,
    "dataset_fingerprint": _check_str,
    "versions": _check_versions,
    "git_commit": _check_optional_str,
    "parent": _check_optional_str,
    "monitor": _check_nonempty_str,
    "best_epoch": _check_best_epoch,
    "epochs_completed": _check_epochs_completed,
    "extra": _check_dict,
}


def _field_names() -> set[str]:
    return {f.name for f in dataclasses.fields(Bundle) if not f.name.startswith("_")}


def _reject_unknown_fields(changes: Mapping[str, Any]) -> None:
    names = _field_names()
    for key in changes:
        if key not in names:
            close = difflib.get_close_matches(key, sorted(names), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise BundleError(f"unknown bundle field {key!r}{hint}")


def _migrated(data: dict[str, Any], source: str) -> dict[str, Any]:
    """``data`` brought to :data:`SCHEMA_VERSION`, or a BundleError saying why it cannot be."""
    if "schema_version" not in data:
        raise BundleError(
            f"{source} lacks required key(s) schema_version; "
            "the file is damaged or was not written by mritumor"
        )
    version = data["schema_version"]
    if not _is_int(version):
        raise BundleError(f"{source}: 'schema_version' must be an integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise BundleError(
            f"{source} was made by a newer mritumor (bundle schema {version}; this mritumor "
            f"{__version__} reads up to {SCHEMA_VERSION}); upgrade: pip install -U mritumor"
        )
    if version < MIN_SCHEMA_VERSION:
        raise BundleError(
            f"{source} has bundle schema {version}, which this mritumor {__version__} no longer "
            f"supports (oldest {MIN_SCHEMA_VERSION}); re-run the command that made it, or use "
            "the older mritumor that wrote it"
        )
    for step in range(version, SCHEMA_VERSION):
        data = _MIGRATIONS[step](dict(data))
        data["schema_version"] = step + 1
    return data


def _bundle_file(run_dir: Path) -> Path:
    if not run_dir.exists():
        raise BundleError(f"run directory {run_dir} does not exist; {TRAIN_HINT}, or check --run")
    if not run_dir.is_dir():
        raise BundleError(f"{run_dir} is not a directory; --run takes a run directory")
    bundle_file = run_dir / BUNDLE_FILE
    if not bundle_file.is_file():
        interrupted = (
            " (it holds a model but no bundle.json: was the run interrupted?)"
            if (run_dir / LAST_FILE).exists() or (run_dir / MODEL_FILE).exists()
            else ""
        )
        raise BundleError(
            f"{run_dir} is not a mritumor run directory: it has no {BUNDLE_FILE}{interrupted}; "
            "pass --run with a folder such as runs/train-1"
        )
    return bundle_file


def _peek(bundle_file: Path) -> dict[str, Any]:
    """The parsed bundle.json, or {} when it cannot be read (no error: just a candidate)."""
    try:
        data = json.loads(bundle_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _parse_time(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _timestamp(value: Any) -> float:
    moment = _parse_time(value) if isinstance(value, str) else None
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


def _check_folder_name(name: str, what: str) -> None:
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or name != name.strip()
    ):
        raise BundleError(f"invalid {what} {name!r}: use one folder name, without slashes")


def _make_runs_dir(runs_dir: Path) -> None:
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise BundleError(
            f"{runs_dir} exists and is not a directory; set paths.runs_dir to a folder"
        ) from None


def _named_run_dir(run_dir: Path, *, exist_ok: bool) -> Path:
    _make_runs_dir(run_dir.parent)
    try:
        run_dir.mkdir()
    except FileExistsError:
        if not run_dir.is_dir():
            raise BundleError(
                f"{run_dir} exists and is not a directory; choose another --name"
            ) from None
        if (run_dir / BUNDLE_FILE).exists():
            raise BundleError(
                f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                "or choose another --name"
            ) from None
        if not exist_ok and any(path.name != LOCK_FILE for path in run_dir.iterdir()):
            raise BundleError(
                f"run directory {run_dir} already exists and is not empty; "
                "choose another --name, or pass --exist-ok to add to it"
            ) from None
    return run_dir


def _absolute(path: Path) -> Path:
    """``path`` made absolute and normalised, without following symlinks."""
    return Path(os.path.abspath(path))  # noqa: PTH100 (Path.resolve would follow symlinks)


def _relative_to(path: Path, base: Path | None) -> str:
    if base is None:
        return ""
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return ""


def _common_folder(paths: Sequence[Path]) -> Path | None:
    if not paths:
        return None
    try:
        return Path(os.path.commonpath([path.parent for path in paths]))
    except ValueError:  # different drives
        return None


def _distribution_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return _NOT_INSTALLED


def _json_type(value: Any) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")


def _history_columns(rows: Sequence[Mapping[str, object]]) -> list[str]:
    seen: set[str] = set()
    for row in rows:
        seen.update(row)
    others = sorted(
        seen - set(HISTORY_COLUMNS),
        key=lambda name: (name.removeprefix("val_"), name.startswith("val_")),
    )
    return [column for column in HISTORY_COLUMNS if column in seen] + others


def _history_scalar(key: str, value: Any) -> HistoryValue | None:
    """A Python int, float or str for a history cell (NumPy scalars and 0-d arrays included)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if hasattr(value, "item"):
        return _history_scalar(key, value.item())
    raise TypeError(f"history value for {key!r} must be a number or text, got {value!r}")


def _csv_value(value: HistoryValue | None) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _json_value(value: HistoryValue | None) -> HistoryValue | None:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _parse_history_value(column: str, text: str) -> HistoryValue:
    try:
        number = float(text)
    except ValueError:
        return text
    if column in _INTEGER_HISTORY_COLUMNS and number.is_integer():
        return int(number)
    return number
