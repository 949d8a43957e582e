"""Every built-in backbone builds, has the declared size, and Grad-CAM explains its default layer."""

from __future__ import annotations

from pathlib import Path

import pytest

from mritumor.models.registry import registry


@pytest.mark.slow
@pytest.mark.parametrize("name", registry.names())
def test_builtin_backbone_builds(name: str) -> None:
    import keras

    spec = registry.get(name)
    keras.backend.clear_session()
    inputs = keras.Input((32, 32, 3))
    model = registry.build(name, inputs, weights=None)
    try:
        assert model.inputs[0] is inputs  # built on the given tensor, not a nested model
        shape = tuple(model.output.shape)
        assert len(shape) == 4
        assert shape[0] is None
        assert spec.last_conv_layer in [layer.name for layer in model.layers]
        assert len(model.get_layer(spec.last_conv_layer).output.shape) == 4  # a feature map
        assert spec.params is not None
        assert model.count_params() == spec.params
        _explains_its_default_layer(model, spec.last_conv_layer)
    finally:
        del model
        keras.backend.clear_session()


def _explains_its_default_layer(backbone: object, layer: str) -> None:
    """Grad-CAM runs on the default layer of a classifier built on this backbone."""
    import keras
    import numpy as np

    from mritumor.predict.gradcam import explain

    pooled = keras.layers.GlobalAveragePooling2D()(backbone.output)  # type: ignore[attr-defined]
    classifier = keras.Model(backbone.inputs, keras.layers.Dense(4)(pooled))  # type: ignore[attr-defined]
    image = np.random.default_rng(1).uniform(0, 255, (1, 32, 32, 3)).astype("float32")
    (found,) = explain(classifier, image, layer=layer, method="gradcam++")
    assert found.heatmap.shape == (32, 32)
    assert np.all(np.isfinite(found.heatmap))
    assert found.heatmap.min() >= 0.0 and found.heatmap.max() <= 1.0


def test_small_cnn_saves_and_loads_safely(tmp_path: Path) -> None:
    import keras
    import numpy as np

    keras.backend.clear_session()
    model = registry.build("small_cnn", keras.Input((32, 32, 3)), weights=None)
    path = tmp_path / "small cnn.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    images = np.random.default_rng(0).uniform(0, 255, size=(2, 32, 32, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(images, training=False))
    actual = keras.ops.convert_to_numpy(loaded(images, training=False))
    assert expected.shape == (2, 4, 4, 128)
    np.testing.assert_array_equal(actual, expected)
    assert isinstance(loaded.get_layer("last_conv"), keras.layers.Conv2D)
    assert loaded.count_params() == registry.get("small_cnn").params


def test_slim_resnet_on_grayscale_saves_loads_safely_and_counts_its_blocks(tmp_path: Path) -> None:
    import keras
    import numpy as np

    from mritumor.engine.finetune import _block_of

    keras.backend.clear_session()
    model = registry.build("slim-resnet18", keras.Input((32, 32, 1)), weights=None)
    path = tmp_path / "slim resnet.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    images = np.random.default_rng(0).uniform(0, 255, size=(2, 32, 32, 1)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(images, training=False))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(images, training=False)), expected
    )
    assert expected.shape == (2, 1, 1, 256)  # five stride-2 steps: 32 px -> 1
    # Grayscale drops two thirds of the stem's 3x3x3x32 weights; everything else is the same.
    assert loaded.count_params() == registry.get("resnet18s").params - 2 * 3 * 3 * 32
    blocks = {_block_of(layer) for layer in loaded.layers if layer.weights}
    assert blocks == {"stem", *(f"block{stage}{letter}" for stage in "1234" for letter in "ab")}


@pytest.mark.parametrize("name", ["v2b0", "b0"])
def test_efficientnet_takes_grayscale_input_as_three_equal_channels(
    name: str, tmp_path: Path
) -> None:
    """Their in-model normalisation has RGB statistics: 1 channel crashed the build."""
    import keras
    import numpy as np

    from mritumor.config.loading import load_settings
    from mritumor.models.classifier import build_classifier

    keras.backend.clear_session()
    settings = load_settings(
        None,
        {
            "model.backbone": name,
            "model.weights": "none",
            "data.channels": 1,
            "data.image_size": 32,
        },
    ).settings
    model = build_classifier(settings)
    gray = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 1)).astype("float32")
    path = tmp_path / f"{name} gray.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(gray, verbose=0), model.predict(gray, verbose=0))
    assert loaded.input_shape == (None, 32, 32, 1)
    assert loaded.output_shape == (None, 4)
    keras.backend.clear_session()
