"""Tissue intensities of the MR sequences the phantoms imitate: T1 post-contrast, T2, FLAIR."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Contrast:
    """Tissue intensities of one MR sequence, on a 0-1 scale before gain."""

    scalp: float
    skull: float
    diploe: float
    csf: float
    grey: float
    white: float
    oedema: float
    enhancing: float
    necrosis: float
    meningioma: float
    pituitary: float

    def jittered(self, rng: np.random.Generator, spread: float) -> Contrast:
        """The same sequence with every tissue scaled by its own factor ``1 ± spread``."""
        values = asdict(self)
        factors = rng.uniform(1.0 - spread, 1.0 + spread, size=len(values))
        scaled = {k: float(v * f) for (k, v), f in zip(values.items(), factors, strict=True)}
        return Contrast(**scaled)


T1_POST_CONTRAST = Contrast(
    scalp=0.85, skull=0.06, diploe=0.5, csf=0.1, grey=0.4, white=0.55, oedema=0.4,
    enhancing=0.85, necrosis=0.15, meningioma=0.8, pituitary=0.72,
)  # fmt: skip
T2 = Contrast(
    scalp=0.55, skull=0.05, diploe=0.35, csf=0.92, grey=0.5, white=0.36, oedema=0.62,
    enhancing=0.55, necrosis=0.8, meningioma=0.62, pituitary=0.7,
)  # fmt: skip
FLAIR = Contrast(
    scalp=0.6, skull=0.05, diploe=0.4, csf=0.1, grey=0.5, white=0.4, oedema=0.72,
    enhancing=0.62, necrosis=0.25, meningioma=0.64, pituitary=0.72,
)  # fmt: skip
