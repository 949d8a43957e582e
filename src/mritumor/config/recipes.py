"""Named training recipes: bundles of settings that a user picks with one flag.

A recipe is a layer of settings just above the defaults: a YAML file, the
``MRITUMOR_*`` environment and flags (``--set`` too) still override any of its
keys, so ``--recipe cpu-best --epochs 48`` trains the recipe for 48 epochs.
The recipe's name is itself a setting (``recipe``) and is recorded in
config.yaml and bundle.json.

Every recipe here was measured on the Kaggle masoud Training folder on a
2-core CPU (docs/results.md gives the commands and the numbers). None of them
fixes a precision: ``train.precision: auto`` picks bfloat16 only where the
hardware runs it natively.

Pure data: no TensorFlow, no pydantic, so ``mritumor recipes list`` and shell
completion stay fast.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mritumor.core.errors import ConfigError


@dataclass(frozen=True)
class Recipe:
    """A documented set of settings, as dotted keys (``train.epochs``) and values."""

    name: str
    summary: str
    settings: Mapping[str, Any]


#: What both CPU recipes share: a slim ResNet from random weights on grayscale
#: slices, one stage (a frozen stage would train a head on random features),
#: AdamW with decoupled weight decay, warm-up + cosine, label smoothing, and the
#: checkpoint with the best val accuracy, without early stopping (the cosine
#: ends near zero, so the last epochs are the best ones anyway).
_FROM_SCRATCH_ON_CPU: Mapping[str, Any] = {
    "model.weights": "none",
    "model.dropout": 0.2,
    "data.channels": 1,
    "data.image_size": 128,
    "train.freeze_backbone_epochs": 0,
    "train.optimizer": "adamw",
    "train.lr": 2e-3,
    "train.weight_decay": 0.05,
    "train.cosine_decay": True,
    "train.warmup_epochs": 1,
    "train.label_smoothing": 0.1,
    "train.early_stopping_patience": 0,
    "train.monitor": "val_accuracy",
    "augment.horizontal_flip": True,
    "augment.rotation": 0.05,
    "augment.zoom": 0.1,
    "augment.brightness": 0.1,
    "augment.contrast": 0.1,
}

RECIPES: tuple[Recipe, ...] = (
    Recipe(
        name="cpu-fast",
        summary="Slim ResNet-18 from scratch, 128 px grayscale, 16 epochs: under 15 min on 2 CPU cores.",
        settings={**_FROM_SCRATCH_ON_CPU, "model.backbone": "resnet18s", "train.epochs": 16},
    ),
    Recipe(
        name="cpu-best",
        summary="Slim ResNet-18 from scratch, 128 px grayscale, 32 epochs: under 30 min on 2 CPU cores.",
        settings={**_FROM_SCRATCH_ON_CPU, "model.backbone": "resnet18s", "train.epochs": 32},
    ),
)


def recipe_names() -> list[str]:
    return [recipe.name for recipe in RECIPES]


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name`` (case-insensitive), or a ConfigError naming the nearest one."""
    for recipe in RECIPES:
        if recipe.name == name.strip().lower():
            return recipe
    close = difflib.get_close_matches(name.lower(), recipe_names(), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(
        f"unknown recipe {name!r}{hint}; `mritumor recipes list` shows them: "
        + ", ".join(recipe_names())
    )
