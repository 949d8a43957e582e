"""Combining predictions: MC passes and ensemble members into calibrated probabilities, and the
three-way triage (tumour, review, no tumour) that ``infer`` reports.

Each member's passes become probabilities at its own temperature; members are combined by the
mean or the median. An image goes to review when its tumour score is close to the threshold or
the members disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from mritumor.core.errors import UsageError
from mritumor.core.fsutil import json_safe
from mritumor.core.progress import ProgressCallback
from mritumor.data.images import small_image_note
from mritumor.predict.inputs import ImageInput
from mritumor.predict.predictor import Logits, Predictor
from mritumor.run.bundle import check_class_names
from mritumor.stats.calibration import softmax, tumour_score

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from mritumor.config.schema import Settings

TUMOUR, REVIEW, NO_TUMOUR = "tumour", "review", "no tumour"


@dataclass(frozen=True)
class Predictions:
    """Combined predictions for the readable inputs, in input order."""

    labels: tuple[str, ...]
    class_names: tuple[str, ...]
    probabilities: NDArray[np.float64]
    """``(n, K)`` calibrated probabilities: the mean over MC passes, combined over members."""
    tumour_score: NDArray[np.float64]
    entropy: NDArray[np.float64]
    """Predictive entropy (nats) of :attr:`probabilities`."""
    score_std: NDArray[np.float64] | None
    """Standard deviation of the tumour score over MC passes (None without MC dropout)."""
    disagreement: NDArray[np.float64] | None
    """Largest minus smallest member tumour score (None for a single model)."""
    threshold: float | None
    decision: tuple[str, ...] | None
    triage: tuple[str, ...] | None
    failures: dict[str, str]
    notes: dict[str, str] = field(default_factory=dict)
    """Cautions by label: an image smaller than ``MIN_IMAGE_SIDE``, predicted after upsampling."""

    @property
    def predicted(self) -> NDArray[np.intp]:
        return np.asarray(self.probabilities.argmax(axis=1), dtype=np.intp)

    def records(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per image; ``note`` is None unless :attr:`notes` has one."""
        rows = []
        for i, label in enumerate(self.labels):
            row: dict[str, Any] = {
                "path": label,
                "predicted_class": self.class_names[self.predicted[i]],
                "probabilities": dict(
                    zip(self.class_names, map(float, self.probabilities[i]), strict=True)
                ),
                "tumour_score": float(self.tumour_score[i]),
                "entropy": float(self.entropy[i]),
            }
            if self.score_std is not None:
                row["tumour_score_std"] = float(self.score_std[i])
            if self.disagreement is not None:
                row["disagreement"] = float(self.disagreement[i])
            if self.decision is not None and self.triage is not None:
                row["decision"] = self.decision[i]
                row["triage"] = self.triage[i]
            row["note"] = self.notes.get(label)
            rows.append(row)
        return rows

    def document(self) -> dict[str, Any]:
        """The one JSON document of ``infer --format json`` and of ``serve``'s ``POST /predict``:
        the threshold, one record per image (:meth:`records`) and the unreadable inputs."""
        document = {
            "threshold": self.threshold,
            "predictions": self.records(),
            "unreadable": self.failures,
        }
        return dict(json_safe(document))

    def subset(self, names: Mapping[str, str]) -> Predictions:
        """Only the images whose label is a key of ``names``, relabelled ``names[label]``.

        ``serve`` predicts the uploads of several requests in one call and hands each
        request its own rows, under the file names it sent.
        """
        rows = [i for i, label in enumerate(self.labels) if label in names]
        pick = np.asarray(rows, dtype=np.intp)

        def chosen(values: tuple[str, ...] | None) -> tuple[str, ...] | None:
            return None if values is None else tuple(values[i] for i in rows)

        return replace(
            self,
            labels=tuple(names[self.labels[i]] for i in rows),
            probabilities=self.probabilities[pick],
            tumour_score=self.tumour_score[pick],
            entropy=self.entropy[pick],
            score_std=None if self.score_std is None else self.score_std[pick],
            disagreement=None if self.disagreement is None else self.disagreement[pick],
            decision=chosen(self.decision),
            triage=chosen(self.triage),
            failures={names[key]: why for key, why in self.failures.items() if key in names},
            notes={names[key]: note for key, note in self.notes.items() if key in names},
        )


def combine(
    members: Sequence[tuple[Predictor, Logits]],
    inputs: Sequence[ImageInput],
    *,
    strategy: Literal["mean", "median"] = "mean",
    threshold: float | None = None,
    band: float = 0.1,
    max_disagreement: float = 0.2,
) -> Predictions:
    """Combine members' logit samples into calibrated probabilities, scores and triage.

    Each member's passes are turned into probabilities at its own temperature
    and averaged (the predictive mean); members are combined by ``strategy``.
    Only images every member could read are kept.
    """
    first = members[0][0]
    negative = first.bundle.negative_index
    kept = sorted(set.intersection(*(set(logits.kept.tolist()) for _, logits in members)))
    failures: dict[str, str] = {}
    for _, logits in members:
        failures.update(logits.failures)
    if not kept:
        return _nothing_readable(members, threshold, failures)
    per_member = []
    member_scores = []
    for predictor, logits in members:
        samples = logits.samples[:, np.searchsorted(logits.kept, kept)]
        passes, count, width = samples.shape
        flat = softmax(samples.reshape(passes * count, width), predictor.temperature)
        per_member.append(flat.reshape(passes, count, width).mean(axis=0))
        member_scores.append(tumour_score(flat, negative).reshape(passes, count))
    stacked = np.stack(per_member)
    combined = np.median(stacked, axis=0) if strategy == "median" else stacked.mean(axis=0)
    combined = combined / combined.sum(axis=1, keepdims=True)
    scores = tumour_score(combined, negative)
    mc = members[0][1].samples.shape[0] > 1
    spread = np.concatenate(member_scores, axis=0).std(axis=0) if mc else None
    disagreement = (
        np.ptp(np.stack([s.mean(axis=0) for s in member_scores]), axis=0)
        if len(members) > 1
        else None
    )
    decision, labels3 = None, None
    if threshold is not None:
        decision = tuple(TUMOUR if s >= threshold else NO_TUMOUR for s in scores)
        labels3 = tuple(triage(scores, threshold, band, disagreement, max_disagreement))
    return Predictions(
        labels=tuple(inputs[i].label for i in kept),
        class_names=tuple(first.class_names),
        probabilities=combined,
        tumour_score=scores,
        entropy=_entropy(combined),
        score_std=spread,
        disagreement=disagreement,
        threshold=threshold,
        decision=decision,
        triage=labels3,
        failures=failures,
    )


def _nothing_readable(
    members: Sequence[tuple[Predictor, Logits]], threshold: float | None, failures: dict[str, str]
) -> Predictions:
    """No image could be read: no rows, with the same columns a prediction would have."""
    nothing = np.zeros(0)
    passes = members[0][1].samples.shape[0]
    return Predictions(
        labels=(),
        class_names=tuple(members[0][0].class_names),
        probabilities=np.zeros((0, len(members[0][0].class_names))),
        tumour_score=nothing,
        entropy=nothing,
        score_std=nothing if passes > 1 else None,
        disagreement=nothing if len(members) > 1 else None,
        threshold=threshold,
        decision=() if threshold is not None else None,
        triage=() if threshold is not None else None,
        failures=failures,
    )


def triage(
    scores: NDArray[np.float64],
    threshold: float,
    band: float,
    disagreement: NDArray[np.float64] | None = None,
    max_disagreement: float = 0.2,
) -> list[str]:
    """``tumour`` / ``no tumour`` by the threshold, ``review`` when the call is uncertain.

    Review: the score lies within ``band`` of the threshold (``|s - t| < band``;
    a band of 0 turns this off), or the ensemble members' scores span more than
    ``max_disagreement``.
    """
    labels = []
    for i, score in enumerate(scores):
        unsure = abs(score - threshold) < band
        split = disagreement is not None and disagreement[i] > max_disagreement
        if unsure or split:
            labels.append(REVIEW)
        else:
            labels.append(TUMOUR if score >= threshold else NO_TUMOUR)
    return labels


def _entropy(probabilities: NDArray[np.float64]) -> NDArray[np.float64]:
    safe = np.clip(probabilities, 1e-12, 1.0)
    return np.asarray(-(probabilities * np.log(safe)).sum(axis=1), dtype=np.float64)


@dataclass(frozen=True)
class InferOptions:
    """How ``infer`` predicts and decides."""

    batch_size: int = 32
    tta: int = 1
    mc_samples: int = 0
    seed: int = 0
    strategy: Literal["mean", "median"] = "mean"
    threshold: float | None = None
    """An explicit threshold; None uses the bundle's (single model only)."""
    band: float = 0.1
    max_disagreement: float = 0.2

    @classmethod
    def from_settings(cls, settings: Settings) -> InferOptions:
        """The ``inference`` section and the seed: how ``infer`` and ``serve`` predict."""
        options = settings.inference
        return cls(
            batch_size=options.batch_size,
            tta=options.tta_samples,
            mc_samples=options.mc_dropout_samples,
            seed=settings.seed,
            strategy=options.ensemble_strategy,
            threshold=options.threshold,
            band=options.triage_band,
            max_disagreement=options.max_disagreement,
        )


def load_members(run_dirs: Sequence[Path]) -> list[Predictor]:
    """The predictors of an ensemble; their classes and negative class must agree."""
    members = [Predictor(run_dir) for run_dir in run_dirs]
    first = members[0].bundle
    for member in members[1:]:
        check_class_names(first, member.class_names, what=f"ensemble member {member.run_dir}")
        if member.bundle.negative_class != first.negative_class:
            raise UsageError(
                f"ensemble members disagree on the no-tumour class: {first.negative_class!r} "
                f"in {members[0].run_dir}, {member.bundle.negative_class!r} in {member.run_dir}"
            )
    return members


def decision_threshold(members: Sequence[Predictor], explicit: float | None) -> float | None:
    """The explicit threshold, else a single model's own.

    An ensemble needs an explicit one: a member's threshold was chosen on that
    member's scores, not on the combination.
    """
    if explicit is not None or len(members) > 1:
        return explicit
    return members[0].bundle.threshold


def infer(
    members: Sequence[Predictor],
    inputs: Sequence[ImageInput],
    options: InferOptions,
    *,
    progress: ProgressCallback | None = None,
) -> Predictions:
    """Predict ``inputs`` with every member and combine them (see :func:`combine`).

    Images smaller than :data:`~mritumor.data.images.MIN_IMAGE_SIDE` are predicted
    too, with a note (:attr:`Predictions.notes`).
    """
    outputs = [
        (
            member,
            member.predict(
                inputs,
                batch_size=options.batch_size,
                tta=options.tta,
                mc_samples=options.mc_samples,
                seed=options.seed,
                progress=progress,
            ),
        )
        for member in members
    ]
    predictions = combine(
        outputs,
        inputs,
        strategy=options.strategy,
        threshold=decision_threshold(members, options.threshold),
        band=options.band,
        max_disagreement=options.max_disagreement,
    )
    predicted = set(predictions.labels)
    notes = {
        item.label: note
        for item in inputs
        if item.label in predicted
        and item.pixels is None
        and (note := small_image_note(item.path)) is not None
    }
    return replace(predictions, notes=notes)
