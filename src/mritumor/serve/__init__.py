"""``mritumor serve``: a run's model behind HTTP, with FastAPI and uvicorn (the ``serve`` extra).

This package owns the web service and nothing else: the routes and their pydantic
response models (``schemas.py``), reading multipart uploads within the limits
(``uploads.py``), gathering concurrent requests into one model call
(``batching.py``), the app itself (``app.py``) and binding the port (``server.py``).
Predictions come from :func:`mritumor.predict.ensemble.infer`, the function behind
``mritumor infer``, on the uploaded files written to a private temporary folder, so an
image gets the same numbers, and the answer the same JSON, whichever way it is sent.

It may import ``predict`` and the layers below it (docs/architecture.md). FastAPI,
uvicorn and python-multipart are imported by the modules that use them, never here,
so that the CLI can name the missing extra in one line (:func:`require_serve_extra`).
"""

from __future__ import annotations

from mritumor.core.errors import UsageError

DEFAULT_MAX_UPLOAD_BYTES = 20_000_000
"""Largest file a request may hold: 20 MB, room for a DICOM slice or a large PNG."""
DEFAULT_MAX_FILES = 32
DEFAULT_BATCH_WINDOW_MS = 5.0
"""How long the first request of a micro-batch waits for others to join it."""
DEFAULT_MAX_BATCH = 64
"""Most images in one micro-batch (a single larger request is still one batch)."""

#: The message when the ``serve`` extra is missing.
MISSING_SERVE_EXTRA = "serving needs FastAPI and uvicorn: pip install 'mritumor[serve]'"


def require_serve_extra() -> None:
    """Raise one :class:`UsageError` line naming the extra when a package of it is missing."""
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        missing = f" ({error.name} is not installed)" if error.name else ""
        raise UsageError(MISSING_SERVE_EXTRA + missing) from None
