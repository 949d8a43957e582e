"""Shell-completion callbacks. They run on every <TAB>: keep them import-light."""

from __future__ import annotations

from mritumor.config.recipes import RECIPES
from mritumor.core.volume_terms import AXES, WINDOW_METHODS


def complete_backbone(incomplete: str) -> list[tuple[str, str]]:
    """Backbone names (not aliases) that start with what was typed, with their description."""
    from mritumor.models.registry import registry

    prefix = incomplete.lower()
    return [
        (spec.name, spec.description or spec.source)
        for spec in registry.specs()
        if spec.name.startswith(prefix)
    ]


def complete_recipe(incomplete: str) -> list[tuple[str, str]]:
    """Recipe names that start with what was typed, with their summary."""
    prefix = incomplete.lower()
    return [(recipe.name, recipe.summary) for recipe in RECIPES if recipe.name.startswith(prefix)]


def complete_axis(incomplete: str) -> list[str]:
    """The planes a volume can be cut in."""
    return [axis for axis in AXES if axis.startswith(incomplete.lower())]


def complete_window(incomplete: str) -> list[str]:
    """The ways a volume's intensities can be windowed."""
    return [method for method in WINDOW_METHODS if method.startswith(incomplete.lower())]
