"""Serving the viewer with uvicorn: in the foreground (``kedro view``) or in a thread (tests, benchmarks).

The socket is bound before uvicorn starts, so port 0 means "any free port" and the URL printed is the one
that is listening.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _server(app: FastAPI, log_level: str) -> uvicorn.Server:
    config = uvicorn.Config(app, log_level=log_level, access_log=log_level == "debug", lifespan="off")
    return uvicorn.Server(config)


def serve(app: FastAPI, sock: socket.socket, log_level: str = "info") -> None:
    """Serve on ``sock`` until Ctrl-C, then return (SIGTERM also stops it, gracefully)."""
    # uvicorn shuts down gracefully on the signal, then raises it again for the caller: here, a normal end.
    with contextlib.suppress(KeyboardInterrupt):
        _server(app, log_level).run(sockets=[sock])


@contextlib.contextmanager
def running(app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 20.0) -> Iterator[str]:
    """Serve ``app`` in a thread while the block runs; yields the base URL. Stopped (and joined) on exit."""
    sock = bind(host, port)
    server = _server(app, "warning")
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="viewer-server", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not server.started:
            raise RuntimeError(f"the viewer did not start within {timeout_s} s")
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout_s)
        sock.close()
