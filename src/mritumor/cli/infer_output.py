"""What ``infer`` prints or writes: a table, one JSON document, JSON lines or CSV.

2-D images get one row each. A volume gets a verdict row (``kind: volume``) and one
row per scored slice (``kind: slice``); in JSON lines and CSV every row then says its
``kind`` (``image``, ``slice`` or ``volume``). The table shows images and verdicts:
slice rows are only in the files.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rich.markup import escape
from rich.table import Table

from mritumor.cli.ui import console, err_console
from mritumor.core.fsutil import atomic_write_text, json_safe

if TYPE_CHECKING:
    from mritumor.predict.ensemble import Predictions
    from mritumor.predict.volumes import VolumeVerdict

OutputFormat = Literal["table", "json", "jsonl", "csv"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = ("table", "json", "jsonl", "csv")
_OPTIONAL = ("tumour_score_std", "disagreement", "decision", "triage")


@dataclass(frozen=True)
class Results:
    """The predictions of images and slices, the volumes' verdicts, and which rows are slices."""

    predictions: Predictions
    verdicts: Sequence[VolumeVerdict] = ()
    slice_labels: frozenset[str] = field(default_factory=frozenset)

    def kind(self, label: str) -> str:
        return "slice" if label in self.slice_labels else "image"


def emit(results: Results, fmt: OutputFormat, output: Path | None) -> None:
    """Print the results, or write them to ``output``."""
    if fmt == "table":
        _print_tables(results)
        return
    text = render(results, fmt)
    if output is None:
        console.out(text, end="")
        return
    atomic_write_text(output, text)
    rows = len(results.predictions.labels)
    volumes = f" and {len(results.verdicts)} volume verdict(s)" if results.verdicts else ""
    err_console.print(f"{rows} prediction(s){volumes} written to {output}", soft_wrap=True)


def render(results: Results, fmt: OutputFormat) -> str:
    """The results as JSON (one document), JSON lines or CSV text."""
    predictions = results.predictions
    records = _records(results)
    if fmt == "json":
        document = predictions.document()
        if results.verdicts:
            document["predictions"] = records
            document["volumes"] = [verdict.record() for verdict in results.verdicts]
        return json.dumps(json_safe(document), indent=2) + "\n"
    if fmt == "jsonl":
        lines = [*records, *(verdict.record() for verdict in results.verdicts)]
        return "".join(json.dumps(json_safe(line)) + "\n" for line in lines)
    return _csv(results, records)


def _records(results: Results) -> list[dict[str, Any]]:
    """The per-image records, each with its ``kind`` first when there are volumes."""
    records = results.predictions.records()
    if not results.verdicts:
        return records
    return [{"kind": results.kind(record["path"]), **record} for record in records]


def _csv(results: Results, records: list[dict[str, Any]]) -> str:
    names = results.predictions.class_names
    optional = [key for key in _OPTIONAL if records and key in records[0]]
    kinds = ["kind"] if results.verdicts else []
    header = ["path", "predicted_class", *(f"p_{n}" for n in names), "tumour_score", "entropy"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*kinds, *header, *optional, "note"])
    for record in records:
        probabilities = record["probabilities"]
        writer.writerow(
            [
                *([record["kind"]] if kinds else []),
                record["path"],
                record["predicted_class"],
                *(f"{probabilities[n]:.6f}" for n in names),
                f"{record['tumour_score']:.6f}",
                f"{record['entropy']:.6f}",
                *(_cell(record[key]) for key in optional),
                record["note"] or "",
            ]
        )
    for verdict in results.verdicts:
        writer.writerow(
            [
                "volume",
                str(verdict.source),
                verdict.predicted_class or "",
                *(_cell(verdict.probabilities.get(n, "")) for n in names),
                _cell(verdict.tumour_score),
                "",
                *(_cell(getattr(verdict, key, "") or "") for key in optional),
                _verdict_note(verdict),
            ]
        )
    return buffer.getvalue()


def _cell(value: object) -> str:
    """A CSV cell: floats to six places, no number (NaN: a volume with no scored slice) empty."""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6f}"
    return str(value)


def _verdict_note(verdict: VolumeVerdict) -> str:
    """How the verdict was reached, in one CSV cell."""
    top = ", ".join(f"{s.number} {s.predicted_class} {s.tumour_score:.3f}" for s in verdict.top)
    parts = [
        f"{verdict.aggregation} (k={verdict.top_k}) of {verdict.scored} {verdict.axis} slices "
        f"({verdict.blank} blank of {verdict.slices}; window {verdict.window})",
        f"top slices: {top}" if top else "",
        *verdict.notes,
    ]
    return "; ".join(part for part in parts if part)


def _print_tables(results: Results) -> None:
    predictions = results.predictions
    images = [label for label in predictions.labels if label not in results.slice_labels]
    if images or not results.verdicts:
        _print_images(predictions.subset({label: label for label in images}))
    if results.verdicts:
        _print_verdicts(results.verdicts, predictions.threshold)


def _threshold_title(title: str, threshold: float | None) -> str:
    return title + (f" (threshold {threshold:.3f})" if threshold is not None else "")


def _print_images(predictions: Predictions) -> None:
    table = Table(
        title=_threshold_title("Predictions", predictions.threshold), title_justify="left"
    )
    table.add_column("image", overflow="fold")
    table.add_column("predicted")
    table.add_column("p", justify="right")
    table.add_column("tumour score", justify="right")
    if predictions.score_std is not None:
        table.add_column("± std", justify="right")
    if predictions.disagreement is not None:
        table.add_column("spread", justify="right")
    if predictions.triage is not None:
        table.add_column("triage")
    for i, label in enumerate(predictions.labels):
        predicted = predictions.predicted[i]
        row = [
            escape(label),
            predictions.class_names[predicted],
            f"{predictions.probabilities[i, predicted]:.3f}",
            f"{predictions.tumour_score[i]:.3f}",
        ]
        if predictions.score_std is not None:
            row.append(f"{predictions.score_std[i]:.3f}")
        if predictions.disagreement is not None:
            row.append(f"{predictions.disagreement[i]:.3f}")
        if predictions.triage is not None:
            row.append(predictions.triage[i])
        table.add_row(*row)
    console.print(table)


def _print_verdicts(verdicts: Sequence[VolumeVerdict], threshold: float | None) -> None:
    first = verdicts[0]
    title = f"Volumes ({first.aggregation}, k={first.top_k}, {first.axis})"
    table = Table(title=_threshold_title(title, threshold), title_justify="left")
    table.add_column("volume", overflow="fold")
    table.add_column("scored", justify="right")
    table.add_column("blank", justify="right")
    table.add_column("predicted")
    table.add_column("tumour score", justify="right")
    if threshold is not None:
        table.add_column("triage")
    table.add_column("top slices (number class score)", overflow="fold")
    for verdict in verdicts:
        row = [
            escape(str(verdict.source)),
            str(verdict.scored),
            str(verdict.blank),
            verdict.predicted_class or "-",
            "-" if verdict.predicted_class is None else f"{verdict.tumour_score:.3f}",
        ]
        if threshold is not None:
            row.append(verdict.triage or "-")
        row.append(
            ", ".join(f"{s.number} {s.predicted_class} {s.tumour_score:.2f}" for s in verdict.top)
        )
        table.add_row(*row)
    console.print(table)
