"""Environment variables read before any heavy import, and a quiet TensorFlow import.

Kept free of pydantic and TensorFlow imports at module level: the CLI reads
this on every start, including ``--help`` and shell completion.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

ENV_PREFIX = "MRITUMOR_"
ENV_NESTED_DELIMITER = "__"
CONFIG_ENV_VAR = "MRITUMOR_CONFIG"
DEBUG_ENV_VAR = "MRITUMOR_DEBUG"
#: Variables with the prefix that are not settings fields.
CONTROL_ENV_VARS = frozenset({CONFIG_ENV_VAR, DEBUG_ENV_VAR})
_TRUE = frozenset({"1", "true", "yes", "on"})


def debugging() -> bool:
    """True when ``--debug`` was given or ``MRITUMOR_DEBUG`` is set to a true value."""
    return os.environ.get(DEBUG_ENV_VAR, "").strip().lower() in _TRUE


def configure(debug: bool) -> None:
    """Record the debug choice for library code and quiet TensorFlow's logging unless debugging.

    Must run before TensorFlow is first imported; values the user set win.
    """
    if debug:
        os.environ[DEBUG_ENV_VAR] = "1"
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if not debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the block, unless debugging.

    For native libraries that print to the descriptor directly, past Python's
    ``sys.stderr`` and past ``TF_CPP_MIN_LOG_LEVEL`` (TensorFlow while it loads,
    the TensorFlow Lite interpreter's "Created ... delegate" line). Python
    exceptions raised in the block still propagate.
    """
    if debugging():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow() -> Any:
    """Import TensorFlow, hiding the C++ lines it prints before its logging is set up.

    TensorFlow writes "oneDNN custom operations are on" and "Could not find
    cuda drivers" straight to file descriptor 2 before ``TF_CPP_MIN_LOG_LEVEL``
    applies, so the descriptor is pointed at /dev/null for the import alone.
    Python exceptions raised by the import still propagate.
    """
    if "tensorflow" in sys.modules or debugging():
        import tensorflow

        return tensorflow
    configure(debug=False)
    with native_stderr_silenced():
        import tensorflow
    # Python-side warnings too (e.g. "triggered tf.function retracing" when a last,
    # smaller batch is predicted): advice for TensorFlow developers, not for users.
    tensorflow.get_logger().setLevel(logging.ERROR)
    return tensorflow
