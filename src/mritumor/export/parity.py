"""The parity check: a written export, run in its own runtime, against the ``Predictor``.

The export is loaded as a client would load it (``tf.saved_model.load``, the TensorFlow Lite
interpreter, an onnxruntime session) and fed the uint8 model inputs of a few images; the
``Predictor`` predicts the same files. The largest difference of a probability or a tumour
score must stay within the format's tolerance: float32 rounding for SavedModel and ONNX, a
little more for TensorFlow Lite, whose kernels sum in another order. The SavedModel's
``serving_bytes`` signature is checked on the files' own bytes too (PNG and JPEG files, which
it decodes as mritumor does).

The dynamic-range quantised TensorFlow Lite model stores its weights in int8, so its scores
move by more than rounding: its tolerance is on the score, and the top-1 agreement is reported.

The images are up to ``count`` of the run's test and val files; a run without usable split
files (handed over without its data) is checked on generated smooth images instead.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mritumor.core.environment import native_stderr_silenced
from mritumor.export.graph import BYTES_INPUT, IMAGES_INPUT, PROBABILITIES, TUMOUR_SCORE
from mritumor.export.writers import ExportFormat
from mritumor.predict.inputs import ImageInput
from mritumor.run.layout import BundleError
from mritumor.run.splits import read_split

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from mritumor.predict.predictor import Predictor

    Outputs = tuple[NDArray[np.float64], NDArray[np.float64]]

#: Largest difference of a probability or score from the Predictor's, per format.
TOLERANCES: dict[ExportFormat, float] = {"savedmodel": 1e-4, "onnx": 1e-4, "tflite": 1e-3}
#: The dynamic-range quantised TensorFlow Lite model: on the tumour score.
QUANTISED_SCORE_TOLERANCE = 0.05
#: How many images the command checks; the splits tried, in order.
PARITY_IMAGES = 16
_SAMPLE_SPLITS = ("test", "val")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"


@dataclass(frozen=True)
class FilesCheck:
    """The SavedModel's ``serving_bytes`` signature fed the files' own bytes."""

    files: int
    max_difference: float
    skipped: str | None = None
    """Why the files were not checked, when they were not."""

    def summary(self) -> str:
        if self.skipped is not None:
            return f"serving_bytes not checked: {self.skipped}"
        return f"serving_bytes on the {self.files} file(s): {self.max_difference:.2e}"


@dataclass(frozen=True)
class Parity:
    """How closely an export's outputs follow the Predictor's on the same images."""

    images: int
    source: str
    """Where the images came from: ``test/val split`` or ``generated``."""
    max_probability_difference: float
    max_score_difference: float
    top1_agreement: float
    tolerance: float
    quantised: bool
    files: FilesCheck | None = None
    """The SavedModel's serving_bytes signature on the same files; None for other formats."""

    @property
    def largest_difference(self) -> float:
        """What the tolerance bounds: the score alone when quantised, else everything."""
        if self.quantised:
            return self.max_score_difference
        files = self.files.max_difference if self.files is not None else 0.0
        return max(self.max_probability_difference, self.max_score_difference, files)

    @property
    def passed(self) -> bool:
        return self.largest_difference <= self.tolerance

    def summary(self) -> str:
        """One line: what was compared and the largest difference against the tolerance."""
        what = "tumour score" if self.quantised else "probability"
        text = (
            f"largest {what} difference from the Predictor {self.largest_difference:.2e} "
            f"(tolerance {self.tolerance:g}) on {self.images} {self.source} image(s)"
        )
        if self.quantised:
            text += (
                f"; top-1 agreement {self.top1_agreement:.1%}, "
                f"largest probability difference {self.max_probability_difference:.2e}"
            )
        if self.files is not None:
            text += f"; {self.files.summary()}"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def check_parity(
    predictor: Predictor,
    fmt: ExportFormat,
    path: Path,
    *,
    quantised: bool = False,
    count: int = PARITY_IMAGES,
) -> Parity:
    """Run the export at ``path`` and the Predictor on the same ``count`` images."""
    with _sample_files(predictor, count) as (files, source):
        inputs = [ImageInput(file) for file in files]
        result = predictor.predict(inputs, batch_size=count)
        if not len(result.kept):
            raise BundleError(f"none of the {len(files)} {source} image(s) could be read")
        expected = (
            predictor.probabilities(result.logits),
            predictor.tumour_scores(result.logits),
        )
        runtime = ExportRuntime(fmt, path)
        probabilities, scores = runtime.predict(_model_inputs(predictor, inputs))
        readable = [files[position] for position in result.kept]
        checked = _files_check(runtime, readable, expected) if fmt == "savedmodel" else None
    return Parity(
        images=len(readable),
        source=source,
        max_probability_difference=float(np.max(np.abs(probabilities - expected[0]))),
        max_score_difference=float(np.max(np.abs(scores - expected[1]))),
        top1_agreement=float(np.mean(probabilities.argmax(1) == expected[0].argmax(1))),
        tolerance=QUANTISED_SCORE_TOLERANCE if quantised else TOLERANCES[fmt],
        quantised=quantised,
        files=checked,
    )


def _files_check(runtime: ExportRuntime, readable: Sequence[Path], expected: Outputs) -> FilesCheck:
    """The SavedModel's serving_bytes on the PNG and JPEG files among ``readable``."""
    import tensorflow as tf

    rows = [row for row, file in enumerate(readable) if _bytes_signature_decodes(file)]
    try:
        found = runtime.predict_files([readable[row] for row in rows]) if rows else None
    except tf.errors.InvalidArgumentError as error:  # a CMYK JPEG, say: Pillow reads it
        reason = error.message.strip().splitlines()[0]
        return FilesCheck(0, 0.0, f"{len(rows)} file(s) it could not decode: {reason}")
    if found is None:
        return FilesCheck(0, 0.0, "no PNG or JPEG file among the images")
    wanted = (expected[0][rows], expected[1][rows])
    largest = max(np.max(np.abs(found[0] - wanted[0])), np.max(np.abs(found[1] - wanted[1])))
    return FilesCheck(len(rows), float(largest))


class ExportRuntime:
    """An export loaded as a client loads it: uint8 batches (and files, for a SavedModel) in,
    ``(probabilities, tumour scores)`` out as float64 arrays."""

    def __init__(self, fmt: ExportFormat, path: Path) -> None:
        self._predict: Callable[[NDArray[np.uint8]], Outputs]
        if fmt == "savedmodel":
            import tensorflow as tf

            self._saved_model = tf.saved_model.load(str(path))
            self._predict = self._predict_savedmodel
        elif fmt == "tflite":
            self._predict = _tflite_runner(path)
        else:
            self._predict = _onnx_runner(path)

    def predict(self, images: NDArray[np.uint8]) -> Outputs:
        return self._predict(images)

    def predict_files(self, files: Sequence[Path]) -> Outputs:
        """The SavedModel's ``serving_bytes`` signature on the files' bytes."""
        import tensorflow as tf

        signature = self._saved_model.signatures["serving_bytes"]
        data = tf.constant([file.read_bytes() for file in files])
        return _as_outputs(signature(**{BYTES_INPUT: data}))

    def _predict_savedmodel(self, images: NDArray[np.uint8]) -> Outputs:
        import tensorflow as tf

        signature = self._saved_model.signatures["serving_default"]
        return _as_outputs(signature(**{IMAGES_INPUT: tf.constant(images)}))


def _tflite_runner(path: Path) -> Callable[[NDArray[np.uint8]], Outputs]:
    import tensorflow as tf

    with warnings.catch_warnings():
        # "tf.lite.Interpreter is deprecated" in favour of ai_edge_litert's, which is the same
        # interpreter (and API) in a package of its own; TensorFlow's is the one installed.
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(path))
    with native_stderr_silenced():  # "INFO: Created TensorFlow Lite XNNPACK delegate"
        runner = interpreter.get_signature_runner()

    def run(images: NDArray[np.uint8]) -> Outputs:
        with native_stderr_silenced():
            return _as_outputs(runner(**{IMAGES_INPUT: images}))

    return run


def _onnx_runner(path: Path) -> Callable[[NDArray[np.uint8]], Outputs]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(images: NDArray[np.uint8]) -> Outputs:
        probabilities, scores = session.run([PROBABILITIES, TUMOUR_SCORE], {IMAGES_INPUT: images})
        return _as_outputs({PROBABILITIES: probabilities, TUMOUR_SCORE: scores})

    return run


def _as_outputs(outputs: Any) -> Outputs:
    return (
        np.asarray(outputs[PROBABILITIES], dtype=np.float64),
        np.asarray(outputs[TUMOUR_SCORE], dtype=np.float64),
    )


def _model_inputs(predictor: Predictor, inputs: Sequence[ImageInput]) -> NDArray[np.uint8]:
    """The Predictor's model inputs, in input order: resized 0-255 pixels, exact in uint8."""
    batches, _ = predictor.batches(inputs, len(inputs))
    by_position = {
        position: np.asarray(image)
        for positions, images in batches
        for position, image in zip(positions, images, strict=True)
    }
    return np.stack([by_position[i] for i in sorted(by_position)]).astype(np.uint8)


def _bytes_signature_decodes(file: Path) -> bool:
    """PNG and JPEG files: those serving_bytes decodes exactly as mritumor does."""
    with file.open("rb") as handle:
        head = handle.read(len(_PNG_SIGNATURE))
    return head.startswith((_PNG_SIGNATURE, _JPEG_SIGNATURE))


@contextmanager
def _sample_files(predictor: Predictor, count: int) -> Iterator[tuple[list[Path], str]]:
    """Up to ``count`` files of the run's test and val splits spread evenly, or generated PNGs."""
    listed: list[Path] = []
    for split in _SAMPLE_SPLITS:
        try:
            listed.extend(read_split(predictor.run_dir, split, predictor.class_names).paths)
        except BundleError:  # no such split, or its files are gone
            continue
    if listed:
        picks = np.unique(np.linspace(0, len(listed) - 1, min(count, len(listed))).astype(int))
        yield [listed[i] for i in picks], "test/val split"
        return
    with tempfile.TemporaryDirectory(prefix="mritumor-parity-") as folder:
        yield _generated_files(Path(folder), predictor, count), "generated"


def _generated_files(folder: Path, predictor: Predictor, count: int) -> list[Path]:
    """Smooth random images, larger than the model input and not square, so they are resized."""
    from PIL import Image

    size = predictor.bundle.image_size
    mode = "L" if predictor.bundle.channels == 1 else "RGB"
    files = []
    for seed in range(count):
        rng = np.random.default_rng(seed)
        coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize(
            (size * 3 // 2, size * 5 // 4), Image.Resampling.BICUBIC
        )
        files.append(folder / f"generated-{seed:02d}.png")
        image.convert(mode).save(files[-1])
    return files
