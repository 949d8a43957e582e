"""``mritumor serve``: a run's model over HTTP, with FastAPI and uvicorn (the ``serve`` extra)."""

from __future__ import annotations

from typing import Annotated

import typer

from mritumor.cli.options import RunOption
from mritumor.cli.state import SetOption, resolve_settings
from mritumor.cli.ui import err_console
from mritumor.run.layout import latest_run
from mritumor.serve import (
    DEFAULT_BATCH_WINDOW_MS,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_UPLOAD_BYTES,
)

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def serve(
    ctx: typer.Context,
    run: RunOption = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on; 0.0.0.0 listens on every interface.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port; 0 picks a free one.")] = 8000,
    max_upload_mb: Annotated[
        float, typer.Option(min=0.001, help="Largest file a request may hold, in MB (10^6 bytes).")
    ] = DEFAULT_MAX_UPLOAD_BYTES / 1_000_000,
    max_files: Annotated[int, typer.Option(min=1, help="Most files in one request.")] = (
        DEFAULT_MAX_FILES
    ),
    batch_window_ms: Annotated[
        float,
        typer.Option(min=0.0, help="How long a request waits for others to share its model call."),
    ] = DEFAULT_BATCH_WINDOW_MS,
    max_batch: Annotated[
        int, typer.Option(min=1, help="Most images in one model call of concurrent requests.")
    ] = DEFAULT_MAX_BATCH,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No log line per request.")] = False,
    assignments: SetOption = None,
) -> None:
    """Serve a run's model over HTTP: POST /predict, GET /health, GET /model, /openapi.json.

    POST /predict takes images (PNG, JPEG, ... or DICOM .dcm) as multipart files named
    `files` and answers with the JSON of `mritumor infer --format json`, predicted as
    `infer` predicts (the inference.* settings; change them with --config or --set).
    Bad input is a 4xx answer with a JSON `detail`. Listens on 127.0.0.1 by default and
    has no authentication: put it behind a reverse proxy with TLS and access control
    before exposing it. Research software, not a medical device.
    """
    from mritumor.serve import require_serve_extra

    require_serve_extra()
    from mritumor.predict.ensemble import InferOptions
    from mritumor.serve import server

    settings = resolve_settings(ctx, {}, assignments or ()).settings
    run_dir = run if run is not None else latest_run(settings.paths.runs_dir)
    sock = server.bind(host, port)
    try:
        from mritumor.serve.app import create_app

        app = create_app(
            run_dir,
            max_upload_bytes=max(1, round(max_upload_mb * 1_000_000)),
            max_files=max_files,
            batch_window_ms=batch_window_ms,
            max_batch=max_batch,
            options=InferOptions.from_settings(settings),
        )
    except BaseException:
        sock.close()
        raise
    url = server.address(sock)
    err_console.print(
        f"Serving {run_dir} at {url} (API docs at {url}/docs); Ctrl-C stops.", soft_wrap=True
    )
    if host not in _LOOPBACK:
        err_console.print(
            f"[yellow]warning:[/] listening on {host} without authentication: put a reverse "
            "proxy with TLS and access control in front",
            soft_wrap=True,
        )
    server.run(app, sock, access_log=not quiet)
