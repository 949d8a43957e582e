"""Classifier assembly: a registered backbone plus pooling, dropout and a dense head.

The model is one flat functional graph: the backbone is built on the model's
own input tensor (see :class:`mritumor.models.registry.BackboneBuilder`), so every conv
layer is reachable by name for Grad-CAM, and the saved ``.keras`` file holds
only standard Keras layers: it loads with ``safe_mode=True`` (see
:mod:`mritumor.run.model_file`), no Lambda layers.
The head's Dense layer computes in float32 whatever the precision policy, so
logits (and the tumour score derived from them) never round in float16.
"""

from __future__ import annotations

from typing import Any

from mritumor.config.schema import Settings
from mritumor.core.environment import import_tensorflow
from mritumor.models.registry import registry

INPUT_NAME = "image"
POOL_LAYER = "pool"
DROPOUT_LAYER = "dropout"
LOGITS_LAYER = "logits"
HEAD_LAYERS = frozenset({POOL_LAYER, DROPOUT_LAYER, LOGITS_LAYER})


def build_classifier(settings: Settings, *, weights: str | None = None) -> Any:
    """The classifier ``settings`` describe; ``weights`` overrides ``model.weights``."""
    import_tensorflow()
    import keras

    size, channels = settings.data.image_size, settings.data.channels
    inputs = keras.Input((size, size, channels), name=INPUT_NAME)
    backbone = registry.build(
        settings.model.backbone, inputs, weights if weights is not None else settings.model.weights
    )
    pooling = (
        keras.layers.GlobalAveragePooling2D
        if settings.model.pooling == "avg"
        else keras.layers.GlobalMaxPooling2D
    )
    pool = pooling(name=POOL_LAYER)(backbone.output)
    dropped = keras.layers.Dropout(settings.model.dropout, name=DROPOUT_LAYER)(pool)
    logits = keras.layers.Dense(len(settings.data.class_names), dtype="float32", name=LOGITS_LAYER)(
        dropped
    )
    spec = registry.get(settings.model.backbone)
    return keras.Model(inputs, logits, name=f"mritumor_{spec.name}")


def backbone_layers(model: Any) -> list[Any]:
    """Every layer but the input and the head."""
    return [
        layer
        for layer in model.layers
        if layer.name not in HEAD_LAYERS and layer.__class__.__name__ != "InputLayer"
    ]


def set_backbone_trainable(model: Any, trainable: bool) -> None:
    """Freeze or unfreeze the backbone; a frozen BatchNormalization runs in inference mode.

    Keras 3 runs a non-trainable BatchNormalization layer with its moving
    statistics, so freezing also stops the statistics drifting on small batches.
    """
    for layer in backbone_layers(model):
        layer.trainable = trainable
