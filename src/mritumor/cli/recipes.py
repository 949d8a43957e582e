"""``mritumor recipes``: the named training recipes and the settings each one sets."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from mritumor.cli.completion import complete_recipe
from mritumor.cli.ui import console
from mritumor.config.recipes import RECIPES, get_recipe

app = typer.Typer(
    help="List the named training recipes (train --recipe NAME) and show their settings.",
    no_args_is_help=True,
)


@app.command("list")
def list_recipes() -> None:
    """Name, backbone, input, epochs and summary of each recipe."""
    table = Table(
        title="Recipes",
        title_justify="left",
        caption="Use one with `mritumor train --recipe NAME`; flags and --set override its keys.",
    )
    table.add_column("name", style="bold")
    table.add_column("backbone")
    table.add_column("input", justify="right")
    table.add_column("epochs", justify="right")
    table.add_column("summary")
    for recipe in RECIPES:
        values = recipe.settings
        channels = "gray" if values.get("data.channels") == 1 else "RGB"
        table.add_row(
            recipe.name,
            str(values.get("model.backbone", "-")),
            f"{values.get('data.image_size', '-')} px {channels}",
            str(values.get("train.epochs", "-")),
            recipe.summary,
        )
    console.print(table)


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="The recipe's name.", autocompletion=complete_recipe)],
) -> None:
    """Print the settings a recipe sets, as YAML that a config file can hold."""
    import yaml

    from mritumor.config.loading import nest_dotted_keys

    recipe = get_recipe(name)
    typer.echo(f"# recipe {recipe.name}: {recipe.summary}")
    typer.echo(yaml.safe_dump(nest_dotted_keys(dict(recipe.settings)), sort_keys=False), nl=False)
