"""The service's answers as pydantic models, so that ``/openapi.json`` describes every one.

:class:`PredictResponse` is the document of ``mritumor infer --format json``
(:meth:`mritumor.predict.ensemble.Predictions.document`): the route validates that
document against it and leaves out the keys the document leaves out, so the two
stay one format.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mritumor import __version__
from mritumor.run.bundle import Bundle


class ErrorResponse(BaseModel):
    """Every refusal: one sentence that says what was wrong and what to send instead."""

    detail: str


class Health(BaseModel):
    """The service is up and its model is loaded."""

    status: Literal["ok"] = "ok"
    run: str = Field(description="The run folder being served.")
    model_loaded: bool


class PredictionRecord(BaseModel):
    """One image: the same keys as a record of ``mritumor infer --format json``."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(
        description="The uploaded file's name; `<name>#frame<k>` for frame k of a multi-frame "
        "DICOM file."
    )
    predicted_class: str
    probabilities: dict[str, float] = Field(
        description="Calibrated probabilities softmax(z / T), by class."
    )
    tumour_score: float = Field(description="1 - p(negative class): the decision statistic.")
    entropy: float = Field(description="Predictive entropy of the probabilities, in nats.")
    tumour_score_std: float | None = Field(
        None, description="Spread of the tumour score over MC-dropout passes; only with them."
    )
    disagreement: float | None = Field(
        None, description="Spread of the members' tumour scores; only for an ensemble."
    )
    decision: Literal["tumour", "no tumour"] | None = Field(
        None, description="The tumour score against the threshold; only when there is one."
    )
    triage: Literal["tumour", "review", "no tumour"] | None = Field(
        None, description="`review` near the threshold; only when there is a threshold."
    )
    note: str | None = Field(
        description="A caution, e.g. an image under 32 px predicted after upsampling."
    )


class PredictResponse(BaseModel):
    """The document of ``mritumor infer --format json``."""

    model_config = ConfigDict(extra="forbid")

    threshold: float | None = Field(description="The decision threshold; null when none is set.")
    predictions: list[PredictionRecord] = Field(description="One record per image, in order.")
    unreadable: dict[str, str] = Field(
        description="Always empty here: a request with an unreadable file is refused (422)."
    )


class InputSpec(BaseModel):
    """How an image enters the model: the bundle's preprocessing."""

    image_size: int = Field(description="Side of the square model input, in pixels.")
    channels: int = Field(description="1 for grayscale, 3 for RGB.")
    resize: str = Field(description="`plain` (stretch) or `pad` (keep the aspect ratio).")


class ServingLimits(BaseModel):
    """How this service predicts and what it accepts."""

    decision_threshold: float | None = Field(
        description="The threshold decisions use: the settings' inference.threshold, else the "
        "bundle's."
    )
    triage_band: float
    tta_samples: int
    mc_dropout_samples: int
    max_upload_bytes: int
    max_files: int
    batch_window_ms: float
    max_batch: int


class ModelCard(BaseModel):
    """What the served model is, from the run's ``bundle.json``."""

    run: str
    command: str = Field(description="The command that produced the run.")
    created: str
    backbone: str
    class_names: list[str] = Field(description="In the order of the model's outputs.")
    negative_class: str = Field(description="The tumour score is 1 - p(negative_class).")
    input: InputSpec
    temperature: float = Field(description="T of softmax(z / T).")
    temperature_source: dict[str, Any] | None = Field(
        description="How T was fitted (split, images, NLL before and after); null at T = 1."
    )
    threshold: float | None = Field(description="The bundle's operating point.")
    threshold_info: dict[str, Any] | None = Field(
        description="How the threshold was chosen: strategy, constraints, split."
    )
    dataset_fingerprint: str
    versions: dict[str, str] = Field(description="Versions that created the run.")
    git_commit: str | None
    parent: str | None = Field(description="The parent run of a finetune run.")
    mritumor_version: str = Field(description="The mritumor serving it.")
    serving: ServingLimits

    @classmethod
    def of(cls, run_dir: Path, bundle: Bundle, serving: ServingLimits) -> ModelCard:
        return cls(
            run=str(run_dir),
            command=bundle.command,
            created=bundle.created,
            backbone=bundle.backbone,
            class_names=list(bundle.class_names),
            negative_class=bundle.negative_class,
            input=InputSpec(**bundle.preprocessing.model_dump()),
            temperature=bundle.temperature,
            temperature_source=bundle.temperature_source,
            threshold=bundle.threshold,
            threshold_info=bundle.threshold_info,
            dataset_fingerprint=bundle.dataset_fingerprint,
            versions=dict(bundle.versions),
            git_commit=bundle.git_commit,
            parent=bundle.parent,
            mritumor_version=__version__,
            serving=serving,
        )
