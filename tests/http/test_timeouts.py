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


# -- connection quotas and slowloris at scale ------------------------------------------------

QUOTA: dict[str, Any] = {"gateway": {"server": {"limits": {"max_requests_per_connection": 3}}}}


@uvloop_test
async def test_the_last_request_of_a_connections_quota_is_answered_with_close() -> None:
    async with running(extra=QUOTA) as gw:
        client = await RawClient.connect(gw.port)
        for n in range(3):
            response = await client.request(get(f"/echo/{n}"))
            assert response.status == 200
            assert (response.header("connection") == b"close") is (n == 2)
        assert await client.closed_by_peer()
        assert gw.backends[0].stats()["requests"] == 3


@uvloop_test
async def test_pipelined_requests_beyond_the_quota_are_dropped_not_answered() -> None:
    async with running(extra=QUOTA) as gw:
        client = await RawClient.connect(gw.port)
        await client.send(b"".join(get(f"/echo/{n}") for n in range(5)))
        responses = await client.read_responses(3)
        assert [r.status for r in responses] == [200, 200, 200]
        assert responses[-1].header("connection") == b"close"
        assert await client.closed_by_peer()
        assert client.raw.count(b"HTTP/1.1 ") == 3  # nothing for the 4th and 5th
        assert gw.backends[0].stats()["requests"] == 3


@uvloop_test
async def test_500_slowloris_connections_do_not_stop_normal_clients() -> None:
    import asyncio
    import resource
    import time

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    slow = {"gateway": {"server": {"timeouts": {"header": "30s"}}}}
    async with running(extra=slow) as gw:
        loris = [await RawClient.connect(gw.port) for _ in range(500)]
        try:
            for client in loris:  # each holds a head open, never finishing it
                await client.send(b"GET /echo HTTP/1.1\r\nHost: gw\r\nX-Slow: a")
            await asyncio.gather(*(client.send(b"b") for client in loris))  # they trickle
            started = time.monotonic()
            for n in range(20):  # meanwhile, normal clients are served at once
                normal = await RawClient.connect(gw.port)
                assert (await normal.request(get(f"/echo/normal/{n}"))).status == 200
                await normal.close()
            assert time.monotonic() - started < 5.0
            assert len(gw.gateway.context.connections) >= 500  # the lorises are still held
        finally:
            await asyncio.gather(*(client.close() for client in loris))
