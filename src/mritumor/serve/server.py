"""Binding the port and running uvicorn.

The socket is bound before the model is loaded: a port in use is one line at once,
not a uvicorn traceback after TensorFlow has loaded. uvicorn then serves on that
socket, and stops cleanly on Ctrl-C or SIGTERM (the lifespan stops the micro-batcher).
"""

from __future__ import annotations

import contextlib
import errno
import socket
from typing import Any

from mritumor.core.errors import MritumorError, UsageError


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: any free port); one error line if not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as error:
        raise UsageError(f"cannot listen on {host!r}: {error.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise MritumorError(
                f"port {port} on {host} is already in use; stop what holds it or pick another "
                "with --port"
            ) from None
        raise MritumorError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    return sock


def address(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def run(app: Any, sock: socket.socket, *, access_log: bool = True) -> None:
    """Serve ``app`` on ``sock`` until Ctrl-C or SIGTERM.

    uvicorn shuts down gracefully on either signal and then raises it again, as
    ``uvicorn`` itself does: Ctrl-C ends here (a normal stop, exit 0, not click's
    "Aborted!"), SIGTERM ends the process by that signal, as supervisors expect.
    """
    import uvicorn

    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=access_log,
        timeout_graceful_shutdown=10,
    )
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run(sockets=[sock])
