"""Predicting 3-D volumes with a 2-D classifier: every slice scored, one verdict per volume.

Each volume (:mod:`mritumor.volumes.reading`) is cut along ``volumes.axis`` and
windowed (:mod:`mritumor.volumes.slicing`); its non-blank slices go through
:func:`mritumor.predict.ensemble.infer` like any other image, so TTA, MC dropout,
ensembles and the calibrated tumour score apply unchanged. The volume's tumour
score is :func:`mritumor.volumes.verdict.aggregate` of its slice scores; its class
is the one with the highest mean calibrated probability over its top ``k`` slices
(by tumour score), among the tumour classes when the decision is tumour (the
negative class when it is not), so that class and decision agree; its decision
compares the volume score with the same threshold as the slices, and review
applies the same band.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mritumor.core.volume_terms import Aggregation
from mritumor.data.image_errors import UnreadableImageError
from mritumor.predict.ensemble import NO_TUMOUR, TUMOUR, triage
from mritumor.predict.inputs import ImageInput
from mritumor.volumes.reading import read_volume
from mritumor.volumes.slicing import SliceOptions, VolumeSlices, slice_volume
from mritumor.volumes.verdict import aggregate, top_slices

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from mritumor.config.schema import Settings
    from mritumor.predict.ensemble import Predictions


@dataclass(frozen=True)
class VolumeOptions:
    """How volumes are sliced and judged: the ``volumes`` settings."""

    slicing: SliceOptions = field(default_factory=SliceOptions)
    aggregation: Aggregation = "top_k_mean"
    top_k: int = 3

    @classmethod
    def from_settings(cls, settings: Settings) -> VolumeOptions:
        options = settings.volumes
        return cls(
            slicing=SliceOptions.from_settings(options),
            aggregation=options.aggregation,
            top_k=options.top_k,
        )


@dataclass(frozen=True)
class SliceScore:
    """One of a volume's most suspicious slices."""

    label: str
    number: int
    """1-based, along the axis (as in the label)."""
    tumour_score: float
    predicted_class: str


@dataclass(frozen=True)
class VolumeVerdict:
    """One volume's verdict, with what it rests on."""

    source: Path
    axis: str
    slices: int
    blank: int
    scored: int
    window: str
    aggregation: str
    top_k: int
    tumour_score: float
    """The aggregated slice scores; NaN when no slice was scored."""
    probabilities: dict[str, float]
    """Mean calibrated probabilities over the top slices (empty when none was scored)."""
    predicted_class: str | None
    decision: str | None
    triage: str | None
    top: tuple[SliceScore, ...]
    notes: tuple[str, ...]

    def record(self) -> dict[str, Any]:
        """The JSON-ready verdict (``kind: volume``)."""
        return {
            "kind": "volume",
            "path": str(self.source),
            "axis": self.axis,
            "slices": self.slices,
            "blank_slices": self.blank,
            "scored_slices": self.scored,
            "window": self.window,
            "aggregation": self.aggregation,
            "top_k": self.top_k,
            "tumour_score": self.tumour_score,
            "probabilities": self.probabilities,
            "predicted_class": self.predicted_class,
            "decision": self.decision,
            "triage": self.triage,
            "top_slices": [
                {
                    "slice": top.number,
                    "label": top.label,
                    "tumour_score": top.tumour_score,
                    "predicted_class": top.predicted_class,
                }
                for top in self.top
            ],
            "notes": list(self.notes),
        }


def read_sliced(
    paths: Sequence[Path], options: SliceOptions
) -> tuple[list[VolumeSlices], dict[str, str]]:
    """Each readable volume cut into slices, and the unreadable ones with the reason."""
    sliced: list[VolumeSlices] = []
    failures: dict[str, str] = {}
    for path in paths:
        try:
            sliced.append(slice_volume(read_volume(path), options))
        except UnreadableImageError as error:
            failures[str(path)] = str(error)
    return sliced, failures


def slice_inputs(sliced: VolumeSlices) -> list[ImageInput]:
    """The kept slices of a volume as inputs: pixels in hand, labelled ``<path>#<axis><k>``."""
    return [
        ImageInput(sliced.source, plane=(sliced.axis, index), pixels=pixels)
        for index, pixels in zip(sliced.kept, sliced.pixels, strict=True)
    ]


def verdicts(
    predictions: Predictions,
    volumes: Sequence[VolumeSlices],
    options: VolumeOptions,
    *,
    band: float,
    negative_class: str,
) -> list[VolumeVerdict]:
    """One verdict per volume from the predictions of its slices (in ``predictions``)."""
    rows = {label: i for i, label in enumerate(predictions.labels)}
    found = []
    for sliced in volumes:
        scored = [
            (rows[i.label], i.plane[1]) for i in slice_inputs(sliced) if i.label in rows and i.plane
        ]
        judged = _Judged(dict(scored), sliced, options, band, negative_class)
        found.append(_verdict(predictions, judged))
    return found


@dataclass(frozen=True)
class _Judged:
    """One volume to judge: its prediction rows (mapped to slice positions) and the rules."""

    positions: dict[int, int]
    sliced: VolumeSlices
    options: VolumeOptions
    band: float
    negative_class: str


def _verdict(predictions: Predictions, judged: _Judged) -> VolumeVerdict:
    """The verdict of one volume (see the module's documentation)."""
    options, sliced = judged.options, judged.sliced
    rows = list(judged.positions)
    scores = predictions.tumour_score[rows]
    score = aggregate(scores, options.aggregation, options.top_k)
    best = [rows[i] for i in top_slices(scores, options.top_k)] if rows else []
    names = predictions.class_names
    mean = predictions.probabilities[best].mean(axis=0) if best else None
    threshold = predictions.threshold
    decision = label = None
    if threshold is not None and best:
        decision = TUMOUR if score >= threshold else NO_TUMOUR
        label = triage(np.asarray([score]), threshold, judged.band)[0]
    notes = list(sliced.notes)
    failed = len(sliced.kept) - len(rows)
    if failed:
        notes.append(
            f"{failed} of its {len(sliced.kept)} non-blank slice(s) could not be predicted"
        )
    if not sliced.kept:
        notes.append(f"no slice was scored: all {sliced.count} are blank")
    top = tuple(
        SliceScore(
            label=predictions.labels[row],
            number=judged.positions[row] + 1,
            tumour_score=float(predictions.tumour_score[row]),
            predicted_class=names[int(predictions.predicted[row])],
        )
        for row in best
    )
    return VolumeVerdict(
        source=sliced.source,
        axis=sliced.axis,
        slices=sliced.count,
        blank=len(sliced.blank),
        scored=len(rows),
        window=sliced.window,
        aggregation=options.aggregation,
        top_k=options.top_k,
        tumour_score=score,
        probabilities={} if mean is None else dict(zip(names, map(float, mean), strict=True)),
        predicted_class=None if mean is None else _volume_class(mean, names, judged, decision),
        decision=decision,
        triage=label,
        top=top,
        notes=tuple(notes),
    )


def _volume_class(
    mean: NDArray[np.float64], names: Sequence[str], judged: _Judged, decision: str | None
) -> str:
    """The class the decision allows with the highest mean probability over the top slices.

    A tumour decision picks among the tumour classes, a no-tumour one gives the negative
    class, so that class and decision never disagree; without a decision, any class.
    """
    if decision == NO_TUMOUR:
        return judged.negative_class
    allowed = [
        i for i, name in enumerate(names) if decision is None or name != judged.negative_class
    ]
    return names[max(allowed, key=lambda i: mean[i])]
