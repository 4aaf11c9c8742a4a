"""A real JWKS endpoint on loopback for key-refresh tests.

``JwksServer`` serves one document at ``url`` (127.0.0.1, a free port) from a thread; a test
swaps ``document``, ``status``, ``delay_s`` or ``drip_s`` at any moment and reads ``requests``
(GETs answered so far).
With ``drip_s`` set the answer goes out one byte every ``drip_s`` seconds (a host that trickles:
each read gets a byte in time, so only an overall deadline ends the wait); ``drip_head=False``
sends the head at once and drips the body only. A dripping answer stops when the server closes.
Created with ``listening=False`` its port is bound but refuses connections (a JWKS host that is
down) until ``listen()``.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


class JwksServer:
    def __init__(self, document: bytes | dict[str, Any] = b'{"keys": []}', *,
                 listening: bool = True) -> None:  # fmt: skip
        self._lock = threading.Lock()
        self._document = b""
        self._requests = 0
        self.status = 200
        self.delay_s = 0.0
        self.drip_s = 0.0
        self.drip_head = True
        self._closing = threading.Event()
        self.document = document
        self._thread: threading.Thread | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler(), False)
        self._server.daemon_threads = True
        self._server.server_bind()  # bound, not listening: connections are refused
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}/.well-known/jwks.json"
        if listening:
            self.listen()

    @property
    def document(self) -> bytes:
        with self._lock:
            return self._document

    @document.setter
    def document(self, value: bytes | dict[str, Any]) -> None:
        data = value if isinstance(value, bytes) else json.dumps(value).encode()
        with self._lock:
            self._document = data

    @property
    def requests(self) -> int:
        with self._lock:
            return self._requests

    def listen(self) -> None:
        """Start accepting connections and serving."""
        self._server.server_activate()
        serve = self._server.serve_forever
        self._thread = threading.Thread(target=serve, args=(0.02,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closing.set()  # a dripping handler stops at its next byte
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> JwksServer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with owner._lock:
                    owner._requests += 1
                    body, status, delay_s = owner._document, owner.status, owner.delay_s
                    drip_s, drip_head = owner.drip_s, owner.drip_head
                if delay_s:
                    time.sleep(delay_s)  # a slow JWKS host
                if drip_s:
                    self._drip(status, body, drip_s, drip_head)
                    return
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _drip(self, status: int, body: bytes, drip_s: float, drip_head: bool) -> None:
                head = (
                    f"HTTP/1.1 {status} {self.responses[status][0]}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n"
                ).encode()
                self.close_connection = True
                if not drip_head:
                    self.wfile.write(head)
                slow = head + body if drip_head else body
                for index in range(len(slow)):
                    if owner._closing.wait(drip_s):
                        return  # the server is closing
                    try:
                        self.wfile.write(slow[index : index + 1])
                    except OSError:
                        return  # the client gave up

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        return Handler
