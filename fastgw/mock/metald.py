"""Mock metald: the backend that fastgw's tests, demo and benchmarks talk to (contract A6).

Routes (every response carries ``X-Metald-Instance: <name>``):

- ``POST /vmprovisioner.v1.VmService/<Method>`` -- ConnectRPC unary calls with the JSON codec
  (``Content-Type: application/json``), served by :mod:`fastgw.mock.vms`, which documents the
  fields, the ``VM_STATE_*`` enum spelling and the state machine. Checked in this order: unknown
  method -> ``unimplemented`` 404; HTTP method not POST -> 405; another content type ->
  ``unimplemented`` 415; no ``X-Customer-ID`` -> ``unauthenticated`` 401; a body that is not a
  JSON object -> ``invalid_argument`` 400. Errors are ``{"code","message"}`` with Connect's
  HTTP status for the code.
- ``GET|HEAD /health`` -> ``{"status":"ok"}`` (the status is ``health_status``).
- ``ANY /echo/...`` -> what arrived: method, path, query, headers (names as received, in
  order), body length and SHA-256.
- ``GET /stream/<n>?chunk=<bytes>[&interval_ms=<ms>]`` -> a chunked body of n chunks; chunk i
  is ``chunk`` (default 16) copies of the digit ``i % 10``; with ``interval_ms`` the chunks
  leave one by one, that far apart.
- ``GET /close-delimited/<n>`` -> no Content-Length, n bytes, then the connection closes.
- ``ANY /status/<code>`` -> that status with ``{}`` (no body for 204 and 304).
- ``/__mock/stats``, ``/__mock/behaviour`` (GET reads, POST changes the keys given),
  ``/__mock/reset`` -- the test/bench controls; see :class:`Behaviour`.

Behaviour switches (delay, injected failures, dropped connections, Connection: close) apply to
every route except ``/health`` (steered only by ``health_status``) and ``/__mock/*``, so that a
test can make calls slow or failing without the gateway's health checker noticing, and the other
way round. Stats count every completed request except ``/__mock/*`` and ``/health`` (health
checks are counted apart, as ``health_checks``, so that a gateway's checks do not disturb a
test's request counts).

HTTP/1.1: keep-alive unless the request says ``Connection: close`` (or is HTTP/1.0 without
``keep-alive``); pipelined requests are answered in order; request bodies may use
Content-Length or chunked; ``HEAD`` gets the head only; ``Expect: 100-continue`` is answered at
once; an Upgrade or CONNECT request is answered, then the connection closes.

Theory of the I/O shell. One connection is one :class:`MetaldProtocol`: a plain
``asyncio.Protocol`` whose ``data_received`` feeds an ``httptools.HttpRequestParser``. Requests
are answered synchronously inside ``on_message_complete`` -- no coroutine, Task or Future per
request. Responses must leave in request order (pipelining), so a connection keeps a FIFO of
:class:`_Slot` only when it has to: when nothing is queued and there is no delay, the response
is written at once (the common case, and the benchmark's). A delayed response takes a slot at
the tail and fills it from ``loop.call_later``; ``_flush`` writes finished slots from the head
and stops at the first unfinished one, so a fast response never overtakes a slow one. A slot
may also be filled piece by piece (``/stream`` with ``interval_ms``). VM state changes happen
when the request arrives; only the answer is delayed.

Bounds: reading pauses while ``MAX_PIPELINED_RESPONSES`` answers wait or while the transport's
write buffer is over its high-water mark, so a client that writes without reading cannot make
the mock buffer without limit. A malformed request is answered 400 (after the responses queued
before it) and the connection closes; nothing after it is read. There are no idle timeouts: a
mock's connections live as long as its client keeps them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import signal
from collections import deque
from typing import Any, Final, cast

import httptools
import orjson

from fastgw.errors import BootError
from fastgw.mock.vms import Behaviour, ConnectError, Instance, VmStore, code_for_status

log = logging.getLogger("fastgw.mock")

MAX_PIPELINED_RESPONSES: Final = 256
MAX_RPC_BODY_BYTES: Final = 4 * 1024 * 1024
MAX_STREAM_CHUNKS: Final = 1_000_000
MAX_STREAM_BYTES: Final = 64 * 1024 * 1024
MAX_CHUNK_BYTES: Final = 16 * 1024 * 1024

RPC_PREFIX: Final = b"/vmprovisioner.v1.VmService/"
# Route kinds, decided once per request in on_headers_complete.
_OTHER, _HEALTH, _RPC, _MOCK, _ECHO, _STREAM, _CLOSE_DELIMITED, _STATUS = range(8)
_PREFIX_ROUTES: Final = (
    (RPC_PREFIX, _RPC), (b"/__mock/", _MOCK), (b"/echo/", _ECHO), (b"/stream/", _STREAM),
    (b"/close-delimited/", _CLOSE_DELIMITED), (b"/status/", _STATUS),
)
_EXACT_ROUTES: Final = {b"/health": _HEALTH, b"/echo": _ECHO}
_GET_ONLY: Final = frozenset((_HEALTH, _STREAM, _CLOSE_DELIMITED))

CT_JSON: Final = b"Content-Type: application/json\r\n"
CT_OCTETS: Final = b"Content-Type: application/octet-stream\r\n"
_CONN_CLOSE: Final = b"Connection: close\r\n"
_CONN_KEEP_ALIVE: Final = b"Connection: keep-alive\r\n"
_PATTERN: Final = b"0123456789abcdefghijklmnopqrstuvwxyz" * 32
_random = random.random


class _Slot:
    """One response in a connection's FIFO: the parts ready to write, and whether it is whole."""

    __slots__ = ("close", "done", "parts")

    def __init__(self, close: bool) -> None:
        self.parts: list[bytes] = []
        self.done = False
        self.close = close


class MetaldProtocol(asyncio.Protocol):
    """One client connection (see the module docstring for the theory)."""

    __slots__ = (
        "_body", "_body_len", "_closing", "_expect_continue", "_hasher", "_headers", "_inst",
        "_kind", "_loop", "_method", "_parser", "_path", "_query", "_queue", "_read_paused",
        "_transport", "_url", "_write_paused",
    )

    def __init__(self, inst: Instance) -> None:
        self._inst = inst
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._queue: deque[_Slot] = deque()
        self._closing = False
        self._read_paused = self._write_paused = False
        self._url = self._method = self._path = self._query = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_len = 0
        self._kind = _OTHER
        self._hasher: Any = None
        self._expect_continue = False

    # -- asyncio callbacks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._inst.protocols.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._closing = True
        self._queue.clear()
        self._inst.protocols.discard(self)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    def data_received(self, data: bytes) -> None:  # HOT PATH
        if self._closing:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._close_when_flushed()  # the request was answered; its upgrade is refused
        except httptools.HttpParserCallbackError:
            log.exception("mock metald: bug while answering a request")
            self._reply_and_close(500, "internal", "mock metald failed on this request")
        except httptools.HttpParserError as exc:
            self._reply_and_close(400, "invalid_argument", f"malformed request: {exc}")

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- httptools callbacks (HOT PATH: no await, little allocation) -------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body_len = 0
        self._expect_continue = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        if len(name) == 6 and name.lower() == b"expect":
            self._expect_continue = value.lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        url = self._url
        qmark = url.find(b"?")
        if qmark < 0:
            path, self._query = url, b""
        else:
            path, self._query = url[:qmark], url[qmark + 1 :]
        self._path = path
        self._method = self._parser.get_method()
        kind = _EXACT_ROUTES.get(path, _OTHER)
        if kind == _OTHER:
            for prefix, prefix_kind in _PREFIX_ROUTES:
                if path.startswith(prefix):
                    kind = prefix_kind
                    break
        self._kind = kind
        if self._expect_continue and not self._queue and self._transport is not None:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # else the client waits
        if kind == _ECHO:
            self._hasher = hashlib.sha256()
        elif kind in (_RPC, _MOCK):
            self._body = []

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        kind = self._kind
        if kind == _ECHO:
            self._hasher.update(body)
        elif kind in (_RPC, _MOCK) and self._body_len <= MAX_RPC_BODY_BYTES:
            self._body.append(body)

    def on_message_complete(self) -> None:
        if self._closing:
            return
        inst = self._inst
        kind = self._kind
        keep_alive = self._parser.should_keep_alive()
        delay_s = 0.0
        if kind == _HEALTH:
            inst.health_checks += 1  # the gateway's own checks: not part of the traffic stats
        elif kind != _MOCK:
            inst.count(self._path, self._headers, self._body_len)
        if kind != _MOCK:
            if kind == _HEALTH:
                if (keep_alive and inst.behaviour.health_status == 200 and self._method == b"GET"
                        and self._parser.get_http_version() == "1.1"):
                    self._send(inst.health_ok, False, 0.0)  # pre-encoded whole
                    return
            else:
                behaviour = inst.behaviour
                if behaviour.drop_connection:
                    self._closing = True
                    self._queue.clear()
                    self._transport.close()  # type: ignore[union-attr]
                    return
                keep_alive = keep_alive and not behaviour.close_after_response
                delay_s = behaviour.delay_ms / 1000.0
                if behaviour.fail_rate and _random() < behaviour.fail_rate:
                    status = behaviour.fail_status
                    body = _error_body(code_for_status(status), "injected failure")
                    self._respond(status, CT_JSON, body, keep_alive, delay_s)
                    return
        headers = CT_JSON
        if kind == _RPC:
            status, body = self._rpc()
        elif kind in _GET_ONLY and self._method not in (b"GET", b"HEAD"):
            status, headers = 405, CT_JSON + b"Allow: GET, HEAD\r\n"
            body = _error_body("invalid_argument", f"{self._method.decode()} not allowed")
        elif kind in (_STREAM, _CLOSE_DELIMITED):
            self._stream(kind == _STREAM, keep_alive, delay_s)
            return
        else:
            status, body = self._answer(kind)
        self._respond(status, headers, body, keep_alive, delay_s)

    # -- routes ----------------------------------------------------------------------------

    def _rpc(self) -> tuple[int, bytes]:
        """A VmService call; errors come back as Connect error bodies."""
        try:
            method = self._path[len(RPC_PREFIX) :].decode("latin-1")
            if not self._inst.vms.has_method(method):
                raise ConnectError("unimplemented", f"{self._path.decode('latin-1')} is not "
                                   "implemented")
            if self._method != b"POST":
                return 405, _error_body("unimplemented", "the Connect protocol needs POST")
            content_type = customer = b""
            for name, value in self._headers:
                lowered = name.lower()
                if lowered == b"content-type":
                    content_type = value
                elif lowered == b"x-customer-id":
                    customer = value
            if content_type.split(b";", 1)[0].strip().lower() != b"application/json":
                return 415, _error_body(
                    "unimplemented",
                    f"content type {content_type.decode('latin-1')!r} is not supported; "
                    "use application/json")
            if not customer:
                raise ConnectError("unauthenticated", "missing X-Customer-ID")
            request = self._json_body()
            if not isinstance(request, dict):
                raise ConnectError("invalid_argument", "the request body must be a JSON object")
            response = self._inst.vms.call(method, customer.decode("latin-1"), request)
            return 200, orjson.dumps(response)
        except ConnectError as err:
            return err.http_status, _error_body(err.code, err.message)

    def _json_body(self) -> Any:
        if self._body_len > MAX_RPC_BODY_BYTES:
            raise ConnectError("resource_exhausted", "request body too large")
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        if not body:
            raise ConnectError("invalid_argument", "zero-length payload is not a valid JSON "
                               "object")
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ConnectError("invalid_argument", f"invalid JSON: {exc}") from None

    def _answer(self, kind: int) -> tuple[int, bytes]:
        inst = self._inst
        if kind == _HEALTH:
            status = inst.behaviour.health_status
            return status, (b'{"status":"ok"}' if status == 200 else b'{"status":"unhealthy"}')
        if kind == _ECHO:
            return 200, orjson.dumps({
                "method": self._method.decode("latin-1"),
                "path": self._path.decode("latin-1"),
                "query": self._query.decode("latin-1"),
                "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in self._headers],
                "body_len": self._body_len,
                "body_sha256": self._hasher.hexdigest(),
            })
        if kind == _STATUS:
            code = _int_or(self._path[len(b"/status/") :], -1)
            if not 200 <= code <= 599:
                return 400, _error_body("invalid_argument", "status must be 200..599")
            return code, (b"" if code in (204, 304) else b"{}")
        if kind == _MOCK:
            try:
                return 200, inst.control(self._method, self._path, self._json_or_empty())
            except ConnectError as err:
                return err.http_status, _error_body(err.code, err.message)
        return 404, _error_body("not_found", f"no route for {self._path.decode('latin-1')}")

    def _json_or_empty(self) -> Any:
        return self._json_body() if self._body_len else {}

    def _stream(self, chunked: bool, keep_alive: bool, delay_s: float) -> None:
        """``/stream/<n>`` (chunked) and ``/close-delimited/<n>`` (no length, then close)."""
        prefix = b"/stream/" if chunked else b"/close-delimited/"
        count = _int_or(self._path[len(prefix) :], -1)
        params = _query_params(self._query)
        size = _int_or(params.get(b"chunk", b"16"), -1) if chunked else 1
        interval_s = _int_or(params.get(b"interval_ms", b"0"), -1) / 1000.0
        if not (0 <= count <= (MAX_STREAM_CHUNKS if chunked else MAX_STREAM_BYTES)
                and 0 <= size <= MAX_CHUNK_BYTES and count * size <= MAX_STREAM_BYTES
                and interval_s >= 0):
            body = _error_body("invalid_argument", f"stream too large or malformed: {count} x "
                               f"{size} bytes (at most {MAX_STREAM_BYTES} in all)")
            self._respond(400, CT_JSON, body, keep_alive, delay_s)
            return
        head_only = self._method == b"HEAD"
        if not chunked:
            head = self._inst.status_line(200) + CT_OCTETS + _CONN_CLOSE + b"\r\n"
            body = b"" if head_only else (_PATTERN * (count // len(_PATTERN) + 1))[:count]
            self._send(head + body, True, delay_s)
            return
        head = (self._inst.status_line(200) + CT_OCTETS + b"Transfer-Encoding: chunked\r\n"
                + (b"" if keep_alive else _CONN_CLOSE) + b"\r\n")
        if head_only:
            self._send(head, not keep_alive, delay_s)
            return
        chunks = [b"%x\r\n%s\r\n" % (size, bytes((48 + i % 10,)) * size) for i in range(count)
                  if size] + [b"0\r\n\r\n"]
        if interval_s <= 0 or len(chunks) == 1:
            self._send(head + b"".join(chunks), not keep_alive, delay_s)
            return
        slot = self._enqueue(not keep_alive)
        self._loop.call_later(delay_s, self._stream_step, slot, [head + chunks[0]],
                              chunks[1:], interval_s)

    def _stream_step(self, slot: _Slot, part: list[bytes], rest: list[bytes],
                     interval_s: float) -> None:
        if self._transport is None:
            return
        slot.parts.extend(part)
        if rest:
            self._loop.call_later(interval_s, self._stream_step, slot, rest[:1], rest[1:],
                                  interval_s)
        else:
            slot.done = True
        self._flush()

    # -- writing, in order -------------------------------------------------------------------

    def _respond(self, status: int, content_type: bytes, body: bytes, keep_alive: bool,
                 delay_s: float) -> None:  # HOT PATH
        if keep_alive:
            conn = _CONN_KEEP_ALIVE if self._parser.get_http_version() == "1.0" else b""
        else:
            conn = _CONN_CLOSE
        if status in (204, 304):
            head_end = b"%s\r\n" % conn
            body = b""
        else:
            head_end = b"Content-Length: %d\r\n%s\r\n" % (len(body), conn)
            if self._method == b"HEAD":
                body = b""
        data = b"%s%s%s%s" % (self._inst.status_line(status), content_type, head_end, body)
        self._send(data, not keep_alive, delay_s)

    def _send(self, data: bytes, close: bool, delay_s: float) -> None:  # HOT PATH
        if close:
            self._closing = True
        if delay_s <= 0.0 and not self._queue:
            transport = self._transport
            assert transport is not None
            transport.write(data)
            if close:
                transport.close()
            return
        slot = self._enqueue(close)
        if delay_s > 0.0:
            self._loop.call_later(delay_s, self._fill, slot, data)
        else:
            self._fill(slot, data)

    def _enqueue(self, close: bool) -> _Slot:
        slot = _Slot(close)
        self._queue.append(slot)
        if len(self._queue) >= MAX_PIPELINED_RESPONSES:
            self._update_reading()
        return slot

    def _fill(self, slot: _Slot, data: bytes) -> None:
        slot.parts.append(data)
        slot.done = True
        self._flush()

    def _flush(self) -> None:
        """Write finished slots from the head; stop at the first one still being made."""
        queue = self._queue
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        while queue:
            slot = queue[0]
            if slot.parts:
                transport.writelines(slot.parts)
                slot.parts.clear()
            if not slot.done:
                break
            queue.popleft()
            if slot.close:
                queue.clear()
                transport.close()
                return
        self._update_reading()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None:
            return
        pause = self._write_paused or len(self._queue) >= MAX_PIPELINED_RESPONSES
        if pause != self._read_paused:
            self._read_paused = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def _reply_and_close(self, status: int, code: str, message: str) -> None:
        """Answer a request we could not parse, after everything queued before it; then close."""
        if self._closing:  # an earlier request already ends the connection
            return
        self._method = b""
        self._respond(status, CT_JSON, _error_body(code, message), False, 0.0)

    def _close_when_flushed(self) -> None:
        self._closing = True
        if self._queue:
            self._queue[-1].close = True
        elif self._transport is not None:
            self._transport.close()


def _error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"code": code, "message": message})


def _int_or(text: bytes, default: int) -> int:
    return int(text) if text.isdigit() and len(text) <= 12 else default


def _query_params(query: bytes) -> dict[bytes, bytes]:
    params: dict[bytes, bytes] = {}
    for pair in query.split(b"&"):
        name, _, value = pair.partition(b"=")
        params[name] = value
    return params



class MockMetald:
    """One mock metald instance, served on the running event loop.

    In-process tests may also steer it directly: ``mock.behaviour.delay_ms = 50``,
    ``mock.stats()``, ``mock.reset()``, ``mock.vms``.
    """

    def __init__(self, name: str = "metald-mock", *, delay_ms: float = 0.0,
                 fail_rate: float = 0.0, fail_status: int = 503) -> None:
        behaviour = Behaviour()
        try:
            behaviour.update({"delay_ms": delay_ms, "fail_rate": fail_rate,
                              "fail_status": fail_status})
        except ConnectError as err:
            raise ValueError(err.message) from None
        self.instance = Instance(name, behaviour)
        self.name = name
        self.host = "127.0.0.1"
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    @property
    def behaviour(self) -> Behaviour:
        return self.instance.behaviour

    @property
    def vms(self) -> VmStore:
        return self.instance.vms

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stats(self) -> dict[str, Any]:
        return self.instance.stats()

    def reset(self, behaviour_too: bool = False) -> None:
        self.instance.reset(behaviour_too)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (0: a free port, then in :attr:`port`)."""
        if self._server is not None:
            raise RuntimeError("mock metald already started")
        loop = asyncio.get_running_loop()
        instance = self.instance
        self._server = await loop.create_server(
            lambda: MetaldProtocol(instance), host, port, backlog=1024, reuse_address=True)
        self.host = host
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and cut every open connection (pending answers are dropped)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for protocol in list(self.instance.protocols):
            protocol.abort()
        await server.wait_closed()
        await asyncio.sleep(0)  # let connection_lost run for the aborted transports

    async def __aenter__(self) -> MockMetald:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


def run_mock_metald(port: int, name: str, *, host: str = "127.0.0.1", delay_ms: float = 0,
                    fail_rate: float = 0.0, fail_status: int = 503) -> None:
    """Serve one instance until SIGINT or SIGTERM (``fastgw mock-metald``); uses uvloop.

    Raises :class:`~fastgw.errors.BootError` (one readable line) for a bad setting or a port
    it cannot listen on.
    """
    try:
        import uvloop

        loop_factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(port, name, host, delay_ms=delay_ms, fail_rate=fail_rate,
                          fail_status=fail_status))


async def _serve(port: int, name: str, host: str, *, delay_ms: float, fail_rate: float,
                 fail_status: int) -> None:
    try:
        mock = MockMetald(name, delay_ms=delay_ms, fail_rate=fail_rate, fail_status=fail_status)
        await mock.start(host, port)
    except ValueError as exc:
        raise BootError(f"mock-metald {name}: {exc}") from None
    except OSError as exc:
        raise BootError(f"mock-metald {name}: cannot listen on {host}:{port}: "
                        f"{exc.strerror or exc}") from None
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    print(f"mock-metald {name} listening on {mock.url}", flush=True)
    try:
        await stopping.wait()
    finally:
        await mock.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
