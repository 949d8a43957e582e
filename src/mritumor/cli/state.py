"""State the root callback hands to every command, and the settings it resolves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from mritumor.settings import LoadedSettings


@dataclass
class AppState:
    """Global options: the config file and whether to show tracebacks."""

    config_file: Path | None = None
    debug: bool = False


SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Override any setting, as a flag would (repeatable), e.g. --set train.epochs=5.",
    ),
]


def app_state(ctx: typer.Context) -> AppState:
    state = ctx.find_object(AppState)
    return state if state is not None else AppState()


def resolve_settings(
    ctx: typer.Context,
    flags: Mapping[str, Any] | None = None,
    assignments: Sequence[str] = (),
) -> LoadedSettings:
    """Settings from defaults, the global --config file, the environment and the command line.

    ``flags`` holds the command's own options as dotted keys; those left at None
    were not given and override nothing. ``assignments`` are ``--set KEY=VALUE``
    strings, applied as given (``--set inference.threshold=null`` sets None).
    """
    from mritumor.settings import load_settings, parse_assignment

    overrides = {key: value for key, value in (flags or {}).items() if value is not None}
    overrides.update(parse_assignment(text) for text in assignments)
    return load_settings(app_state(ctx).config_file, overrides)
