"""``mritumor export``: a run's model as a SavedModel, TensorFlow Lite or ONNX file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from mritumor.cli.options import QuietOption, RunOption
from mritumor.cli.state import resolve_settings
from mritumor.cli.ui import console, err_console
from mritumor.run.layout import latest_run


def export(
    ctx: typer.Context,
    run: RunOption = None,
    format_name: Annotated[
        str, typer.Option("--format", help="savedmodel, tflite or onnx.")
    ] = "savedmodel",
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Where to write: a folder for savedmodel, else a file "
            "[default: <run>/export/saved_model, model.tflite, model.onnx].",
        ),
    ] = None,
    quantize: Annotated[
        bool,
        typer.Option(
            "--quantize",
            help="tflite: dynamic-range quantisation (int8 weights, float activations) "
            "[default output: <run>/export/model-dynamic-range.tflite].",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing output and its sidecar.")
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Export a run's model for other runtimes, with its preprocessing and temperature inside.

    The exported graph takes a batch of uint8 images at the run's size (the SavedModel also
    takes encoded image files) and returns the calibrated probabilities and the tumour score.
    A JSON sidecar beside it (inside a SavedModel) holds the classes, threshold, input spec and
    bundle fingerprint. Before the export is put in place it is run on a few of the run's
    test/val images and compared with mritumor's own prediction: a difference beyond the
    format's tolerance is an error (exit 1) and leaves nothing behind. ONNX needs
    pip install 'mritumor[export]'.
    """
    from mritumor.export.exporter import export_run

    run_dir = run or latest_run(resolve_settings(ctx).settings.paths.runs_dir)

    def show_step(text: str) -> None:
        if not quiet:
            err_console.print(f"{escape(text)} ...", soft_wrap=True)

    result = export_run(
        run_dir, format_name, output=output, quantize=quantize, force=force, on_step=show_step
    )
    console.print(f"Wrote {escape(str(result.output))}", soft_wrap=True)
    console.print(f"Sidecar {escape(str(result.sidecar))}", soft_wrap=True)
    console.print(f"Parity: {escape(result.parity.summary())}", soft_wrap=True)
    if result.run_precision != "float32":
        err_console.print(
            f"[yellow]note:[/] the run computes in {result.run_precision}, the export in float32 "
            "(checked against the Predictor in float32): its probabilities can differ from "
            f"`mritumor infer`'s by {result.run_precision} rounding",
            soft_wrap=True,
        )
