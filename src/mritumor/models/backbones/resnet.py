"""Slim residual networks for training from scratch on a CPU.

EfficientNets are built for ImageNet weights and wide accelerators: from random
weights on two CPU cores, their depthwise convolutions and squeeze-excitation
blocks give few images per second for their accuracy. These networks are
ResNet basic blocks (two 3x3 convolutions and an identity or 1x1 projection
shortcut, He et al. 2016) at half of ResNet's widths (32-256 filters instead of
64-512), with a stride-2 stem. Dense 3x3 convolutions are what oneDNN runs
fastest on a CPU, in float32 and in bfloat16 alike.

Layer names follow EfficientNet's ``block<stage><letter>_...`` pattern, so
``finetune.unfreeze_blocks`` counts residual blocks, and Grad-CAM explains the
last block's output by default.
"""

from __future__ import annotations

from string import ascii_lowercase
from typing import Any

from mritumor.models.registry import BackboneBuilder, register_backbone

WIDTHS = (32, 64, 128, 256)
STEM_FILTERS = 32


def _last_layer(blocks_per_stage: tuple[int, ...]) -> str:
    return f"block{len(blocks_per_stage)}{ascii_lowercase[blocks_per_stage[-1] - 1]}_out"


def _resnet_builder(name: str, blocks_per_stage: tuple[int, ...]) -> BackboneBuilder:
    def build(inputs: Any, weights: str | None) -> Any:
        import keras
        from keras import layers

        x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
        x = layers.Conv2D(
            STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv"
        )(x)
        x = layers.BatchNormalization(name="stem_bn")(x)
        x = layers.Activation("relu", name="stem_relu")(x)
        for stage, (filters, blocks) in enumerate(zip(WIDTHS, blocks_per_stage, strict=True)):
            for index in range(blocks):
                block = f"block{stage + 1}{ascii_lowercase[index]}"
                x = _basic_block(x, filters, 2 if index == 0 else 1, block)
        return keras.Model(inputs, x, name=name)

    build.__name__ = build.__qualname__ = f"build_{name}"
    return build


def _basic_block(x: Any, filters: int, strides: int, name: str) -> Any:
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU."""
    from keras import layers

    shortcut = x
    y = layers.Conv2D(
        filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv1"
    )(x)
    y = layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = layers.Activation("relu", name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    # Zero-initialised last BatchNorm scale: each block starts as the identity (Goyal et al. 2017).
    y = layers.BatchNormalization(gamma_initializer="zeros", name=f"{name}_bn2")(y)
    if strides != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(
            filters, 1, strides=strides, use_bias=False, name=f"{name}_proj_conv"
        )(x)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    added = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.Activation("relu", name=f"{name}_out")(added)


def _register(name: str, blocks_per_stage: tuple[int, ...], params: int, summary: str) -> None:
    register_backbone(
        name,
        aliases=(f"slim-{name.removesuffix('s')}",),
        input_size=128,
        last_conv_layer=_last_layer(blocks_per_stage),
        params=params,
        imagenet_weights=False,
        description=summary,
    )(_resnet_builder(name, blocks_per_stage))


_register(
    "resnet10s",
    (1, 1, 1, 1),
    1_230_432,
    "Slim ResNet-10 (one basic block per stage, 32-256 filters); fast from scratch on a CPU.",
)
_register(
    "resnet18s",
    (2, 2, 2, 2),
    2_800_992,
    "Slim ResNet-18 (two basic blocks per stage, 32-256 filters); the CPU recipes' backbone.",
)
