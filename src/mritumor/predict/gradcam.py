"""Grad-CAM and Grad-CAM++ heat maps, overlays and localisation metrics.

:func:`explain` is the only function that needs TensorFlow, and imports it when
called: importing this module stays cheap, and :func:`overlay`,
:func:`resize_heatmap`, :func:`resize_mask`, :func:`pointing_game_hit` and
:func:`energy_inside` are pure NumPy (and PIL, matplotlib for the colours).

Conventions shared by every function here:

* a heat map is a 2-D float32 array with values in [0, 1], normalised by its own
  maximum; a map that is zero everywhere (no positive evidence for the class)
  stays zero, never NaN;
* a lesion mask is a 2-D array of the heat map's shape; any non-zero value is
  inside the lesion, so boolean masks and 0/255 PNG masks both work.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from mritumor.core.environment import import_tensorflow
from mritumor.core.errors import BackboneError, MritumorError, UsageError

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, NDArray

Method = Literal["gradcam", "gradcam++"]
METHODS: tuple[Method, ...] = ("gradcam", "gradcam++")
METHOD_LABELS: dict[str, str] = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++"}
#: How many layer names an error message lists.
_LISTED_LAYERS = 5
_MODEL_NAME_PREFIX = "mritumor_"  # build_classifier names a model mritumor_<backbone>


@dataclass(frozen=True, eq=False)
class Explanation:
    """One image's heat map for one class.

    ``eq=False``: two explanations compare by identity, since comparing the
    arrays field by field has no single truth value.
    """

    heatmap: NDArray[np.float32]
    """H x W at the model's input size, in [0, 1], normalised by its own maximum."""
    class_index: int
    """The class explained: the one asked for, or the predicted one."""
    probability: float
    """softmax(logits / temperature) of ``class_index``."""
    layer: str
    method: str
    """``gradcam`` or ``gradcam++``."""


# --------------------------------------------------------------------------- layers


def conv_layer_names(model: Any) -> list[str]:
    """Names of the layers with a 4-D output (batch, height, width, channels), in graph order.

    The model's input layer is left out: its output is the image, not a feature map.
    """
    names = []
    for layer in model.layers:
        if layer.__class__.__name__ == "InputLayer":
            continue
        shape = _output_shape(layer)
        if shape is not None and len(shape) == 4:
            names.append(layer.name)
    return names


def default_layer(model: Any, backbone_name: str | None = None) -> str:
    """The layer Grad-CAM reads by default.

    The registry's ``last_conv_layer`` for ``backbone_name`` when the model has
    a layer of that name with a 4-D output, else the last layer with a 4-D
    output. ``backbone_name`` None reads it from the model's name
    (``mritumor_<backbone>``, as :func:`mritumor.models.classifier.build_classifier` names it);
    an unknown backbone (a plugin that is not installed) falls back too.
    """
    from mritumor.models.registry import registry

    candidates = conv_layer_names(model)
    if not candidates:
        raise UsageError(
            f"model {getattr(model, 'name', '?')!r} has no layer with a 4-D output; "
            "Grad-CAM needs a convolutional feature map"
        )
    name = backbone_name
    if name is None:
        model_name = str(getattr(model, "name", ""))
        if model_name.startswith(_MODEL_NAME_PREFIX):
            name = model_name[len(_MODEL_NAME_PREFIX) :]
    if name:
        try:
            preferred = registry.get(name).last_conv_layer
        except BackboneError:
            preferred = None
        if preferred in candidates:
            return str(preferred)
    return candidates[-1]


def _output_shape(layer: Any) -> tuple[Any, ...] | None:
    """The shape of ``layer``'s (single) symbolic output, or None when it has none."""
    try:
        output = layer.output
    except (AttributeError, ValueError):  # never called, or shared by several graphs
        return None
    if isinstance(output, (list, tuple)):
        return None
    shape = getattr(output, "shape", None)
    return tuple(shape) if shape is not None else None


def _check_layer(model: Any, layer: str) -> None:
    """A UsageError unless ``layer`` names a layer of ``model`` with a 4-D output."""
    candidates = conv_layer_names(model)
    if candidates:
        listed = ", ".join(repr(name) for name in candidates[-_LISTED_LAYERS:])
        more = (
            f" (the last {_LISTED_LAYERS} of {len(candidates)})"
            if len(candidates) > _LISTED_LAYERS
            else ""
        )
        choices = (
            f"layers with a feature map include {listed}{more}; "
            f"the default is {default_layer(model)!r}"
        )
    else:
        choices = "this model has no layer with a 4-D output"
    names = [existing.name for existing in model.layers]
    if layer not in names:
        close = difflib.get_close_matches(layer, candidates, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"model has no layer {layer!r}{hint}; {choices}")
    if layer not in candidates:
        found = model.get_layer(layer)
        shape = _output_shape(found)
        if found.__class__.__name__ == "InputLayer":
            described = "is the model's input, not a feature map"
        elif shape is not None:
            described = f"has output shape {shape}"
        else:
            described = "has no single output"
        raise UsageError(
            f"layer {layer!r} {described}: Grad-CAM needs a convolutional feature map "
            f"(a 4-D output, batch x height x width x channels); {choices}"
        )


# --------------------------------------------------------------------------- explain


def explain(
    model: Any,
    images: ArrayLike,
    *,
    layer: str,
    class_indices: Sequence[int] | None = None,
    method: Method = "gradcam",
    temperature: float = 1.0,
    batch_size: int = 16,
) -> list[Explanation]:
    """A heat map per image, of ``layer``'s evidence for the target class.

    ``images`` is an N x H x W x C batch of raw 0-255 pixels exactly as the
    model takes them (it rescales inside). The target class of image ``i`` is
    ``class_indices[i]``, or the predicted class (argmax of the logits) when
    ``class_indices`` is None. ``probability`` is softmax(logits / temperature)
    of that class, so pass the calibrated temperature to report calibrated
    probabilities; the maps themselves do not depend on it.

    The gradients are those of the target class's *logit*, not of its
    probability: a confident prediction saturates the softmax, so the
    probability's gradient vanishes (it is p(1 - p) times the logit's) and its
    direction mixes in the other classes' logits. Grad-CAM++'s closed form
    (Chattopadhay et al. 2018) also assumes the score is exp(logit).

    * ``gradcam`` (Selvaraju et al. 2017): channel weights are the spatial mean
      of the gradients; map = ReLU(sum_k w_k A_k).
    * ``gradcam++``: alpha = g^2 / (2 g^2 + sum_ij(A) g^3), 0 where the
      denominator is 0; w_k = sum_ij(alpha ReLU(g)); map = ReLU(sum_k w_k A_k).

    Each map is upsampled bilinearly to the model's input H x W and divided by
    its own maximum (an all-zero map stays zero). Feature maps and gradients
    are cast to float32 before the maths, so a ``mixed_float16`` model works.
    The model runs in inference mode (BatchNorm statistics, no dropout).

    One gradient model is built per call and run on ``batch_size`` images at a
    time; the tape keeps every activation of a batch for the backward pass, so
    memory grows like a training step's forward pass of ``batch_size`` images.
    """
    pixels = np.asarray(images, dtype=np.float32)
    targets = _check_arguments(
        model, pixels, class_indices, method=method, temperature=temperature, batch_size=batch_size
    )
    _check_layer(model, layer)
    count = pixels.shape[0]
    if count == 0:
        return []

    tf = import_tensorflow()
    import keras

    gradient_model = keras.Model(model.inputs, [model.get_layer(layer).output, model.output])
    height, width = pixels.shape[1], pixels.shape[2]
    explanations: list[Explanation] = []
    for start in range(0, count, batch_size):
        batch = tf.convert_to_tensor(pixels[start : start + batch_size])
        with tf.GradientTape() as tape:
            features, logits = gradient_model(batch, training=False)
            logits = tf.cast(logits, tf.float32)
            if targets is None:
                chosen = tf.argmax(logits, axis=-1, output_type=tf.int32)
            else:
                chosen = tf.constant(targets[start : start + batch_size], dtype=tf.int32)
            # Each image's logit depends on its own features only (inference mode),
            # so the gradient of the sum is every image's own gradient at once.
            score = tf.reduce_sum(tf.gather(logits, chosen, axis=1, batch_dims=1))
        gradients = tape.gradient(score, features)
        if gradients is None:
            raise UsageError(f"layer {layer!r} does not lead to the logits; pick one that does")
        maps = _class_activation_maps(
            tf, tf.cast(features, tf.float32), tf.cast(gradients, tf.float32), method
        )
        upsampled = tf.image.resize(maps[..., tf.newaxis], (height, width), method="bilinear")
        heatmaps = upsampled[..., 0].numpy()
        if not np.all(np.isfinite(heatmaps)):
            raise MritumorError(
                f"the gradients at layer {layer!r} are not finite (a float16 overflow?); "
                "explain with a float32 model"
            )
        probabilities = _softmax(logits.numpy().astype(np.float64) / temperature)
        for heatmap, index, row in zip(heatmaps, chosen.numpy(), probabilities, strict=True):
            explanations.append(
                Explanation(
                    heatmap=normalise_heatmap(heatmap),
                    class_index=int(index),
                    probability=float(row[int(index)]),
                    layer=layer,
                    method=method,
                )
            )
    return explanations


def _check_arguments(
    model: Any,
    pixels: NDArray[np.float32],
    class_indices: Sequence[int] | None,
    *,
    method: str,
    temperature: float,
    batch_size: int,
) -> list[int] | None:
    """The class indices as ints (None to take the predicted ones); errors for bad arguments."""
    if method not in METHODS:
        raise UsageError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, not {temperature!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    if pixels.ndim != 4:
        raise ValueError(f"images must be an N x H x W x C batch, not shape {pixels.shape}")
    expected = tuple(model.inputs[0].shape[1:])
    got = tuple(pixels.shape[1:])
    if len(expected) != len(got) or any(
        want is not None and want != have for want, have in zip(expected, got, strict=True)
    ):
        raise ValueError(f"the model takes images of shape {expected}, not {got}")
    if class_indices is None:
        return None
    if len(class_indices) != pixels.shape[0]:
        raise ValueError(f"{pixels.shape[0]} images but {len(class_indices)} class indices")
    n_classes = int(model.output.shape[-1])
    targets = [int(index) for index in class_indices]
    for index in targets:
        if not 0 <= index < n_classes:
            raise UsageError(f"class index {index} is out of range for {n_classes} classes")
    return targets


def _class_activation_maps(tf: Any, features: Any, gradients: Any, method: Method) -> Any:
    """N x h x w maps, ReLU(sum_k w_k A_k), from float32 feature maps A and gradients g."""
    if method == "gradcam":
        weights = tf.reduce_mean(gradients, axis=(1, 2))
    else:
        squared = tf.square(gradients)
        cubed = squared * gradients
        spatial_sum = tf.reduce_sum(features, axis=(1, 2), keepdims=True)
        alpha = tf.math.divide_no_nan(squared, 2.0 * squared + spatial_sum * cubed)
        weights = tf.reduce_sum(alpha * tf.nn.relu(gradients), axis=(1, 2))
    return tf.nn.relu(tf.einsum("nhwk,nk->nhw", features, weights))


def _softmax(logits: NDArray[np.float64]) -> NDArray[np.float64]:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    result: NDArray[np.float64] = shifted / shifted.sum(axis=-1, keepdims=True)
    return result


# --------------------------------------------------------------------------- pure NumPy


def normalise_heatmap(heatmap: ArrayLike) -> NDArray[np.float32]:
    """``heatmap`` with negatives set to 0, divided by its maximum; all zero stays zero."""
    values = np.maximum(np.asarray(heatmap, dtype=np.float32), 0.0)
    if not np.all(np.isfinite(values)):
        raise ValueError("a heat map must be finite")
    top = float(values.max(initial=0.0))
    if top <= 0.0:
        return np.zeros_like(values)
    return np.clip(values / top, 0.0, 1.0).astype(np.float32)


def overlay(
    image: ArrayLike, heatmap: ArrayLike, *, alpha: float = 0.4, colormap: str = "jet"
) -> NDArray[np.uint8]:
    """The heat map in ``colormap`` colours blended over ``image``: uint8 H x W x 3.

    ``image`` holds 0-255 pixels, H x W, H x W x 1 (both shown grey) or H x W x 3;
    ``heatmap`` is H x W with values in [0, 1] (clipped). Each pixel is
    ``(1 - alpha) * image + alpha * colour``, rounded: ``alpha`` 0 gives the
    image back, 1 the coloured map alone.
    """
    import matplotlib

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], not {alpha}")
    pixels = np.asarray(image)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., np.newaxis], 3, axis=-1)
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"image must be H x W, H x W x 1 or H x W x 3, not {np.shape(image)}")
    heat = _as_heatmap(heatmap)
    if heat.shape != pixels.shape[:2]:
        raise ValueError(f"heat map {heat.shape} and image {pixels.shape[:2]} differ in size")
    colours = matplotlib.colormaps[colormap](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
    base = np.clip(pixels.astype(np.float64), 0.0, 255.0)
    blended = (1.0 - alpha) * base + alpha * colours
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def resize_heatmap(heatmap: ArrayLike, shape: tuple[int, int]) -> NDArray[np.float32]:
    """``heatmap`` resized bilinearly to ``shape`` (height, width), kept in [0, 1].

    For drawing over an original image whose size differs from the model's
    input. Not renormalised: shrinking can lower the maximum below 1.
    """
    from PIL import Image

    heat = _as_heatmap(heatmap)
    height, width = _check_shape(shape)
    if heat.shape == (height, width):
        result: NDArray[np.float32] = heat.copy()
        return result
    # A 2-D float32 array is a PIL "F" (32-bit float) image: no rounding to 8 bits.
    resized = Image.fromarray(heat).resize((width, height), Image.Resampling.BILINEAR)
    result = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    return result


def resize_mask(mask: ArrayLike, shape: tuple[int, int]) -> NDArray[np.bool_]:
    """A boolean mask resized to ``shape`` (height, width) by nearest neighbour.

    Each output pixel takes the input pixel under its centre, so the mask stays
    binary (no blending at the lesion's edge). Non-zero input values are inside.
    """
    values = np.asarray(mask)
    if values.ndim != 2:
        raise ValueError(f"a mask must be 2-D, not shape {values.shape}")
    inside = values != 0
    height, width = _check_shape(shape)
    rows = _nearest(values.shape[0], height)
    columns = _nearest(values.shape[1], width)
    result: NDArray[np.bool_] = inside[np.ix_(rows, columns)]
    return result


def pointing_game_hit(heatmap: ArrayLike, mask: ArrayLike) -> bool:
    """Whether the heat map's maximum lies inside the mask (Zhang et al. 2016's pointing game).

    When several pixels share the maximum, the first in row-major order (top
    row first, then left to right) is the one that counts, as ``np.argmax``
    picks it. An all-zero heat map points nowhere: a miss.
    """
    heat, inside = _paired(heatmap, mask)
    if float(heat.max(initial=0.0)) <= 0.0:
        return False
    row, column = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return bool(inside[row, column])


def energy_inside(heatmap: ArrayLike, mask: ArrayLike) -> float:
    """The fraction of the heat map's total inside the mask, in [0, 1]; 0 for an all-zero map.

    The energy-based pointing game of Score-CAM (Wang et al. 2020).
    """
    heat, inside = _paired(heatmap, mask)
    total = float(heat.sum(dtype=np.float64))
    if total <= 0.0:
        return 0.0
    return float(heat[inside].sum(dtype=np.float64)) / total


def _as_heatmap(heatmap: ArrayLike) -> NDArray[np.float32]:
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"a heat map must be 2-D, not shape {heat.shape}")
    if not np.all(np.isfinite(heat)):
        raise ValueError("a heat map must be finite")
    return heat


def _paired(heatmap: ArrayLike, mask: ArrayLike) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """A finite, non-negative heat map and a boolean mask of the same shape."""
    heat = _as_heatmap(heatmap)
    if np.any(heat < 0):
        raise ValueError("a heat map must not be negative")
    inside = np.asarray(mask) != 0
    if inside.shape != heat.shape:
        raise ValueError(
            f"mask {inside.shape} and heat map {heat.shape} differ in shape; "
            "resize the mask with resize_mask (nearest neighbour)"
        )
    return heat, inside


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    if len(shape) != 2 or any(int(side) != side or side < 1 for side in shape):
        raise ValueError(f"shape must be (height, width) in whole pixels, not {shape!r}")
    return int(shape[0]), int(shape[1])


def _nearest(source: int, target: int) -> NDArray[np.intp]:
    """For each of ``target`` pixels, the ``source`` pixel under its centre."""
    centres = (np.arange(target) + 0.5) * (source / target)
    result: NDArray[np.intp] = np.minimum(np.floor(centres).astype(np.intp), source - 1)
    return result
