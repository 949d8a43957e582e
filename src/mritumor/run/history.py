"""The per-epoch history of a run: ``history.csv`` and ``training_history.json``.

Both are rewritten whole after every epoch, atomically; a resumed run reads the
CSV back and appends to it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mritumor.core.fsutil import atomic_write_text
from mritumor.run.layout import BundleError, RunLayout

#: History columns in this order first; any others follow, each metric beside its val_ twin.
HISTORY_COLUMNS = ("epoch", "stage", "lr", "loss", "accuracy", "val_loss", "val_accuracy")
_INTEGER_HISTORY_COLUMNS = frozenset({"epoch", "stage"})
#: A history cell: a metric, the epoch number, or text such as the stage name.
HistoryValue = float | int | str


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
    layout = RunLayout(run_dir)
    atomic_write_text(layout.history, buffer.getvalue())
    atomic_write_text(layout.history_json, json.dumps(lists, indent=2, allow_nan=False) + "\n")
    return layout.history, layout.history_json


def read_history(run_dir: Path) -> list[dict[str, HistoryValue]]:
    """The rows of ``history.csv``, for a resumed run to append to; [] when there is none yet.

    Integral ``epoch`` and ``stage`` values come back as int, other numbers as
    float, text (``stage``) as str; empty cells are left out of the row.
    """
    path = RunLayout(run_dir).history
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
