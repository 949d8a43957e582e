"""Resolving settings from their sources, and one-line errors when they do not validate.

Sources, lowest to highest precedence: the defaults < a named recipe
(``recipe``, see :mod:`mritumor.config.recipes`) < a YAML file (``--config`` or
``MRITUMOR_CONFIG``) < environment variables ``MRITUMOR_<SECTION>__<KEY>`` <
command-line flags (``--set`` too). The order itself is declared in
:mod:`mritumor.config.schema`; this module reads each source, reads the recipe's
name from the highest source that sets it, and hands the layers to the model.

:func:`load_settings` also reports where each explicitly set value came from,
and turns validation failures into one :class:`~mritumor.core.errors.ConfigError`
line that names the key, its source and the nearest valid key.
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_settings import EnvSettingsSource, SettingsError

from mritumor.config.recipes import get_recipe
from mritumor.config.schema import (
    Settings,
    env_var_name,
    file_and_recipe_layers,
    section_names,
    valid_keys,
)
from mritumor.core.environment import (
    CONFIG_ENV_VAR,
    CONTROL_ENV_VARS,
    ENV_NESTED_DELIMITER,
    ENV_PREFIX,
)
from mritumor.core.errors import ConfigError


@dataclass(frozen=True)
class LoadedSettings:
    """Resolved settings plus, for every explicitly set key, which source won."""

    settings: Settings
    config_file: Path | None
    origins: dict[str, str]
    """Dotted key -> "file", "env MRITUMOR_X__Y" or "flag"."""


def load_settings(
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    apply_recipe: bool = True,
) -> LoadedSettings:
    """Resolve settings from defaults, a recipe, ``config_file``, the environment and ``overrides``.

    ``overrides`` maps dotted keys (``"train.epochs"``) to values, as command-line
    flags produce them. ``apply_recipe=False`` keeps the ``recipe`` name as a
    label without applying its values: a run's own config.yaml already holds
    every resolved value, and must load even if that recipe was renamed since.
    Raises :class:`ConfigError` with one line on any problem.
    """
    flag_values = nest_dotted_keys(dict(overrides or {}))
    file_values = _read_yaml(config_file) if config_file is not None else {}
    _reject_unknown_env_vars()
    try:
        env_values = EnvSettingsSource(Settings)()
    except SettingsError as error:
        raise ConfigError(
            f"{error}; list and mapping values in MRITUMOR_* variables are JSON, "
            """e.g. MRITUMOR_DATA__CLASS_NAMES='["glioma", "no_tumor"]'"""
        ) from None

    recipe_name, recipe_values = (
        _recipe_layer(flag_values, env_values, file_values) if apply_recipe else (None, {})
    )
    _warn_if_overridden(recipe_name, recipe_values, file_values, config_file)
    origins: dict[str, str] = dict.fromkeys(_leaf_keys(recipe_values), f"recipe {recipe_name}")
    for key in _leaf_keys(file_values):
        origins[key] = "file"
    for key in _leaf_keys(env_values):
        origins[key] = f"env {env_var_name(key)}"
    for key in _leaf_keys(flag_values):
        origins[key] = "flag"

    _reject_unknown_top_level_flags(flag_values, origins)
    try:
        with file_and_recipe_layers(file_values, recipe_values):
            settings = Settings(**flag_values)
    except ValidationError as error:
        raise ConfigError(_describe(error, origins, config_file)) from None
    return LoadedSettings(settings=settings, config_file=config_file, origins=origins)


def _reject_unknown_top_level_flags(flags: Mapping[str, Any], origins: Mapping[str, str]) -> None:
    """Flags become ``Settings(**flags)``, where pydantic-settings would read a key such as
    ``_env_prefix`` as its own option: every top-level key must be a setting."""
    for key in flags:
        if key not in Settings.model_fields:
            source = _source_of(key, origins, None)
            raise ConfigError(
                f"unknown key {key!r}{source}{_suggestion(key, valid_keys() + section_names())}"
            )


def _recipe_layer(*sources: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The recipe named by the first source that sets ``recipe`` (highest first), nested."""
    for source in sources:
        if "recipe" in source:
            name = source["recipe"]
            if name is None:
                return None, {}
            recipe = get_recipe(str(name))
            return recipe.name, nest_dotted_keys(dict(recipe.settings))
    return None, {}


def _warn_if_overridden(
    recipe_name: str | None,
    recipe_values: Mapping[str, Any],
    file_values: Mapping[str, Any],
    config_file: Path | None,
) -> None:
    """A recipe whose every key the config file sets again does nothing: say so.

    A file written by ``config init`` (or a run's config.yaml) holds every key.
    """
    recipe_keys = set(_leaf_keys(recipe_values))
    if recipe_keys and recipe_keys <= set(_leaf_keys(file_values)):
        warnings.warn(
            f"recipe {recipe_name} has no effect: {config_file} sets every key it sets "
            f"(`mritumor recipes show {recipe_name}` lists them); remove them from the file",
            UserWarning,
            stacklevel=3,
        )


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"train.epochs=3"`` -> ``("train.epochs", 3)``; the value is read as YAML."""
    key, separator, raw_value = text.partition("=")
    if not separator or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE, for example train.epochs=5; got {text!r}")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else raw_value
    except yaml.YAMLError:
        value = raw_value
    return key.strip(), value


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (check --config or {CONFIG_ENV_VAR})")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
        if _contains_itself(content):
            raise ConfigError(f"{path}: a YAML alias refers to a mapping or list that contains it")
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a mritumor config") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML{line}: {problem}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections (data:, train:, ...), "
            f"found a {type(content).__name__}"
        )
    # A section whose keys were all deleted reads as `train:` -> None: use its defaults.
    return {
        key: {} if value is None and key in section_names() else value
        for key, value in content.items()
    }


def _contains_itself(
    value: Any, enclosing: frozenset[int] = frozenset(), finished: set[int] | None = None
) -> bool:
    """True for a YAML alias inside its own anchor: a mapping or list that contains itself.

    Each node is walked once (``finished``), however many aliases share it.
    """
    finished = set() if finished is None else finished
    if not isinstance(value, (dict, list)) or id(value) in finished:
        return False
    if id(value) in enclosing:
        return True
    items = value.values() if isinstance(value, dict) else value
    inside = enclosing | {id(value)}
    if any(_contains_itself(item, inside, finished) for item in items):
        return True
    finished.add(id(value))
    return False


def _reject_unknown_env_vars() -> None:
    """Catch ``MRITUMOR_TRIAN__EPOCHS``: the env source would silently ignore it."""
    sections = set(Settings.model_fields)
    for name in os.environ:
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in CONTROL_ENV_VARS:
            continue
        top = upper[len(ENV_PREFIX) :].split(ENV_NESTED_DELIMITER)[0].lower()
        if top not in sections:
            known = [env_var_name(key) for key in valid_keys()] + sorted(CONTROL_ENV_VARS)
            raise ConfigError(f"unknown environment variable {name}{_suggestion(upper, known)}")


def _describe(error: ValidationError, origins: Mapping[str, str], config_file: Path | None) -> str:
    """One line for the first validation problem, naming key, source and a fix."""
    problems = error.errors()
    first = problems[0]
    key = ".".join(str(part) for part in first["loc"])
    source = _source_of(key, origins, config_file)
    if first["type"] == "extra_forbidden":
        message = f"unknown key {key!r}{source}{_suggestion(key, valid_keys() + section_names())}"
    elif key and not isinstance(first.get("input"), Mapping):
        message = f"invalid value {first['input']!r} for {key!r}{source}: {_clean(first['msg'])}"
    elif key:
        message = f"{key!r}{source}: {_clean(first['msg'])}"
    else:
        message = _clean(first["msg"])
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
    return message


def _source_of(key: str, origins: Mapping[str, str], config_file: Path | None) -> str:
    for candidate, origin in origins.items():
        if candidate == key or candidate.startswith(key + ".") or key.startswith(candidate + "."):
            if origin == "file":
                return f" in {config_file}"
            return f" (from {origin})"
    return ""


def _suggestion(key: str, candidates: list[str]) -> str:
    """`` (did you mean 'train'?)`` for the nearest candidate at the same depth, if any."""
    same_depth = [c for c in candidates if c.count(".") == key.count(".")] or candidates
    matches = difflib.get_close_matches(key, same_depth, n=1, cutoff=0.6)
    if not matches:
        tail = key.rsplit(".", 1)[-1]
        names = {c.rsplit(".", 1)[-1]: c for c in candidates}
        close = difflib.get_close_matches(tail, list(names), n=1, cutoff=0.6)
        matches = [names[close[0]]] if close else []
    return f" (did you mean {matches[0]!r}?)" if matches else ""


def _clean(message: str) -> str:
    return message.removeprefix("Value error, ")


def nest_dotted_keys(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"train.epochs": 3}`` -> ``{"train": {"epochs": 3}}``."""
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{dotted!r} conflicts with another override")
        node[leaf] = value
    return nested


def _leaf_keys(values: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for name, value in values.items():
        if isinstance(value, Mapping) and value:
            yield from _leaf_keys(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"
