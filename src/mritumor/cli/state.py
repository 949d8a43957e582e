"""State the root callback hands to every command, and the settings it resolves."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from mritumor.settings import LoadedSettings


@dataclass
class AppState:
    """Global options: the config file and whether to show tracebacks."""

    config_file: Path | None = None
    debug: bool = False


def app_state(ctx: typer.Context) -> AppState:
    state = ctx.find_object(AppState)
    return state if state is not None else AppState()


def resolve_settings(
    ctx: typer.Context, overrides: Mapping[str, Any] | None = None
) -> LoadedSettings:
    """Settings from defaults, the global --config file, the environment and ``overrides``.

    ``overrides`` holds the command's own flags as dotted keys; flags left at
    None were not given and do not override anything.
    """
    from mritumor.settings import load_settings

    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    return load_settings(app_state(ctx).config_file, given)
