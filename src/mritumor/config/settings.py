"""The typed settings model and how it is resolved.

Sources, lowest to highest precedence: the defaults below < a named recipe
(``recipe``, see :mod:`mritumor.config.recipes`) < a YAML file (``--config`` or
``MRITUMOR_CONFIG``) < environment variables ``MRITUMOR_<SECTION>__<KEY>`` <
command-line flags. The order is declared once, in
:meth:`Settings.settings_customise_sources`; the recipe's name is read from the
highest source that sets it.

:func:`load_settings` also reports where each explicitly set value came from,
and turns validation failures into one :class:`~mritumor.core.errors.ConfigError`
line that names the key, its source and the nearest valid key.
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from mritumor.config.recipes import get_recipe
from mritumor.core.environment import (
    CONFIG_ENV_VAR,
    CONTROL_ENV_VARS,
    ENV_NESTED_DELIMITER,
    ENV_PREFIX,
)
from mritumor.core.errors import ConfigError
from mritumor.data.files import CLASS_NAMES


class Section(BaseModel):
    """Base of every settings section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSettings(Section):
    """How images are read and split."""

    image_size: int = Field(
        224, ge=32, le=1024, description="Side of the square model input, in pixels."
    )
    channels: Literal[1, 3] = Field(
        3, description="1 for grayscale, 3 for RGB input (ImageNet weights need 3)."
    )
    class_names: list[str] = Field(
        default_factory=lambda: list(CLASS_NAMES),
        min_length=2,
        description="Class folder names, in the order of the model's outputs.",
    )
    negative_class: str = Field(
        "no_tumor",
        description="The class whose complement is the tumour score 1 - p(negative_class).",
    )
    resize: Literal["plain", "pad"] = Field(
        "pad", description="plain: stretch to a square; pad: keep the aspect ratio and pad."
    )
    val_size: float = Field(
        0.15,
        gt=0.0,
        lt=1.0,
        description="Share of train carved into a stratified val split when the source has none.",
    )
    cal_size: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description=(
            "Share of train carved into a calibration split that checkpoint selection never "
            "sees (0 = calibrate on val)."
        ),
    )
    cache: Literal["memory", "file", "none"] = Field(
        "memory",
        description="Cache decoded images in memory, in a file under paths.cache_dir, or not.",
    )
    oversample: bool = Field(False, description="Oversample minority classes to balance batches.")

    @field_validator("class_names")
    @classmethod
    def _unique_class_names(cls, names: list[str]) -> list[str]:
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"class names must be unique; repeated: {', '.join(duplicates)}")
        return names

    @model_validator(mode="after")
    def _negative_class_is_a_class(self) -> DataSettings:
        if self.negative_class not in self.class_names:
            raise ValueError(
                f"negative_class {self.negative_class!r} is not one of "
                f"class_names {self.class_names}"
            )
        return self


class AugmentSettings(Section):
    """Training-time augmentation, applied in the input pipeline (never at evaluation)."""

    enabled: bool = Field(True, description="Turn all augmentation on or off.")
    horizontal_flip: bool = Field(True, description="Random left-right flips.")
    vertical_flip: bool = Field(False, description="Random up-down flips.")
    rotation: float = Field(
        0.05, ge=0.0, le=0.5, description="Maximum rotation as a fraction of a full turn."
    )
    zoom: float = Field(0.1, ge=0.0, lt=1.0, description="Maximum relative zoom in or out.")
    brightness: float = Field(0.1, ge=0.0, le=1.0, description="Maximum brightness shift.")
    contrast: float = Field(0.1, ge=0.0, le=1.0, description="Maximum relative contrast change.")
    mixup_alpha: float = Field(
        0.0, ge=0.0, description="MixUp Beta(alpha, alpha) parameter; 0 turns MixUp off."
    )


class ModelSettings(Section):
    """The classifier: a registered backbone plus a pooling, dropout and dense head."""

    backbone: str = Field(
        "v2b0", min_length=1, description="Backbone name or alias; see `mritumor backbones list`."
    )
    weights: str = Field(
        "imagenet",
        min_length=1,
        description="Backbone initialisation: imagenet, none, or a path to a .weights.h5 file.",
    )
    pooling: Literal["avg", "max"] = Field(
        "avg", description="Global pooling over the feature map."
    )
    dropout: float = Field(0.3, ge=0.0, lt=1.0, description="Dropout rate before the dense head.")


class TrainSettings(Section):
    """Fitting: two stages (backbone frozen, then the whole network at a lower rate)."""

    batch_size: int = Field(32, ge=1, le=4096, description="Images per batch.")
    epochs: int = Field(30, ge=1, description="Total epochs, both stages together.")
    freeze_backbone_epochs: int = Field(
        5,
        ge=0,
        description=(
            "Epochs with the backbone frozen (BatchNorm in inference mode); "
            "at or above epochs, the backbone stays frozen (a linear probe)."
        ),
    )
    lr: float = Field(1e-3, gt=0.0, description="Peak learning rate while the backbone is frozen.")
    finetune_lr: float = Field(
        1e-4, gt=0.0, description="Peak learning rate once the whole network trains."
    )
    optimizer: Literal["adamw", "adam", "sgd"] = Field("adamw", description="Optimiser.")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="Momentum, for sgd.")
    weight_decay: float = Field(1e-4, ge=0.0, description="Decoupled weight decay (adamw, sgd).")
    cosine_decay: bool = Field(True, description="Cosine learning-rate decay within each stage.")
    warmup_epochs: int = Field(
        1, ge=0, description="Linear warm-up epochs at the start of each stage."
    )
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="Label smoothing.")
    use_class_weights: bool = Field(
        True, description="Weight the loss by w_c = N / (C * n_c) from the train split."
    )
    loss: Literal["crossentropy", "focal"] = Field("crossentropy", description="Loss function.")
    focal_gamma: float = Field(2.0, ge=0.0, description="Focal loss focusing parameter gamma.")
    focal_alpha: list[float] | None = Field(
        None, description="Per-class focal alpha, one per class; null for none."
    )
    monitor: Literal["val_loss", "val_accuracy"] = Field(
        "val_loss", description="Metric that selects the best checkpoint and stops early."
    )
    early_stopping_patience: int = Field(
        8, ge=0, description="Epochs without improvement before stopping; 0 turns it off."
    )
    reduce_lr_on_plateau: bool = Field(False, description="Halve the rate when the monitor stalls.")
    precision: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"] = Field(
        "auto",
        description=(
            "auto: mixed_bfloat16 where the GPU or CPU runs bfloat16 natively, "
            "mixed_float16 on older GPUs, float32 otherwise."
        ),
    )
    xla: bool = Field(False, description="Compile the training step with XLA.")
    deterministic: bool = Field(False, description="Deterministic TensorFlow ops (slower).")
    tensorboard: bool = Field(False, description="Write TensorBoard logs into the run directory.")

    @field_validator("focal_alpha")
    @classmethod
    def _positive_alpha(cls, alpha: list[float] | None) -> list[float] | None:
        if alpha is not None and any(value <= 0 for value in alpha):
            raise ValueError("focal_alpha values must be positive")
        return alpha


class EvaluationSettings(Section):
    """What ``mritumor eval`` reports besides the metrics."""

    bootstrap_samples: int = Field(
        1000,
        ge=0,
        description="Bootstrap resamples for the 95% intervals of accuracy and macro-F1; 0: none.",
    )
    error_gallery: int = Field(
        16, ge=0, le=100, description="Most confident mistakes shown in error_gallery.png."
    )
    training_copies: bool = Field(
        True,
        description=(
            "On sets other than the run's own, also report the metrics without the images that "
            "copy a train/val/cal image (hashes every training image once per eval)."
        ),
    )
    localisation: bool = Field(
        True,
        description=(
            "Where tumour images have lesion masks (synthetic data), report the Grad-CAM "
            "pointing game and the heat-map energy inside the mask."
        ),
    )


class CalibrationSettings(Section):
    """Temperature scaling and its metrics."""

    n_bins: int = Field(
        15, ge=2, le=1000, description="Equal-width confidence bins for ECE and MCE."
    )


class ThresholdSettings(Section):
    """The binary operating point on the tumour score 1 - p(negative_class)."""

    strategy: Literal["min_fpr_at_recall", "max_recall_at_fpr", "youden", "max_fbeta"] = Field(
        "min_fpr_at_recall", description="How the operating point is chosen."
    )
    target_recall: float = Field(
        0.95, gt=0.0, le=1.0, description="Minimum sensitivity, for min_fpr_at_recall."
    )
    max_fp_rate: float = Field(
        0.1, ge=0.0, lt=1.0, description="Maximum false-positive rate, for max_recall_at_fpr."
    )
    beta: float = Field(2.0, gt=0.0, description="F-beta weight of recall, for max_fbeta.")
    bootstrap_samples: int = Field(
        1000, ge=0, description="Bootstrap resamples for 95% intervals; 0 turns them off."
    )


class InferenceSettings(Section):
    """Prediction: test-time augmentation, MC dropout, ensembles and triage."""

    batch_size: int = Field(32, ge=1, le=4096, description="Images per model call.")
    tta_samples: int = Field(
        1, ge=1, description="Views per image: the original plus tta_samples - 1 transforms."
    )
    mc_dropout_samples: int = Field(
        0, ge=0, description="Stochastic passes with dropout active; 0 turns MC dropout off."
    )
    ensemble_members: list[Path] = Field(
        default_factory=list, description="Run directories whose models are averaged."
    )
    ensemble_strategy: Literal["mean", "median"] = Field(
        "mean", description="How member probabilities are combined."
    )
    threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Decision threshold; null uses the bundle's."
    )
    triage_band: float = Field(
        0.1,
        ge=0.0,
        le=0.5,
        description="Scores within this distance of the threshold go to review.",
    )
    max_disagreement: float = Field(
        0.2, ge=0.0, le=1.0, description="Ensemble spread of the tumour score that sends to review."
    )


class FinetuneSettings(Section):
    """Domain adaptation on an external tumour / no-tumour (yes/no) dataset."""

    external: Path | None = Field(None, description="The external yes/no dataset folder.")
    epochs: int = Field(10, ge=1, description="Fine-tuning epochs.")
    lr: float = Field(1e-5, gt=0.0, description="Learning rate.")
    unfreeze_blocks: int | None = Field(
        None, ge=0, description="Train only the last N backbone blocks; null trains all."
    )
    pos_weight: float = Field(
        2.0, gt=0.0, description="Weight of tumour images in the binary loss (sensitivity)."
    )
    replay_fraction: float = Field(
        0.5,
        ge=0.0,
        lt=1.0,
        description="Share of each batch replayed from the 4-class train split.",
    )
    val_size: float = Field(0.2, gt=0.0, lt=1.0, description="Share of the external set for val.")
    holdout_size: float = Field(
        0.3, gt=0.0, lt=1.0, description="Share of the external set held out for reported numbers."
    )
    early_stopping_patience: int = Field(
        3, ge=0, description="Epochs without external-val improvement; 0 turns it off."
    )

    @model_validator(mode="after")
    def _splits_leave_training_data(self) -> FinetuneSettings:
        if self.val_size + self.holdout_size >= 1.0:
            raise ValueError(
                "val_size + holdout_size must leave part of the external set to train on"
            )
        return self


class PathsSettings(Section):
    """Where data, runs and caches live."""

    data_dir: Path = Field(Path("data"), description="Root of the standard data layout.")
    runs_dir: Path = Field(Path("runs"), description="Where run directories are created.")
    cache_dir: Path = Field(
        Path(".mritumor-cache"), description="File caches of the input pipeline."
    )


_lower_layers: ContextVar[tuple[dict[str, Any], dict[str, Any]]] = ContextVar(
    "mritumor_lower_layers"
)
"""The YAML file's values and the recipe's, both already parsed, for the settings sources."""


class Settings(BaseSettings):
    """Every knob of every command, in one versionable model."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        case_sensitive=False,
        extra="forbid",
        validate_default=True,
    )

    seed: int = Field(42, ge=0, description="Seed for splits, shuffling, augmentation and init.")
    recipe: str | None = Field(
        None,
        description="A named bundle of settings below the file, env and flags; `mritumor recipes list`.",
    )
    data: DataSettings = Field(default_factory=DataSettings)
    augment: AugmentSettings = Field(default_factory=AugmentSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    calibration: CalibrationSettings = Field(default_factory=CalibrationSettings)
    threshold: ThresholdSettings = Field(default_factory=ThresholdSettings)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    finetune: FinetuneSettings = Field(default_factory=FinetuneSettings)
    paths: PathsSettings = Field(default_factory=PathsSettings)

    @field_validator("recipe")
    @classmethod
    def _recipe_name(cls, name: str | None) -> str | None:
        """Lower case; :func:`load_settings` checks that the recipe exists when it applies it."""
        return name.strip().lower() if name is not None else None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags (init arguments) > environment > YAML file > recipe > defaults.

        The YAML file and the recipe arrive already parsed by :func:`load_settings`.
        """
        file_values, recipe_values = _lower_layers.get(({}, {}))
        return (
            init_settings,
            env_settings,
            InitSettingsSource(settings_cls, init_kwargs=file_values),
            InitSettingsSource(settings_cls, init_kwargs=recipe_values),
        )


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
    token = _lower_layers.set((file_values, recipe_values))
    try:
        settings = Settings(**flag_values)
    except ValidationError as error:
        raise ConfigError(_describe(error, origins, config_file)) from None
    finally:
        _lower_layers.reset(token)
    return LoadedSettings(settings=settings, config_file=config_file, origins=origins)


def _reject_unknown_top_level_flags(flags: Mapping[str, Any], origins: Mapping[str, str]) -> None:
    """Flags become ``Settings(**flags)``, where pydantic-settings would read a key such as
    ``_env_prefix`` as its own option: every top-level key must be a setting."""
    for key in flags:
        if key not in Settings.model_fields:
            source = _source_of(key, origins, None)
            raise ConfigError(
                f"unknown key {key!r}{source}{_suggestion(key, valid_keys() + _sections())}"
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


def env_var_name(dotted_key: str) -> str:
    """``train.epochs`` -> ``MRITUMOR_TRAIN__EPOCHS``."""
    return ENV_PREFIX + dotted_key.replace(".", ENV_NESTED_DELIMITER).upper()


def valid_keys(model: type[BaseModel] = Settings, prefix: str = "") -> list[str]:
    """Every dotted leaf key of the model, sections expanded."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, Section):
            keys.extend(valid_keys(annotation, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


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
        key: {} if value is None and key in _sections() else value for key, value in content.items()
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
        message = f"unknown key {key!r}{source}{_suggestion(key, valid_keys() + _sections())}"
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


def _sections() -> list[str]:
    """The top-level keys that hold a section (``data``, ``train``...), not a scalar (``seed``)."""
    return [
        name
        for name, field in Settings.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, Section)
    ]


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
