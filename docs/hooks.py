"""MkDocs hooks: reference sections generated from the code, so they cannot drift.

A page asks for a section with a marker comment, replaced on every build:

- ``<!-- mritumor:config-reference -->``  one table per settings section
- ``<!-- mritumor:config-template -->``   the output of ``mritumor config init``
- ``<!-- mritumor:cli-reference -->``     every command of the Typer app, walked recursively
- ``<!-- mritumor:backbones-table -->``   the built-in backbones of the registry
- ``<!-- mritumor:bundle-schema -->``     the JSON Schema of a run's ``bundle.json``
"""

from __future__ import annotations

import inspect
import json
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeGuard, Union, get_args, get_origin

from mritumor.config.yaml_file import yaml_scalar

if TYPE_CHECKING:
    from mritumor.config.schema import Section

CONSTRAINTS = (
    ("ge", "≥"),
    ("gt", ">"),
    ("le", "≤"),
    ("lt", "<"),
    ("min_length", "length ≥"),
    ("max_length", "length ≤"),
)


def on_page_markdown(markdown: str, **_: Any) -> str:
    for name, render in RENDERERS.items():
        marker = f"<!-- mritumor:{name} -->"
        if marker in markdown:
            markdown = markdown.replace(marker, render())
    return markdown


# Configuration ---------------------------------------------------------------------------------


def config_reference() -> str:
    from mritumor.config.schema import Settings

    defaults = Settings.model_construct().model_dump(mode="json")
    fields = Settings.model_fields
    top_level = [name for name, field in fields.items() if not _is_section(field.annotation)]
    blocks = ["### Top level", "", *_field_table(Settings, defaults, "", top_level)]
    for name, field in fields.items():
        section = field.annotation
        if _is_section(section):
            doc = inspect.cleandoc(section.__doc__ or "")
            rows = _field_table(section, defaults[name], f"{name}.", list(section.model_fields))
            blocks += ["", f"### `{name}`", "", doc, "", *rows]
    return "\n".join(blocks) + "\n"


def config_template() -> str:
    from mritumor.config.yaml_file import template_yaml

    return f"```yaml\n{template_yaml()}```\n"


def _field_table(model: Any, values: dict[str, Any], prefix: str, names: list[str]) -> list[str]:
    from mritumor.config.schema import env_var_name

    rows = [
        "| Key | Type | Default | Constraints | Environment variable | Description |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        field = model.model_fields[name]
        limits = [
            f"{symbol} {getattr(item, attr)}"
            for item in field.metadata
            for attr, symbol in CONSTRAINTS
            if getattr(item, attr, None) is not None
        ]
        cells = (
            f"`{prefix}{name}`",
            _type_name(field.annotation),
            f"`{yaml_scalar(values[name])}`",
            ", ".join(limits),
            f"`{env_var_name(prefix + name)}`",
            field.description or "",
        )
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return rows


def _type_name(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{yaml_scalar(a)}`" for a in args)
    if origin in (Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or `null`" if type(None) in args else "")
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _is_section(annotation: Any) -> TypeGuard[type[Section]]:
    from mritumor.config.schema import Section

    return isinstance(annotation, type) and issubclass(annotation, Section)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# Command line ----------------------------------------------------------------------------------


def cli_reference() -> str:
    import typer.main

    from mritumor.cli.main import app

    root = typer.main.get_command(app)
    blocks: list[str] = []
    for command, ctx in _walk(root, "mritumor", None):
        help_text = inspect.cleandoc(command.help or "").split("\f")[0].strip()
        usage = command.get_usage(ctx).removeprefix("Usage:").strip()
        blocks += [f"## `{ctx.command_path}`", "", help_text, "", f"```text\n{usage}\n```", ""]
        params = [p for p in command.get_params(ctx) if not p.hidden and p.name != "help"]
        if params:
            blocks += [
                "| Argument / option | Type | Default | Environment variable | Help |",
                "|---|---|---|---|---|",
                *(_param_row(p, ctx) for p in params),
                "",
            ]
        subcommands = list(_subcommands(command, ctx))
        if subcommands:
            blocks += ["| Command | Does |", "|---|---|"]
            for name, sub in subcommands:
                anchor = f"{ctx.command_path} {name}".replace(" ", "-")
                blocks.append(
                    f"| [`{name}`](#{anchor}) | {_cell(sub.get_short_help_str(limit=300))} |"
                )
            blocks.append("")
    return "\n".join(blocks)


def _walk(command: Any, name: str, parent: Any) -> Iterator[tuple[Any, Any]]:
    ctx = command.context_class(command, info_name=name, parent=parent, **command.context_settings)
    yield command, ctx
    for sub_name, sub in _subcommands(command, ctx):
        yield from _walk(sub, sub_name, ctx)


def _subcommands(command: Any, ctx: Any) -> Iterator[tuple[str, Any]]:
    for name in getattr(command, "list_commands", lambda _: [])(ctx):
        sub = command.get_command(ctx, name)
        if sub is not None and not sub.hidden:
            yield name, sub


def _param_row(param: Any, ctx: Any) -> str:
    is_option = param.param_type_name == "option"
    names = [*param.opts, *param.secondary_opts] if is_option else [param.name.upper()]
    default = param.get_default(ctx, call=False)
    if getattr(param, "is_flag", False):
        kind = "flag"
        if param.secondary_opts:  # --x/--no-x: the default is one of the two
            default = (param.opts if default else param.secondary_opts)[0]
    else:
        kind = (param.metavar or param.display_type(ctx)).strip("<>").removesuffix(" range")
        bounds = (("≥", getattr(param, "min", None)), ("≤", getattr(param, "max", None)))
        kind += "".join(f", {symbol} {value}" for symbol, value in bounds if value is not None)
        kind += ", repeatable" if param.multiple else ""
    if param.required:
        shown = "required"
    elif default is None or default is False or default in ((), []):
        shown = ""
    else:
        shown = f"`{getattr(default, 'value', default)}`"  # an Enum shows its value
    envvar = param.envvar if isinstance(param.envvar, str) else ", ".join(param.envvar or ())
    cells = (
        ", ".join(f"`{n}`" for n in names),
        kind,
        shown,
        f"`{envvar}`" if envvar else "",
        getattr(param, "help", None) or "",
    )
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


# Backbones -------------------------------------------------------------------------------------


def backbones_table() -> str:
    from mritumor.models.registry import BUILTIN_SOURCE, registry

    rows = [
        "| Name | Aliases | Input size | Parameters | Last conv layer | Description |",
        "|---|---|---:|---:|---|---|",
    ]
    for spec in registry.specs():
        if spec.source != BUILTIN_SOURCE:
            continue  # plugins installed where the docs are built are not part of the package
        params = f"{spec.params:,}" if spec.params is not None else "?"
        cells = (
            f"`{spec.name}`",
            ", ".join(f"`{alias}`" for alias in spec.aliases),
            f"{spec.input_size} px",
            params,
            f"`{spec.last_conv_layer}`",
            spec.description,
        )
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(rows) + "\n"


# The run folder --------------------------------------------------------------------------------


def bundle_schema() -> str:
    from mritumor.run.bundle import Bundle

    return f"```json\n{json.dumps(Bundle.model_json_schema(), indent=2)}\n```\n"


RENDERERS: dict[str, Callable[[], str]] = {
    "config-reference": config_reference,
    "config-template": config_template,
    "cli-reference": cli_reference,
    "backbones-table": backbones_table,
    "bundle-schema": bundle_schema,
}
