"""The progress protocol between long-running library code and the CLI's progress bars.

Library functions take an optional ``progress`` callback and call it as work
completes; the CLI passes one that advances a rich progress bar. Library code
never imports rich.
"""

from __future__ import annotations

from typing import Protocol


class ProgressCallback(Protocol):
    """Called with how many of ``total`` items are done (monotonically increasing)."""

    def __call__(self, completed: int, total: int) -> None: ...
