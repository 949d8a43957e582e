"""The Predictor: a run's model with exactly the preprocessing it was trained with.

Everything that turns images into numbers goes through here (``eval``,
``calibrate``, ``threshold``, and later ``infer`` and ``gradcam``), so the logits
of an image are the same whichever command asks. Preprocessing is read from
the bundle (image size, channels, resize mode); pixel scaling lives inside the
saved model. Probabilities are ``softmax(z / T)`` with the bundle's temperature,
and the decision statistic is the tumour score ``1 - p(negative_class)``
(:func:`mritumor.calibration.tumour_score`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mritumor import bundle as bundles
from mritumor.calibration import softmax, tumour_score
from mritumor.data.splits import SplitFiles
from mritumor.progress import ProgressCallback

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from mritumor.bundle import Bundle


@dataclass(frozen=True)
class Logits:
    """Model outputs for the images that could be read, in input order."""

    paths: tuple[Path, ...]
    logits: NDArray[np.float64]
    kept: NDArray[np.intp]
    """Positions in the input of the rows of :attr:`logits` (unreadable files are left out)."""
    failures: dict[str, str] = field(default_factory=dict)
    """Unreadable input files, with the reason."""


class Predictor:
    """Loads ``model.keras`` (safe mode) and ``bundle.json`` of a run and predicts with them."""

    def __init__(self, run_dir: Path, *, model_file: str = bundles.MODEL_FILE) -> None:
        from mritumor.model import load_model

        self.run_dir = run_dir
        self.bundle: Bundle = bundles.read_bundle(run_dir)
        self.model: Any = load_model(run_dir / model_file)
        self._check_input_shape()

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
        """Raw logits of every readable image of ``paths``, batched."""
        from mritumor.data.pipeline import PipelineOptions, build_pipeline

        bundle = self.bundle
        unlabelled = SplitFiles(
            name="predict",
            paths=tuple(paths),
            labels=(0,) * len(paths),
            class_names=tuple(bundle.class_names),
        )
        options = PipelineOptions(
            image_size=bundle.image_size,
            channels=bundle.channels,
            resize="pad" if bundle.resize == "pad" else "plain",
            batch_size=batch_size,
            seed=0,
            cache="none",
        )
        pipeline = build_pipeline(unlabelled, options)
        outputs: list[NDArray[np.float64]] = []
        done = 0
        for batch in pipeline.dataset:
            images = batch[0]
            outputs.append(np.asarray(self.model.predict_on_batch(images), dtype=np.float64))
            done += int(images.shape[0])
            if progress is not None:
                progress(done, len(paths))
        failures = pipeline.failures.items()
        kept = np.asarray(
            [i for i, path in enumerate(paths) if str(path) not in failures], dtype=np.intp
        )
        width = len(bundle.class_names)
        stacked = np.concatenate(outputs) if outputs else np.zeros((0, width))
        return Logits(paths=tuple(paths), logits=stacked, kept=kept, failures=failures)

    def probabilities(self, logits: NDArray[np.float64]) -> NDArray[np.float64]:
        """Calibrated probabilities ``softmax(z / T)`` at the bundle's temperature."""
        return softmax(logits, self.temperature)

    def tumour_scores(self, logits: NDArray[np.float64]) -> NDArray[np.float64]:
        """The decision statistic ``1 - p(negative_class)`` on calibrated probabilities."""
        return tumour_score(self.probabilities(logits), self.bundle.negative_index)

    def _check_input_shape(self) -> None:
        expected = (None, *self.bundle.input_shape)
        found = tuple(self.model.input_shape)
        if found != expected:
            raise bundles.BundleError(
                f"{self.run_dir}: the model takes input {found[1:]} but bundle.json says "
                f"{expected[1:]}; the run directory mixes files of different runs"
            )
