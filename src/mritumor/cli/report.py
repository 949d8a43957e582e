"""``mritumor report``: the run's self-contained HTML report and its MODEL_CARD.md."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mritumor.cli.options import RunOption
from mritumor.cli.state import SetOption, resolve_settings
from mritumor.cli.ui import console
from mritumor.run.layout import latest_run


def report(
    ctx: typer.Context,
    run: RunOption = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Where to write the HTML page [default: <run>/reports/report.html]; "
            "an existing file is replaced.",
        ),
    ] = None,
    assignments: SetOption = None,
) -> None:
    """Write one self-contained HTML report of a run, and MODEL_CARD.md in the run folder.

    The page inlines every figure and its CSS, loads nothing from the network and runs no
    script. It covers whatever the run has (data, training curves, evaluation, calibration,
    operating point, fine-tune, Grad-CAM, settings and versions); a section the run lacks
    names the command that produces it.
    """
    from mritumor.report import write_model_card, write_report

    if run is None:
        settings = resolve_settings(ctx, {}, assignments or ()).settings
        run = latest_run(settings.paths.runs_dir)
    page = write_report(run, output)
    card = write_model_card(run)
    console.print(f"Report: {page}", soft_wrap=True, highlight=False)
    console.print(f"Model card: {card}", soft_wrap=True, highlight=False)
