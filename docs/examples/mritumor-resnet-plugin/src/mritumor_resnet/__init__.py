"""An example mritumor backbone plugin: ResNet50 from keras.applications.

Importing this module registers the backbone. mritumor imports it through the
entry point in pyproject.toml, on the first backbone lookup or listing. Keras is
imported inside the builder only, so registering stays free of TensorFlow and
`mritumor backbones list` and shell completion stay fast.
"""

from __future__ import annotations

from typing import Any

from mritumor.models.registry import register_backbone

__version__ = "0.1.0"

#: The ImageNet mean pixel that keras.applications.resnet50.preprocess_input
#: ("caffe" mode) subtracts, here in R, G, B order: mritumor feeds RGB images.
IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)

#: Grad-CAM's default layer: the activated output of the last residual block.
LAST_CONV_LAYER = "conv5_block3_out"


@register_backbone(
    "resnet50",
    aliases=("resnet-50",),
    input_size=224,
    last_conv_layer=LAST_CONV_LAYER,
    params=23_587_712,  # the model returned below; the preprocessing layer has no weights
    imagenet_weights=True,
    description="keras.applications.ResNet50, caffe preprocessing as layers",
)
def build_resnet50(inputs: Any, weights: str | None) -> Any:
    """ResNet50 without its classification head, built on ``inputs``.

    ``inputs`` holds raw 0-255 RGB pixels, as mritumor always feeds them.
    ``weights`` is ``"imagenet"`` or ``None``; for a ``.weights.h5`` file the
    registry calls this with ``None`` and loads the file itself.
    """
    import keras
    from keras import applications, layers

    # ResNet50's ImageNet weights expect keras.applications.resnet50.preprocess_input:
    # RGB -> BGR, then the ImageNet mean pixel subtracted, no scaling. Both steps are
    # expressed without a Lambda layer, so the saved model loads with safe_mode=True.
    #
    # 1. The mean pixel, subtracted by a standard Normalization layer (variance 1:
    #    nothing is scaled). Its mean and variance are constants, not weights.
    channels = inputs.shape[-1]
    mean = IMAGENET_MEAN_RGB if channels == 3 else (sum(IMAGENET_MEAN_RGB) / 3.0,) * channels
    preprocess = layers.Normalization(
        mean=mean, variance=(1.0,) * channels, name="resnet50_preprocess"
    )
    x = preprocess(inputs)

    # Building on the given tensor (input_tensor=...) keeps the graph flat: every
    # ResNet50 layer becomes a layer of mritumor's classifier, reachable by name.
    base = applications.ResNet50(include_top=False, weights=weights, input_tensor=x)

    # 2. RGB -> BGR. No standard Keras layer reverses the channel axis, but the first
    #    convolution is linear in its input channels, so reversing the input-channel
    #    axis of its kernel once gives exactly the same output for RGB input:
    #    conv(bgr, K) == conv(rgb, K[:, :, ::-1, :]). Only the ImageNet weights need
    #    it: random weights have no channel order, and a .weights.h5 file saved from
    #    this model already holds the reversed kernel.
    if weights == "imagenet":
        conv1 = base.get_layer("conv1_conv")
        kernel, bias = conv1.get_weights()
        conv1.set_weights([kernel[:, :, ::-1, :], bias])

    return keras.Model(inputs, base.output, name="resnet50")
