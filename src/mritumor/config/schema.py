"""The typed settings schema: every section, its fields, bounds and validators.

The source order (defaults < recipe < YAML file < ``MRITUMOR_*`` environment <
flags) is declared once, in :meth:`Settings.settings_customise_sources`; the file
and recipe layers arrive already parsed, through :func:`file_and_recipe_layers`,
from :func:`mritumor.config.loading.load_settings`. Environment names derive from
the field path (:func:`env_var_name`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from mritumor.core.classes import CLASS_NAMES
from mritumor.core.environment import ENV_NESTED_DELIMITER, ENV_PREFIX
from mritumor.core.preprocessing import Channels, Preprocessing, ResizeMode
from mritumor.core.volume_terms import Aggregation, Axis, WindowMethod


class Section(BaseModel):
    """Base of every settings section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSettings(Section):
    """How images are read and split."""

    image_size: int = Field(
        224, ge=32, le=1024, description="Side of the square model input, in pixels."
    )
    channels: Channels = Field(
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
    resize: ResizeMode = Field(
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

    @property
    def preprocessing(self) -> Preprocessing:
        """The input a model trained with these settings expects; its bundle records the same."""
        return Preprocessing(image_size=self.image_size, channels=self.channels, resize=self.resize)


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

    batch_size: int = Field(
        32, ge=1, le=4096, description="Images per batch on each replica (device)."
    )
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
    strategy: Literal["auto", "one", "mirrored", "multiworker"] = Field(
        "auto",
        description=(
            "auto: mirrored over the local GPUs when there are several, else one device; "
            "one: one device; mirrored: the local GPUs, or train.devices; multiworker: the "
            "hosts of the TF_CONFIG environment variable."
        ),
    )
    devices: list[str] | None = Field(
        None,
        description=(
            "Devices for the mirrored strategy (e.g. [GPU:0, GPU:1]); null: every local GPU. "
            "CPU:0, CPU:1 ... split the CPU into logical devices (for testing)."
        ),
    )
    scale_lr: bool = Field(
        True,
        description=(
            "Multiply the learning rates by the number of replicas (linear scaling): "
            "batch_size is per replica, so the global batch grows with them."
        ),
    )
    deterministic: bool = Field(False, description="Deterministic TensorFlow ops (slower).")
    tensorboard: bool = Field(False, description="Write TensorBoard logs into the run directory.")

    @field_validator("devices")
    @classmethod
    def _device_names(cls, devices: list[str] | None) -> list[str] | None:
        if devices is None:
            return None
        if not devices:
            raise ValueError("devices must name at least one device, or be null")
        if len(set(devices)) != len(devices):
            raise ValueError("devices lists a device twice")
        return devices

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


class VolumeSettings(Section):
    """3-D scans (NIfTI, DICOM series) in ``infer`` and ``gradcam``: slicing and the verdict."""

    axis: Axis = Field("axial", description="Plane the volume is cut in: axial, coronal, sagittal.")
    window: WindowMethod = Field(
        "auto",
        description="Intensity window: dicom (the series' own), percentile, or auto (dicom if any).",
    )
    percentiles: tuple[float, float] = Field(
        (0.5, 99.5), description="Volume percentiles mapped to black and white by percentile."
    )
    min_foreground: float = Field(
        0.05,
        ge=0.0,
        lt=1.0,
        description="Slices with less than this share of tissue pixels are blank: counted, not scored.",
    )
    aggregation: Aggregation = Field(
        "top_k_mean", description="Slice scores to volume score: max, top_k_mean or noisy_or."
    )
    top_k: int = Field(
        3, ge=1, le=64, description="Slices top_k_mean and noisy_or use; also the slices listed."
    )

    @field_validator("percentiles")
    @classmethod
    def _ordered_percentiles(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(f"need 0 <= low < high <= 100, got {low}, {high}")
        return value


class PathsSettings(Section):
    """Where data, runs and caches live."""

    data_dir: Path = Field(Path("data"), description="Root of the standard data layout.")
    runs_dir: Path = Field(Path("runs"), description="Where run directories are created.")
    cache_dir: Path = Field(
        Path(".mritumor-cache"), description="File caches of the input pipeline."
    )


_lower_layers: ContextVar[tuple[Mapping[str, Any], Mapping[str, Any]]] = ContextVar(
    "mritumor_lower_layers"
)
"""The YAML file's values and the recipe's, both already parsed, for the settings sources."""


@contextmanager
def file_and_recipe_layers(
    file_values: Mapping[str, Any], recipe_values: Mapping[str, Any]
) -> Iterator[None]:
    """Within the block, ``Settings(...)`` reads these nested values as its file and recipe layers.

    pydantic-settings builds its sources inside the constructor, which takes only the
    flags; a context variable hands it the two layers below the environment.
    """
    token = _lower_layers.set((file_values, recipe_values))
    try:
        yield
    finally:
        _lower_layers.reset(token)


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
    volumes: VolumeSettings = Field(default_factory=VolumeSettings)
    paths: PathsSettings = Field(default_factory=PathsSettings)

    @field_validator("recipe")
    @classmethod
    def _recipe_name(cls, name: str | None) -> str | None:
        """Lower case; loading checks that the recipe exists when it applies it."""
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

        The YAML file and the recipe arrive already parsed, from :func:`file_and_recipe_layers`.
        """
        file_values, recipe_values = _lower_layers.get(({}, {}))
        return (
            init_settings,
            env_settings,
            InitSettingsSource(settings_cls, init_kwargs=dict(file_values)),
            InitSettingsSource(settings_cls, init_kwargs=dict(recipe_values)),
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


def section_names() -> list[str]:
    """The top-level keys that hold a section (``data``, ``train``...), not a scalar (``seed``)."""
    return [
        name
        for name, field in Settings.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, Section)
    ]
