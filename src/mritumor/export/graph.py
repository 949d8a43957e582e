"""The serving graph that every export format holds.

::

    images uint8 [N, H, W, C]   (H = W = the bundle's image_size, C its channels)
      -> float32, unscaled       (what the input pipeline feeds the model: raw 0-255 pixels;
                                  each backbone rescales inside the saved model)
      -> the run's model         (inference mode: dropout off, BatchNorm moving statistics)
      -> logits / T -> softmax   (T, the bundle's temperature)
      -> probabilities [N, K], tumour_score = 1 - probabilities[:, negative_class] [N]

Every format computes in float32. A run trained in mixed precision (``mixed_bfloat16``, which
``train.precision: auto`` picks on a CPU with native bfloat16) is exported as a float32 copy
with the same weights (:func:`float32_model`): neither onnxruntime nor TensorFlow Lite runs
its bfloat16 layers, and float32 is the more exact of the two.

The SavedModel also gets a second entry point, ``serving_bytes``: a batch of encoded image
files, each decoded and resized as mritumor reads files (:mod:`mritumor.export.decoding`),
then the same graph. Clients that resize themselves must do it as the input pipeline does:
the ``resize`` mode of the sidecar (``plain`` stretches, ``pad`` keeps the aspect ratio),
antialiased bilinear, rounded to uint8.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mritumor.core.environment import import_tensorflow
from mritumor.export.decoding import decode_for_model

if TYPE_CHECKING:
    import tensorflow as tf

    from mritumor.run.bundle import Bundle
else:
    tf = import_tensorflow()

IMAGES_INPUT = "images"
BYTES_INPUT = "image_bytes"
PROBABILITIES = "probabilities"
TUMOUR_SCORE = "tumour_score"
OUTPUTS = (PROBABILITIES, TUMOUR_SCORE)
#: The SavedModel signatures: uint8 batches (the default, as in every format) and files.
SERVING_DEFAULT = "serving_default"
SERVING_BYTES = "serving_bytes"


@dataclass(frozen=True)
class ServingGraph:
    """A run's loaded Keras model and its bundle, callable as the exported graph."""

    model: Any
    bundle: Bundle

    @property
    def images_spec(self) -> tf.TensorSpec:
        shape = [None, *self.bundle.preprocessing.input_shape]
        return tf.TensorSpec(shape, tf.uint8, name=IMAGES_INPUT)

    @property
    def bytes_spec(self) -> tf.TensorSpec:
        return tf.TensorSpec([None], tf.string, name=BYTES_INPUT)

    def __call__(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """uint8 ``[N, H, W, C]`` -> ``{probabilities: [N, K], tumour_score: [N]}``."""
        logits = self.model(tf.cast(images, tf.float32), training=False)
        scaled = tf.cast(logits, tf.float32) / tf.constant(self.bundle.temperature, tf.float32)
        probabilities = tf.nn.softmax(scaled, axis=-1)
        tumour_score = 1.0 - probabilities[:, self.bundle.negative_index]
        return {PROBABILITIES: probabilities, TUMOUR_SCORE: tumour_score}

    def from_bytes(self, files: tf.Tensor) -> dict[str, tf.Tensor]:
        """Encoded image files, string ``[N]`` -> the outputs of :meth:`__call__`."""
        preprocessing = self.bundle.preprocessing
        images = tf.map_fn(
            lambda data: decode_for_model(data, preprocessing),
            files,
            fn_output_signature=tf.TensorSpec(preprocessing.input_shape, tf.uint8),
        )
        return self(images)

    def images_function(self) -> Any:
        """:meth:`__call__` as a ``tf.function`` over :attr:`images_spec` (TFLite, ONNX)."""
        return tf.function(self.__call__, input_signature=[self.images_spec], autograph=False)


def compute_precision(model: Any) -> str:
    """``float32``, or the name of the mixed policy some of the model's layers compute in."""
    for layer in model.layers:
        if layer.dtype_policy.compute_dtype != "float32":
            return str(layer.dtype_policy.name)
    return "float32"


def float32_model(model: Any) -> Any:
    """``model`` rebuilt with every layer computing in float32, with the same weights.

    Mixed-precision layers keep their variables in float32 already, so nothing is rounded.
    """
    import keras

    if compute_precision(model) == "float32":
        return model

    def in_float32(layer: Any) -> Any:
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    copy = keras.models.clone_model(model, clone_function=in_float32)
    copy.set_weights(model.get_weights())
    return copy
