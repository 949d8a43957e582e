"""``mritumor gradcam``: Grad-CAM / Grad-CAM++ panels for images and montages for volumes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mritumor.cli.options import (
    AxisOption,
    ImagePathsArgument,
    QuietOption,
    RunOption,
    TopKOption,
    WindowOption,
)
from mritumor.cli.state import SetOption, resolve_settings
from mritumor.cli.ui import console, image_inputs, optional_progress, report_unreadable
from mritumor.core.errors import EXIT_PARTIAL, UsageError
from mritumor.run.layout import RunLayout, latest_run


def gradcam(
    ctx: typer.Context,
    paths: ImagePathsArgument,
    run: RunOption = None,
    class_name: Annotated[
        str | None,
        typer.Option("--class", help="Explain this class [default: each image's predicted class]."),
    ] = None,
    layer: Annotated[
        str | None,
        typer.Option(help="Conv layer to explain [default: the backbone's last conv layer]."),
    ] = None,
    method: Annotated[str, typer.Option(help="gradcam or gradcam++.")] = "gradcam",
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output folder [default: <run>/reports/gradcam]."),
    ] = None,
    npy: Annotated[
        bool, typer.Option("--npy", help="Also save each raw heat map as .npy.")
    ] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per gradient pass.")] = 8,
    axis: AxisOption = None,
    window: WindowOption = None,
    top_k: TopKOption = None,
    quiet: QuietOption = False,
    assignments: SetOption = None,
) -> None:
    """Explain predictions with Grad-CAM or Grad-CAM++: image | heat map | overlay panels.

    One PNG per image, titled with the class and its calibrated probability. For a
    volume (NIfTI file, DICOM series folder), one montage of its --top-k slices by
    tumour score, each above its heat-map overlay. Exit code 3 when some inputs could
    not be read.
    """
    from mritumor.predict.explanations import write_montages, write_panels
    from mritumor.predict.gradcam import METHODS
    from mritumor.predict.predictor import Predictor
    from mritumor.predict.volumes import VolumeOptions, read_sliced

    if method not in METHODS:
        raise UsageError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    flags = {"volumes.axis": axis, "volumes.window": window, "volumes.top_k": top_k}
    settings = resolve_settings(ctx, flags, assignments or ()).settings
    scans = image_inputs(paths)
    predictor = Predictor(run or latest_run(settings.paths.runs_dir))
    folder = out or RunLayout(predictor.run_dir).gradcam
    options = VolumeOptions.from_settings(settings)
    sliced, unreadable = read_sliced(scans.volumes, options.slicing)
    with optional_progress(quiet, "Explaining") as progress:
        panels = write_panels(
            predictor,
            scans.images,
            folder,
            save_maps=npy,
            batch_size=batch_size,
            progress=progress,
            class_name=class_name,
            layer=layer,
            method=method,
        )
        montages = write_montages(
            predictor,
            sliced,
            folder,
            top_k=options.top_k,
            batch_size=batch_size,
            class_name=class_name,
            layer=layer,
            method=method,
        )
    count = sum(path.suffix == ".png" for path in panels.written)
    shown = f" and {len(montages.written)} volume montage(s)" if montages.written else ""
    console.print(f"{count} panel(s){shown} at layer {panels.layer} in {folder}", soft_wrap=True)
    failures = {**unreadable, **panels.failures}
    report_unreadable(failures)
    if failures or scans.missing:
        raise typer.Exit(EXIT_PARTIAL)
