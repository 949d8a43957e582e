"""Environment variables the package reads before any heavy import.

Kept free of pydantic and TensorFlow imports: the CLI reads these on every start.
"""

from __future__ import annotations

import os

ENV_PREFIX = "MRITUMOR_"
ENV_NESTED_DELIMITER = "__"
CONFIG_ENV_VAR = "MRITUMOR_CONFIG"
DEBUG_ENV_VAR = "MRITUMOR_DEBUG"
#: Variables with the prefix that are not settings fields.
CONTROL_ENV_VARS = frozenset({CONFIG_ENV_VAR, DEBUG_ENV_VAR})


def quiet_tensorflow(debug: bool) -> None:
    """Silence TensorFlow's C++ and Python log noise unless debugging.

    Must run before TensorFlow is first imported; a value the user set wins.
    """
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if not debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
