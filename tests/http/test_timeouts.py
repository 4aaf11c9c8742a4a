"""Client-side timeouts, crossed with real slow sockets: header, body read, idle keep-alive."""

from __future__ import annotations

from typing import Any

from tests.support.client import RawClient, get
from tests.support.gateway import running, uvloop_test

SHORT: dict[str, Any] = {
    "gateway": {"server": {"timeouts": {"header": "200ms", "read": "200ms", "idle": "300ms"}}}
}


@uvloop_test
async def test_slow_head_gets_408_and_close() -> None:
    async with running(extra=SHORT) as gw:
        client = await RawClient.connect(gw.port)
        await client.send(b"GET /echo HTTP/1.1\r\nHost: gw\r\nX-Slow: ")  # never finished
        response = await client.read_one(timeout_s=5)
        assert response.status == 408
        assert response.json()["error"]["code"] == "request_timeout"  # type: ignore[index]
        assert await client.closed_by_peer()
        assert gw.backends[0].stats()["requests"] == 0


@uvloop_test
async def test_trickled_head_cannot_extend_the_header_deadline() -> None:
    async with running(extra=SHORT) as gw:
        client = await RawClient.connect(gw.port)
        await client.send(b"GET /echo HTTP/1.1\r\nHost: gw\r\n")
        for _ in range(20):  # a slowloris keeps sending a byte of header now and then
            try:
                await client.send(b"X")
            except ConnectionError:
                break
            if await client.closed_by_peer(timeout_s=0.05):
                break
        assert client.eof or b"408" in client.raw


@uvloop_test
async def test_stalled_body_gets_408() -> None:
    async with running(extra=SHORT) as gw:
        gw.backends[0].behaviour.delay_ms = 0
        client = await RawClient.connect(gw.port)
        await client.send(b"POST /echo HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\n\r\nabc")
        response = await client.read_one(timeout_s=5)
        assert response.status == 408
        assert await client.closed_by_peer()
        assert gw.backends[0].stats()["requests"] == 0


@uvloop_test
async def test_idle_keep_alive_connection_is_closed_quietly() -> None:
    async with running(extra=SHORT) as gw:
        client = await RawClient.connect(gw.port)
        assert (await client.request(get("/echo"))).status == 200
        before = len(client.raw)
        assert await client.closed_by_peer(timeout_s=5)
        assert len(client.raw) == before  # no bytes, just a close


@uvloop_test
async def test_connection_never_used_is_closed_after_header_timeout() -> None:
    async with running(extra=SHORT) as gw:
        client = await RawClient.connect(gw.port)
        assert await client.closed_by_peer(timeout_s=5)
        assert client.raw == b""
