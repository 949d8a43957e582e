"""EfficientNet B0-B7 and EfficientNetV2 B0-B3, S, M, L from keras.applications.

Both families rescale 0-255 pixels inside the model, so the input pipeline feeds
raw pixel values to every built-in backbone alike.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from mritumor.models.registry import BackboneBuilder, register_backbone

#: Grad-CAM's default: the top conv's feature map after BatchNorm and activation.
LAST_CONV_LAYER = "top_activation"


class _Variant(NamedTuple):
    short_name: str
    keras_name: str
    input_size: int
    params: int


# Parameter counts are those of include_top=False, checked by tests/test_backbones_build.py.
_VARIANTS = (
    _Variant("b0", "EfficientNetB0", 224, 4_049_571),
    _Variant("b1", "EfficientNetB1", 240, 6_575_239),
    _Variant("b2", "EfficientNetB2", 260, 7_768_569),
    _Variant("b3", "EfficientNetB3", 300, 10_783_535),
    _Variant("b4", "EfficientNetB4", 380, 17_673_823),
    _Variant("b5", "EfficientNetB5", 456, 28_513_527),
    _Variant("b6", "EfficientNetB6", 528, 40_960_143),
    _Variant("b7", "EfficientNetB7", 600, 64_097_687),
    _Variant("v2b0", "EfficientNetV2B0", 224, 5_919_312),
    _Variant("v2b1", "EfficientNetV2B1", 240, 6_931_124),
    _Variant("v2b2", "EfficientNetV2B2", 260, 8_769_374),
    _Variant("v2b3", "EfficientNetV2B3", 300, 12_930_622),
    _Variant("v2s", "EfficientNetV2S", 384, 20_331_360),
    _Variant("v2m", "EfficientNetV2M", 480, 53_150_388),
    _Variant("v2l", "EfficientNetV2L", 480, 117_746_848),
)


def _keras_application(keras_name: str) -> BackboneBuilder:
    def build(inputs: Any, weights: str | None) -> Any:
        from keras import applications, layers

        constructor = getattr(applications, keras_name)
        if inputs.shape[-1] == 1:
            # The networks normalise with per-RGB-channel statistics inside the model:
            # a grayscale slice enters as three equal channels (no Lambda: safe_mode loads it).
            inputs = layers.Concatenate(name="gray_to_rgb")([inputs, inputs, inputs])
        return constructor(include_top=False, weights=weights, input_tensor=inputs)

    build.__name__ = f"build_{keras_name.lower()}"
    build.__qualname__ = build.__name__
    return build


def _aliases(short_name: str) -> tuple[str, ...]:
    """``v2b0`` -> ``("efficientnetv2b0", "efficientnetv2-b0")``, the Keras and paper spellings."""
    family = "efficientnetv2" if short_name.startswith("v2") else "efficientnet"
    size = short_name.removeprefix("v2")
    return (f"{family}{size}", f"{family}-{size}")


for _variant in _VARIANTS:
    register_backbone(
        _variant.short_name,
        aliases=_aliases(_variant.short_name),
        input_size=_variant.input_size,
        last_conv_layer=LAST_CONV_LAYER,
        params=_variant.params,
        description=f"keras.applications.{_variant.keras_name}",
    )(_keras_application(_variant.keras_name))
