"""``mritumor config``: show the resolved settings, write a commented template."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mritumor import __version__
from mritumor.cli.state import SetOption, resolve_settings
from mritumor.cli.ui import console
from mritumor.core.errors import UsageError
from mritumor.core.fsutil import atomic_write_text

app = typer.Typer(
    help="Show the resolved settings or write a commented config file.", no_args_is_help=True
)


@app.command("show")
def show(ctx: typer.Context, assignments: SetOption = None) -> None:
    """Print the resolved settings as YAML; explicitly set keys say where they came from."""
    from mritumor.config.yaml_file import resolved_yaml

    loaded = resolve_settings(ctx, assignments=assignments or ())
    source = loaded.config_file if loaded.config_file is not None else "none"
    typer.echo(f"# mritumor {__version__} resolved settings (config file: {source})")
    typer.echo(resolved_yaml(loaded), nl=False)


@app.command("init")
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the commented default config.")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
) -> None:
    """Write every setting with its default and a comment saying what it does."""
    from mritumor.config.yaml_file import template_yaml

    if path.is_dir():
        raise UsageError(
            f"{path} is a directory; give a file name such as {path / 'mritumor.yaml'}"
        )
    if path.exists() and not force:
        raise UsageError(f"{path} already exists; use --force to replace it")
    atomic_write_text(path, template_yaml())
    console.print(
        f"Wrote [bold]{path}[/]; use it with: mritumor --config {path} ...", soft_wrap=True
    )
