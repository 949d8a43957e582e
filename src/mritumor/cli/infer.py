"""``mritumor infer``: calibrated predictions, decision and triage for files, folders and globs."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.markup import escape
from rich.table import Table

from mritumor.cli.options import (
    ImagePathsArgument,
    InferenceBatchOption,
    QuietOption,
    RunOption,
    SeedOption,
)
from mritumor.cli.state import SetOption, resolve_settings
from mritumor.cli.ui import (
    console,
    err_console,
    image_inputs,
    optional_progress,
    report_unreadable,
)
from mritumor.core.errors import EXIT_PARTIAL, UsageError
from mritumor.core.fsutil import atomic_write_text, json_safe
from mritumor.run.layout import latest_run

if TYPE_CHECKING:
    from mritumor.predict.ensemble import Predictions

OutputFormat = Literal["table", "json", "jsonl", "csv"]


def infer(
    ctx: typer.Context,
    paths: ImagePathsArgument,
    run: RunOption = None,
    ensemble: Annotated[
        list[Path] | None,
        typer.Option(
            help="A run of an ensemble (repeat for each member) [default: inference.ensemble_members]."
        ),
    ] = None,
    tta: Annotated[
        int | None,
        typer.Option(
            help="Views per image: the original and N-1 flips/rotations/zooms, logits averaged [default: inference.tta_samples]."
        ),
    ] = None,
    mc_dropout: Annotated[
        int | None,
        typer.Option(
            help="Stochastic passes with dropout active (0: off) [default: inference.mc_dropout_samples]."
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(help="Decision threshold on the tumour score [default: the bundle's]."),
    ] = None,
    band: Annotated[
        float | None,
        typer.Option(
            help="Scores this close to the threshold go to review [default: inference.triage_band]."
        ),
    ] = None,
    max_disagreement: Annotated[
        float | None,
        typer.Option(
            help="Ensemble score spread that sends to review [default: inference.max_disagreement]."
        ),
    ] = None,
    output_format: Annotated[
        str, typer.Option("--format", help="table, json, jsonl or csv.")
    ] = "table",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the predictions to this file.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing --output file.")
    ] = False,
    gradcam: Annotated[
        Path | None,
        typer.Option(help="Also write a Grad-CAM panel per image into this folder."),
    ] = None,
    batch_size: InferenceBatchOption = None,
    seed: SeedOption = None,
    quiet: QuietOption = False,
    assignments: SetOption = None,
) -> None:
    """Predict tumour type and tumour score for images, with a decision and a triage label.

    Probabilities are calibrated at each run's temperature; the tumour score is
    1 - p(no_tumor). Triage: tumour, no tumour, or review when the score is within
    --band of the threshold or ensemble members disagree. Exit code 3 when some
    inputs could not be read (the others are still predicted), an image over the
    decompression-bomb pixel limit included. Images under 32 px are predicted with a note.
    """
    from mritumor.predict.ensemble import InferOptions, load_members
    from mritumor.predict.ensemble import infer as run_inference

    fmt = _output_format(output_format)
    if output is not None and fmt == "table":
        raise UsageError("--output needs --format json, jsonl or csv")
    if output is not None and output.is_dir():
        raise UsageError(f"--output {output} is a directory; give a file name")
    if output is not None and output.exists() and not force:
        raise UsageError(f"{output} exists; pass --force to replace it")
    settings = resolve_settings(
        ctx,
        {
            "inference.ensemble_members": ensemble or None,
            "inference.tta_samples": tta,
            "inference.mc_dropout_samples": mc_dropout,
            "inference.threshold": threshold,
            "inference.triage_band": band,
            "inference.max_disagreement": max_disagreement,
            "inference.batch_size": batch_size,
            "seed": seed,
        },
        assignments or (),
    ).settings
    options = settings.inference
    if run is not None and ensemble:
        raise UsageError("give --run or --ensemble, not both")
    # An explicit --run wins over ensemble members from a config file.
    runs = [run] if run is not None else list(options.ensemble_members)
    runs = runs or [latest_run(settings.paths.runs_dir)]
    inputs, missing = image_inputs(paths)
    members = load_members(runs)
    with optional_progress(quiet, "Predicting") as progress:
        predictions = run_inference(
            members, inputs, InferOptions.from_settings(settings), progress=progress
        )
    if predictions.threshold is None:
        reason = "an ensemble needs --threshold" if len(members) > 1 else "the run has none"
        err_console.print(
            f"[yellow]note:[/] no decision or triage: {reason} (run `mritumor threshold`, "
            "or pass --threshold)",
            soft_wrap=True,
        )
    _emit(predictions, fmt, output)
    _warn_about_notes(predictions.notes)
    if gradcam is not None:
        from mritumor.predict.explanations import write_panels

        with optional_progress(quiet, "Explaining") as progress:
            panels = write_panels(members[0], inputs, gradcam, progress=progress)
        err_console.print(
            f"Grad-CAM panels ({panels.layer}, {members[0].run_dir}) in {gradcam}", soft_wrap=True
        )
    report_unreadable(predictions.failures)
    if predictions.failures or missing:
        raise typer.Exit(EXIT_PARTIAL)


def _warn_about_notes(notes: dict[str, str]) -> None:
    """The images predicted with a caution (too small), on stderr whatever the format."""
    if notes:
        err_console.print(
            f"[yellow]warning:[/] {len(notes)} image(s) predicted with a caution:", soft_wrap=True
        )
        for label, note in notes.items():
            err_console.print(f"  {escape(label)}: {escape(note)}", soft_wrap=True)


def _output_format(text: str) -> OutputFormat:
    formats: tuple[OutputFormat, ...] = ("table", "json", "jsonl", "csv")
    for fmt in formats:
        if text == fmt:
            return fmt
    raise UsageError(f"--format must be one of {', '.join(formats)}, got {text!r}")


def _emit(predictions: Predictions, fmt: OutputFormat, output: Path | None) -> None:
    if fmt == "table":
        _print_table(predictions)
        return
    text = render(predictions, fmt)
    if output is None:
        console.out(text, end="")
    else:
        atomic_write_text(output, text)
        err_console.print(
            f"{len(predictions.labels)} prediction(s) written to {output}", soft_wrap=True
        )


def render(predictions: Predictions, fmt: OutputFormat) -> str:
    """The predictions as JSON (one document), JSON lines or CSV text."""
    if fmt == "json":
        return json.dumps(predictions.document(), indent=2) + "\n"
    records = predictions.records()
    if fmt == "jsonl":
        return "".join(json.dumps(json_safe(record)) + "\n" for record in records)
    return _csv(predictions, records)


def _csv(predictions: Predictions, records: list[dict[str, object]]) -> str:
    names = predictions.class_names
    optional = [
        key
        for key in ("tumour_score_std", "disagreement", "decision", "triage")
        if records and key in records[0]
    ]
    header = ["path", "predicted_class", *(f"p_{n}" for n in names), "tumour_score", "entropy"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*header, *optional, "note"])
    for record in records:
        probabilities = record["probabilities"]
        assert isinstance(probabilities, dict)
        writer.writerow(
            [
                record["path"],
                record["predicted_class"],
                *(f"{probabilities[n]:.6f}" for n in names),
                f"{record['tumour_score']:.6f}",
                f"{record['entropy']:.6f}",
                *(_cell(record[key]) for key in optional),
                record["note"] or "",
            ]
        )
    return buffer.getvalue()


def _cell(value: object) -> str:
    return f"{value:.6f}" if isinstance(value, float) else str(value)


def _print_table(predictions: Predictions) -> None:
    title = "Predictions" + (
        f" (threshold {predictions.threshold:.3f})" if predictions.threshold is not None else ""
    )
    table = Table(title=title, title_justify="left")
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
