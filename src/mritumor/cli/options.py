"""Options and arguments that several commands share, declared once so their help reads the same."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mritumor.cli.completion import (
    complete_axis,
    complete_backbone,
    complete_recipe,
    complete_window,
)

BackboneOption = Annotated[
    str | None,
    typer.Option(
        help="Backbone name or alias [default: model.backbone].",
        autocompletion=complete_backbone,
    ),
]
WeightsOption = Annotated[
    str | None,
    typer.Option(help="imagenet, none, or a .weights.h5 file [default: model.weights]."),
]
BatchSizeOption = Annotated[int | None, typer.Option(min=1, help="[default: train.batch_size]")]
ImageSizeOption = Annotated[int | None, typer.Option(help="[default: data.image_size]")]
SeedOption = Annotated[int | None, typer.Option(help="[default: seed]")]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress display; the summary only.")
]
ExistOkOption = Annotated[
    bool, typer.Option("--exist-ok", help="Allow --name to reuse an existing run directory.")
]
RecipeOption = Annotated[
    str | None,
    typer.Option(
        help="A named bundle of settings (`mritumor recipes list`); flags and --set still win.",
        autocompletion=complete_recipe,
    ),
]
RunOption = Annotated[
    Path | None,
    typer.Option(help="Run directory [default: the newest run under paths.runs_dir]."),
]
InferenceBatchOption = Annotated[
    int | None, typer.Option(min=1, help="Images per model call [default: inference.batch_size].")
]
ImagePathsArgument = Annotated[
    list[str],
    typer.Argument(
        help="Image files, folders (searched recursively) or globs; NIfTI files and DICOM "
        "series folders are 3-D volumes."
    ),
]
AxisOption = Annotated[
    str | None,
    typer.Option(
        help="Plane volumes are cut in: axial, coronal or sagittal [default: volumes.axis].",
        autocompletion=complete_axis,
    ),
]
WindowOption = Annotated[
    str | None,
    typer.Option(
        help="Volume intensity window: auto, percentile or dicom [default: volumes.window].",
        autocompletion=complete_window,
    ),
]
TopKOption = Annotated[
    int | None,
    typer.Option(
        min=1, help="Slices a volume's verdict rests on and lists [default: volumes.top_k]."
    ),
]
StrategyOption = Annotated[
    str | None,
    typer.Option(
        help="auto, one, mirrored (local GPUs or --devices) or multiworker (hosts of TF_CONFIG) "
        "[default: train.strategy].",
    ),
]
DevicesOption = Annotated[
    str | None,
    typer.Option(
        help="Devices of the mirrored strategy, comma-separated, e.g. GPU:0,GPU:1 "
        "[default: train.devices].",
    ),
]


def device_list(devices: str | None) -> list[str] | None:
    """``--devices GPU:0,GPU:1`` as the list ``train.devices`` holds; None when not given."""
    if devices is None:
        return None
    return [name.strip() for name in devices.split(",") if name.strip()]
