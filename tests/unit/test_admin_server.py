"""The admin server (``fastgw/admin.py``) on real loopback sockets: routing, the JSON error shape,
keep-alive and pipelining, and each bound crossed (head size, field count, header timeout,
pipeline depth, connection cap, a client that does not read).

Each test runs on a fresh uvloop that fails the test if anything reaches the loop's exception
handler. Waits are bounded polls or reads with a deadline, never a sleep for readiness.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from fastgw.admin import (
    MAX_ADMIN_CONNECTIONS,
    MAX_HEAD_BYTES,
    MAX_HEADER_FIELDS,
    MAX_PIPELINED_REQUESTS,
    AdminServer,
    Handler,
    _AdminProtocol,
)
from fastgw.listen import bind_listener
from tests.support.callbacks import WAIT_S, checked_uvloop, wait_until
from tests.support.client import RawClient, Response, assert_error, get

BODY = b'{"upstreams":[{"name":"metald-0","healthy":true}]}'
BIG_BODY_BYTES = 4 * 1024 * 1024


def upstreams() -> tuple[int, bytes, bytes]:
    return 200, b"application/json", BODY


def boom() -> tuple[int, bytes, bytes]:
    raise RuntimeError("handler bug")


HANDLERS: dict[bytes, Handler] = {
    b"/admin/upstreams": upstreams,
    b"/admin/text": lambda: (200, b"text/plain; charset=utf-8", b"hello\n"),
    b"/admin/boom": boom,
    b"/admin/big": lambda: (200, b"application/octet-stream", b"x" * BIG_BODY_BYTES),
}


class Admin:
    """A started server and the clients a test opened (all closed when the test ends)."""

    def __init__(self, server: AdminServer) -> None:
        self.server = server
        self.clients: list[RawClient] = []

    async def connect(self) -> RawClient:
        client = await RawClient.connect(self.server.port)
        self.clients.append(client)
        return client


@contextlib.asynccontextmanager
async def serving(
    handlers: Mapping[bytes, Handler] = HANDLERS, **kwargs: Any
) -> AsyncIterator[Admin]:
    server = AdminServer(asyncio.get_running_loop(), handlers, **kwargs)
    await server.start(bind_listener("127.0.0.1", 0))
    admin = Admin(server)
    try:
        yield admin
    finally:
        await admin.server.aclose()
        for client in admin.clients:
            await client.close()


def assert_admin_error(response: Response, status: int, code: str) -> None:
    assert_error(response, status, code)  # the gateway's JSON error, request id included
    assert response.header("cache-control") == b"no-store"


def protocols(server: AdminServer) -> list[_AdminProtocol]:
    """The server side of each open connection (for white-box checks)."""
    out = [transport.get_protocol() for transport in server.connections]
    assert all(isinstance(p, _AdminProtocol) for p in out)
    return out  # type: ignore[return-value]


def head_of(size: int, path: str = "/admin/upstreams") -> bytes:
    """A GET head of exactly ``size`` raw bytes (padded with one header field)."""
    start = f"GET {path} HTTP/1.1\r\nHost: admin\r\nX-Pad: ".encode()
    pad = size - len(start) - 4
    assert pad >= 0
    return start + b"p" * pad + b"\r\n\r\n"


# -- routing and the response shape -----------------------------------------------------


@checked_uvloop
async def test_get_answers_with_the_handler_body_and_exact_headers() -> None:
    async with serving() as admin:
        client = await admin.connect()
        response = await client.request(get("/admin/upstreams", headers={"X-Request-ID": "op-1"}))
        assert response.status == 200
        assert response.body == BODY
        names = [name for name, _ in response.headers]
        assert names == [
            b"Content-Type",
            b"Cache-Control",
            b"Date",
            b"Content-Length",
            b"X-Request-ID",
        ]
        assert response.header("content-type") == b"application/json"
        assert response.header("cache-control") == b"no-store"
        assert response.header("content-length") == str(len(BODY)).encode()
        assert response.header("x-request-id") == b"op-1"
        assert re.fullmatch(
            rb"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", response.header("date") or b""
        )
        assert b"Traceback" not in client.raw


@checked_uvloop
async def test_head_gets_the_same_head_and_no_body() -> None:
    async with serving() as admin:
        raws = {}
        for method in ("GET", "HEAD"):
            for path in ("/admin/upstreams", "/missing"):
                client = await admin.connect()
                request = (
                    f"{method} {path} HTTP/1.1\r\nX-Request-ID: same\r\nConnection: close\r\n\r\n"
                )
                await client.send(request.encode())
                assert await client.closed_by_peer()
                raws[method, path] = re.sub(rb"Date: [^\r]*\r\n", b"", client.raw)
        assert raws["HEAD", "/admin/upstreams"].endswith(b"\r\n\r\n")
        assert raws["GET", "/admin/upstreams"] == raws["HEAD", "/admin/upstreams"] + BODY
        assert raws["HEAD", "/missing"].startswith(b"HTTP/1.1 404 ")
        assert raws["GET", "/missing"].startswith(raws["HEAD", "/missing"])
        assert raws["GET", "/missing"] != raws["HEAD", "/missing"]


@checked_uvloop
async def test_unknown_path_is_404_no_route_and_the_connection_stays_open() -> None:
    async with serving() as admin:
        client = await admin.connect()
        for path in ("/missing", "/admin/upstreams/", "/ADMIN/UPSTREAMS", "/admin"):
            assert_admin_error(await client.request(get(path)), 404, "no_route")
        assert (await client.request(get("/admin/upstreams"))).status == 200


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /admin/upstreams HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        b"PUT /admin/upstreams HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        b"DELETE /admin/upstreams HTTP/1.1\r\nHost: a\r\n\r\n",
        b"OPTIONS /admin/upstreams HTTP/1.1\r\nHost: a\r\n\r\n",
        b"DELETE /missing HTTP/1.1\r\nHost: a\r\n\r\n",
    ],
)
@checked_uvloop
async def test_other_methods_get_405_with_allow(request_bytes: bytes) -> None:
    async with serving() as admin:
        client = await admin.connect()
        response = await client.request(request_bytes)
        assert_admin_error(response, 405, "method_not_allowed")
        assert response.header("allow") == b"GET, HEAD"
        assert (await client.request(get("/admin/upstreams"))).status == 200  # still open


@checked_uvloop
async def test_query_string_is_ignored_for_matching() -> None:
    async with serving() as admin:
        client = await admin.connect()
        for path in ("/admin/upstreams?", "/admin/upstreams?format=json&x=1"):
            response = await client.request(get(path))
            assert (response.status, response.body) == (200, BODY)


# -- keep-alive, pipelining, closing -----------------------------------------------------


@checked_uvloop
async def test_keep_alive_serves_many_requests_in_order() -> None:
    async with serving() as admin:
        client = await admin.connect()
        for _ in range(3):
            assert (await client.request(get("/admin/upstreams"))).body == BODY
        paths = ["/admin/text", "/missing", "/admin/upstreams"]
        await client.send(b"".join(get(path) for path in paths))  # pipelined in one write
        responses = await client.read_responses(3)
        assert [r.status for r in responses] == [200, 404, 200]
        assert [r.body for r in responses][::2] == [b"hello\n", BODY]
        assert not client.eof
        assert (await client.request(get("/admin/text"))).body == b"hello\n"


@pytest.mark.parametrize(
    "request_bytes",
    [
        get("/admin/upstreams", headers={"Connection": "close"}),
        b"GET /admin/upstreams HTTP/1.0\r\n\r\n",
        b"GET /admin/upstreams HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    ],
    ids=["connection-close", "http-1.0", "http-1.0-keep-alive"],
)
@checked_uvloop
async def test_final_request_is_answered_then_closed(request_bytes: bytes) -> None:
    async with serving() as admin:
        client = await admin.connect()
        await client.send(request_bytes + get("/admin/text"))  # nothing after it is answered
        response = await client.read_one()
        assert (response.status, response.body) == (200, BODY)
        assert response.header("connection") == b"close"
        assert await client.closed_by_peer()
        assert b"hello" not in client.raw


@checked_uvloop
async def test_pipeline_up_to_the_limit_is_answered_beyond_it_closed() -> None:
    async with serving() as admin:
        client = await admin.connect()
        await client.send(get("/admin/text") * MAX_PIPELINED_REQUESTS)
        assert len(await client.read_responses(MAX_PIPELINED_REQUESTS)) == MAX_PIPELINED_REQUESTS
        assert (await client.request(get("/admin/upstreams"))).status == 200
        await client.send(get("/admin/text") * (MAX_PIPELINED_REQUESTS + 1))  # one read
        responses = await client.read_responses(MAX_PIPELINED_REQUESTS + 1)
        assert len(responses) == MAX_PIPELINED_REQUESTS
        assert client.eof


# -- rejected requests -------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /admin/upstreams HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /admin/upstreams HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}",
        b"GET /admin/upstreams HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ],
    ids=["get-content-length", "post-content-length", "chunked"],
)
@checked_uvloop
async def test_request_with_a_body_is_400_and_closed(request_bytes: bytes) -> None:
    async with serving() as admin:
        client = await admin.connect()
        assert_admin_error(
            await client.request(request_bytes + get("/admin/text")), 400, "bad_request"
        )
        assert await client.closed_by_peer()
        assert b"hello\n" not in client.raw


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage",  # a TLS ClientHello
        b"GET /admin/upstreams HTTP/1.1\nHost: a\n\n",  # bare LF
        b"GET /admin/upstreams HTTP/1.1\r\nHost: a\r\nX: a\r\n folded\r\n\r\n",  # obs-fold
        b"GET /admin/upstreams HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"GET /admin/upstreams HTTP/1.1\r\nX: a\x00b\r\n\r\n",
        b"GET /admin/upstreams HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"CONNECT metald:443 HTTP/1.1\r\nHost: metald:443\r\n\r\n",
    ],
    ids=["tls", "bare-lf", "obs-fold", "bad-name", "nul", "upgrade", "connect"],
)
@checked_uvloop
async def test_garbage_is_400_and_closed(request_bytes: bytes) -> None:
    async with serving() as admin:
        client = await admin.connect()
        assert_admin_error(await client.request(request_bytes), 400, "bad_request")
        assert await client.closed_by_peer()


@checked_uvloop
async def test_garbage_after_a_good_request_is_answered_in_order() -> None:
    async with serving() as admin:
        client = await admin.connect()
        await client.send(get("/admin/upstreams") + b"BREW /pot HTCPCP/1.0\r\n\r\n")
        first, second = await client.read_responses(2)
        assert first.status == 200
        assert_admin_error(second, 400, "bad_request")
        assert await client.closed_by_peer()


@pytest.mark.parametrize("pieces", [1, 3, 9], ids=lambda n: f"{n}-writes")
@checked_uvloop
async def test_head_over_the_limit_is_431_and_closed(pieces: int) -> None:
    async with serving() as admin:
        client = await admin.connect()
        response = await client.request(head_of(MAX_HEAD_BYTES))  # the largest accepted
        assert (response.status, response.body) == (200, BODY)
        oversize = head_of(MAX_HEAD_BYTES + 1)
        step = -(-len(oversize) // pieces)
        for at in range(0, len(oversize), step):
            with contextlib.suppress(ConnectionError):
                await client.send(oversize[at : at + step])
        assert_admin_error(await client.read_one(), 431, "headers_too_large")
        assert await client.closed_by_peer()


@checked_uvloop
async def test_partial_head_over_the_limit_is_431_before_it_ends() -> None:
    async with serving() as admin:
        client = await admin.connect()
        await client.send(
            get("/admin/upstreams") + head_of(MAX_HEAD_BYTES + 100)[: MAX_HEAD_BYTES + 1]
        )
        first, second = await client.read_responses(2)
        assert first.status == 200
        assert_admin_error(second, 431, "headers_too_large")
        assert await client.closed_by_peer()


@checked_uvloop
async def test_head_size_is_exact_however_the_reads_split_it() -> None:
    """Fed read by read into the live connection (a socket would coalesce the writes): splits
    around each head's end, where a CRLFCRLF straddles two reads and must still end the head."""
    text, fits, over = get("/admin/text"), head_of(MAX_HEAD_BYTES), head_of(MAX_HEAD_BYTES + 1)
    cases = [(text + fits + fits + text, [200, 200, 200, 200]), (text + over, [200, 431])]
    async with serving() as admin:
        for stream, statuses in cases:
            ends = [m.end() for m in re.finditer(rb"\r\n\r\n", stream)]
            for split in sorted({at for end in [4, *ends] for at in range(end - 4, end + 2)}):
                client = await admin.connect()
                await wait_until(lambda: len(admin.server.connections) == 1, "the connection")
                (connection,) = protocols(admin.server)
                connection.data_received(stream[:split])
                connection.data_received(stream[split:])
                responses = await client.read_responses(len(statuses))
                assert [r.status for r in responses] == statuses, split
                await client.close()
                await wait_until(lambda: not admin.server.connections, "the close")


@checked_uvloop
async def test_too_many_header_fields_is_431_and_closed() -> None:
    async with serving() as admin:
        client = await admin.connect()
        fields = {f"X-F{i}": "v" for i in range(MAX_HEADER_FIELDS - 1)}  # + Host
        assert (await client.request(get("/admin/upstreams", headers=fields))).status == 200
        fields["X-One-More"] = "v"
        response = await client.request(get("/admin/upstreams", headers=fields))
        assert_admin_error(response, 431, "headers_too_large")
        assert await client.closed_by_peer()


# -- timeouts ----------------------------------------------------------------------------


@checked_uvloop
async def test_half_a_head_gets_408_and_close_after_the_header_timeout() -> None:
    async with serving(header_timeout_s=0.2) as admin:
        client = await admin.connect()
        assert (await client.request(get("/admin/upstreams"))).status == 200
        started = time.monotonic()
        await client.send(b"GET /admin/upstreams HTTP/1.1\r\nHost: adm")  # never finished
        assert_admin_error(await client.read_one(timeout_s=WAIT_S), 408, "request_timeout")
        assert await client.closed_by_peer(timeout_s=WAIT_S)
        assert time.monotonic() - started < WAIT_S


@checked_uvloop
async def test_trickled_head_cannot_extend_the_header_timeout() -> None:
    async with serving(header_timeout_s=0.3) as admin:
        client = await admin.connect()
        await client.send(b"GET /admin/upstreams HTTP/1.1\r\n")
        started = time.monotonic()
        while not client.eof and time.monotonic() - started < WAIT_S:
            with contextlib.suppress(ConnectionError):
                await client.send(b"X")  # a slowloris: a byte of header now and then
            await client._wait_closed(timeout_s=0.05)
        assert client.eof
        assert b" 408 " in client.raw
        assert time.monotonic() - started < 2.0


@checked_uvloop
async def test_idle_connection_is_closed_quietly_after_the_header_timeout() -> None:
    async with serving(header_timeout_s=0.2) as admin:
        client = await admin.connect()
        assert await client.closed_by_peer(timeout_s=WAIT_S)
        assert client.raw == b""


# -- failures, back-pressure and capacity ------------------------------------------------


@checked_uvloop
async def test_handler_raising_is_500_logged_once_and_the_connection_stays_usable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="fastgw.admin")
    async with serving() as admin:
        client = await admin.connect()
        response = await client.request(get("/admin/boom"))
        assert_admin_error(response, 500, "internal_error")
        assert b"handler bug" not in client.raw and b"Traceback" not in client.raw
        assert (await client.request(get("/admin/upstreams"))).body == BODY
    records = [r for r in caplog.records if r.name == "fastgw.admin"]
    assert len(records) == 1
    assert records[0].exc_info is not None and "/admin/boom" in records[0].getMessage()


@checked_uvloop
async def test_client_that_does_not_read_holds_at_most_one_answer_and_the_queue() -> None:
    async with serving() as admin:
        client = await admin.connect()
        count = 8  # 32 MiB asked for: more than loopback socket buffers hold
        await client.send(
            get("/admin/big") * count + get("/admin/text", headers={"Connection": "close"})
        )
        await wait_until(lambda: len(admin.server.connections) == 1, "the connection")
        (connection,) = protocols(admin.server)
        await wait_until(lambda: connection._write_paused, "writing to pause")
        assert connection._queue  # answers wait instead of piling up in the transport
        assert not connection._transport.is_reading()  # and no more requests are read
        buffered = connection._transport.get_write_buffer_size()
        assert buffered <= BIG_BODY_BYTES + 64 * 1024
        received = bytearray()  # reading now: every answer arrives, in order, then the close
        async with asyncio.timeout(WAIT_S):
            while chunk := await client.reader.read(1 << 20):
                received += chunk
        assert received.count(b"HTTP/1.1 200 OK\r\n") == count + 1
        assert received.count(b"x" * 1024) == count * BIG_BODY_BYTES // 1024
        assert received.endswith(b"\r\n\r\nhello\n")


@checked_uvloop
async def test_connections_beyond_the_cap_are_accepted_and_closed() -> None:
    async with serving() as admin:
        clients = [await admin.connect() for _ in range(MAX_ADMIN_CONNECTIONS)]

        def full() -> bool:
            return len(admin.server.connections) == MAX_ADMIN_CONNECTIONS

        await wait_until(full, "every connection admitted")
        extra = await admin.connect()
        assert await extra.closed_by_peer(timeout_s=WAIT_S)
        assert extra.raw == b""
        for client in (clients[0], clients[-1]):  # the admitted ones are unaffected
            assert (await client.request(get("/admin/upstreams"))).status == 200
        await clients[0].close()
        await wait_until(lambda: not full(), "the slot to free up")
        again = await admin.connect()
        assert (await again.request(get("/admin/upstreams"))).status == 200


@checked_uvloop
async def test_aclose_aborts_open_connections_and_stops_accepting() -> None:
    async with serving() as admin:
        busy = await admin.connect()
        assert (await busy.request(get("/admin/upstreams"))).status == 200
        idle = await admin.connect()
        await wait_until(lambda: len(admin.server.connections) == 2, "both connections")
        port = admin.server.port
        await admin.server.aclose()
        assert await busy.closed_by_peer(timeout_s=WAIT_S)
        assert await idle.closed_by_peer(timeout_s=WAIT_S)
        with pytest.raises(OSError):
            await RawClient.connect(port)
        await admin.server.aclose()  # idempotent
