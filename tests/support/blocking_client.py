"""A minimal blocking HTTP/1.1 client for process tests: exact control over connections and
over what "failed" means (``NoResponse``: not one byte of the answer came back), on plain or
TLS sockets alike."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

# What a dying or refusing server looks like to a blocking client, plain or TLS.
LOST: tuple[type[Exception], ...] = (BrokenPipeError, ConnectionResetError, ssl.SSLError)


S = TypeVar("S", bound=socket.socket)


class NoResponse(Exception):
    """The connection ended before a single byte of the response arrived."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def keep_alive(self) -> bool:
        return self.headers.get("connection", "").lower() != "close"


def http_request(sock: socket.socket, method: str, path: str) -> Response:
    """One request on an open connection; ``NoResponse`` if not one byte came back."""
    try:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    except LOST as error:
        raise NoResponse(f"send: {error}") from None
    return read_response(sock)


def get_with_stale_retry(
    sock: S, reused: bool, connect: Callable[[], S], path: str, on_stale: Callable[[], None]
) -> tuple[S, Response]:
    """GET ``path`` on ``sock``. When ``sock`` is a *reused* keep-alive connection that gets no
    byte back, it is closed and the request goes once more on a new one: the standard client
    rule for an idempotent request on a connection the server may close while idle (RFC 9112
    section 9.3.1); ``on_stale`` is told. Returns the connection the answer came on."""
    try:
        return sock, http_request(sock, "GET", path)
    except NoResponse:
        if not reused:
            raise
    sock.close()
    on_stale()
    fresh = connect()
    try:
        return fresh, http_request(fresh, "GET", path)
    except BaseException:
        fresh.close()
        raise


def read_response(sock: socket.socket) -> Response:
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = sock.recv(65536)
        except LOST as error:
            if not data:
                raise NoResponse(f"recv: {error}") from None
            raise
        if not chunk:
            if not data:
                raise NoResponse("EOF")
            raise ConnectionError(f"EOF inside the response head: {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *fields = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in fields:
        name, value = line.split(":", 1)
        headers[name.strip().lower()] = value.strip()
    size = int(headers.get("content-length", "-1"))
    assert size >= 0, f"expected a Content-Length: {head!r}"
    while len(body) < size:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("EOF inside the response body")
        body += chunk
    return Response(int(status_line.split()[1]), headers, body[:size])
