"""Classifier assembly: a registered backbone plus pooling, dropout and a dense head.

The model is one flat functional graph: the backbone is built on the model's
own input tensor (see :class:`mritumor.models.registry.BackboneBuilder`), so every conv
layer is reachable by name for Grad-CAM, and the saved ``.keras`` file holds
only standard Keras layers: it loads with ``safe_mode=True``, no Lambda layers.
The head's Dense layer computes in float32 whatever the precision policy, so
logits (and the tumour score derived from them) never round in float16.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from mritumor.config.settings import Settings
from mritumor.core.environment import import_tensorflow
from mritumor.core.errors import MritumorError, UsageError
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


def load_model(path: Path, *, compile: bool = False) -> Any:
    """Load a ``.keras`` model with ``safe_mode=True`` (no arbitrary code from the file).

    ``compile=True`` restores the optimizer state too, for resuming training.
    """
    if path.suffix != ".keras":
        raise UsageError(
            f"{path}: only .keras model files are loaded (in safe mode); "
            ".h5 files and pickles can run code and are refused"
        )
    if not path.is_file():
        raise UsageError(f"model file {path} not found")
    if not zipfile.is_zipfile(path):
        raise MritumorError(_damaged(path))
    import_tensorflow()
    import keras

    try:
        return keras.saving.load_model(path, safe_mode=True, compile=compile)
    except (ValueError, OSError, KeyError, zipfile.BadZipFile) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MritumorError(f"cannot load {path}: {reason}") from None


def _damaged(path: Path) -> str:
    """A .keras file is a zip archive: one that is not (zero bytes, cut off) was damaged."""
    from mritumor.run.bundle import LAST_FILE

    size = path.stat().st_size
    recovery = "retrain, or restore it from a copy"
    last = path.with_name(LAST_FILE)
    if path.name != LAST_FILE and zipfile.is_zipfile(last):
        recovery = (
            f"{last} holds the latest training state: continue the run with "
            f"`mritumor train --resume {path.parent}`, or retrain"
        )
    return f"{path} is damaged ({size} bytes, not a complete .keras archive); {recovery}"
