"""A local OTLP/HTTP trace receiver for tests: a real server on 127.0.0.1 that accepts
``POST /v1/traces``, decodes the protobuf body with ``opentelemetry-proto``'s
``ExportTraceServiceRequest`` (as a collector would) and keeps the spans for the test.

It runs in the test's event loop; the gateway's export thread POSTs to it over loopback. It
can be told to answer an error status (``status``) or to hold every request unanswered
(``hang``) to test an unavailable collector.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

MAX_BODY_BYTES = 64 * 1024 * 1024
KIND_NAMES = {1: "internal", 2: "server", 3: "client"}


@dataclass
class ReceivedSpan:
    name: str
    trace_id: str  # hex
    span_id: str
    parent_span_id: str  # "" for a root span
    kind: str
    start_ns: int
    end_ns: int
    attributes: dict[str, object]
    status_code: int  # 0 unset, 1 ok, 2 error
    flags: int
    resource: dict[str, object]
    scope: str


def _value(any_value: object) -> object:
    which = any_value.WhichOneof("value")  # type: ignore[attr-defined]
    return getattr(any_value, which) if which else None


def decode(body: bytes) -> list[ReceivedSpan]:
    request = ExportTraceServiceRequest.FromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        kind=KIND_NAMES.get(span.kind, str(span.kind)),
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        attributes={kv.key: _value(kv.value) for kv in span.attributes},
                        status_code=span.status.code,
                        flags=span.flags,
                        resource=resource,
                        scope=scope_spans.scope.name,
                    )
                )
    return spans


@dataclass
class OtlpReceiver:
    status: int = 200
    hang: bool = False
    spans: list[ReceivedSpan] = field(default_factory=list)
    posts: int = 0
    paths: list[str] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()

    def by_name(self, name: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.name == name]

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.trace_id == trace_id]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                assert length <= MAX_BODY_BYTES
                body = await reader.readexactly(length)
                self.posts += 1
                self.paths.append(f"{method} {path}")
                self.content_types.append(headers.get("content-type", ""))
                if self.hang:
                    await asyncio.Event().wait()  # never answers; cancelled at stop
                if self.status == 200:
                    self.spans.extend(decode(body))
                writer.write(
                    b"HTTP/1.1 %d X\r\nContent-Type: application/x-protobuf\r\n"
                    b"Content-Length: 0\r\n\r\n" % self.status
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()


@contextlib.asynccontextmanager
async def otlp_receiver(status: int = 200, hang: bool = False) -> AsyncIterator[OtlpReceiver]:
    receiver = OtlpReceiver(status=status, hang=hang)
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


class ThreadedOtlpReceiver:
    """The same receiver for tests without an event loop (process tests): a threaded stdlib
    HTTP server on 127.0.0.1; ``spans`` fills as POSTs arrive. Use as a context manager."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        receiver = self
        self.spans: list[ReceivedSpan] = []
        self.posts = 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.posts += 1
                receiver.spans.extend(decode(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    def __enter__(self) -> ThreadedOtlpReceiver:
        import threading

        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
