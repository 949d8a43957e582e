"""``mritumor infer``: calibrated predictions, decision and triage for images and volumes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from mritumor.cli.options import (
    AxisOption,
    ImagePathsArgument,
    InferenceBatchOption,
    QuietOption,
    RunOption,
    SeedOption,
    TopKOption,
    WindowOption,
)
from mritumor.cli.state import SetOption, resolve_settings
from mritumor.cli.ui import (
    err_console,
    image_inputs,
    optional_progress,
    report_unreadable,
)
from mritumor.core.errors import EXIT_PARTIAL, UsageError
from mritumor.run.layout import latest_run

if TYPE_CHECKING:
    from mritumor.cli.infer_output import OutputFormat
    from mritumor.predict.inputs import ImageInput
    from mritumor.predict.predictor import Predictor
    from mritumor.predict.volumes import VolumeVerdict
    from mritumor.volumes.slicing import VolumeSlices


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
    axis: AxisOption = None,
    window: WindowOption = None,
    top_k: TopKOption = None,
    batch_size: InferenceBatchOption = None,
    seed: SeedOption = None,
    quiet: QuietOption = False,
    assignments: SetOption = None,
) -> None:
    """Predict tumour type and tumour score for images and 3-D volumes, with a decision and a
    triage label.

    Probabilities are calibrated at each run's temperature; the tumour score is
    1 - p(no_tumor). Triage: tumour, no tumour, or review when the score is within
    --band of the threshold or ensemble members disagree. A NIfTI file or a DICOM
    series folder is cut into slices along --axis; blank slices are skipped, the
    others scored, and the volume gets one verdict (volumes.aggregation of its
    slice scores) with its top slices. Exit code 3 when some inputs could not be read
    (the others are still predicted), an image over the decompression-bomb pixel limit
    included. Images under 32 px are predicted with a note.
    """
    from mritumor.cli.infer_output import Results, emit
    from mritumor.predict.ensemble import InferOptions, load_members
    from mritumor.predict.ensemble import infer as run_inference
    from mritumor.predict.volumes import VolumeOptions, read_sliced, slice_inputs, verdicts

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
            "volumes.axis": axis,
            "volumes.window": window,
            "volumes.top_k": top_k,
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
    scans = image_inputs(paths)
    members = load_members(runs)
    volume_options = VolumeOptions.from_settings(settings)
    sliced, unreadable_volumes = read_sliced(scans.volumes, volume_options.slicing)
    slices = [item for volume in sliced for item in slice_inputs(volume)]
    inputs = [*scans.images, *slices]
    with optional_progress(quiet, "Predicting") as progress:
        predictions = run_inference(
            members, inputs, InferOptions.from_settings(settings), progress=progress
        )
    predictions = replace(predictions, failures={**unreadable_volumes, **predictions.failures})
    if predictions.threshold is None:
        reason = "an ensemble needs --threshold" if len(members) > 1 else "the run has none"
        err_console.print(
            f"[yellow]note:[/] no decision or triage: {reason} (run `mritumor threshold`, "
            "or pass --threshold)",
            soft_wrap=True,
        )
    found = verdicts(
        predictions,
        sliced,
        volume_options,
        band=options.triage_band,
        negative_class=members[0].bundle.negative_class,
    )
    results = Results(predictions, found, frozenset(item.label for item in slices))
    emit(results, fmt, output)
    _warn_about_notes(predictions.notes)
    _warn_about_volumes(found)
    if gradcam is not None:
        _explain(members[0], scans.images, sliced, found, gradcam, quiet)
    report_unreadable(predictions.failures)
    if predictions.failures or scans.missing:
        raise typer.Exit(EXIT_PARTIAL)


def _explain(
    predictor: Predictor,
    images: list[ImageInput],
    sliced: list[VolumeSlices],
    found: list[VolumeVerdict],
    folder: Path,
    quiet: bool,
) -> None:
    """``--gradcam``: a panel per image, and per volume a montage of its verdict's top slices."""
    from mritumor.predict.explanations import write_montages, write_panels

    tops = {verdict.source: [top.number - 1 for top in verdict.top] for verdict in found}
    with optional_progress(quiet, "Explaining") as progress:
        panels = write_panels(predictor, images, folder, progress=progress)
        montages = write_montages(predictor, sliced, folder, chosen=tops)
    err_console.print(
        f"Grad-CAM panels ({panels.layer}, {predictor.run_dir}) in {folder}"
        + (f", with {len(montages.written)} volume montage(s)" if montages.written else ""),
        soft_wrap=True,
    )


def _warn_about_volumes(found: list[VolumeVerdict]) -> None:
    """What the readers noted about each volume (missing slices...), on stderr."""
    for verdict in found:
        for note in verdict.notes:
            err_console.print(
                f"[yellow]warning:[/] {escape(str(verdict.source))}: {escape(note)}",
                soft_wrap=True,
            )


def _warn_about_notes(notes: dict[str, str]) -> None:
    """The images predicted with a caution (too small), on stderr whatever the format."""
    if notes:
        err_console.print(
            f"[yellow]warning:[/] {len(notes)} image(s) predicted with a caution:", soft_wrap=True
        )
        for label, note in notes.items():
            err_console.print(f"  {escape(label)}: {escape(note)}", soft_wrap=True)


def _output_format(text: str) -> OutputFormat:
    from mritumor.cli.infer_output import OUTPUT_FORMATS

    for fmt in OUTPUT_FORMATS:
        if text == fmt:
            return fmt
    raise UsageError(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, got {text!r}")
