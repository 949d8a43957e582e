"""Grad-CAM (mritumor.predict.gradcam): known answers on hand-made models, the real classifier, metrics."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mritumor.config.loading import load_settings
from mritumor.config.schema import Settings
from mritumor.core.errors import UsageError
from mritumor.models.classifier import build_classifier
from mritumor.predict import gradcam
from mritumor.predict.gradcam import (
    Explanation,
    conv_layer_names,
    default_layer,
    energy_inside,
    explain,
    overlay,
    pointing_game_hit,
    resize_heatmap,
    resize_mask,
)
from mritumor.run.model_file import load_model

METHODS = ("gradcam", "gradcam++")
SIDE = 16
SQUARE = (slice(0, 4), slice(0, 4))  # the bright square, top left
OPPOSITE = (slice(12, 16), slice(12, 16))  # the opposite corner
SIZE = 32


@pytest.fixture(autouse=True)
def _float32_keras() -> Iterator[None]:
    import keras

    keras.utils.set_random_seed(5)
    yield
    keras.mixed_precision.set_global_policy("float32")


def mask_of(region: tuple[slice, slice], side: int = SIDE) -> np.ndarray:
    mask = np.zeros((side, side), dtype=bool)
    mask[region] = True
    return mask


def corner_model(dense: np.ndarray | None = None) -> Any:
    """image 16x16x1 -> 1x1 conv (weight 1, no bias) "conv" -> average -> Dense(2).

    The feature map is the image itself, and the gradient of logit c is the
    constant dense[0, c] / 256 everywhere, so the map is ReLU(dense[0, c] * image):
    the image for a class with a positive weight, zero for one with a negative weight.
    """
    import keras

    inputs = keras.Input((SIDE, SIDE, 1), name="image")
    features = keras.layers.Conv2D(1, 1, use_bias=False, kernel_initializer="ones", name="conv")(
        inputs
    )
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    logits = keras.layers.Dense(2, name="logits")(pooled)
    model = keras.Model(inputs, logits)
    weights = np.array([[1.0, -1.0]]) if dense is None else dense
    model.get_layer("logits").set_weights(
        [weights.astype(np.float32), np.array([0.0, 0.5], np.float32)]
    )
    return model


def corner_image() -> np.ndarray:
    image = np.zeros((1, SIDE, SIDE, 1), dtype=np.float32)
    image[0][SQUARE] = 200.0
    return image


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(
        None,
        {
            "model.backbone": "small_cnn",
            "model.weights": "none",
            "data.image_size": SIZE,
            "model.dropout": 0.0,
        },
    ).settings


@pytest.fixture(scope="module")
def small_cnn(settings: Settings) -> Any:
    import keras

    keras.utils.set_random_seed(7)
    return build_classifier(settings)


def pixels(count: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, SIZE, SIZE, 3)).astype(np.float32)


def assert_valid_map(explanation: Explanation, shape: tuple[int, int]) -> None:
    heatmap = explanation.heatmap
    assert heatmap.shape == shape
    assert heatmap.dtype == np.float32
    assert np.all(np.isfinite(heatmap))
    assert heatmap.min() >= 0.0
    assert heatmap.max() <= 1.0
    assert heatmap.max() == 1.0 or not heatmap.any()


# --------------------------------------------------------------------------- known answers


@pytest.mark.parametrize("method", METHODS)
def test_the_map_lights_up_the_bright_square_only(method: str) -> None:
    (explanation,) = explain(corner_model(), corner_image(), layer="conv", method=method)
    heatmap = explanation.heatmap
    assert (explanation.class_index, explanation.layer, explanation.method) == (0, "conv", method)
    assert_valid_map(explanation, (SIDE, SIDE))
    np.testing.assert_allclose(heatmap[SQUARE], 1.0, atol=1e-6)
    outside = heatmap.copy()
    outside[SQUARE] = 0.0
    np.testing.assert_allclose(outside, 0.0, atol=1e-6)
    assert pointing_game_hit(heatmap, mask_of(SQUARE))
    assert not pointing_game_hit(heatmap, mask_of(OPPOSITE))
    assert energy_inside(heatmap, mask_of(SQUARE)) == pytest.approx(1.0, abs=1e-6)
    assert energy_inside(heatmap, mask_of(OPPOSITE)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_a_class_the_features_argue_against_gets_an_empty_map(method: str) -> None:
    (explanation,) = explain(
        corner_model(), corner_image(), layer="conv", class_indices=[1], method=method
    )
    assert explanation.class_index == 1
    assert_valid_map(explanation, (SIDE, SIDE))
    assert not explanation.heatmap.any()
    assert not pointing_game_hit(explanation.heatmap, mask_of(SQUARE))
    assert energy_inside(explanation.heatmap, mask_of(SQUARE)) == 0.0


@pytest.mark.parametrize("method", METHODS)
def test_an_all_zero_image_gives_an_all_zero_map_not_nan(method: str) -> None:
    blank = np.zeros((2, SIDE, SIDE, 1), dtype=np.float32)
    for explanation in explain(corner_model(), blank, layer="conv", method=method):
        assert_valid_map(explanation, (SIDE, SIDE))
        assert not explanation.heatmap.any()


def test_the_weights_follow_the_published_formulas() -> None:
    """Grad-CAM and Grad-CAM++ weights against a NumPy transcription, incl. a 0/0 alpha."""
    import tensorflow as tf

    rng = np.random.default_rng(1)
    features = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    grads = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    grads[0, :, :, 2] = 0.0  # zero gradients: alpha's denominator is 0
    # 2 g^2 + S g^3 = 0 at g = 1 with S = -2: a zero denominator with g != 0
    grads[1, :, :, 4] = 1.0
    features[1, :, :, 4] = 0.0
    features[1, 0, 0, 4] = -2.0

    def reference(method: str) -> np.ndarray:
        if method == "gradcam":
            weights = grads.mean(axis=(1, 2))
        else:
            total = features.sum(axis=(1, 2), keepdims=True)
            denominator = 2 * grads**2 + total * grads**3
            safe = np.where(denominator == 0, 1.0, denominator)
            alpha = np.where(denominator == 0, 0.0, grads**2 / safe)
            assert (denominator == 0).sum() == 2 * 12
            weights = (alpha * np.maximum(grads, 0)).sum(axis=(1, 2))
        return np.maximum(np.einsum("nhwk,nk->nhw", features, weights), 0)

    for method in METHODS:
        maps = gradcam._class_activation_maps(
            tf, tf.constant(features), tf.constant(grads), method
        ).numpy()
        np.testing.assert_allclose(maps, reference(method), rtol=1e-5, atol=1e-6)
        assert np.all(np.isfinite(maps))


# --------------------------------------------------------------------------- classes


def test_class_and_probability_at_a_temperature() -> None:
    import keras

    dense = np.array([[0.3, -0.2]])
    model = corner_model(dense)
    images = np.concatenate([corner_image(), np.zeros_like(corner_image())])
    logits = np.asarray(model.predict(images, verbose=0), dtype=np.float64)
    assert keras.mixed_precision.global_policy().name == "float32"

    predicted = explain(model, images, layer="conv", temperature=2.0)
    assert [e.class_index for e in predicted] == list(np.argmax(logits, axis=1)) == [0, 1]
    chosen = explain(model, images, layer="conv", class_indices=[1, 0], temperature=2.0)
    assert [e.class_index for e in chosen] == [1, 0]
    expected = softmax(logits / 2.0)
    for row, explanation in enumerate(chosen):
        index = explanation.class_index
        assert explanation.probability == pytest.approx(expected[row, index], rel=1e-5)
    assert chosen[0].probability != pytest.approx(softmax(logits)[0, 1], rel=1e-3)


def test_the_gradient_is_the_logits_not_the_saturated_probability() -> None:
    """Channel 0 (a square top left) raises class 0's logit, and class 1's three times as much.

    Class 1 takes all the probability, so raising channel 0 *lowers* p(class 0):
    a probability gradient would give class 0 an empty map. Its logit's points
    at the square.
    """
    import keras

    inputs = keras.Input((SIDE, SIDE, 2))
    features = keras.layers.Conv2D(2, 1, use_bias=False, name="conv")(inputs)
    logits = keras.layers.Dense(3, use_bias=False)(keras.layers.GlobalAveragePooling2D()(features))
    model = keras.Model(inputs, logits)
    model.get_layer("conv").set_weights([np.eye(2, dtype=np.float32).reshape(1, 1, 2, 2)])
    model.layers[-1].set_weights([np.array([[1, 3, 0], [0, 0, 1]], np.float32)])
    image = np.zeros((1, SIDE, SIDE, 2), np.float32)
    image[0][(*SQUARE, 0)] = 200.0
    image[0][(*OPPOSITE, 1)] = 200.0
    for method in METHODS:
        (explanation,) = explain(model, image, layer="conv", class_indices=[0], method=method)
        assert explanation.probability < 1e-6
        assert pointing_game_hit(explanation.heatmap, mask_of(SQUARE))
        assert energy_inside(explanation.heatmap, mask_of(SQUARE)) == pytest.approx(1.0)


def test_batches_give_the_same_maps_as_one_pass(small_cnn: Any) -> None:
    images = pixels(5)
    whole = explain(small_cnn, images, layer="last_conv", batch_size=16)
    pieces = explain(small_cnn, images, layer="last_conv", batch_size=2)
    assert len(whole) == len(pieces) == 5
    for one, other in zip(whole, pieces, strict=True):
        assert one.class_index == other.class_index
        np.testing.assert_allclose(one.heatmap, other.heatmap, atol=1e-5)
        assert one.probability == pytest.approx(other.probability, rel=1e-5)
    assert explain(small_cnn, images[:0], layer="last_conv") == []


# --------------------------------------------------------------------------- the real classifier


@pytest.mark.parametrize("method", METHODS)
def test_small_cnn_maps_survive_a_save_and_load(
    small_cnn: Any, tmp_path: Path, method: str
) -> None:
    layer = default_layer(small_cnn, "small_cnn")
    assert layer == "block4_relu"
    images = np.concatenate([pixels(2), np.zeros((1, SIZE, SIZE, 3), np.float32)])
    before = explain(small_cnn, images, layer=layer, method=method)
    for explanation in before:
        assert_valid_map(explanation, (SIZE, SIZE))
        assert explanation.layer == "block4_relu"
    small_cnn.save(tmp_path / "model.keras")
    after = explain(load_model(tmp_path / "model.keras"), images, layer=layer, method=method)
    for one, other in zip(before, after, strict=True):
        assert one.class_index == other.class_index
        np.testing.assert_array_equal(one.heatmap, other.heatmap)


def test_mixed_float16_maps_are_finite_float32(settings: Settings) -> None:
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_classifier(settings)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("last_conv").compute_dtype == "float16"
    for method in METHODS:
        for explanation in explain(model, pixels(2), layer="last_conv", method=method):
            assert_valid_map(explanation, (SIZE, SIZE))
            assert isinstance(explanation.probability, float)


# --------------------------------------------------------------------------- layers and errors


def test_conv_layers_and_the_default(small_cnn: Any) -> None:
    import keras

    names = conv_layer_names(small_cnn)
    assert names[0] == "rescale" and "image" not in names
    assert names.index("block1_conv") < names.index("last_conv") < names.index("block4_relu")
    assert not {"pool", "dropout", "logits"} & set(names)
    assert default_layer(small_cnn) == "block4_relu"  # read from the model's name
    assert default_layer(small_cnn, "small_cnn") == "block4_relu"
    assert default_layer(small_cnn, "efficientnetb0") == "block4_relu"  # no top_activation here
    assert default_layer(small_cnn, "not_installed_plugin") == "block4_relu"
    assert conv_layer_names(corner_model()) == ["conv"]
    inputs = keras.Input((4,))
    flat = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(UsageError, match="no layer with a 4-D output"):
        default_layer(flat)


def test_an_unknown_layer_lists_conv_layers_and_the_default(small_cnn: Any) -> None:
    with pytest.raises(UsageError) as raised:
        explain(small_cnn, pixels(1), layer="last_cnv")
    message = str(raised.value)
    assert "no layer 'last_cnv'" in message
    assert "did you mean 'last_conv'?" in message
    assert "'block4_relu'" in message
    assert "the default is 'block4_relu'" in message


@pytest.mark.parametrize("layer", ["logits", "pool", "image"])
def test_a_layer_without_a_feature_map_is_refused(small_cnn: Any, layer: str) -> None:
    with pytest.raises(UsageError, match="Grad-CAM needs a convolutional feature map") as raised:
        explain(small_cnn, pixels(1), layer=layer)
    assert f"layer {layer!r}" in str(raised.value)
    assert "the default is 'block4_relu'" in str(raised.value)


def test_bad_arguments(small_cnn: Any) -> None:
    images = pixels(2)
    with pytest.raises(UsageError, match="method must be one of gradcam, gradcam\\+\\+"):
        explain(small_cnn, images, layer="last_conv", method="cam")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="class index 4 is out of range for 4 classes"):
        explain(small_cnn, images, layer="last_conv", class_indices=[0, 4])
    with pytest.raises(ValueError, match="2 images but 1 class indices"):
        explain(small_cnn, images, layer="last_conv", class_indices=[0])
    with pytest.raises(ValueError, match="temperature"):
        explain(small_cnn, images, layer="last_conv", temperature=0.0)
    with pytest.raises(ValueError, match="batch_size"):
        explain(small_cnn, images, layer="last_conv", batch_size=0)
    with pytest.raises(ValueError, match=r"takes images of shape \(32, 32, 3\)"):
        explain(small_cnn, np.zeros((1, 16, 16, 3), np.float32), layer="last_conv")
    with pytest.raises(ValueError, match="N x H x W x C"):
        explain(small_cnn, np.zeros((SIZE, SIZE, 3), np.float32), layer="last_conv")


def test_importing_the_module_does_not_import_tensorflow() -> None:
    code = "import sys, mritumor.predict.gradcam; print('tensorflow' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


# --------------------------------------------------------------------------- pure NumPy


def test_overlay_blends_grey_and_colour_images() -> None:
    import matplotlib

    heatmap = np.linspace(0.0, 1.0, 12, dtype=np.float32).reshape(3, 4)
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    for image in (grey, grey[..., np.newaxis]):
        blended = overlay(image, heatmap)
        assert blended.dtype == np.uint8
        assert blended.shape == (3, 4, 3)
        np.testing.assert_array_equal(overlay(image, heatmap, alpha=0.0), np.stack([grey] * 3, -1))
    colour = np.random.default_rng(0).integers(0, 256, (3, 4, 3)).astype(np.uint8)
    np.testing.assert_array_equal(overlay(colour, heatmap, alpha=0.0), colour)
    jet = matplotlib.colormaps["jet"](heatmap)[..., :3] * 255
    np.testing.assert_array_equal(overlay(colour, heatmap, alpha=1.0), np.rint(jet))
    half = overlay(colour, heatmap, alpha=0.5, colormap="viridis")
    viridis = matplotlib.colormaps["viridis"](heatmap)[..., :3] * 255
    np.testing.assert_array_equal(half, np.rint(0.5 * colour + 0.5 * viridis).astype(np.uint8))
    with pytest.raises(ValueError, match="differ in size"):
        overlay(colour, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="alpha"):
        overlay(colour, heatmap, alpha=1.5)


def test_resize_mask_is_nearest_neighbour_and_boolean() -> None:
    mask = np.array([[0, 255], [0, 0]], dtype=np.uint8)
    bigger = resize_mask(mask, (4, 6))
    assert bigger.dtype == np.bool_
    expected = np.zeros((4, 6), dtype=bool)
    expected[:2, 3:] = True
    np.testing.assert_array_equal(bigger, expected)
    np.testing.assert_array_equal(resize_mask(bigger, (2, 2)), mask.astype(bool))
    with pytest.raises(ValueError, match="2-D"):
        resize_mask(np.zeros((2, 2, 1)), (4, 4))
    with pytest.raises(ValueError, match="height, width"):
        resize_mask(mask, (0, 4))


def test_resize_heatmap_keeps_the_unit_range() -> None:
    heatmap = np.zeros((8, 8), dtype=np.float32)
    heatmap[2:4, 5:7] = 1.0
    larger = resize_heatmap(heatmap, (32, 24))
    assert larger.shape == (32, 24)
    assert larger.dtype == np.float32
    assert larger.min() >= 0.0 and larger.max() <= 1.0
    row, column = np.unravel_index(np.argmax(larger), larger.shape)
    assert 8 <= row < 16 and 15 <= column < 21  # the hot patch, scaled by 4 x 3
    smaller = resize_heatmap(heatmap, (4, 4))
    assert smaller.shape == (4, 4) and smaller.min() >= 0.0 and smaller.max() <= 1.0
    np.testing.assert_array_equal(resize_heatmap(heatmap, (8, 8)), heatmap)


def test_pointing_game_by_hand() -> None:
    tied = np.array([[0.0, 1.0], [1.0, 0.0]])
    # The maximum is shared: the first in row-major order, (0, 1), counts.
    assert pointing_game_hit(tied, [[0, 1], [0, 0]])
    assert not pointing_game_hit(tied, [[0, 0], [1, 0]])
    assert pointing_game_hit(np.array([[0.2, 0.1], [0.9, 0.3]]), [[0, 0], [1, 0]])
    assert not pointing_game_hit(np.zeros((2, 2)), np.ones((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="differ in shape"):
        pointing_game_hit(np.zeros((2, 2)), np.zeros((3, 3)))


def test_energy_inside_by_hand() -> None:
    heatmap = np.array([[0.5, 0.25], [0.25, 0.0]])
    assert energy_inside(heatmap, [[1, 0], [0, 0]]) == pytest.approx(0.5)
    assert energy_inside(heatmap, [[0, 1], [1, 1]]) == pytest.approx(0.5)
    assert energy_inside(heatmap, np.ones((2, 2), dtype=bool)) == pytest.approx(1.0)
    assert energy_inside(heatmap, np.zeros((2, 2), dtype=bool)) == 0.0
    assert energy_inside(np.zeros((2, 2)), np.ones((2, 2))) == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        energy_inside(heatmap, np.ones((2, 3)))
    with pytest.raises(ValueError, match="negative"):
        energy_inside(-heatmap, np.ones((2, 2)))
    with pytest.raises(ValueError, match="finite"):
        energy_inside(np.full((2, 2), np.nan), np.ones((2, 2)))
