"""The Predictor: a run's model with exactly the preprocessing it was trained with.

Everything that turns images into numbers goes through here (``eval``,
``calibrate``, ``threshold``, ``infer``, ``gradcam``), so the logits of an image
are the same whichever command asks. Preprocessing is read from the bundle
(image size, channels, resize mode); pixel scaling lives inside the saved
model. Probabilities are ``softmax(z / T)`` with the bundle's temperature, and
the decision statistic is the tumour score ``1 - p(negative_class)``
(:func:`mritumor.stats.calibration.tumour_score`).

On top of plain prediction: test-time augmentation (logits averaged over fixed
views), MC dropout (dropout active, BatchNorm in inference mode, the predictive
mean of the probabilities and its spread), ensembles of runs (each member at its
own temperature) and a three-way triage (tumour, review, no tumour).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from mritumor.core.errors import UsageError
from mritumor.core.progress import ProgressCallback
from mritumor.data.splits import SplitFiles
from mritumor.run import bundle as bundles
from mritumor.stats.calibration import softmax, tumour_score

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from mritumor.run.bundle import Bundle

TUMOUR, REVIEW, NO_TUMOUR = "tumour", "review", "no tumour"


@dataclass(frozen=True)
class View:
    """One test-time view of an image: an optional left-right flip, a rotation, a zoom."""

    name: str
    flip: bool = False
    degrees: float = 0.0
    scale: float = 1.0


#: The views of ``--tta N``: the first N, the original first. Axial MRI is
#: roughly left-right symmetric, so flips and small rotations keep the anatomy plausible.
TTA_VIEWS = (
    View("original"),
    View("flip", flip=True),
    View("rotate +5", degrees=5.0),
    View("rotate -5", degrees=-5.0),
    View("zoom 1.05", scale=1.05),
    View("flip, rotate +5", flip=True, degrees=5.0),
    View("flip, rotate -5", flip=True, degrees=-5.0),
    View("flip, zoom 1.05", flip=True, scale=1.05),
)


@dataclass(frozen=True)
class ImageInput:
    """One image to predict: a file, or one frame of a multi-frame DICOM file."""

    path: Path
    frame: int | None = None

    @property
    def label(self) -> str:
        """How the image is named in output: the path, ``#frame<k>`` (1-based) for a frame."""
        return str(self.path) if self.frame is None else f"{self.path}#frame{self.frame + 1}"


@dataclass(frozen=True)
class Logits:
    """Model outputs for the images that could be read, in input order."""

    samples: NDArray[np.float64]
    """``(S, n, K)``: one row of logits per readable image for each of S stochastic passes
    (S = 1 without MC dropout); TTA views are already averaged."""
    kept: NDArray[np.intp]
    """Positions in the input of the rows (unreadable inputs are left out)."""
    failures: dict[str, str] = field(default_factory=dict)
    """Unreadable inputs (by label), with the reason."""

    @property
    def logits(self) -> NDArray[np.float64]:
        """``(n, K)`` logits of the first pass: the deterministic prediction without MC dropout."""
        return np.asarray(self.samples[0], dtype=np.float64)


class Predictor:
    """Loads ``model.keras`` (safe mode) and ``bundle.json`` of a run and predicts with them."""

    def __init__(self, run_dir: Path, *, model_file: str = bundles.MODEL_FILE) -> None:
        from mritumor.models.classifier import load_model

        self.run_dir = run_dir
        self.bundle: Bundle = bundles.read_bundle(run_dir)
        self.model: Any = load_model(run_dir / model_file)
        self._check_input_shape()
        self._check_output_width()
        self._mc_ready = False

    @property
    def class_names(self) -> list[str]:
        return list(self.bundle.class_names)

    @property
    def temperature(self) -> float:
        return self.bundle.temperature

    def logits(
        self,
        paths: Sequence[Path],
        *,
        batch_size: int = 32,
        progress: ProgressCallback | None = None,
    ) -> Logits:
        """Raw logits of every readable image file of ``paths``, batched."""
        return self.predict(
            [ImageInput(path) for path in paths], batch_size=batch_size, progress=progress
        )

    def predict(
        self,
        inputs: Sequence[ImageInput],
        *,
        batch_size: int = 32,
        tta: int = 1,
        mc_samples: int = 0,
        seed: int = 0,
        progress: ProgressCallback | None = None,
    ) -> Logits:
        """Logit samples of ``inputs``: image files through the input pipeline, DICOM frames
        decoded here; both resized by the same function."""
        views = _tta_views(tta)
        if mc_samples:
            self._enable_mc_dropout(seed)
        passes = max(mc_samples, 1)
        batches, failures = self.batches(inputs, batch_size)
        outputs: list[NDArray[np.float64]] = []
        positions: list[int] = []
        for index_batch, images in batches:
            outputs.append(self._samples(images, views, passes, stochastic=mc_samples > 0))
            positions.extend(index_batch)
            if progress is not None:
                progress(len(positions) + len(failures), len(inputs))
        width = len(self.bundle.class_names)
        samples = np.concatenate(outputs, axis=1) if outputs else np.zeros((passes, 0, width))
        order = np.argsort(np.asarray(positions, dtype=np.intp), kind="stable")
        return Logits(
            samples=samples[:, order],
            kept=np.asarray(positions, dtype=np.intp)[order],
            failures=failures,
        )

    def probabilities(self, logits: NDArray[np.float64]) -> NDArray[np.float64]:
        """Calibrated probabilities ``softmax(z / T)`` at the bundle's temperature."""
        return softmax(logits, self.temperature)

    def tumour_scores(self, logits: NDArray[np.float64]) -> NDArray[np.float64]:
        """The decision statistic ``1 - p(negative_class)`` on calibrated probabilities."""
        return tumour_score(self.probabilities(logits), self.bundle.negative_index)

    # ------------------------------------------------------------------ internals

    def batches(
        self, inputs: Sequence[ImageInput], batch_size: int
    ) -> tuple[Iterator[tuple[list[int], Any]], dict[str, str]]:
        """Model-input batches with the input positions they hold, and the unreadable inputs."""
        files = [i for i, item in enumerate(inputs) if item.frame is None]
        frames = [i for i, item in enumerate(inputs) if item.frame is not None]
        failures: dict[str, str] = {}

        def generate() -> Iterator[tuple[list[int], Any]]:
            yield from self._file_batches([inputs[i] for i in files], files, batch_size, failures)
            yield from self._frame_batches(
                [inputs[i] for i in frames], frames, batch_size, failures
            )

        return generate(), failures

    def _file_batches(
        self,
        inputs: Sequence[ImageInput],
        positions: Sequence[int],
        batch_size: int,
        failures: dict[str, str],
    ) -> Iterator[tuple[list[int], Any]]:
        from mritumor.data.input_pipeline import PipelineOptions, build_pipeline

        if not inputs:
            return
        bundle = self.bundle
        unlabelled = SplitFiles(
            name="predict",
            paths=tuple(item.path for item in inputs),
            labels=(0,) * len(inputs),
            class_names=tuple(bundle.class_names),
        )
        options = PipelineOptions(
            image_size=bundle.image_size,
            channels=bundle.channels,
            resize=bundle.resize_mode,
            batch_size=batch_size,
            seed=0,
            cache="none",
        )
        pipeline = build_pipeline(unlabelled, options)
        remaining = iter(range(len(inputs)))
        for batch in pipeline.dataset:
            images = batch[0]
            # The dataset drops failed decodes in order; a file's failure is recorded
            # before the batch holding the files after it is formed, so skip those here.
            kept: list[int] = []
            failed = pipeline.failures.items()
            while len(kept) < int(images.shape[0]):
                index = next(remaining)
                if str(inputs[index].path) not in failed:
                    kept.append(index)
            yield [positions[i] for i in kept], images
        failures.update(pipeline.failures.items())

    def _frame_batches(
        self,
        inputs: Sequence[ImageInput],
        positions: Sequence[int],
        batch_size: int,
        failures: dict[str, str],
    ) -> Iterator[tuple[list[int], Any]]:
        import tensorflow as tf

        from mritumor.data.dicom import read_dicom_frames
        from mritumor.data.files import UnreadableImageError
        from mritumor.data.input_pipeline import resize_image

        bundle = self.bundle
        decoded: dict[Path, list[NDArray[np.uint8]]] = {}
        pending: list[tuple[int, Any]] = []
        for item, position in zip(inputs, positions, strict=True):
            try:
                if item.path not in decoded:
                    decoded[item.path] = read_dicom_frames(item.path, bundle.channels)
                pixels = decoded[item.path][item.frame or 0]
            except UnreadableImageError as error:
                failures[item.label] = str(error)
                continue
            resized = resize_image(tf.constant(pixels), bundle.image_size, bundle.resize_mode)
            pending.append((position, resized))
            if len(pending) == batch_size:
                yield _stacked(pending)
                pending = []
        if pending:
            yield _stacked(pending)

    def _samples(
        self, images: Any, views: Sequence[View], passes: int, *, stochastic: bool
    ) -> NDArray[np.float64]:
        """``(passes, batch, K)`` logits, each pass averaged over the TTA views."""
        import tensorflow as tf

        pixels = tf.cast(images, tf.float32)
        viewed = [_apply_view(pixels, view) for view in views]
        runs = []
        for _ in range(passes):
            per_view = [
                np.asarray(self.model(batch, training=stochastic), dtype=np.float64)
                if stochastic
                else np.asarray(self.model.predict_on_batch(batch), dtype=np.float64)
                for batch in viewed
            ]
            runs.append(np.mean(per_view, axis=0))
        return np.stack(runs)

    def _enable_mc_dropout(self, seed: int) -> None:
        """Dropout active, BatchNorm in inference mode: BN with ``trainable=False`` keeps its
        moving statistics even when the model is called with ``training=True``."""
        import keras

        if not self._mc_ready:
            for layer in self.model._flatten_layers(include_self=False):
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.trainable = False
            self._mc_ready = True
        keras.utils.set_random_seed(seed)

    def _check_input_shape(self) -> None:
        expected = (None, *self.bundle.input_shape)
        found = tuple(self.model.input_shape)
        if found != expected:
            raise bundles.BundleError(
                f"{self.run_dir}: the model takes input {found[1:]} but bundle.json says "
                f"{expected[1:]}; the run directory mixes files of different runs"
            )

    def _check_output_width(self) -> None:
        """A class list shorter or longer than the model's outputs would mislabel predictions."""
        outputs = int(self.model.output_shape[-1])
        names = len(self.bundle.class_names)
        if outputs != names:
            raise bundles.BundleError(
                f"{self.run_dir}: the model has {outputs} outputs but bundle.json lists "
                f"{names} class_names; the run directory mixes files of different runs"
            )


def _stacked(pending: Sequence[tuple[int, Any]]) -> tuple[list[int], Any]:
    import tensorflow as tf

    return [position for position, _ in pending], tf.stack([image for _, image in pending])


def _tta_views(count: int) -> tuple[View, ...]:
    if not 1 <= count <= len(TTA_VIEWS):
        raise UsageError(f"--tta takes 1 to {len(TTA_VIEWS)} views, got {count}")
    return TTA_VIEWS[:count]


def _apply_view(images: Any, view: View) -> Any:
    import tensorflow as tf

    from mritumor.data.input_pipeline import rotate_and_zoom

    if view.flip:
        images = tf.reverse(images, axis=[2])
    if view.degrees or view.scale != 1.0:
        images = rotate_and_zoom(images, math.radians(view.degrees), view.scale)
    return images


# --------------------------------------------------------------------------- combining


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
    failures: dict[str, str] = {}
    for _, logits in members:
        failures.update(logits.failures)
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


# --------------------------------------------------------------------------- inputs


def gather_inputs(specs: Iterable[str]) -> tuple[list[ImageInput], list[str]]:
    """Files, folders (recursive, case-insensitive extensions) and globs, as image inputs.

    Each file comes once, in the order given; a multi-frame DICOM file becomes
    one input per frame. Returns the inputs and the specs that matched nothing.
    """
    import glob

    from mritumor.data.files import is_image_file, iter_image_files

    files: dict[Path, None] = {}
    missing: list[str] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            found = list(iter_image_files(path))
        elif path.is_file():
            found = [path]
        else:
            matches = sorted(glob.glob(str(path), recursive=True))  # noqa: PTH207 (any absolute pattern)
            found = [Path(match) for match in matches if is_image_file(Path(match))]
        if not found:
            missing.append(spec)
        files.update(dict.fromkeys(found))
    inputs: list[ImageInput] = []
    for file in files:
        frames = _frame_count(file)
        if frames > 1:
            inputs.extend(ImageInput(file, frame) for frame in range(frames))
        else:
            inputs.append(ImageInput(file))
    return inputs, missing


def _frame_count(path: Path) -> int:
    """Frames in a DICOM file (1 for anything else, or a header that cannot be read)."""
    from mritumor.data.dicom import dicom_frame_count, is_dicom_file

    return dicom_frame_count(path) if is_dicom_file(path) else 1


# --------------------------------------------------------------------------- the infer command


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


def load_members(run_dirs: Sequence[Path]) -> list[Predictor]:
    """The predictors of an ensemble; their classes and negative class must agree."""
    members = [Predictor(run_dir) for run_dir in run_dirs]
    first = members[0].bundle
    for member in members[1:]:
        bundles.check_class_names(
            first, member.class_names, what=f"ensemble member {member.run_dir}"
        )
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

    Images smaller than :data:`~mritumor.data.files.MIN_IMAGE_SIDE` are predicted
    too, with a note (:attr:`Predictions.notes`).
    """
    from mritumor.data.files import small_image_note

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
        if item.label in predicted and (note := small_image_note(item.path)) is not None
    }
    return replace(predictions, notes=notes)
