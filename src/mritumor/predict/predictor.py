"""The Predictor: a run's model with exactly the preprocessing it was trained with.

Everything that turns images into numbers goes through here (``eval``,
``calibrate``, ``threshold``, ``infer``, ``gradcam``), so the logits of an image
are the same whichever command asks. Preprocessing is read from the bundle
(image size, channels, resize mode); pixel scaling lives inside the saved
model. Probabilities are ``softmax(z / T)`` with the bundle's temperature, and
the decision statistic is the tumour score ``1 - p(negative_class)``
(:func:`mritumor.stats.calibration.tumour_score`).

On top of plain prediction: test-time augmentation (logits averaged over fixed
views) and MC dropout (dropout active, BatchNorm in inference mode, one row of
logits per stochastic pass). Combining passes and runs is :mod:`mritumor.predict.ensemble`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mritumor.core.errors import UsageError
from mritumor.core.progress import ProgressCallback
from mritumor.data.dicom import read_dicom_frames
from mritumor.data.image_errors import UnreadableImageError
from mritumor.data.splits import SplitFiles
from mritumor.predict.inputs import ImageInput
from mritumor.run.bundle import read_bundle
from mritumor.run.layout import MODEL_FILE, BundleError
from mritumor.run.model_file import load_model
from mritumor.stats.calibration import softmax, tumour_score

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from mritumor.run.bundle import Bundle


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

    def __init__(self, run_dir: Path, *, model_file: str = MODEL_FILE) -> None:
        self.run_dir = run_dir
        self.bundle: Bundle = read_bundle(run_dir)
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
        decoded here and volume slices as they come; all resized by the same function."""
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
        files = [i for i, item in enumerate(inputs) if not item.decoded]
        decoded = [i for i, item in enumerate(inputs) if item.decoded]
        failures: dict[str, str] = {}

        def generate() -> Iterator[tuple[list[int], Any]]:
            yield from self._file_batches([inputs[i] for i in files], files, batch_size, failures)
            yield from self._decoded_batches(
                [inputs[i] for i in decoded], decoded, batch_size, failures
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
            preprocessing=bundle.preprocessing,
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

    def _decoded_batches(
        self,
        inputs: Sequence[ImageInput],
        positions: Sequence[int],
        batch_size: int,
        failures: dict[str, str],
    ) -> Iterator[tuple[list[int], Any]]:
        """Batches of DICOM frames (each file decoded once) and of volume slices."""
        import tensorflow as tf

        from mritumor.data.input_pipeline import resize_image

        bundle = self.bundle
        decoded: dict[Path, list[NDArray[np.uint8]]] = {}
        pending: list[tuple[int, Any]] = []
        for item, position in zip(inputs, positions, strict=True):
            try:
                pixels = item.pixels
                if pixels is None:
                    if item.path not in decoded:
                        decoded[item.path] = read_dicom_frames(item.path, bundle.channels)
                    pixels = decoded[item.path][item.frame or 0]
            except UnreadableImageError as error:
                failures[item.label] = str(error)
                continue
            channels = _with_channels(pixels, bundle.channels)
            resized = resize_image(tf.constant(channels), bundle.image_size, bundle.resize)
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
        expected = (None, *self.bundle.preprocessing.input_shape)
        found = tuple(self.model.input_shape)
        if found != expected:
            raise BundleError(
                f"{self.run_dir}: the model takes input {found[1:]} but bundle.json says "
                f"{expected[1:]}; the run directory mixes files of different runs"
            )

    def _check_output_width(self) -> None:
        """A class list shorter or longer than the model's outputs would mislabel predictions."""
        outputs = int(self.model.output_shape[-1])
        names = len(self.bundle.class_names)
        if outputs != names:
            raise BundleError(
                f"{self.run_dir}: the model has {outputs} outputs but bundle.json lists "
                f"{names} class_names; the run directory mixes files of different runs"
            )


def _with_channels(pixels: NDArray[np.uint8], channels: int) -> NDArray[np.uint8]:
    """Grey pixels repeated to three planes for an RGB model; as they are otherwise."""
    if pixels.shape[-1] == 1 and channels == 3:
        return np.repeat(pixels, 3, axis=-1)
    return pixels


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
