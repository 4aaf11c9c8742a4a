"""Listening sockets. Every worker binds its own SO_REUSEPORT socket, so the kernel spreads
new connections across workers without a shared accept queue (no thundering herd, no
accept lock). The master binds the same address first without listening: that reserves the
port (and resolves port 0 to a real one) for every generation of workers, and a bound socket
that does not listen receives no connections."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Final

from fastgw.errors import BootError

if TYPE_CHECKING:
    from fastgw.config import Config

BACKLOG: Final = 2048


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def admin_address(config: Config) -> tuple[str, int] | None:
    """Where the metrics and admin port listens: ``gateway.observability.metrics.host`` (or
    the server's host) and its configured port; None when metrics are off."""
    metrics = config.gateway.observability.metrics
    if not metrics.enabled:
        return None
    return (metrics.host or config.gateway.server.host, metrics.port)


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for demos, tests and benches: the usual small race
    between this close and the caller's bind is acceptable there, never in ``serve``)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind without listening: holds ``host:port`` for the workers (port 0 → a free port)."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise BootError(f"cannot bind {host}:{port}: {error.strerror or error}") from None
    return sock


def bind_listener(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    """A listening, non-blocking SO_REUSEPORT socket for one worker."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        raise BootError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    return sock
