"""The Redis rate-limit backend through a running gateway, against a real redis-server.

Covers what only the Redis backend does: decisions from the Lua scripts (keys with TTLs under
the customer's hash tag), NOSCRIPT recovery after ``SCRIPT FLUSH``, and ``on_failure`` when
Redis is killed or paused (SIGSTOP): every request is answered within the timeout plus
scheduling slack, by the policy, and limits come back from Redis when it returns, with no
restart of the gateway.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.support.client import RawClient, Response, get
from tests.support.gateway import ECHO_ROUTES, Running, eventually, running, uvloop_test
from tests.support.redis_server import RedisServer, start_redis

SECRET = "redis-limits-test-secret-redis-limits!!"
PATH = "/echo/private/x"
# Slack over the configured timeout for a whole request on a noisy 2-core VM.
ANSWER_SLACK_S = 1.0


def token(customer: str, **claims: Any) -> str:
    payload = {"customer_id": customer, "exp": int(time.time()) + 600, **claims}
    return jwt.encode(payload, SECRET, algorithm="HS256")


def config(redis_address: str, on_failure: str = "local", timeout: str = "50ms") -> dict[str, Any]:
    return {
        "gateway": {
            "authentication": {"jwt": {"algorithm": "HS256", "hs_secret": SECRET}},
            "rate_limiting": {
                "backend": "redis",
                "redis": {"address": redis_address, "timeout": timeout},
                "on_failure": on_failure,
            },
        },
        "routes": ECHO_ROUTES,
        "rate_limits": {
            # no refill during a test: 3 calls, then refused
            "customer_tiers": {"free": {"requests_per_second": 0.001, "burst_size": 3}},
        },
    }


@pytest.fixture
def redis(tmp_path: Path) -> Any:
    server = start_redis(tmp_path / "redis", tcp=False, unix_path=tmp_path / "redis.sock")
    yield server
    server.stop()


@asynccontextmanager
async def gateway(server: RedisServer, **kwargs: Any) -> AsyncIterator[tuple[Running, RawClient]]:
    async with running(extra=config(server.unix_address, **kwargs)) as gw:
        client = await RawClient.connect(gw.port)
        try:
            yield gw, client
        finally:
            await client.close()


async def call(client: RawClient, customer: str) -> Response:
    return await client.request(get(PATH, headers={"Authorization": f"Bearer {token(customer)}"}))


async def statuses(client: RawClient, customer: str, count: int) -> list[int]:
    return [(await call(client, customer)).status for _ in range(count)]


@uvloop_test
async def test_redis_decides_with_keys_that_expire(redis: RedisServer) -> None:
    async with gateway(redis) as (_, client):
        replies = [await call(client, "acme") for _ in range(4)]
        assert [r.status for r in replies] == [200, 200, 200, 429]
        assert [r.header("RateLimit-Remaining") for r in replies] == [b"2", b"1", b"0", b"0"]
        assert replies[3].header("Retry-After") is not None
        assert await statuses(client, "other", 1) == [200]  # customers are independent
    with redis.client() as direct:
        keys = sorted(direct.keys("*"))
        assert b"{c:acme}" in keys and b"{c:other}" in keys
        assert all(direct.pttl(key) > 0 for key in keys)  # every key carries a TTL


@uvloop_test
async def test_noscript_after_a_flush_is_recovered(redis: RedisServer) -> None:
    async with gateway(redis) as (gw, client):
        assert await statuses(client, "acme", 2) == [200, 200]
        with redis.client() as direct:
            direct.script_flush()
        # The next decision still sees the bucket's state: one token left, then refused.
        assert await statuses(client, "acme", 2) == [200, 429]
        assert gw.gateway.context.plan.limits.redis is not None


@uvloop_test
async def test_local_fallback_while_redis_is_down_then_redis_again(
    redis: RedisServer, tmp_path: Path
) -> None:
    async with gateway(redis) as (gw, client):
        assert await statuses(client, "acme", 3) == [200, 200, 200]  # Redis's bucket: empty
        redis.kill()
        started = time.monotonic()
        # The local table has its own, full bucket: 3 more, then refused, without waiting.
        assert await statuses(client, "acme", 4) == [200, 200, 200, 429]
        assert time.monotonic() - started < 4 * ANSWER_SLACK_S
        limits = gw.gateway.context.plan.limits
        assert limits.redis is not None and limits.redis.client.errors > 0
        # Redis back on the same socket: decisions come from it again (its bucket was lost
        # with the process, so the customer starts full there).
        restarted = start_redis(tmp_path / "redis2", tcp=False, unix_path=Path(redis.unix_path))
        try:
            await eventually(lambda: limits.redis is not None and limits.redis.client.connected)
            assert await statuses(client, "acme", 4) == [200, 200, 200, 429]
            with restarted.client() as direct:
                assert direct.exists(b"{c:acme}")
        finally:
            restarted.stop()


@uvloop_test
async def test_open_and_closed_policies(redis: RedisServer) -> None:
    redis.kill()
    async with gateway(redis, on_failure="open") as (_, client):
        replies = [await call(client, "acme") for _ in range(5)]
        assert [r.status for r in replies] == [200] * 5  # no limit while Redis is away
        assert all(r.header("RateLimit-Limit") is None for r in replies)
    async with gateway(redis, on_failure="closed") as (_, client):
        reply = await call(client, "acme")
        assert reply.status == 503
        assert reply.json() == {
            "error": {
                "code": "overloaded",
                "message": "rate limiter unavailable",
                "request_id": reply.header("X-Request-ID").decode(),  # type: ignore[union-attr]
            }
        }
        ready = await client.request(get("/ready"))
        assert ready.status == 503 and "redis" in ready.json()["dependencies"]  # type: ignore[index]


@uvloop_test
async def test_a_paused_redis_costs_each_request_one_timeout_at_most(
    redis: RedisServer,
) -> None:
    async with gateway(redis, timeout="50ms") as (_, client):
        assert await statuses(client, "acme", 1) == [200]
        os.kill(redis.process.pid, signal.SIGSTOP)
        try:
            for _ in range(3):
                started = time.monotonic()
                assert (await call(client, "acme")).status == 200  # local table decides
                assert time.monotonic() - started < 0.05 + ANSWER_SLACK_S
        finally:
            os.kill(redis.process.pid, signal.SIGCONT)
        # Redis decides again. The three calls sent while it was paused still ran when it
        # resumed (a timeout cannot unsend a command), so they count: acme's bucket is empty.
        assert await statuses(client, "fresh", 4) == [200, 200, 200, 429]
        assert await statuses(client, "acme", 1) == [429]


@pytest.mark.parametrize("backend", ["memory", "redis"])
@uvloop_test
async def test_global_sliding_window_through_the_gateway(
    redis: RedisServer, backend: str
) -> None:
    extra = config(redis.unix_address)
    extra["gateway"]["rate_limiting"]["backend"] = backend
    extra["rate_limits"]["global"] = {
        "algorithm": "sliding_window", "window_size": "1h", "requests_per_second": 0.001,
    }  # fmt: skip  (3.6 per hour: 4 requests per window)
    extra["rate_limits"]["customer_tiers"]["free"] = {"requests_per_second": 1e6}
    async with running(extra=extra) as gw:
        client = await RawClient.connect(gw.port)
        try:
            # every customer shares the global window, anonymous routes too
            replies = [await call(client, f"c{i}") for i in range(4)]
            assert [r.status for r in replies] == [200] * 4
            refused = await client.request(get("/echo/x"))
            assert refused.status == 429
            assert refused.header("RateLimit-Limit") == b"4"
            retry = int(refused.header("Retry-After") or b"0")
            assert 0 < retry <= 2 * 3600  # the rest of this hour, and a share of the next
        finally:
            await client.close()
