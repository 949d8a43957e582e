"""One writer per format, each writing the same :class:`~mritumor.export.graph.ServingGraph`.

- SavedModel: ``keras.export.ExportArchive`` with two signatures, ``serving_default`` (uint8
  images) and ``serving_bytes`` (encoded files).
- TensorFlow Lite: ``tf.lite.TFLiteConverter`` from that SavedModel's ``serving_default``
  (the file decoders are not TFLite ops); float32, or with ``quantize`` dynamic-range
  quantisation (``Optimize.DEFAULT``: int8 weights, float activations).
- ONNX: tf2onnx on the graph's ``tf.function``, frozen by TensorFlow first (see
  :func:`write_onnx`). Keras 3's own ``model.export(format="onnx")`` calls tf2onnx too on the
  TensorFlow backend, but exports the model's logits alone (no temperature, softmax or
  tumour score) and, through ``from_function``, leaves the EfficientNet backbones with two
  extra inputs; onnxruntime then refuses to run them.

A writer returns what the sidecar records about how the file was made.
"""

from __future__ import annotations

import importlib.util
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, get_args

from mritumor.core.errors import UsageError
from mritumor.export.graph import IMAGES_INPUT, SERVING_BYTES, SERVING_DEFAULT, ServingGraph

ExportFormat = Literal["savedmodel", "tflite", "onnx"]
FORMATS: tuple[ExportFormat, ...] = get_args(ExportFormat)
#: Supported by tf2onnx 1.16+ and onnxruntime 1.18+ (the [export] extra's floors).
ONNX_OPSET = 17
#: The [export] extra: the converter, and onnxruntime for the parity check.
ONNX_PACKAGES = ("tf2onnx", "onnx", "onnxruntime")
MISSING_EXPORT_EXTRA = "pip install 'mritumor[export]'"


def check_format(text: str) -> ExportFormat:
    for name in FORMATS:
        if text == name:
            return name
    raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {text!r}")


def require_onnx_packages() -> None:
    """One line naming the extra when the ONNX tools are not installed."""
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(
            f"--format onnx needs {', '.join(missing)}, not installed: {MISSING_EXPORT_EXTRA}"
        )


def write_export(
    graph: ServingGraph, fmt: ExportFormat, target: Path, *, quantize: bool = False
) -> dict[str, Any]:
    """Write ``graph`` as ``fmt`` to ``target`` (a folder for a SavedModel, else a file)."""
    if fmt == "savedmodel":
        return write_savedmodel(graph, target)
    if fmt == "tflite":
        return write_tflite(graph, target, quantize=quantize)
    return write_onnx(graph, target)


def write_savedmodel(graph: ServingGraph, folder: Path) -> dict[str, Any]:
    import keras

    archive = keras.export.ExportArchive()
    archive.track(graph.model)
    archive.add_endpoint(SERVING_DEFAULT, graph.__call__, input_signature=[graph.images_spec])
    archive.add_endpoint(SERVING_BYTES, graph.from_bytes, input_signature=[graph.bytes_spec])
    archive.write_out(str(folder), verbose=False)
    return {
        "converter": f"keras.export.ExportArchive (Keras {keras.__version__})",
        "signatures": [SERVING_DEFAULT, SERVING_BYTES],
    }


def write_tflite(graph: ServingGraph, path: Path, *, quantize: bool) -> dict[str, Any]:
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="mritumor-export-") as scratch:
        saved_model = Path(scratch) / "saved_model"
        write_savedmodel(graph, saved_model)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            str(saved_model), signature_keys=[SERVING_DEFAULT]
        )
        if quantize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        path.write_bytes(converter.convert())
    return {
        "converter": f"tf.lite.TFLiteConverter (TensorFlow {tf.__version__})",
        "quantization": "dynamic_range" if quantize else None,
    }


def write_onnx(graph: ServingGraph, path: Path) -> dict[str, Any]:
    """The graph frozen by TensorFlow, then converted by tf2onnx.

    ``tf2onnx.convert.from_function`` (and Keras's ONNX export, which calls it) turns every
    tensor the function captures into a graph input, not only the variables it freezes: the
    mean and variance of the EfficientNet backbones' Normalization layer became two extra
    inputs that no client can feed. Freezing first leaves the images the only input.
    """
    import tensorflow as tf
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    concrete = graph.images_function().get_concrete_function()
    frozen = convert_variables_to_constants_v2(concrete)
    (images,) = frozen.inputs
    # The frozen outputs come in tf.nest order of the output dict's keys.
    names = tf.nest.flatten({key: key for key in concrete.structured_outputs})
    outputs = {tensor.name: name for tensor, name in zip(frozen.outputs, names, strict=True)}
    tf2onnx.convert.from_graph_def(
        frozen.graph.as_graph_def(),
        name="mritumor",
        input_names=[images.name],
        output_names=list(outputs),
        opset=ONNX_OPSET,
        tensors_to_rename={images.name: IMAGES_INPUT, **outputs},
        output_path=str(path),
    )
    return {"converter": f"tf2onnx {metadata.version('tf2onnx')}", "opset": ONNX_OPSET}
