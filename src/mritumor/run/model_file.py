"""Safe model loading: a run's ``.keras`` checkpoints, opened with ``safe_mode=True``.

A damaged checkpoint is named with the way to recover, which depends on the run
folder: the latest training state may still be whole when the best one is not.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from mritumor.core.environment import import_tensorflow
from mritumor.core.errors import MritumorError, UsageError
from mritumor.run.layout import LAST_FILE, RunLayout


def load_model(path: Path, *, compile: bool = False) -> Any:
    """Load a ``.keras`` model with ``safe_mode=True`` (no arbitrary code from the file).

    ``compile=True`` restores the optimizer state too, for resuming training.
    """
    if path.suffix != ".keras":
        raise UsageError(
            f"{path}: only .keras model files are loaded (in safe mode); "
            ".h5 files and pickles can run code and are refused"
        )
    if not path.is_file():
        raise UsageError(f"model file {path} not found")
    if not zipfile.is_zipfile(path):
        raise MritumorError(_damaged(path))
    import_tensorflow()
    import keras

    try:
        return keras.saving.load_model(path, safe_mode=True, compile=compile)
    except (ValueError, OSError, KeyError, zipfile.BadZipFile) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MritumorError(f"cannot load {path}: {reason}") from None


def _damaged(path: Path) -> str:
    """A .keras file is a zip archive: one that is not (zero bytes, cut off) was damaged."""
    size = path.stat().st_size
    recovery = "retrain, or restore it from a copy"
    last = RunLayout(path.parent).last
    if path.name != LAST_FILE and zipfile.is_zipfile(last):
        recovery = (
            f"{last} holds the latest training state: continue the run with "
            f"`mritumor train --resume {path.parent}`, or retrain"
        )
    return f"{path} is damaged ({size} bytes, not a complete .keras archive); {recovery}"
