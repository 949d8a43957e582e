"""Classifier assembly (mritumor.models.classifier) and its safe saving and loading
(mritumor.run.model_file): head, names, precision and freezing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mritumor.config.loading import load_settings
from mritumor.config.schema import Settings
from mritumor.models.classifier import (
    DROPOUT_LAYER,
    LOGITS_LAYER,
    POOL_LAYER,
    backbone_layers,
    build_classifier,
    set_backbone_trainable,
)
from mritumor.models.registry import registry
from mritumor.run.model_file import load_model

SIZE = 32
#: small_cnn: 4 convs without bias, 4 BatchNorms with gamma and beta, the Dense kernel and bias.
ALL_TRAINABLE = 4 + 4 * 2 + 2


@pytest.fixture
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


@pytest.fixture(autouse=True)
def _seeded_float32_keras() -> Iterator[None]:
    import keras

    keras.utils.set_random_seed(3)
    yield
    keras.mixed_precision.set_global_policy("float32")


def images(count: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, SIZE, SIZE, 3)).astype(np.float32)


def one_hot(count: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.eye(4, dtype=np.float32)[rng.integers(0, 4, count)]


def compile_model(model: Any, lr: float = 1e-2) -> None:
    import keras

    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=lr),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
    )


def test_small_cnn_classifier_has_named_float32_logits(settings: Settings) -> None:
    import keras

    model = build_classifier(settings)
    assert tuple(model.output.shape) == (None, 4)
    assert model.output.dtype == "float32"
    assert tuple(model.input.shape) == (None, SIZE, SIZE, 3)
    names = [layer.name for layer in model.layers]
    assert names[-3:] == [POOL_LAYER, DROPOUT_LAYER, LOGITS_LAYER]
    assert isinstance(model.get_layer(POOL_LAYER), keras.layers.GlobalAveragePooling2D)
    assert isinstance(model.get_layer(LOGITS_LAYER), keras.layers.Dense)
    last_conv = model.get_layer(registry.get("small_cnn").last_conv_layer)
    assert len(last_conv.output.shape) == 4
    # One flat graph: the backbone's layers are the model's own, not a nested Model.
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    assert last_conv in backbone_layers(model)
    assert not {POOL_LAYER, DROPOUT_LAYER, LOGITS_LAYER} & {
        layer.name for layer in backbone_layers(model)
    }
    logits = model.predict(images(), verbose=0)
    assert logits.dtype == np.float32 and logits.shape == (6, 4)


def test_max_pooling_setting() -> None:
    import keras

    overrides = {"model.backbone": "small_cnn", "model.weights": "none", "model.pooling": "max"}
    model = build_classifier(load_settings(None, {**overrides, "data.image_size": SIZE}).settings)
    assert isinstance(model.get_layer(POOL_LAYER), keras.layers.GlobalMaxPooling2D)


def test_saves_and_reloads_safely_with_identical_predictions(
    settings: Settings, tmp_path: Path
) -> None:
    model = build_classifier(settings)
    x = images()
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = load_model(path)
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert [layer.name for layer in reloaded.layers] == [layer.name for layer in model.layers]


def test_reload_after_freezing_unfreezing_and_a_training_step(
    settings: Settings, tmp_path: Path
) -> None:
    model = build_classifier(settings)
    set_backbone_trainable(model, False)
    set_backbone_trainable(model, True)
    compile_model(model)
    before = model.get_layer("last_conv").get_weights()[0].copy()
    model.train_on_batch(images(), one_hot())
    assert not np.array_equal(before, model.get_layer("last_conv").get_weights()[0])
    path = tmp_path / "trained.keras"
    model.save(path)
    reloaded = load_model(path, compile=True)
    x = images(seed=1)
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert len(reloaded.trainable_weights) == ALL_TRAINABLE
    assert int(reloaded.optimizer.iterations.numpy()) == 1


def test_frozen_state_survives_saving(settings: Settings, tmp_path: Path) -> None:
    # --resume reads the stage a last.keras was saved in from these flags.
    model = build_classifier(settings)
    set_backbone_trainable(model, False)
    model.save(tmp_path / "frozen.keras")
    reloaded = load_model(tmp_path / "frozen.keras")
    assert not any(layer.trainable for layer in backbone_layers(reloaded))
    assert len(reloaded.trainable_weights) == 2


def test_mixed_precision_keeps_float32_logits(settings: Settings) -> None:
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16")
    model = build_classifier(settings)
    assert model.get_layer("last_conv").compute_dtype == "float16"
    assert model.get_layer("last_conv").variable_dtype == "float32"
    assert model.get_layer(LOGITS_LAYER).compute_dtype == "float32"
    assert model.output.dtype == "float32"
    logits = model.predict(images(), verbose=0)
    assert logits.dtype == np.float32
    keras.mixed_precision.set_global_policy("float32")
    assert keras.mixed_precision.global_policy().name == "float32"


def test_freezing_leaves_only_the_head_trainable(settings: Settings) -> None:
    model = build_classifier(settings)
    assert len(model.trainable_weights) == ALL_TRAINABLE
    set_backbone_trainable(model, False)
    trainable = model.trainable_weights
    assert len(trainable) == 2
    assert {weight.path for weight in trainable} == {"logits/kernel", "logits/bias"}
    set_backbone_trainable(model, True)
    assert len(model.trainable_weights) == ALL_TRAINABLE


def test_a_frozen_batchnorm_keeps_its_moving_statistics(settings: Settings) -> None:
    # Keras 3 runs a non-trainable BatchNormalization in inference mode during fit.
    model = build_classifier(settings)
    bn = model.get_layer("block1_bn")
    x, y = images(16), one_hot(16)

    set_backbone_trainable(model, False)
    compile_model(model)
    mean, variance = (v.numpy().copy() for v in (bn.moving_mean, bn.moving_variance))
    head = model.get_layer(LOGITS_LAYER).get_weights()[0].copy()
    conv = model.get_layer("block1_conv").get_weights()[0].copy()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), mean)
    np.testing.assert_array_equal(bn.moving_variance.numpy(), variance)
    np.testing.assert_array_equal(model.get_layer("block1_conv").get_weights()[0], conv)
    assert not np.array_equal(model.get_layer(LOGITS_LAYER).get_weights()[0], head)

    # The same fit with the backbone trainable does move them: the check above can fail.
    set_backbone_trainable(model, True)
    compile_model(model)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert not np.array_equal(bn.moving_mean.numpy(), mean)
    assert not np.array_equal(model.get_layer("block1_conv").get_weights()[0], conv)
