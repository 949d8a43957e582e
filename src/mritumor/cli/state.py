"""State the root callback hands to every command, and the settings it resolves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mritumor.core.errors import UsageError
from mritumor.run.layout import CONFIG_FILE

if TYPE_CHECKING:
    from mritumor.config.loading import LoadedSettings
    from mritumor.config.schema import Settings


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
    from mritumor.config.loading import load_settings, parse_assignment

    overrides = {key: value for key, value in (flags or {}).items() if value is not None}
    overrides.update(parse_assignment(text) for text in assignments)
    return load_settings(app_state(ctx).config_file, overrides)


def resumed_settings(
    ctx: typer.Context,
    run_dir: Path,
    flags: Mapping[str, Any],
    assignments: Sequence[str] | None,
    *,
    changeable: frozenset[str] = frozenset(),
    hint: str = "",
) -> Settings:
    """The settings a run started with (its config.yaml), for ``--resume``.

    Only the ``changeable`` flags may differ; any other flag, ``--set`` or
    ``--config`` is refused, because a resumed run must continue as it began.
    """
    from mritumor.config.loading import load_settings

    given = sorted(
        key for key, value in flags.items() if value is not None and key not in changeable
    )
    if given or assignments or app_state(ctx).config_file is not None:
        raise UsageError(
            "--resume continues a run with the settings it started with; "
            f"drop {', '.join(given) or '--set/--config'}{hint}"
        )
    config = run_dir / CONFIG_FILE
    if not config.is_file():
        raise UsageError(f"{run_dir} is not a run directory: {config} not found")
    overrides = {
        key: value for key, value in flags.items() if key in changeable and value is not None
    }
    return load_settings(config, overrides, apply_recipe=False).settings
