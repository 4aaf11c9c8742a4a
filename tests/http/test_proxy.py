"""The proxy path end to end: real client sockets → in-process gateway → real mock backends."""

from __future__ import annotations

import hashlib
import socket
from typing import Any

import orjson
import pytest

from fastgw.listen import free_port
from tests.support.client import RawClient, get, post
from tests.support.gateway import eventually, running, uvloop_test


def echo_of(body: bytes) -> dict[str, Any]:
    data = orjson.loads(body)
    assert isinstance(data, dict)
    return data


def headers_of(echo: dict[str, Any]) -> dict[str, str]:
    return {name.lower(): value for name, value in echo["headers"]}


def assert_error(response: Any, status: int, code: str) -> None:
    assert response.status == status
    assert response.header("content-type") == b"application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert body["error"]["request_id"] == response.header("x-request-id").decode()


@uvloop_test
async def test_get_is_forwarded_with_gateway_headers() -> None:
    async with running() as gw:
        client = await RawClient.connect(gw.port)
        response = await client.request(
            b"GET /echo/a?x=1 HTTP/1.1\r\nHost: example.test\r\nX-Customer-ID: evil\r\n"
            b"X-Forwarded-For: 6.6.6.6\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\n"
            b"Keep-Alive: timeout=5\r\nTE: trailers\r\nUser-Agent: t\r\n\r\n"
        )
        assert response.status == 200
        echo = echo_of(response.body)
        assert echo["method"] == "GET"
        assert echo["path"] == "/echo/a"
        assert echo["query"] == "x=1"
        seen = headers_of(echo)
        assert seen["host"] == "example.test"
        assert seen["user-agent"] == "t"
        assert seen["x-forwarded-for"] == "127.0.0.1"
        assert seen["x-forwarded-proto"] == "http"
        assert seen["x-forwarded-host"] == "example.test"
        assert seen["x-request-id"]
        for gone in ("x-customer-id", "connection", "x-drop", "keep-alive", "te"):
            assert gone not in seen, gone
        await client.close()


@uvloop_test
async def test_request_id_kept_when_well_formed_else_replaced() -> None:
    async with running() as gw:
        client = await RawClient.connect(gw.port)
        kept = await client.request(get("/echo", headers={"X-Request-ID": "abc-123"}))
        assert headers_of(echo_of(kept.body))["x-request-id"] == "abc-123"
        replaced = await client.request(get("/echo", headers={"X-Request-ID": 'a"b'}))
        assert headers_of(echo_of(replaced.body))["x-request-id"] not in ('a"b', "")
        await client.close()


@uvloop_test
async def test_no_route_is_404_json() -> None:
    async with running() as gw:
        client = await RawClient.connect(gw.port)
        response = await client.request(get("/nowhere"))
        assert_error(response, 404, "no_route")
        # the connection stays usable
        again = await client.request(get("/echo"))
        assert again.status == 200
        await client.close()


@uvloop_test
async def test_dev_token_gives_customer_context() -> None:
    async with running() as gw:
        client = await RawClient.connect(gw.port)
        missing = await client.request(get("/echo/private/x"))
        assert_error(missing, 401, "unauthorized")
        assert missing.header("www-authenticate") == b'Bearer error="invalid_token"'
        wrong = await client.request(
            get("/echo/private/x", headers={"Authorization": "Bearer nope"})
        )
        assert_error(wrong, 401, "unauthorized")
        ok = await client.request(
            get("/echo/private/x", headers={"Authorization": "Bearer dev_customer_42"})
        )
        assert ok.status == 200
        seen = headers_of(echo_of(ok.body))
        assert seen["x-customer-id"] == "42"
        assert seen["x-customer-tier"] == "dev"
        await client.close()


@uvloop_test
async def test_content_length_body_is_streamed() -> None:
    body = bytes(range(256)) * 1000
    async with running() as gw:
        client = await RawClient.connect(gw.port)
        response = await client.request(post("/echo/up", body))
        echo = echo_of(response.body)
        assert echo["body_len"] == len(body)
        assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
        await client.close()


@uvloop_test
async def test_chunked_request_body_is_forwarded() -> None:
    async with running() as gw:
        client = await RawClient.connect(gw.port)
        response = await client.request(
            b"POST /echo/c HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
        echo = echo_of(response.body)
        assert echo["body_len"] == 11
        assert echo["body_sha256"] == hashlib.sha256(b"hello world").hexdigest()
        assert "x-trailer" not in headers_of(echo)
        await client.close()


@uvloop_test
async def test_chunked_and_close_delimited_responses_are_rechunked() -> None:
    async with running() as gw:
        client = await RawClient.connect(gw.port)
        streamed = await client.request(get("/stream/5?chunk=1000"))
        assert streamed.status == 200
        assert streamed.chunked
        assert len(streamed.body) == 5000
        delimited = await client.request(get("/close-delimited/3000"))
        assert delimited.status == 200
        assert delimited.chunked
        assert len(delimited.body) == 3000
        # keep-alive survived the close-delimited backend response
        assert (await client.request(get("/echo"))).status == 200
        await client.close()


@uvloop_test
async def test_http10_client_gets_close_delimited_body() -> None:
    async with running() as gw:
        client = await RawClient.connect(gw.port)
        await client.send(b"GET /stream/3?chunk=10 HTTP/1.0\r\n\r\n")
        response = await client.read_one()
        assert response.status == 200
        assert response.body == b"x" * 30 or len(response.body) == 30
        assert await client.closed_by_peer()


@uvloop_test
async def test_head_204_304_have_no_body_and_keep_alive() -> None:
    async with running() as gw:
        client = await RawClient.connect(gw.port)
        await client.send(b"HEAD /echo/h HTTP/1.1\r\nHost: gw\r\n\r\n")
        # httptools cannot know a response answers HEAD: read the raw head instead
        head = await client.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"content-length:" in head.lower()
        for code in (204, 304):
            response = await client.request(get(f"/status/{code}"))
            assert response.status == code
            assert response.body == b""
        assert (await client.request(get("/echo"))).status == 200
        await client.close()


@uvloop_test
async def test_pipelined_requests_answered_in_order() -> None:
    async with running(backends=2) as gw:
        client = await RawClient.connect(gw.port)
        await client.send(b"".join(get(f"/echo/{i}") for i in range(10)))
        responses = await client.read_responses(10)
        assert [echo_of(r.body)["path"] for r in responses] == [f"/echo/{i}" for i in range(10)]
        await client.close()


@uvloop_test
async def test_expect_100_continue() -> None:
    async with running() as gw:
        client = await RawClient.connect(gw.port)
        await client.send(
            b"POST /echo/e HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        interim = await client.read_one()
        assert interim.status == 100
        await client.send(b"data")
        final = await client.read_one()
        assert final.status == 200
        assert echo_of(final.body)["body_len"] == 4
        assert "expect" not in headers_of(echo_of(final.body))
        await client.close()


@uvloop_test
async def test_rejected_expect_100_gets_final_status_and_close() -> None:
    async with running() as gw:
        client = await RawClient.connect(gw.port)
        await client.send(
            b"POST /echo/private/e HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        response = await client.read_one()
        assert_error(response, 401, "unauthorized")
        assert response.header("connection") == b"close"
        assert await client.closed_by_peer()


@uvloop_test
async def test_unreachable_backend_fails_over_then_502() -> None:
    dead = free_port()
    async with running(backends=1, dead_ports=[dead]) as gw:
        client = await RawClient.connect(gw.port)
        for _ in range(4):  # round robin hits the dead one half the time: failover saves it
            assert (await client.request(get("/echo"))).status == 200
        await client.close()
    async with running(backends=0, dead_ports=[dead]) as gw:
        client = await RawClient.connect(gw.port)
        response = await client.request(get("/echo"))
        assert_error(response, 502, "bad_gateway")
        await client.close()


@uvloop_test
async def test_slow_backend_is_504() -> None:
    extra = {"gateway": {"routing": {"backend_timeout": "200ms"}}}
    async with running(extra=extra) as gw:
        gw.backends[0].behaviour.delay_ms = 2000
        client = await RawClient.connect(gw.port)
        response = await client.request(get("/echo"))
        assert_error(response, 504, "upstream_timeout")
        await client.close()


@uvloop_test
async def test_limits_413_414_431() -> None:
    extra = {
        "gateway": {
            "server": {
                "limits": {
                    "max_body_size": "1KB",
                    "max_url_length": 100,
                    "max_header_size": "2KB",
                    "max_headers": 10,
                }
            }
        }
    }
    async with running(extra=extra) as gw:
        cases = [
            (post("/echo", b"x" * 2000), 413, "payload_too_large"),
            (get("/echo/" + "a" * 200), 414, "uri_too_long"),
            (get("/echo", headers={"X-Big": "b" * 3000}), 431, "headers_too_large"),
            (get("/echo", headers={f"X-{i}": "v" for i in range(20)}), 431, "headers_too_large"),
        ]
        for raw, status, code in cases:
            client = await RawClient.connect(gw.port)
            response = await client.request(raw)
            assert_error(response, status, code)
            assert await client.closed_by_peer()
        assert gw.backends[0].stats()["requests"] == 0


@uvloop_test
async def test_chunked_body_over_limit_is_413() -> None:
    extra = {"gateway": {"server": {"limits": {"max_body_size": "1KB"}}}}
    async with running(extra=extra) as gw:
        client = await RawClient.connect(gw.port)
        response = await client.request(
            b"POST /echo HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"800\r\n" + b"x" * 2048 + b"\r\n0\r\n\r\n"
        )
        assert_error(response, 413, "payload_too_large")
        assert await client.closed_by_peer()
        assert gw.backends[0].stats()["requests"] == 0


@uvloop_test
async def test_health_endpoints() -> None:
    async with running() as gw:
        client = await RawClient.connect(gw.port)
        health = await client.request(get("/health"))
        assert health.status == 200
        body = health.json()
        assert isinstance(body, dict) and body["status"] == "healthy" and body["timestamp"]
        detailed = (await client.request(get("/health/detailed"))).json()
        assert isinstance(detailed, dict)
        names = {c["name"] for c in detailed["components"]}
        assert names == {"http_server", "redis_connection", "metald_backend"}
        ready = await client.request(get("/ready"))
        assert ready.status == 200 and ready.json() == {"ready": True, "dependencies": ["metald"]}
        await client.close()
    fast_checks = {"routing": {"unhealthy_threshold": 1, "health_check_interval": "50ms"}}
    async with running(backends=0, dead_ports=[free_port()], extra=fast_checks) as gw:
        client = await RawClient.connect(gw.port)
        # The first round of active checks (run at start) marks the only instance down.
        await eventually(lambda: gw.gateway.context.plan.health.reachable() == 0)
        ready = await client.request(get("/ready"))
        assert ready.status == 503 and ready.json()["ready"] is False  # type: ignore[index]
        assert_error(await client.request(get("/echo")), 503, "no_healthy_upstream")
        await client.close()


@uvloop_test
async def test_upstream_connections_are_reused() -> None:
    async with running() as gw:
        client = await RawClient.connect(gw.port)
        for _ in range(20):
            assert (await client.request(get("/echo"))).status == 200
        assert gw.gateway.context.plan.pools[0].open_connections == 1
        await client.close()


@uvloop_test
async def test_client_disconnect_mid_request_leaks_nothing() -> None:
    async with running() as gw:
        gw.backends[0].behaviour.delay_ms = 300
        client = await RawClient.connect(gw.port)
        await client.send(get("/echo"))
        await client.close()
        ctx = gw.gateway.context
        pool = ctx.plan.pools[0]
        # the exchange was aborted: no backend connection is left busy for it
        await eventually(lambda: not ctx.connections and pool.open_connections == pool.idle_count)
        again = await RawClient.connect(gw.port)
        assert (await again.request(get("/echo"))).status == 200
        await again.close()
        await eventually(lambda: not ctx.connections)


@uvloop_test
async def test_head_request_gets_error_head_without_body() -> None:
    async with running() as gw:
        client = await RawClient.connect(gw.port)
        await client.send(b"HEAD /nowhere HTTP/1.1\r\nHost: gw\r\n\r\n" + get("/echo/after"))
        head = await client.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 404")
        assert b"content-length:" in head.lower()
        # the next bytes are the next response, not a body of the 404
        follow = await client.read_one()
        assert follow.status == 200
        assert echo_of(follow.body)["path"] == "/echo/after"
        await client.close()


@pytest.mark.parametrize("chunk", [300_000, 3_000_000])
@uvloop_test
async def test_client_that_never_reads_is_cut_off_by_the_write_timeout(chunk: int) -> None:
    import asyncio

    extra = {"gateway": {"server": {"timeouts": {"write": "300ms", "idle": "300ms"}}}}
    async with running(extra=extra) as gw:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", gw.port))
        _reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(get(f"/stream/1?chunk={chunk}"))
        await writer.drain()
        ctx = gw.gateway.context
        await eventually(lambda: bool(ctx.connections))
        await eventually(lambda: not ctx.connections, timeout_s=10)  # never read: cut off
        writer.close()
