"""Settings rendered as YAML text: a commented template and the resolved view.

The emitter is small and ours because PyYAML drops comments, and both views are
about comments: the template explains every key, the resolved view says where
each explicitly set value came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import BaseModel

from mritumor.config.loading import LoadedSettings
from mritumor.config.schema import Section, Settings

TEMPLATE_HEADER = """\
# mritumor configuration.
# Precedence: defaults < the recipe named by `recipe:` < this file
# < MRITUMOR_<SECTION>__<KEY> environment variables < command-line flags.
# Delete any key to use its default (or its recipe's value); an empty file is valid.
# `mritumor --config THIS_FILE config show` prints the settings it resolves to.
"""


def template_yaml() -> str:
    """The default settings, each key preceded by its description."""
    defaults = Settings.model_construct().model_dump(mode="json")
    return (
        TEMPLATE_HEADER + "\n" + _render(Settings, defaults, prefix="", describe=True, origins={})
    )


def resolved_yaml(loaded: LoadedSettings) -> str:
    """The resolved settings; each explicitly set key carries ``# from <source>``."""
    values = loaded.settings.model_dump(mode="json")
    origins = {
        key: (f"file {loaded.config_file}" if origin == "file" else origin)
        for key, origin in loaded.origins.items()
    }
    return _render(Settings, values, prefix="", describe=False, origins=origins)


def settings_yaml(settings: Settings) -> str:
    """Plain YAML of the settings, as stored beside a run."""
    return _render(
        Settings, settings.model_dump(mode="json"), prefix="", describe=False, origins={}
    )


def _render(
    model: type[BaseModel],
    values: Mapping[str, Any],
    *,
    prefix: str,
    describe: bool,
    origins: Mapping[str, str],
) -> str:
    indent = "  " * prefix.count(".")
    lines: list[str] = []
    for name, field in model.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, Section):
            if describe:
                lines.append("")
                lines.append(f"{indent}# {(section.__doc__ or '').strip()}")
            lines.append(f"{indent}{name}:")
            body = _render(
                section, values[name], prefix=f"{prefix}{name}.", describe=describe, origins=origins
            )
            lines.append(body.rstrip("\n"))
            continue
        if describe and field.description:
            lines.append(f"{indent}# {field.description}")
        line = f"{indent}{name}: {yaml_scalar(values[name])}"
        origin = origins.get(f"{prefix}{name}")
        lines.append(f"{line}  # from {origin}" if origin else line)
    return "\n".join(lines) + "\n"


def yaml_scalar(value: Any) -> str:
    """One value in YAML flow style: ``3``, ``null``, ``[a, b]``, ``'on'``."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()
