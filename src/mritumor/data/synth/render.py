"""One phantom slice: anatomy, lesion and acquisition, each from its own random stream.

The acquisition domain decides the sequences, pose range and artefacts: the
``source`` domain imitates the training data, ``external`` another site
(FLAIR-like contrast, stronger bias field and noise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from mritumor.core.classes import CLASS_NAMES
from mritumor.data.synth.anatomy import draw_head, paint_head
from mritumor.data.synth.contrast import FLAIR, T1_POST_CONTRAST, T2, Contrast
from mritumor.data.synth.drawing import Field, smooth_field
from mritumor.data.synth.lesions import paint_lesion

Domain = Literal["source", "external"]
Image = NDArray[np.float32]
Mask = NDArray[np.bool_]


@dataclass(frozen=True)
class _DomainStyle:
    """How one acquisition domain draws contrast, pose and artefacts."""

    sequences: tuple[tuple[Contrast, float], ...]
    contrast_spread: float
    rotation_deg: float
    bias_strength: tuple[float, float]
    noise_sigma: tuple[float, float]
    gain: tuple[float, float]


_DOMAINS: dict[str, _DomainStyle] = {
    "source": _DomainStyle(
        sequences=((T1_POST_CONTRAST, 0.7), (T2, 0.3)),
        contrast_spread=0.08,
        rotation_deg=12.0,
        bias_strength=(0.0, 0.12),
        noise_sigma=(0.008, 0.03),
        gain=(0.8, 1.15),
    ),
    "external": _DomainStyle(
        sequences=((FLAIR, 0.6), (T2, 0.4)),
        contrast_spread=0.12,
        rotation_deg=20.0,
        bias_strength=(0.12, 0.25),
        noise_sigma=(0.025, 0.06),
        gain=(0.7, 1.0),
    ),
}


def render_slice(
    rng: np.random.Generator,
    class_name: str,
    size: int | tuple[int, int],
    domain: Domain = "source",
    lesion_scale: float = 1.0,
) -> tuple[Image, Mask]:
    """Render one axial slice of ``class_name`` and its lesion mask.

    ``size`` is the side of a square image or its ``(height, width)``. Returns a
    float32 image in [0, 1] and a boolean mask of every pixel the lesion touches
    (tumour, necrosis, oedema, dural tail, anti-aliased edge included; all False
    for no_tumor), so pixels outside the mask are exactly those of the same head
    without the lesion, up to the blur.

    ``rng`` is split into independent streams for anatomy, lesion and
    acquisition, so the same generator state renders the same head, contrast and
    noise for every class: only the lesion differs.
    """
    shape = _checked_shape(class_name, size, domain, lesion_scale)
    streams = SceneStreams(*rng.spawn(3))
    canvas, lesion = _scene(streams, class_name, shape, domain, lesion_scale, 1.0)
    return _acquire(streams.scan, canvas, _DOMAINS[domain]), lesion > 0.0


@dataclass(frozen=True)
class SceneStreams:
    """The random streams of one scene: anatomy, lesion placement, and contrast then acquisition."""

    anatomy: np.random.Generator
    lesion: np.random.Generator
    scan: np.random.Generator


def render_section(
    streams: SceneStreams,
    noise: np.random.Generator,
    class_name: str,
    size: tuple[int, int],
    *,
    extent: float,
    lesion_scale: float,
    domain: Domain = "source",
) -> tuple[Image, Mask]:
    """One section of a phantom volume: :func:`render_slice` with the head shrunk to ``extent``.

    Fresh ``streams`` seeded alike give every section the same head, contrast and
    lesion placement; ``noise`` (the blur, bias field and noise) differs per section.
    The lesion's radius in pixels is ``lesion_scale`` times a full-size head's, whatever
    ``extent``. ``extent`` 0 gives a section of noise alone: air beyond the head.
    """
    shape = _checked_shape(class_name, size, domain, lesion_scale)
    style = _DOMAINS[domain]
    if extent <= 0.0:
        empty = np.zeros(shape, np.float32)
        return _acquire(noise, empty, style), np.zeros(shape, bool)
    canvas, lesion = _scene(streams, class_name, shape, domain, lesion_scale / extent, extent)
    return _acquire(noise, canvas, style), lesion > 0.0


def _scene(
    streams: SceneStreams,
    class_name: str,
    shape: tuple[int, int],
    domain: Domain,
    lesion_scale: float,
    extent: float,
) -> tuple[Field, Field]:
    """The noiseless canvas of a head (``extent`` times its drawn size) and its lesion weight."""
    style = _DOMAINS[domain]
    tissue = _draw_contrast(streams.scan, style)
    head = draw_head(streams.anatomy, shape, style.rotation_deg, extent)
    canvas = paint_head(streams.anatomy, head, tissue)
    lesion = paint_lesion(streams.lesion, class_name, head, tissue, canvas, lesion_scale)
    return canvas, lesion


def _checked_shape(
    class_name: str, size: int | tuple[int, int], domain: str, lesion_scale: float
) -> tuple[int, int]:
    """The ``(height, width)`` to render; a ValueError naming the first argument out of range."""
    if class_name not in CLASS_NAMES:
        raise ValueError(f"unknown class {class_name!r}")
    if domain not in _DOMAINS:
        raise ValueError(f"domain must be one of {sorted(_DOMAINS)}, got {domain!r}")
    shape = (size, size) if isinstance(size, int) else size
    if min(shape) < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size!r}")
    if not lesion_scale > 0:
        raise ValueError(f"lesion_scale must be positive, got {lesion_scale!r}")
    return shape


def _draw_contrast(rng: np.random.Generator, style: _DomainStyle) -> Contrast:
    weights = np.asarray([weight for _, weight in style.sequences])
    chosen, _ = style.sequences[int(rng.choice(len(weights), p=weights))]
    return chosen.jittered(rng, style.contrast_spread)


def _acquire(rng: np.random.Generator, canvas: Field, style: _DomainStyle) -> Image:
    """Blur, multiplicative bias field, Rician noise and scanner gain."""
    blur = rng.uniform(0.0, 1.0)
    if blur > 0.3:
        canvas = ndimage.gaussian_filter(canvas, blur)
    bias_field = smooth_field(rng, canvas.shape, min(canvas.shape) / 2.5)
    bias = np.exp(rng.uniform(*style.bias_strength) * bias_field)
    sigma = rng.uniform(*style.noise_sigma)
    real = canvas * bias + sigma * rng.standard_normal(canvas.shape, np.float32)
    magnitude = np.hypot(real, sigma * rng.standard_normal(canvas.shape, np.float32))
    return np.asarray(np.clip(magnitude * rng.uniform(*style.gain), 0.0, 1.0), np.float32)
