"""Encoded image files to model input inside a TensorFlow graph, pixel for pixel as mritumor
reads them: the decoding behind the SavedModel's ``serving_bytes`` signature.

mritumor reads files with Pillow (:func:`mritumor.data.images.read_image`) and resizes them
with :func:`mritumor.data.input_pipeline.resize_image`. A graph cannot call Pillow, so this
module redoes Pillow's steps with TensorFlow ops, with Pillow's integer arithmetic:

- JPEG through ``decode_jpeg`` with the accurate integer DCT (``tf.io.decode_image`` uses the
  fast one, which is up to a few grey levels off Pillow's);
- a 16-bit greyscale PNG stretched from its minimum to its maximum, as ``read_image`` does;
- an alpha channel composited on black (``Image.alpha_composite``);
- RGB to grey with Pillow's ITU-R 601-2 weights (``Image.convert("L")``), grey to RGB by
  repeating the channel;
- then the same ``resize_image`` call the input pipeline makes.

What it cannot redo is listed in docs/export-serve.md: EXIF orientation, DICOM, TIFF,
CMYK JPEG.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mritumor.core.environment import import_tensorflow
from mritumor.core.preprocessing import Preprocessing

if TYPE_CHECKING:
    import tensorflow as tf
else:
    tf = import_tensorflow()

_PNG_SIGNATURE = (137, 80, 78, 71, 13, 10, 26, 10)
#: Bytes 24 and 25 of a PNG: the IHDR bit depth and colour type (0 is greyscale).
_PNG_HEADER_LENGTH = 26
_GREY_16_BIT = (16, 0)
#: Pillow's ``L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16`` (Convert.c).
_LUMA_WEIGHTS = (19595, 38470, 7471)


def decode_for_model(data: tf.Tensor, preprocessing: Preprocessing) -> tf.Tensor:
    """One encoded file (a scalar string) -> uint8 ``[size, size, channels]``."""
    from mritumor.data.input_pipeline import resize_image

    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, dct_method="INTEGER_ACCURATE"),
        lambda: tf.cond(
            _is_16_bit_grey_png(data),
            lambda: _stretched_16_bit(data),
            lambda: tf.io.decode_image(data, expand_animations=False),
        ),
    )
    pixels = _with_channels(image, preprocessing.channels)
    resized = resize_image(pixels, preprocessing.image_size, preprocessing.resize)
    return tf.ensure_shape(resized, preprocessing.input_shape)


def _is_16_bit_grey_png(data: tf.Tensor) -> tf.Tensor:
    """Pillow opens these in mode ``I;16``, which ``read_image`` stretches to 0-255."""
    head = tf.io.decode_raw(tf.strings.substr(data, 0, _PNG_HEADER_LENGTH), tf.uint8)
    head = tf.pad(head, [[0, _PNG_HEADER_LENGTH - tf.shape(head)[0]]])  # a file too short
    signature = tf.reduce_all(head[:8] == tf.constant(_PNG_SIGNATURE, tf.uint8))
    depth, colour = _GREY_16_BIT
    return signature & tf.equal(head[24], depth) & tf.equal(head[25], colour)


def _stretched_16_bit(data: tf.Tensor) -> tf.Tensor:
    """``(v - min) / (max - min) * 255`` in float64, truncated to uint8, as ``read_image``."""
    values = tf.cast(tf.io.decode_png(data, channels=1, dtype=tf.uint16), tf.float64)
    low, high = tf.reduce_min(values), tf.reduce_max(values)
    scaled = tf.math.divide_no_nan(values - low, high - low) * 255.0
    return tf.cast(scaled, tf.uint8)


def _with_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
    """Any of grey, grey + alpha, RGB and RGBA -> ``channels`` (1 or 3), as Pillow converts."""
    has_alpha = tf.equal(tf.shape(image)[-1] % 2, 0)
    colour = tf.cond(has_alpha, lambda: _on_black(image), lambda: image)
    count = tf.shape(colour)[-1]
    if channels == 1:
        converted = tf.cond(tf.equal(count, 3), lambda: _luma(colour), lambda: colour)
    else:
        converted = tf.cond(tf.equal(count, 1), lambda: tf.tile(colour, [1, 1, 3]), lambda: colour)
    return tf.ensure_shape(converted, [None, None, channels])


def _on_black(image: tf.Tensor) -> tf.Tensor:
    """The colour channels composited on opaque black, in ``Image.alpha_composite``'s integers.

    Over black the blend reduces to ``c * a / 255``, which Pillow computes with 7 fractional
    bits and a shift for the division by 255 (AlphaComposite.c).
    """
    colour = tf.cast(image[..., :-1], tf.int32)
    alpha = tf.cast(image[..., -1:], tf.int32)
    shift = tf.bitwise.right_shift
    blended = colour * alpha * 128 + (0x80 << 7)
    divided = shift(shift(blended, 8) + blended, 8)
    return tf.cast(shift(divided, 7), tf.uint8)


def _luma(rgb: tf.Tensor) -> tf.Tensor:
    values = tf.cast(rgb, tf.int32)
    red, green, blue = _LUMA_WEIGHTS
    weighted = values[..., 0] * red + values[..., 1] * green + values[..., 2] * blue
    return tf.cast(tf.bitwise.right_shift(weighted + 0x8000, 16), tf.uint8)[..., tf.newaxis]
