"""The root ``mritumor`` app: global options, error handling, and the sub-apps."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from rich.markup import escape
from typer.core import TyperGroup

from mritumor import __version__
from mritumor.cli import (
    backbones,
    config,
    data,
    evaluate,
    explain,
    export,
    finetune,
    infer,
    kfold,
    pipeline,
    recipes,
    report,
    serve,
    train,
)
from mritumor.cli.state import AppState
from mritumor.cli.ui import err_console
from mritumor.core.environment import CONFIG_ENV_VAR, DEBUG_ENV_VAR, configure
from mritumor.core.errors import EXIT_FAILURE, MritumorError


class _ErrorHandlingGroup(TyperGroup):
    """Turns a :class:`MritumorError` (or an OSError) into one red line and its exit code.

    The traceback is shown too, only with ``--debug`` or ``MRITUMOR_DEBUG=1``;
    the exit code stays the same either way.
    """

    def invoke(self, ctx: Any) -> Any:  # typer vendors its own click Context class
        try:
            return super().invoke(ctx)
        except MritumorError as error:
            _print_error(ctx, str(error))
            raise typer.Exit(error.exit_code) from None
        except BrokenPipeError:
            raise  # `mritumor infer ... | head`: click exits quietly
        except OSError as error:  # a full disk, a permission denied: the system's words suffice
            where = f": {error.filename}" if error.filename else ""
            _print_error(ctx, f"{error.strerror or error}{where}")
            raise typer.Exit(EXIT_FAILURE) from None


def _print_error(ctx: Any, message: str) -> None:
    """One red line; the traceback before it only with ``--debug``."""
    state = ctx.find_object(AppState)
    if state is not None and state.debug:
        err_console.print_exception()
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


app = typer.Typer(
    name="mritumor",
    cls=_ErrorHandlingGroup,
    help="Brain-tumour MRI classification: train, evaluate, calibrate, adapt and explain.",
    no_args_is_help=True,
    # Plain help text: "[default: data.image_size]" must not be read as rich markup.
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(data.app, name="data")
app.command("train")(train.train)
app.command("kfold")(kfold.kfold)
app.command("eval")(evaluate.evaluate)
app.command("calibrate")(evaluate.calibrate)
app.command("threshold")(evaluate.threshold)
app.command("infer")(infer.infer)
app.command("gradcam")(explain.gradcam)
app.command("finetune")(finetune.finetune)
app.command("pipeline")(pipeline.pipeline)
app.command("demo")(pipeline.demo)
app.command("report")(report.report)
app.command("export")(export.export)
app.command("serve")(serve.serve)
app.add_typer(config.app, name="config")
app.add_typer(backbones.app, name="backbones")
app.add_typer(recipes.app, name="recipes")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"mritumor {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            envvar=CONFIG_ENV_VAR,
            help="YAML settings file (defaults < file < MRITUMOR_* env < flags).",
            dir_okay=False,
        ),
    ] = None,
    debug: Annotated[
        bool,
        typer.Option("--debug", envvar=DEBUG_ENV_VAR, help="Show tracebacks and TensorFlow logs."),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Brain-tumour MRI classification: train, evaluate, calibrate, adapt and explain."""
    ctx.obj = AppState(config_file=config_file, debug=debug)
    configure(debug)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(str(message))}", soft_wrap=True)


def main() -> None:
    """Console-script entry point."""
    warnings.showwarning = _show_warning
    sys.exit(app(prog_name="mritumor", standalone_mode=True))
