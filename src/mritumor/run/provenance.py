"""Where a run came from: the package versions, the git commit and the time it was created.

Read without importing TensorFlow, Keras or NumPy (their distributions' metadata
says the version), so writing a bundle stays fast.
"""

from __future__ import annotations

import platform
import re
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from mritumor import __version__

#: Distributions that provide TensorFlow, in the order they are looked up.
_TENSORFLOW_DISTRIBUTIONS = (
    "tensorflow",
    "tensorflow-cpu",
    "tensorflow-gpu",
    "tensorflow-macos",
    "tensorflow-intel",
    "tf-nightly",
)
_NOT_INSTALLED = "not installed"
_GIT_TIMEOUT_S = 2.0
_COMMIT = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


def environment_versions() -> dict[str, str]:
    """Versions of mritumor, TensorFlow, Keras, Python and NumPy, without importing them."""
    tensorflow = _NOT_INSTALLED
    for distribution in _TENSORFLOW_DISTRIBUTIONS:
        tensorflow = _distribution_version(distribution)
        if tensorflow != _NOT_INSTALLED:
            break
    return {
        "mritumor": __version__,
        "tensorflow": tensorflow,
        "keras": _distribution_version("keras"),
        "python": platform.python_version(),
        "numpy": _distribution_version("numpy"),
    }


def git_commit(cwd: Path | None = None) -> str | None:
    """``git rev-parse HEAD`` in ``cwd``; None outside a repository, without git, or on a hang."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    commit = result.stdout.strip()
    if result.returncode != 0 or not _COMMIT.match(commit):
        return None
    return commit


def utc_now() -> str:
    """The current UTC time in ISO 8601, to the second: ``2025-01-31T12:00:00+00:00``."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _distribution_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return _NOT_INSTALLED
