"""``/health/detailed`` and ``/ready`` against a real redis-server that runs, stops and comes
back: component statuses and latencies, the overall status and its HTTP code, readiness under
``on_failure: closed``, and the revocation poller as the probe when only revocation uses Redis."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fastgw.limits import LOOP_LAG_DEGRADED_S, LOOP_LAG_INTERVAL_S
from fastgw.listen import free_port
from tests.support.client import RawClient, Response, get
from tests.support.gateway import eventually, running, uvloop_test
from tests.support.redis_server import RedisServer, start_redis

SECRET = "health-test-secret-health-test-secret!!"
CHANGE_TIMEOUT_S = 10.0  # reconnect back-off (<= 2 s) + a probe interval, on a busy machine


def redis_extra(address: str, on_failure: str = "local") -> dict[str, Any]:
    return {
        "gateway": {
            "rate_limiting": {
                "backend": "redis",
                "redis": {"address": address, "timeout": "200ms"},
                "on_failure": on_failure,
            },
        },
    }


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path / "redis", tcp=False, unix_path=tmp_path / "redis.sock")
    yield server
    server.stop()


def component(body: object, name: str) -> dict[str, Any]:
    assert isinstance(body, dict)
    (found,) = [c for c in body["components"] if c["name"] == name]
    assert isinstance(found, dict)
    return found


async def until(
    client: RawClient, path: str, check: Callable[[Response], bool], timeout_s: float
) -> Response:
    """Ask ``path`` until ``check`` holds on the answer (bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        reply = await client.request(get(path))
        if check(reply):
            return reply
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} still {reply.status} {reply.body!r}")
        await asyncio.sleep(0.05)


def redis_status(status: str) -> Callable[[Response], bool]:
    return lambda reply: component(reply.json(), "redis_connection")["status"] == status


@uvloop_test
async def test_without_redis_every_component_is_reported() -> None:
    async with running() as gw:
        client = await RawClient.connect(gw.port)
        # The loop's first lag measurement comes one LOOP_LAG_INTERVAL_S after the start.
        reply = await until(
            client,
            "/health/detailed",
            lambda r: "checked_s_ago" in component(r.json(), "http_server"),
            LOOP_LAG_INTERVAL_S + 5.0,
        )
        await client.close()
    body = reply.json()
    assert reply.status == 200 and isinstance(body, dict) and body["status"] == "healthy"
    assert [c["name"] for c in body["components"]] == [
        "http_server", "redis_connection", "metald_backend",
    ]  # fmt: skip
    server = component(body, "http_server")
    assert server["status"] == "healthy" and 0 <= server["latency_ms"] < 100
    assert 0 <= server["checked_s_ago"] <= LOOP_LAG_INTERVAL_S + 1.0  # a measurement, fresh
    assert component(body, "redis_connection") == {
        "name": "redis_connection", "status": "not_configured", "latency_ms": 0.0,
    }  # fmt: skip
    backend = component(body, "metald_backend")
    assert backend["status"] == "healthy" and backend["instances_reachable"] == 1
    assert isinstance(backend["latency_ms"], float)


@uvloop_test
async def test_no_reachable_backend_is_unhealthy_and_503() -> None:
    fast_checks = {"routing": {"unhealthy_threshold": 1, "health_check_interval": "50ms"}}
    async with running(backends=0, dead_ports=[free_port()], extra=fast_checks) as gw:
        client = await RawClient.connect(gw.port)
        reply = await until(client, "/health/detailed", lambda r: r.status == 503, 5.0)
        await client.close()
    body = reply.json()
    assert isinstance(body, dict) and body["status"] == "unhealthy"
    assert component(body, "metald_backend")["status"] == "unhealthy"


@uvloop_test
async def test_redis_with_local_fallback_degrades_then_recovers(
    redis: RedisServer, tmp_path: Path
) -> None:
    async with running(extra=redis_extra(redis.unix_address)) as gw:
        client = await RawClient.connect(gw.port)
        reply = await until(client, "/health/detailed", redis_status("healthy"), 5.0)
        body = reply.json()
        found = component(body, "redis_connection")
        assert reply.status == 200 and isinstance(body, dict) and body["status"] == "healthy"
        assert 0 < found["latency_ms"] < 200 and 0 <= found["checked_s_ago"] < 5
        assert found["used_for"] == ["rate_limiting (on_failure: local)"]
        ready = await client.request(get("/ready"))
        assert ready.status == 200 and ready.json() == {"ready": True, "dependencies": ["metald"]}

        redis.stop()
        reply = await until(client, "/health/detailed", redis_status("unhealthy"), 5.0)
        body = reply.json()
        assert reply.status == 200 and isinstance(body, dict) and body["status"] == "degraded"
        # A category only: the socket path (an address) and the exception text go to the log.
        assert component(body, "redis_connection")["error"] == "unavailable"
        assert redis.unix_path not in reply.body.decode() and "Redis" not in reply.body.decode()
        assert (await client.request(get("/ready"))).status == 200  # local limits still serve

        back = start_redis(tmp_path / "redis2", tcp=False, unix_path=Path(redis.unix_path))
        try:
            reply = await until(
                client, "/health/detailed", redis_status("healthy"), CHANGE_TIMEOUT_S
            )
            assert reply.status == 200 and reply.json()["status"] == "healthy"  # type: ignore[index]
        finally:
            back.stop()
        await client.close()


@uvloop_test
async def test_redis_down_under_closed_policy_is_unhealthy_and_not_ready(
    redis: RedisServer, tmp_path: Path
) -> None:
    async with running(extra=redis_extra(redis.unix_address, on_failure="closed")) as gw:
        client = await RawClient.connect(gw.port)
        await until(client, "/health/detailed", redis_status("healthy"), 5.0)
        ready = await client.request(get("/ready"))
        assert ready.status == 200
        assert ready.json() == {"ready": True, "dependencies": ["metald", "redis"]}

        redis.stop()
        reply = await until(client, "/health/detailed", redis_status("unhealthy"), 5.0)
        body = reply.json()
        assert reply.status == 503 and isinstance(body, dict) and body["status"] == "unhealthy"
        ready = await client.request(get("/ready"))
        assert ready.status == 503
        assert ready.json() == {"ready": False, "dependencies": ["metald", "redis"]}

        back = start_redis(tmp_path / "redis2", tcp=False, unix_path=Path(redis.unix_path))
        try:
            await until(client, "/ready", lambda r: r.status == 200, CHANGE_TIMEOUT_S)
            reply = await client.request(get("/health/detailed"))
            assert reply.status == 200 and reply.json()["status"] == "healthy"  # type: ignore[index]
        finally:
            back.stop()
        await client.close()


@uvloop_test
async def test_a_hung_redis_is_unhealthy_while_its_connection_stays_up(
    redis: RedisServer,
) -> None:
    async with running(extra=redis_extra(redis.unix_address, on_failure="closed")) as gw:
        client = await RawClient.connect(gw.port)
        await until(client, "/health/detailed", redis_status("healthy"), 5.0)
        os.kill(redis.process.pid, signal.SIGSTOP)  # connected, answering nothing
        try:
            reply = await until(client, "/ready", lambda r: r.status == 503, 5.0)
            assert reply.json()["ready"] is False  # type: ignore[index]
            found = component((await client.request(get("/health/detailed"))).json(),
                              "redis_connection")  # fmt: skip
            assert found["status"] == "unhealthy" and found["error"] == "timeout"
        finally:
            os.kill(redis.process.pid, signal.SIGCONT)
        await until(client, "/ready", lambda r: r.status == 200, CHANGE_TIMEOUT_S)
        await client.close()


@uvloop_test
async def test_a_failure_detail_is_logged_once_and_never_answered(
    redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fastgw.health")
    async with running(extra=redis_extra(redis.unix_address)) as gw:
        client = await RawClient.connect(gw.port)
        await until(client, "/health/detailed", redis_status("healthy"), 5.0)
        redis.stop()
        reply = await until(client, "/health/detailed", redis_status("unhealthy"), 5.0)
        assert component(reply.json(), "redis_connection")["error"] == "unavailable"
        assert redis.unix_path not in reply.body.decode()
        # Two more failed PINGs (one a second): still one line for the operator, with the detail.
        probe = gw.gateway.context.plan.probes.redis
        assert probe is not None
        failed_s = probe.checked_s
        await eventually(lambda: probe.checked_s > failed_s, CHANGE_TIMEOUT_S)
        failed_s = probe.checked_s
        await eventually(lambda: probe.checked_s > failed_s, CHANGE_TIMEOUT_S)
        assert probe.status == "unhealthy"
        await client.close()
    lines = [r.getMessage() for r in caplog.records if "redis probe" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "(unavailable)" in lines[0] and redis.unix_path in lines[0]


@uvloop_test
async def test_revocation_only_reports_the_pollers_view(redis: RedisServer) -> None:
    extra = {
        "gateway": {
            "authentication": {
                "jwt": {"algorithm": "HS256", "hs_secret": SECRET},
                "revocation": {"enabled": True, "poll_interval": "100ms"},
            },
            "rate_limiting": {"backend": "memory", "redis": {"address": redis.unix_address}},
        },
    }
    async with running(extra=extra) as gw:
        client = await RawClient.connect(gw.port)
        reply = await until(client, "/health/detailed", redis_status("healthy"), 5.0)
        found = component(reply.json(), "redis_connection")
        assert found["used_for"] == ["revocation"] and found["latency_ms"] > 0
        redis.stop()
        reply = await until(client, "/health/detailed", redis_status("unhealthy"), 5.0)
        body = reply.json()
        # The last list is kept: requests are still served, the gateway is only degraded.
        assert reply.status == 200 and isinstance(body, dict) and body["status"] == "degraded"
        await client.close()


@uvloop_test
async def test_a_blocked_event_loop_shows_as_a_degraded_http_server() -> None:
    async with running() as gw:
        client = await RawClient.connect(gw.port)
        # Block the worker's loop across one lag timer's due time (the test shares the loop).
        time.sleep(LOOP_LAG_INTERVAL_S + 3 * LOOP_LAG_DEGRADED_S)
        reply = await until(
            client,
            "/health/detailed",
            lambda r: component(r.json(), "http_server")["status"] == "degraded",
            3.0,
        )
        server = component(reply.json(), "http_server")
        assert server["latency_ms"] >= LOOP_LAG_DEGRADED_S * 1000
        body = reply.json()
        assert reply.status == 200 and isinstance(body, dict) and body["status"] == "degraded"
        # The next timer on time clears it.
        await until(
            client,
            "/health/detailed",
            lambda r: component(r.json(), "http_server")["status"] == "healthy",
            3.0,
        )
        await client.close()
