"""What turns an image file into the model's input: the square size, the channels, the resize.

One value, :class:`Preprocessing`, travels from the settings (``data.image_size``,
``data.channels``, ``data.resize``) into the bundle of every run, and from the bundle into
the input pipeline of inference and fine-tuning: a model is always fed as it was trained.
The three field types are declared here once; the bundle annotates its fields of the same
name with them, and the settings their ``channels`` and ``resize`` (``data.image_size`` has
tighter bounds of its own).
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

ResizeMode = Literal["plain", "pad"]
"""``plain`` stretches the image to a square; ``pad`` keeps its aspect ratio and pads."""
RESIZE_MODES: tuple[ResizeMode, ...] = get_args(ResizeMode)
Channels = Literal[1, 3]
"""1 for grayscale, 3 for RGB input."""
ImageSize = Annotated[int, Field(gt=0)]
"""The side of the square model input, in pixels."""


class Preprocessing(BaseModel):
    """The input a model expects: ``image_size`` x ``image_size`` x ``channels``, resized so."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    image_size: ImageSize
    channels: Channels
    resize: ResizeMode

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(image_size, image_size, channels)``, the model's input without the batch axis."""
        return (self.image_size, self.image_size, self.channels)
