"""Every way the bytes can arrive: whole, byte by byte, split in two at every position, and
followed by garbage or by another request. The outcome must not depend on it.

The client side is driven directly: a ``DownstreamProtocol`` on the running gateway's own
``WorkerContext``, with a fake transport that records what the gateway writes back, fed
through ``get_buffer``/``buffer_updated`` as uvloop would (nothing while reading is paused,
nothing after a close; after the gateway's FIN of a lingering close the rest is still fed, and
must change nothing), with a loop turn between reads so that forwarding, pooled upstream
writes and backend answers interleave with the arrival of the rest. The backend side is real:
mock metald on loopback, and every byte the gateway writes to it is recorded (``Wire``).

The outcome compared across deliveries: the responses (status + error code, or what the echo
backend says it received, less the per-request id), whether the gateway ended the connection
(close or FIN), and every complete request it wrote upstream. Per phase (see ``corpus.py``):
a HEAD-phase defect writes no byte upstream however it is split; a BODY-phase one may have
sent its head, never a complete request, and any backend connection left mid-request is
aborted.

A few deliveries also go over a real socket, one byte per write with TCP_NODELAY.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Any, cast

import httptools
import orjson
import pytest

from fastgw.http.downstream import RAW_SLACK_BYTES, DownstreamProtocol
from fastgw.worker_context import WorkerContext
from tests.http.corpus import (
    CONFIG,
    HEAD,
    MAX_HEAD,
    REJECTED,
    SPLIT_SUBSET,
    Rejected,
    Sent,
    Wire,
    parse_requests,
    settle,
)
from tests.support.client import RawClient
from tests.support.gateway import Running, merge, running, uvloop_test

GARBAGE = b"GARBAGE\r\n\r\n"
NEXT = b"GET /echo/next HTTP/1.1\r\nHost: gw\r\n\r\n"


@dataclass(frozen=True)
class Valid:
    id: str
    raw: bytes
    paths: tuple[str, ...]  # one 200 per request, echoing these paths
    closes: bool  # the gateway closes after the last answer


VALID = (
    Valid(
        "get", b"GET /echo/a?x=1 HTTP/1.1\r\nHost: gw\r\nUser-Agent: t\r\n\r\n", ("/echo/a",), False
    ),
    Valid(
        "post-content-length",
        b"POST /echo/p HTTP/1.1\r\nHost: gw\r\nContent-Length: 11\r\n\r\nhello world",
        ("/echo/p",),
        False,
    ),
    Valid(
        "post-chunked-extensions-trailers",
        b"POST /echo/c HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5;a=b\r\nhello\r\n6;c="d e"\r\n world\r\n0;last\r\nX-Trailer: t\r\nX-Other: u\r\n\r\n',
        ("/echo/c",),
        False,
    ),
    Valid(
        "pipelined-three",
        b"GET /echo/1 HTTP/1.1\r\nHost: gw\r\n\r\n"
        b"POST /echo/2 HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /echo/3 HTTP/1.1\r\nHost: gw\r\n\r\n",
        ("/echo/1", "/echo/2", "/echo/3"),
        False,
    ),
    Valid("http10", b"GET /echo/old HTTP/1.0\r\nUser-Agent: t\r\n\r\n", ("/echo/old",), True),
    Valid(
        "http10-keep-alive-post",
        b"POST /echo/k HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nabc",
        ("/echo/k",),
        False,
    ),
    Valid(
        "connection-close",
        b"GET /echo/z HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        ("/echo/z",),
        True,
    ),
)

SPLIT_CASES = tuple(case for case in REJECTED if case.id in SPLIT_SUBSET)


# -- the fake client transport ---------------------------------------------------------------


class FakeTransport:
    """What DownstreamProtocol needs of a uvloop TCP transport, recording the writes."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.protocol: DownstreamProtocol | None = None
        self.out = bytearray()
        self.closed = False
        self.eof_sent = False  # write_eof: the gateway's side is done, reading may go on
        self.paused = False
        self.late_writes = 0

    @property
    def ended(self) -> bool:
        """The gateway ended its side of the connection (closed, or FIN and lingering)."""
        return self.closed or self.eof_sent

    def write(self, data: bytes) -> None:
        if self.ended:
            self.late_writes += 1
            return
        self.out += data

    def writelines(self, parts: Any) -> None:
        for part in parts:
            self.write(part)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            assert self.protocol is not None
            self._loop.call_soon(self.protocol.connection_lost, None)

    abort = close

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_sent = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default


# -- outcomes --------------------------------------------------------------------------------


@dataclass
class _Responses:
    parser: Any = None
    done: list[tuple[int, bytes]] = field(default_factory=list)
    status: int = 0
    body: bytes = b""

    def on_message_begin(self) -> None:
        self.body = b""

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done.append((self.status, self.body))


def responses_in(data: bytes) -> list[tuple[int, bytes]]:
    collector = _Responses()
    collector.parser = httptools.HttpResponseParser(collector)
    collector.parser.feed_data(data)
    return collector.done


PER_REQUEST = frozenset({"x-request-id", "traceparent"})


def summary(status: int, body: bytes) -> tuple[Any, ...]:
    """A response as compared across deliveries: the error code, or the echo minus ids (the
    request id and the traceparent are new for every request)."""
    data = orjson.loads(body)
    if status != 200:
        return (status, data["error"]["code"])
    headers = tuple(
        (name.lower(), value) for name, value in data["headers"] if name.lower() not in PER_REQUEST
    )
    return (
        200,
        data["method"],
        data["path"],
        data["query"],
        headers,
        data["body_len"],
        data["body_sha256"],
    )


def forwarded_summary(request: Any) -> tuple[Any, ...]:
    headers = tuple(
        (n.lower(), v) for n, v in request.headers if n.lower().decode() not in PER_REQUEST
    )
    return (request.method, request.target, headers, request.body)


@dataclass
class Outcome:
    responses: list[tuple[Any, ...]]
    closed: bool
    forwarded: list[tuple[Any, ...]]  # complete requests the gateway wrote upstream
    upstream_bytes: int  # every byte it wrote upstream
    unfinished_not_aborted: int  # upstream connections left mid-request and not aborted

    def comparable(self) -> tuple[Any, ...]:
        return (self.responses, self.closed, self.forwarded)


class Harness:
    """Runs deliveries against one gateway; each leaves the gateway as it found it."""

    def __init__(self, gw: Running, wire: Wire) -> None:
        self.gw = gw
        self.wire = wire
        self.ctx: WorkerContext = gw.gateway.context

    async def deliver(self, pieces: list[bytes], answers: int) -> Outcome:
        marks = {id(record): len(record.data) for record in self.wire.sent}
        known = len(self.wire.sent)
        transport = FakeTransport(asyncio.get_running_loop())
        protocol = DownstreamProtocol(self.ctx)
        transport.protocol = protocol
        protocol.connection_made(cast(asyncio.BaseTransport, transport))
        for piece in pieces:
            # uvloop delivers nothing while reading is paused, and nothing after a close
            await settle(lambda: not transport.paused or transport.closed)
            if transport.closed:
                break
            buffer = protocol.get_buffer(len(piece))
            assert len(buffer) >= len(piece)
            buffer[: len(piece)] = piece
            protocol.buffer_updated(len(piece))
            await asyncio.sleep(0)
        await settle(lambda: transport.ended or len(responses_in(bytes(transport.out))) >= answers)
        for _ in range(5):  # room for anything unexpected to follow
            await asyncio.sleep(0)
        closed = transport.ended
        transport.close()  # the client leaves; the gateway cleans up as for a real socket
        pool = self.ctx.plan.pools[0]
        await settle(lambda: not self.ctx.connections and pool.open_connections == pool.idle_count)
        assert transport.late_writes == 0, "the gateway wrote after closing"
        new: list[Sent] = []
        for index, record in enumerate(self.wire.sent):
            start = marks.get(id(record), 0) if index < known else 0
            if len(record.data) > start:
                new.append(Sent(record.data[start:], record.aborted))
        forwarded: list[tuple[Any, ...]] = []
        unfinished_not_aborted = 0
        for record in new:
            complete, unfinished = parse_requests(bytes(record.data))
            forwarded += [forwarded_summary(r) for r in complete]
            if unfinished and not record.aborted:
                unfinished_not_aborted += 1
        return Outcome(
            [summary(s, b) for s, b in responses_in(bytes(transport.out))],
            closed,
            forwarded,
            sum(len(record.data) for record in new),
            unfinished_not_aborted,
        )

    async def every_delivery(self, raw: bytes, answers: int) -> list[tuple[str, Outcome]]:
        """Whole, byte by byte, then split in two at every position."""
        runs = [
            ("whole", await self.deliver([raw], answers)),
            ("bytes", await self.deliver([raw[i : i + 1] for i in range(len(raw))], answers)),
        ]
        for at in range(1, len(raw)):
            runs.append((f"split@{at}", await self.deliver([raw[:at], raw[at:]], answers)))
        return runs


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Wire:
    return Wire().install(monkeypatch)


def assert_all_equal(runs: list[tuple[str, Outcome]], expected: Outcome) -> None:
    for name, outcome in runs:
        assert outcome.comparable() == expected.comparable(), name
        assert outcome.unfinished_not_aborted == 0, name


def assert_valid(case: Valid, outcome: Outcome, extra: int = 0) -> None:
    paths = [r[2] for r in outcome.responses if r[0] == 200]
    assert paths[: len(case.paths)] == list(case.paths)
    assert len(outcome.forwarded) == len(case.paths) + extra
    assert outcome.unfinished_not_aborted == 0


# -- valid requests ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", VALID, ids=lambda c: c.id)
@uvloop_test
async def test_valid_requests_arrive_any_way(case: Valid, wire: Wire) -> None:
    async with running(extra=CONFIG) as gw:
        harness = Harness(gw, wire)
        answers = len(case.paths)
        runs = await harness.every_delivery(case.raw, answers)
        expected = runs[0][1]
        assert [r[0] for r in expected.responses] == [200] * answers
        assert expected.closed == case.closes
        assert_valid(case, expected)
        if case.id == "post-chunked-extensions-trailers":
            echo = expected.responses[0]
            assert echo[5] == len(b"hello world")
            assert all(name not in (b"x-trailer", "x-trailer") for name, _ in echo[4])
        assert_all_equal(runs, expected)
        assert gw.backends[0].stats()["requests"] == answers * len(runs)


@pytest.mark.parametrize("case", VALID, ids=lambda c: c.id)
@uvloop_test
async def test_what_follows_a_valid_request(case: Valid, wire: Wire) -> None:
    """Garbage after the end is a 400 of its own (or never read, after a final request); a
    following request is answered too (or never read)."""
    async with running(extra=CONFIG) as gw:
        harness = Harness(gw, wire)
        answers = len(case.paths)
        alone = await harness.deliver([case.raw], answers)
        more = 0 if case.closes else 1
        garbage_runs = await harness.every_delivery(case.raw + GARBAGE, answers + more)
        expected = garbage_runs[0][1]
        assert expected.responses[:answers] == alone.responses
        assert expected.responses[answers:] == ([] if case.closes else [(400, "bad_request")])
        assert expected.closed
        assert expected.forwarded == alone.forwarded
        assert_all_equal(garbage_runs, expected)
        next_runs = await harness.every_delivery(case.raw + NEXT, answers + more)
        expected = next_runs[0][1]
        assert expected.responses[:answers] == alone.responses
        assert [r[2] for r in expected.responses[answers:]] == (
            [] if case.closes else ["/echo/next"]
        )
        assert expected.closed == case.closes
        assert_valid(case, expected, more)
        assert_all_equal(next_runs, expected)


# -- malformed requests --------------------------------------------------------------------------


def assert_rejected(case: Rejected, runs: list[tuple[str, Outcome]]) -> None:
    expected = runs[0][1]
    assert expected.responses == [(case.status, case.code)]
    assert expected.closed
    assert expected.forwarded == []
    assert_all_equal(runs, expected)
    if case.phase == HEAD:
        for name, outcome in runs:
            assert outcome.upstream_bytes == 0, name


@pytest.mark.parametrize("case", SPLIT_CASES, ids=lambda c: c.id)
@uvloop_test
async def test_malformed_requests_arrive_any_way(case: Rejected, wire: Wire) -> None:
    async with running(extra=CONFIG) as gw:
        harness = Harness(gw, wire)
        runs = await harness.every_delivery(case.raw, 1)
        assert_rejected(case, runs)
        # Whatever follows the defect is never parsed: same outcome with anything after it.
        for tail in (GARBAGE, NEXT, NEXT + NEXT):
            followed = [
                ("whole+", await harness.deliver([case.raw + tail], 1)),
                ("split+", await harness.deliver([case.raw, tail], 1)),
            ]
            assert_all_equal(followed, runs[0][1])
        assert gw.backends[0].stats()["requests"] == 0


@pytest.mark.parametrize(
    "case", [c for c in REJECTED if c.id not in SPLIT_SUBSET], ids=lambda c: c.id
)
@uvloop_test
async def test_rest_of_the_corpus_whole_and_byte_by_byte(case: Rejected, wire: Wire) -> None:
    async with running(extra=CONFIG) as gw:
        harness = Harness(gw, wire)
        bytewise = [case.raw[i : i + 1] for i in range(len(case.raw))]
        middle = len(case.raw) // 2
        runs = [
            ("whole", await harness.deliver([case.raw], 1)),
            ("bytes", await harness.deliver(bytewise, 1)),
            ("halves", await harness.deliver([case.raw[:middle], case.raw[middle:]], 1)),
            ("whole+next", await harness.deliver([case.raw + NEXT], 1)),
        ]
        assert_rejected(case, runs)
        assert gw.backends[0].stats()["requests"] == 0


@uvloop_test
async def test_valid_then_malformed_split_everywhere(wire: Wire) -> None:
    """A valid request, then a bad one (head or body defect): 200, then the error, then the
    close, at every split; only the valid request ever reaches the backend complete."""
    async with running(extra=CONFIG) as gw:
        harness = Harness(gw, wire)
        first = b"POST /echo/first HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\nok"
        for bad_id in ("cl-then-te", "chunk-data-longer-than-size", "trailer-host"):
            case = next(c for c in REJECTED if c.id == bad_id)
            runs = await harness.every_delivery(first + case.raw, 2)
            expected = runs[0][1]
            assert [r[0] for r in expected.responses] == [200, case.status]
            assert expected.responses[0][2] == "/echo/first"
            assert expected.closed
            assert [f[1] for f in expected.forwarded] == [b"/echo/first"]
            assert_all_equal(runs, expected)


@uvloop_test
async def test_head_after_a_large_body_in_the_same_read(wire: Wire) -> None:
    """A read holding a body larger than the head limit and the start of the next head: only
    the head's own bytes count toward that limit, whatever the read size."""
    bigger_bodies = merge(CONFIG, {"gateway": {"server": {"limits": {"max_body_size": "1MB"}}}})
    async with running(extra=bigger_bodies) as gw:
        harness = Harness(gw, wire)
        body = b"b" * (MAX_HEAD + RAW_SLACK_BYTES + 100)
        first = b"POST /echo/big HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % len(body)
        for at in (1, 10, len(NEXT) - 1):
            outcome = await harness.deliver([first + body + NEXT[:at], NEXT[at:]], 2)
            assert [r[:3] for r in outcome.responses] == [
                (200, "POST", "/echo/big"),
                (200, "GET", "/echo/next"),
            ], at
            assert not outcome.closed


# -- a real socket, one byte per write -----------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        VALID[2].raw,
        VALID[3].raw,
        next(c for c in REJECTED if c.id == "trailer-host").raw,
        next(c for c in REJECTED if c.id == "cl-then-te").raw,
    ],
    ids=["chunked-post", "pipelined-three", "trailer-host", "cl-then-te"],
)
@uvloop_test
async def test_byte_by_byte_over_a_real_socket(raw: bytes, wire: Wire) -> None:
    async with running(extra=CONFIG) as gw:
        whole = await RawClient.connect(gw.port)
        await whole.send(raw)
        answers = max(1, raw.count(b" HTTP/1.1\r\n"))
        expected = [(r.status, r.body) for r in await whole.read_responses(answers)]
        await whole.close()
        client = await RawClient.connect(gw.port)
        sock = client.writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(raw)):
            if client.reader.at_eof():
                break
            await client.send(raw[i : i + 1])
            await asyncio.sleep(0)
        got = [(r.status, r.body) for r in await client.read_responses(len(expected))]
        assert [s for s, _ in got] == [s for s, _ in expected]
        for (status, body), (_, body_expected) in zip(got, expected, strict=True):
            assert summary(status, body) == summary(status, body_expected)
        if expected[-1][0] != 200:
            assert await client.closed_by_peer()
            forwarded, _ = wire.requests_sent()
            assert forwarded == []  # neither delivery got a complete request upstream
        else:
            assert gw.backends[0].stats()["requests"] == 2 * answers
            await client.close()
