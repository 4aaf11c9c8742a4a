"""The strict-framing corpus (``corpus.py``) through real sockets to an in-process gateway.

For every rejected case: the gateway's own JSON error with the case's status and code,
``Connection: close``, the connection closed, and nothing forwarded: no upstream connection
was even opened, the backend counted no request and received no byte. A valid request
pipelined before the bad one is answered first, and only it reaches the backend. Defects in a
body or trailer section that arrive after the head was forwarded abort the backend
connection before the request is complete. Odd but legal requests are forwarded re-framed:
the backend sees the gateway's request line and framing, never the client's raw bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import orjson
import pytest

from tests.http.corpus import (
    BODY,
    CHUNKED,
    CONFIG,
    HEAD,
    MAX_HEAD,
    REFRAMED,
    REJECTED,
    Reframed,
    Rejected,
    Wire,
    assert_error,
    post,
    settle,
)
from tests.support.client import RawClient
from tests.support.gateway import Running, running, uvloop_test

FIRST: bytes = b"GET /echo/first HTTP/1.1\r\nHost: gw\r\n\r\n"


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Wire:
    return Wire().install(monkeypatch)


def case_id(case: Rejected | Reframed) -> str:
    return case.id


def echo_of(body: bytes) -> dict[str, Any]:
    data = orjson.loads(body)
    assert isinstance(data, dict)
    return data


def assert_nothing_forwarded(gw: Running, wire: Wire) -> None:
    assert gw.backends[0].stats()["requests"] == 0
    assert wire.sent == [], "the gateway opened a backend connection"
    assert wire.received_bytes() == 0
    assert gw.gateway.context.plan.pools[0].open_connections == 0


async def assert_closed_after_last(client: RawClient) -> None:
    assert await client.closed_by_peer()
    assert await client.read_responses(1, timeout_s=0.5) == [], "a response after the close"


def test_the_corpus_is_what_it_claims() -> None:
    every: list[Rejected | Reframed] = [*REJECTED, *REFRAMED]
    ids = [case.id for case in every]
    assert len(ids) == len(set(ids))
    assert len(REJECTED) >= 40
    for case in every:
        assert "RFC" in case.why, case.id
    for case in REJECTED:
        assert case.phase in (HEAD, BODY)
        assert (case.status, case.code) in {
            (400, "bad_request"),
            (413, "payload_too_large"),
            (414, "uri_too_long"),
            (431, "headers_too_large"),
        }
        if case.phase == BODY:  # a body defect needs a head that passes on its own
            assert b"\r\n\r\n" in case.raw


@pytest.mark.parametrize("case", REJECTED, ids=case_id)
@uvloop_test
async def test_rejected_before_anything_is_forwarded(case: Rejected, wire: Wire) -> None:
    async with running(extra=CONFIG) as gw:
        client = await RawClient.connect(gw.port)
        await client.send(case.raw)
        response = await client.read_one()
        assert_error(response, case.status, case.code)
        assert response.header("connection") == b"close"
        await assert_closed_after_last(client)
        assert_nothing_forwarded(gw, wire)


@pytest.mark.parametrize("case", REJECTED, ids=case_id)
@uvloop_test
async def test_valid_request_pipelined_before_is_answered_first(case: Rejected, wire: Wire) -> None:
    async with running(extra=CONFIG) as gw:
        client = await RawClient.connect(gw.port)
        await client.send(FIRST + case.raw)
        first, error = await client.read_responses(2)
        assert first.status == 200
        assert echo_of(first.body)["path"] == "/echo/first"
        assert first.header("connection") is None  # kept alive: the error closes, not it
        assert_error(error, case.status, case.code)
        assert error.header("connection") == b"close"
        await assert_closed_after_last(client)
        forwarded, unfinished = wire.requests_sent()
        assert [r.target for r in forwarded] == [b"/echo/first"]
        assert not unfinished, "bytes of the malformed request reached the backend"
        assert gw.backends[0].stats()["requests"] == 1


@pytest.mark.parametrize("case", [c for c in REJECTED if c.phase == BODY], ids=case_id)
@uvloop_test
async def test_body_defect_after_the_head_was_forwarded(case: Rejected, wire: Wire) -> None:
    """The head goes out on its own; the defect arrives later. The backend connection is
    aborted mid-request: the backend never gets a complete request, the client its error."""
    head_end = case.raw.index(b"\r\n\r\n") + 4
    async with running(extra=CONFIG) as gw:
        client = await RawClient.connect(gw.port)
        await client.send(case.raw[:head_end])
        await settle(lambda: b"\r\n\r\n" in wire.sent_bytes() and wire.received_bytes() > 0)
        await client.send(case.raw[head_end:])
        response = await client.read_one()
        assert_error(response, case.status, case.code)
        await assert_closed_after_last(client)
        assert len(wire.sent) == 1 and wire.sent[0].aborted
        forwarded, unfinished = wire.requests_sent()
        assert forwarded == [] and unfinished
        pool = gw.gateway.context.plan.pools[0]
        await settle(lambda: pool.open_connections == 0 and not gw.backends[0].instance.protocols)
        assert gw.backends[0].stats()["requests"] == 0


@pytest.mark.parametrize(
    "flood",
    [b"5;" + b"e" * 1024, b"5\r\nhello\r\n0\r\nX-Trailer: " + b"v" * 1024],
    ids=["chunk-extension", "trailer-value"],
)
@uvloop_test
async def test_endless_chunk_metadata_is_cut_at_the_head_limit(flood: bytes, wire: Wire) -> None:
    """Chunk extensions and trailer fields carry no body; a client that streams them without
    end is stopped (431) once a run of them outgrows the head limit, before memory grows
    (RFC 9112 §7.1.1: a server ought to limit the total length of chunk extensions and answer
    with a 4xx when it is exceeded)."""
    async with running(extra=CONFIG) as gw:
        client = await RawClient.connect(gw.port)
        await client.send(post(CHUNKED) + flood)
        ctx = gw.gateway.context
        await settle(lambda: wire.received_bytes() > 0)  # the head was forwarded
        for _ in range(64):  # at most 64 KiB more: far beyond MAX_HEAD + the raw slack
            await asyncio.sleep(0.005)  # let the gateway read it (no byte left unread)
            if not ctx.connections:
                break
            await client.send(b"x" * 1024)
        await settle(lambda: not ctx.connections)
        response = await client.read_one()
        assert_error(response, 431, "headers_too_large")
        await assert_closed_after_last(client)
        forwarded, _ = wire.requests_sent()
        assert forwarded == []
        assert gw.backends[0].stats()["requests"] == 0
    assert MAX_HEAD < 64 * 1024


@pytest.mark.parametrize(
    ("head", "status", "code"),
    [
        (post(b"Content-Length: 100000"), 413, "payload_too_large"),
        (post(CHUNKED, body=b"zz\r\n"), 400, "bad_request"),
    ],
    ids=["413-during-upload", "400-during-upload"],
)
@uvloop_test
async def test_answer_reaches_a_client_still_sending(
    head: bytes, status: int, code: str, wire: Wire
) -> None:
    """The gateway answers and closes while the client is still uploading. Closing with its
    bytes still arriving would make the kernel reset the connection and destroy the answer;
    the gateway sends FIN, then reads and drops the rest (lingering close)."""
    async with running(extra=CONFIG) as gw:
        for _ in range(3):
            client = await RawClient.connect(gw.port)
            await client.send(head)
            for _ in range(40):
                await client.send(b"x" * 2000)
                await asyncio.sleep(0)
            response = await client.read_one()
            assert_error(response, status, code)
            assert response.header("connection") == b"close"
            await assert_closed_after_last(client)
        assert gw.backends[0].stats()["requests"] == 0
        await settle(lambda: not gw.gateway.context.connections)


@pytest.mark.parametrize("case", REFRAMED, ids=case_id)
@uvloop_test
async def test_legal_but_odd_is_forwarded_reframed(case: Reframed, wire: Wire) -> None:
    async with running(extra=CONFIG) as gw:
        client = await RawClient.connect(gw.port)
        response = await client.request(case.raw)
        assert response.status == 200, response.body
        echo = echo_of(response.body)
        assert echo["body_len"] == len(case.body)
        assert echo["body_sha256"] == hashlib.sha256(case.body).hexdigest()
        forwarded, unfinished = wire.requests_sent()
        assert len(forwarded) == 1 and not unfinished
        request = forwarded[0]
        assert (request.method, request.target, request.version) == (
            case.method,
            case.target,
            "1.1",
        )
        assert request.body == case.body
        assert len(request.values(b"host")) == 1
        raw = wire.sent_bytes()
        assert raw.startswith(case.method + b" " + case.target + b" HTTP/1.1\r\n")
        if case.chunked:
            assert request.values(b"transfer-encoding") == [b"chunked"]
            assert request.values(b"content-length") == []
            body = case.body
            assert raw.endswith(b"\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        else:
            assert request.values(b"transfer-encoding") == []
        for gone in case.absent:
            assert gone not in raw, gone
        for name, value in case.sent:
            assert request.values(name) == [value], name
        assert gw.backends[0].stats()["requests"] == 1
        await client.close()
