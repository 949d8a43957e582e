"""The plugin API's 0.1 address, kept for backbone plugins written against mritumor 0.1.

Import from :mod:`mritumor.models.registry` instead; this module goes in 0.3.
"""

import warnings

from mritumor.models.registry import build_backbone, get_backbone, register_backbone, registry

warnings.warn(
    "mritumor.registry moved to mritumor.models.registry; import register_backbone from there",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["build_backbone", "get_backbone", "register_backbone", "registry"]
