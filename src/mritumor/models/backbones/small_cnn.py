"""A small, fast CNN for CPU-only users, demos and tests."""

from __future__ import annotations

from typing import Any

from mritumor.models.registry import register_backbone

FILTERS = (16, 32, 64, 128)
LAST_CONV_LAYER = "last_conv"
#: Grad-CAM's default: the last block's feature map after BatchNorm and ReLU.
EXPLAINED_LAYER = f"block{len(FILTERS)}_relu"


@register_backbone(
    "small_cnn",
    aliases=("cnn", "tiny"),
    input_size=128,
    last_conv_layer=EXPLAINED_LAYER,
    params=98_160,
    imagenet_weights=False,
    description="Four conv blocks (16-128 filters); trains on a CPU in minutes.",
)
def build_small_cnn(inputs: Any, weights: str | None) -> Any:
    """Conv-BN-ReLU blocks with max pooling; pixel values 0-255 are rescaled inside.

    There are no pretrained weights (the registry refuses ``imagenet``).
    """
    import keras
    from keras import layers

    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    for index, filters in enumerate(FILTERS):
        last = index == len(FILTERS) - 1
        x = layers.Conv2D(
            filters,
            3,
            padding="same",
            use_bias=False,
            name=LAST_CONV_LAYER if last else f"block{index + 1}_conv",
        )(x)
        x = layers.BatchNormalization(name=f"block{index + 1}_bn")(x)
        x = layers.Activation("relu", name=f"block{index + 1}_relu")(x)
        if not last:
            x = layers.MaxPooling2D(2, name=f"block{index + 1}_pool")(x)
    return keras.Model(inputs, x, name="small_cnn")
