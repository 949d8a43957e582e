"""``mritumor backbones``: what the registry offers, built-ins and plugins."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from mritumor.cli.completion import complete_backbone
from mritumor.cli.ui import console

app = typer.Typer(
    help="List the registered backbones (built-in and plugins).", no_args_is_help=True
)


@app.command("list")
def list_backbones(
    pattern: Annotated[
        str | None,
        typer.Argument(
            help="Glob over names and aliases, e.g. 'v2*' or '*b3'.",
            autocompletion=complete_backbone,
        ),
    ] = None,
) -> None:
    """Name, aliases, default input size, parameter count and source of each backbone."""
    from mritumor.models.registry import registry

    specs = registry.specs(pattern)
    if not specs:
        console.print(f"No backbone matches {pattern!r}.", soft_wrap=True, markup=False)
        raise typer.Exit(1)
    table = Table(
        title="Backbones",
        title_justify="left",
        caption="Parameters of the backbone without a classification head.",
    )
    table.add_column("name", style="bold")
    table.add_column("aliases")
    table.add_column("input size", justify="right")
    table.add_column("parameters", justify="right")
    table.add_column("source")
    for spec in specs:
        params = f"{spec.params / 1e6:.2f} M" if spec.params is not None else "?"
        table.add_row(
            spec.name,
            ", ".join(spec.aliases),
            f"{spec.input_size} px",
            params,
            spec.source,
        )
    console.print(table)
