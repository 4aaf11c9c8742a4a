"""The forward stage's resilience rules through a running gateway (stages/forward.py): failover
on connect errors, which answers are retried for which methods and routes, the retry count and
back-off, the circuit breaker's cycle, active health checks, the admin view of the upstreams,
and which 503 the client gets when no instance is usable.

Mock instances name themselves in ``X-Metald-Instance``; their request counts (``stats()``)
exclude health checks, so they count exactly the requests the gateway forwarded. Round robin
with equal weights picks m0, m1, m0, ... (asserted where a test relies on it)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson
import pytest

import fastgw.stages.forward as forward_module
from fastgw.http.upstream import UpstreamProtocol
from fastgw.limits import MAX_REPLAY_BODY_BYTES
from fastgw.listen import free_port
from fastgw.mock.vms import Instance
from fastgw.routing import retry
from fastgw.routing.breaker import CLOSED, OPEN
from fastgw.stages.forward import Forward
from tests.support.client import RawClient, Response, assert_error, get, post, request_once
from tests.support.gateway import ECHO_ROUTES, Running, eventually, running, uvloop_test

ROUTES: list[dict[str, Any]] = [
    *ECHO_ROUTES,
    {"endpoint": "Retryable", "path_prefix": "/echo/retry", "auth": "none", "retryable": True},
    {"endpoint": "Slow", "path_prefix": "/echo/slow", "auth": "none", "timeout": "150ms"},
    {
        "endpoint": "SlowRetryable",
        "path_prefix": "/echo/slow-retry",
        "auth": "none",
        "timeout": "150ms",
        "retryable": True,
    },
]


def config(
    routing: dict[str, Any] | None = None,
    breaker: dict[str, Any] | None = None,
    checks: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An ``extra`` for ``running``: our routes, a 1 ms back-off unless ``routing`` says
    otherwise, breaker settings (disabled unless given), ``routing`` (top level) settings."""
    gateway_routing: dict[str, Any] = {
        "retry_backoff": "1ms",
        "circuit_breaker": breaker if breaker is not None else {"enabled": False},
    }
    gateway_routing.update(routing or {})
    return {"gateway": {"routing": gateway_routing}, "routing": checks or {}, "routes": ROUTES}


def instance_of(response: Response) -> bytes | None:
    return response.header("x-metald-instance")


def counts(gw: Running) -> list[int]:
    return [mock.stats()["requests"] for mock in gw.backends]


def assert_mock_error(response: Response, status: int, name: bytes) -> None:
    """``response`` is mock ``name``'s own injected failure, relayed (not a gateway error)."""
    assert response.status == status, (response.status, response.body)
    assert instance_of(response) == name
    code = {500: "internal", 503: "unavailable"}[status]
    assert response.json() == {"code": code, "message": "injected failure"}


def echo(response: Response) -> dict[str, Any]:
    data = orjson.loads(response.body)
    assert isinstance(data, dict)
    return data


def assert_echoed(response: Response, name: bytes, method: str, body: bytes) -> None:
    assert response.status == 200, (response.status, response.body)
    assert instance_of(response) == name
    seen = echo(response)
    assert seen["method"] == method
    assert seen["body_len"] == len(body)
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()


def fail(mock: Any, status: int) -> None:
    mock.behaviour.fail_status = status
    mock.behaviour.fail_rate = 1.0


async def upstreams(gw: Running) -> dict[str, Any]:
    """``GET /admin/upstreams`` on the metrics port, parsed."""
    response = await request_once(gw.gateway.admin_port, get("/admin/upstreams"))
    assert response.status == 200, response.body
    body = response.json()
    assert isinstance(body, dict)
    return body


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    """Poll an async condition (bounded)."""
    async with asyncio.timeout(timeout_s):
        while not await check():
            await asyncio.sleep(0.01)


def no_leaks(gw: Running) -> bool:
    ctx = gw.gateway.context
    return not ctx.connections and all(
        pool.open_connections == pool.idle_count for pool in ctx.plan.pools
    )


@pytest.fixture
def arrivals(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, float]]]:
    """(mock name, monotonic time) of every request a mock counts, in order."""
    seen: list[tuple[str, float]] = []
    original = Instance.count

    def count(self: Instance, path: bytes, headers: list[tuple[bytes, bytes]], size: int) -> None:
        seen.append((self.name, time.monotonic()))
        original(self, path, headers, size)

    monkeypatch.setattr(Instance, "count", count)
    yield seen


def fixed_backoff(monkeypatch: pytest.MonkeyPatch, delay_s: float) -> list[tuple[float, int]]:
    """Make every back-off ``delay_s``; returns the (base, retry) each back-off was asked for."""
    calls: list[tuple[float, int]] = []

    def backoff_s(base_s: float, retry_number: int, draw: float | None = None) -> float:
        calls.append((base_s, retry_number))
        return delay_s

    monkeypatch.setattr(forward_module, "backoff_s", backoff_s)
    return calls


# -- connect failures ------------------------------------------------------------------------


@uvloop_test
async def test_connect_failure_fails_over_for_post_too() -> None:
    dead = free_port()
    async with running(backends=1, dead_ports=[dead], extra=config()) as gw:
        client = await RawClient.connect(gw.port)
        try:
            for n in range(2):  # round robin: m0, then the dead instance, which fails over
                body = b"payload %d" % n
                reply = await client.request(post("/echo/x", body))
                assert_echoed(reply, b"m0", "POST", body)
            assert counts(gw) == [2]
            backends = gw.gateway.context.plan.backends
            assert backends.retries == 1
            assert backends.budget.retries == 0  # nothing was sent: outside the budget
            assert gw.gateway.context.plan.health.failures == [0, 1]
        finally:
            await client.close()
    async with running(backends=1, dead_ports=[dead], extra=config({"retry_attempts": 0})) as gw:
        client = await RawClient.connect(gw.port)
        try:
            assert_echoed(await client.request(post("/echo/x", b"a")), b"m0", "POST", b"a")
            # no retry allowed: the dead pick is the client's 502
            assert_error(await client.request(post("/echo/x", b"b")), 502, "bad_gateway")
            assert gw.gateway.context.plan.backends.retries == 0
        finally:
            await client.close()


# -- 502/503 answers ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@uvloop_test
async def test_503_is_retried_on_the_other_instance_for_idempotent_methods(method: str) -> None:
    async with running(backends=2, extra=config()) as gw:
        fail(gw.backends[0], 503)
        reply = await request_once(
            gw.port, f"{method} /echo/i HTTP/1.1\r\nHost: gw\r\n\r\n".encode()
        )
        assert_echoed(reply, b"m1", method, b"")
        assert counts(gw) == [1, 1]
        assert gw.gateway.context.plan.backends.retries == 1
        assert gw.gateway.context.plan.health.failures == [1, 0]


@uvloop_test
async def test_502_is_retried_too() -> None:
    async with running(backends=2, extra=config()) as gw:
        fail(gw.backends[0], 502)
        assert_echoed(await request_once(gw.port, get("/echo/g")), b"m1", "GET", b"")
        assert counts(gw) == [1, 1]


@uvloop_test
async def test_503_to_a_post_on_a_plain_route_is_relayed() -> None:
    async with running(backends=2, extra=config()) as gw:
        fail(gw.backends[0], 503)
        reply = await request_once(gw.port, post("/echo/p", b"once only"))
        assert_mock_error(reply, 503, b"m0")
        assert counts(gw) == [1, 0]
        assert gw.gateway.context.plan.backends.retries == 0
        assert gw.backends[0].stats()["last_body_len"] == len(b"once only")


BODY = bytes(range(256)) * 160  # 40 KiB, below MAX_REPLAY_BODY_BYTES


async def send_retryable(gw: Running, shape: str, started: list[int]) -> tuple[Response, bytes]:
    """POST ``BODY`` to the retryable route as ``shape``; returns the answer and the body."""
    client = await RawClient.connect(gw.port)
    try:
        if shape == "content_length":
            return await client.request(post("/echo/retry/cl", BODY)), BODY
        if shape == "chunked":
            pieces = [BODY[:1000], BODY[1000:30000], BODY[30000:]]
            data = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
            head = b"POST /echo/retry/ch HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
            return await client.request(head + data), BODY
        # The body arrives in pieces: the first goes out with the head (kept for replay at
        # start), the others are streamed to m0 as they come (kept piece by piece).
        head = b"POST /echo/retry/pc HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n"
        await client.send(head % len(BODY) + BODY[:5000])
        await eventually(lambda: len(started) == 1)
        await client.send(BODY[5000:20000])
        await client.send(BODY[20000:])
        return await client.read_one(), BODY
    finally:
        await client.close()


@pytest.mark.parametrize("shape", ["content_length", "chunked", "pieces"])
@uvloop_test
async def test_503_to_a_post_on_a_retryable_route_is_replayed_intact(
    shape: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[int] = []
    original = UpstreamProtocol.start

    def start(self: UpstreamProtocol, ex: Any, forward: Forward, timeout_s: float) -> None:
        started.append(self._pool.port)
        original(self, ex, forward, timeout_s)

    monkeypatch.setattr(UpstreamProtocol, "start", start)
    async with running(backends=2, extra=config()) as gw:
        fail(gw.backends[0], 503)
        reply, body = await send_retryable(gw, shape, started)
        assert_echoed(reply, b"m1", "POST", body)
        assert counts(gw) == [1, 1]
        assert gw.backends[0].stats()["last_body_len"] == len(body)  # m0 got it all, once
        assert started == [gw.backends[0].port, gw.backends[1].port]
        framing = {n.lower(): v for n, v in echo(reply)["headers"]}
        if shape == "chunked":
            assert framing["transfer-encoding"] == "chunked"
        else:
            assert framing["content-length"] == str(len(body))


@pytest.mark.parametrize(
    ("size", "retried"), [(MAX_REPLAY_BODY_BYTES, True), (MAX_REPLAY_BODY_BYTES + 1, False)]
)
@uvloop_test
async def test_a_body_over_the_replay_limit_is_not_retried(size: int, retried: bool) -> None:
    body = os.urandom(size)
    async with running(backends=2, extra=config()) as gw:
        fail(gw.backends[0], 503)
        reply = await request_once(gw.port, post("/echo/retry/big", body))
        if retried:
            assert_echoed(reply, b"m1", "POST", body)
            assert counts(gw) == [1, 1]
        else:
            assert_mock_error(reply, 503, b"m0")
            assert counts(gw) == [1, 0]
        assert gw.backends[0].stats()["last_body_len"] == size


@uvloop_test
async def test_500_is_not_retried_but_counts_as_a_breaker_failure() -> None:
    breaker = {"failure_threshold": 2, "cooldown": "30s"}
    async with running(backends=2, extra=config(breaker=breaker)) as gw:
        fail(gw.backends[0], 500)
        health = gw.gateway.context.plan.health
        client = await RawClient.connect(gw.port)
        try:
            assert_mock_error(await client.request(get("/echo/a")), 500, b"m0")
            assert counts(gw) == [1, 0]  # not retried on m1
            assert health.breakers[0].consecutive_failures == 1
            assert instance_of(await client.request(get("/echo/b"))) == b"m1"
            assert_mock_error(await client.request(get("/echo/c")), 500, b"m0")
            assert health.breakers[0].state == OPEN  # the second failure in a row
            for _ in range(4):  # m0 is skipped now, its picks fail over to m1
                reply = await client.request(get("/echo/d"))
                assert reply.status == 200 and instance_of(reply) == b"m1"
            assert counts(gw) == [2, 5]
            assert health.failures == [2, 0]
            assert gw.gateway.context.plan.backends.retries == 0
        finally:
            await client.close()


@uvloop_test
async def test_a_lost_response_is_retried_for_get_and_502_for_post() -> None:
    async with running(backends=2, extra=config()) as gw:
        gw.backends[0].behaviour.drop_connection = True
        client = await RawClient.connect(gw.port)
        try:
            assert_echoed(await client.request(get("/echo/a")), b"m1", "GET", b"")
            assert counts(gw) == [1, 1]
            assert instance_of(await client.request(get("/echo/b"))) == b"m1"
            assert_error(await client.request(post("/echo/c", b"x")), 502, "bad_gateway")
            assert counts(gw) == [2, 2]
        finally:
            await client.close()


# -- timeouts --------------------------------------------------------------------------------


@uvloop_test
async def test_timeout_retries_get_and_retryable_post_but_504s_a_plain_post() -> None:
    async with running(backends=2, extra=config()) as gw:
        gw.backends[0].behaviour.delay_ms = 3000
        client = await RawClient.connect(gw.port)
        try:
            started = time.monotonic()
            assert_echoed(await client.request(get("/echo/slow/a")), b"m1", "GET", b"")
            assert time.monotonic() - started >= 0.15  # the route's timeout, not the gateway's
            assert counts(gw) == [1, 1]
            assert instance_of(await client.request(get("/echo/b"))) == b"m1"  # realigns
            reply = await client.request(post("/echo/slow-retry/c", b"again"))
            assert_echoed(reply, b"m1", "POST", b"again")
            assert counts(gw) == [2, 3]
            assert instance_of(await client.request(get("/echo/d"))) == b"m1"
            assert_error(
                await client.request(post("/echo/slow/e", b"once")), 504, "upstream_timeout"
            )
            assert counts(gw) == [3, 4]  # m1 was free, but the POST was not sent twice
            assert gw.gateway.context.plan.health.failures == [3, 0]
        finally:
            await client.close()


# -- how many tries, and when ----------------------------------------------------------------


@uvloop_test
async def test_retry_attempts_bound_the_tries() -> None:
    async with running(backends=3, extra=config({"retry_attempts": 2})) as gw:
        for mock in gw.backends:
            fail(mock, 503)
        reply = await request_once(gw.port, get("/echo/x"))
        assert_mock_error(reply, 503, b"m2")  # the last try's answer is relayed
        assert counts(gw) == [1, 1, 1]
        assert gw.gateway.context.plan.backends.retries == 2


@uvloop_test
async def test_the_retry_waits_the_back_off(
    arrivals: list[tuple[str, float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fixed_backoff(monkeypatch, 0.25)
    async with running(backends=2, extra=config({"retry_backoff": "200ms"})) as gw:
        fail(gw.backends[0], 503)
        assert_echoed(await request_once(gw.port, get("/echo/x")), b"m1", "GET", b"")
        assert calls == [(0.2, 1)]
        assert [name for name, _ in arrivals] == ["m0", "m1"]
        gap = arrivals[1][1] - arrivals[0][1]
        assert 0.25 - 0.002 <= gap < 0.25 + 1.0, gap


@uvloop_test
async def test_the_real_back_off_is_jittered_below_its_ceiling(
    arrivals: list[tuple[str, float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: list[float] = []

    def backoff_s(base_s: float, retry_number: int, draw: float | None = None) -> float:
        delay = retry.backoff_s(base_s, retry_number, draw)
        drawn.append(delay)
        return delay

    monkeypatch.setattr(forward_module, "backoff_s", backoff_s)
    async with running(backends=2, extra=config({"retry_backoff": "200ms"})) as gw:
        fail(gw.backends[0], 503)
        client = await RawClient.connect(gw.port)
        try:
            for n in range(3):  # each pick of m0 is retried on m1, after a fresh draw
                assert instance_of(await client.request(get(f"/echo/{n}"))) == b"m1"
                assert instance_of(await client.request(get("/echo/other"))) == b"m1"
        finally:
            await client.close()
        assert len(drawn) == 3 and all(0.0 <= delay < 0.2 for delay in drawn), drawn
        names = [name for name, _ in arrivals]
        assert names == ["m0", "m1", "m1"] * 3
        for n in range(3):
            gap = arrivals[3 * n + 1][1] - arrivals[3 * n][1]
            assert drawn[n] - 0.002 <= gap < 0.2 + 1.0, (gap, drawn[n])


@uvloop_test
async def test_a_client_leaving_during_the_back_off_stops_the_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fixed_backoff(monkeypatch, 0.3)
    resent = asyncio.Event()
    original = Forward._resend

    def resend(self: Forward, ex: Any) -> None:
        original(self, ex)
        resent.set()

    monkeypatch.setattr(Forward, "_resend", resend)
    async with running(backends=2, extra=config()) as gw:
        fail(gw.backends[0], 503)
        client = await RawClient.connect(gw.port)
        await client.send(get("/echo/x"))
        await eventually(lambda: counts(gw) == [1, 0])
        await client.close()  # m0's 503 is in, the retry waits its 300 ms
        async with asyncio.timeout(5):
            await resent.wait()
        await eventually(lambda: no_leaks(gw) and not gw.backends[0].instance.protocols)
        assert counts(gw) == [1, 0]
        assert gw.backends[1].stats()["connections"] == 0
        assert [pool.open_connections for pool in gw.gateway.context.plan.pools] == [0, 0]
        assert client.raw == b""  # nothing was answered


# -- circuit breaker -------------------------------------------------------------------------


BREAKER = {"failure_threshold": 3, "cooldown": "300ms", "max_cooldown": "10s"}


@uvloop_test
async def test_breaker_opens_probes_and_closes() -> None:
    async with running(backends=1, extra=config(breaker=BREAKER)) as gw:
        mock = gw.backends[0]
        fail(mock, 500)
        health = gw.gateway.context.plan.health
        client = await RawClient.connect(gw.port)
        try:
            for _ in range(3):
                assert_mock_error(await client.request(get("/echo/a")), 500, b"m0")
            refused = await client.request(get("/echo/a"))
            assert_error(refused, 503, "circuit_open")
            assert refused.header("retry-after") == b"1"
            assert counts(gw) == [3]
            # /ready counts usable instances: the only one is held off by its breaker.
            ready = await client.request(get("/ready"))
            assert ready.status == 503
            assert ready.json() == {"ready": False, "dependencies": ["metald"]}
            view = (await upstreams(gw))["instances"][0]
            assert view["healthy"] is False and view["active_check"]["up"] is True
            assert view["ejection_streak"] == 1 and 0 < view["ejected_for_ms"] <= 300
            await until(lambda: _breaker_shown(gw, "open"))

            # After the cool-down one probe goes through; it fails: open again, for longer.
            await eventually(lambda: health.usable[0] == 1)
            assert (await client.request(get("/ready"))).status == 200
            assert_mock_error(await client.request(get("/echo/probe")), 500, b"m0")
            assert counts(gw) == [4]
            assert health.breakers[0].state == OPEN and health.breakers[0].streak == 2
            assert_error(await client.request(get("/echo/a")), 503, "circuit_open")
            assert 300 < (await upstreams(gw))["instances"][0]["ejected_for_ms"] <= 600

            # Fixed, and slow: the probe is in flight, a second request is not let through.
            mock.behaviour.fail_rate = 0.0
            mock.behaviour.delay_ms = 200
            await eventually(lambda: health.usable[0] == 1)
            prober = await RawClient.connect(gw.port)
            try:
                await prober.send(get("/echo/probe"))
                await eventually(lambda: counts(gw) == [5])
                assert_error(await client.request(get("/echo/a")), 503, "circuit_open")
                assert (await prober.read_one()).status == 200
            finally:
                await prober.close()
            assert health.breakers[0].state == CLOSED
            mock.behaviour.delay_ms = 0
            for _ in range(5):
                assert (await client.request(get("/echo/a"))).status == 200
            assert counts(gw) == [10]
            await until(lambda: _breaker_shown(gw, "closed"))
            view = (await upstreams(gw))["instances"][0]
            assert view["healthy"] is True and view["ejected_for_ms"] == 0
        finally:
            await client.close()


async def _breaker_shown(gw: Running, state: str) -> bool:
    return bool((await upstreams(gw))["instances"][0]["breaker"] == state)


@uvloop_test
async def test_a_probe_whose_client_left_frees_its_slot() -> None:
    breaker = {"failure_threshold": 1, "cooldown": "200ms"}
    async with running(backends=1, extra=config(breaker=breaker)) as gw:
        mock = gw.backends[0]
        health = gw.gateway.context.plan.health
        fail(mock, 500)
        assert_mock_error(await request_once(gw.port, get("/echo/a")), 500, b"m0")
        await eventually(lambda: health.usable[0] == 1)
        mock.behaviour.fail_rate = 0.0
        mock.behaviour.delay_ms = 2000
        prober = await RawClient.connect(gw.port)
        await prober.send(get("/echo/probe"))
        await eventually(lambda: counts(gw) == [2])
        await prober.close()  # the probe's client leaves: no verdict on the instance
        await eventually(lambda: not gw.gateway.context.connections)
        # the next refresh (100 ms) gives the abandoned probe's slot back, not probe_timeout_s
        await eventually(lambda: health.breakers[0].probes_in_flight == 0, timeout_s=1.0)
        mock.behaviour.delay_ms = 0
        reply = await request_once(gw.port, get("/echo/next"))
        assert reply.status == 200, reply.body  # a new probe, which closes the circuit
        assert health.breakers[0].state == CLOSED


# -- active health checks -----------------------------------------------------------------------


CHECKS = {"health_check_interval": "100ms", "unhealthy_threshold": 2, "recovery_threshold": 3}


@uvloop_test
async def test_active_checks_take_an_instance_out_and_back() -> None:
    async with running(backends=2, extra=config(checks=CHECKS)) as gw:
        health = gw.gateway.context.plan.health
        m0 = gw.backends[0]
        client = await RawClient.connect(gw.port)
        try:
            for _ in range(2):
                assert (await client.request(get("/echo/a"))).status == 200
            assert counts(gw) == [1, 1]
            m0.behaviour.health_status = 503
            await eventually(lambda: health.usable[0] == 0)
            view = (await upstreams(gw))["instances"]
            assert view[0]["healthy"] is False
            assert view[0]["active_check"]["up"] is False
            assert view[0]["active_check"]["consecutive_failures"] >= 2
            assert view[0]["breaker"] == "closed"
            assert view[1]["healthy"] is True and view[1]["active_check"]["up"] is True
            ready = await client.request(get("/ready"))
            assert ready.status == 200  # one instance is still usable
            detailed = (await client.request(get("/health/detailed"))).json()
            assert isinstance(detailed, dict)
            backend = detailed["components"][2]
            assert backend["status"] == "degraded" and backend["instances_reachable"] == 1
            for _ in range(6):
                reply = await client.request(get("/echo/b"))
                assert reply.status == 200 and instance_of(reply) == b"m1"
            assert counts(gw) == [1, 7]

            m0.behaviour.health_status = 200

            async def recovered() -> bool:
                check = (await upstreams(gw))["instances"][0]["active_check"]
                if not check["up"]:
                    assert check["consecutive_passes"] < 3  # not before recovery_threshold
                    return False
                assert check["consecutive_passes"] >= 3
                return True

            await until(recovered)
            await eventually(lambda: health.usable[0] == 1)
            for _ in range(4):
                assert (await client.request(get("/echo/c"))).status == 200
            assert counts(gw) == [3, 9]
        finally:
            await client.close()


# -- the admin view -------------------------------------------------------------------------------

INSTANCE_FIELDS = {
    "instance", "index", "weight", "pools", "healthy", "active_check", "breaker",
    "ejected_for_ms", "ejection_streak", "inflight", "latency_ewma_ms", "requests", "failures",
    "workers",
}  # fmt: skip
CHECK_FIELDS = {
    "up", "consecutive_failures", "consecutive_passes", "checks", "last_latency_ms",
    "last_check_ms_ago",
}  # fmt: skip
WORKER_FIELDS = {
    "slot", "pid", "breaker", "inflight", "latency_ewma_ms", "requests", "failures",
    "published_ms_ago",
}  # fmt: skip


@uvloop_test
async def test_admin_upstreams_reports_every_instance() -> None:
    async with running(backends=2, extra=config(breaker={})) as gw:
        client = await RawClient.connect(gw.port)
        try:
            for _ in range(4):
                assert (await client.request(get("/echo/a"))).status == 200
            # the main port does not serve the admin view
            assert_error(await client.request(get("/admin/upstreams")), 404, "no_route")
        finally:
            await client.close()

        async def published() -> bool:
            return [i["requests"] for i in (await upstreams(gw))["instances"]] == [2, 2]

        await until(published)
        admin = await RawClient.connect(gw.gateway.admin_port)
        try:
            reply = await admin.request(get("/admin/upstreams?pretty=1"))
            assert reply.status == 200
            assert reply.header("content-type") == b"application/json"
            assert reply.header("cache-control") == b"no-store"
            body = reply.json()
            assert isinstance(body, dict) and set(body) == {"strategy", "instances"}
            assert body["strategy"] == "round_robin"
            for index, (item, mock) in enumerate(zip(body["instances"], gw.backends, strict=True)):
                assert set(item) == INSTANCE_FIELDS
                assert item["instance"] == f"127.0.0.1:{mock.port}"
                assert item["index"] == index and item["weight"] == 100 and item["pools"] == []
                assert item["healthy"] is True and item["breaker"] == "closed"
                assert item["ejected_for_ms"] == 0 and item["ejection_streak"] == 0
                assert item["inflight"] == 0
                assert item["requests"] == 2 and item["failures"] == 0
                assert isinstance(item["latency_ewma_ms"], float) and item["latency_ewma_ms"] > 0
                check = item["active_check"]
                assert set(check) == CHECK_FIELDS
                assert check["up"] is True and check["consecutive_failures"] == 0
                assert check["checks"] >= 1 and check["consecutive_passes"] >= 1
                assert check["last_latency_ms"] > 0 and check["last_check_ms_ago"] >= 0
                [worker] = item["workers"]
                assert set(worker) == WORKER_FIELDS
                assert worker["slot"] == 0 and worker["pid"] == os.getpid()
                assert worker["breaker"] == "closed" and worker["inflight"] == 0
                assert worker["requests"] == 2 and worker["failures"] == 0
                assert worker["latency_ewma_ms"] > 0 and worker["published_ms_ago"] >= 0
            assert_error(await admin.request(get("/admin/other")), 404, "no_route")
            assert_error(await admin.request(get("/echo/a")), 404, "no_route")
            refused = await admin.request(post("/admin/upstreams", b""))
            assert_error(refused, 405, "method_not_allowed")
        finally:
            await admin.close()


# -- which 503 ---------------------------------------------------------------------------------


@uvloop_test
async def test_no_healthy_upstream_versus_circuit_open() -> None:
    checks = {"health_check_interval": "100ms", "unhealthy_threshold": 1}
    breaker = {"failure_threshold": 1, "cooldown": "30s"}
    async with running(backends=2, extra=config(breaker=breaker, checks=checks)) as gw:
        m0, m1 = gw.backends
        health = gw.gateway.context.plan.health
        client = await RawClient.connect(gw.port)
        try:
            assert instance_of(await client.request(get("/echo/a"))) == b"m0"
            fail(m1, 500)
            assert_mock_error(await client.request(get("/echo/b")), 500, b"m1")
            assert health.breakers[1].state == OPEN
            # m0 down by its checks, m1 up but held off by its breaker: circuit_open
            m0.behaviour.health_status = 503
            await eventually(lambda: health.usable[0] == 0)
            refused = await client.request(get("/echo/c"))
            assert_error(refused, 503, "circuit_open")
            assert refused.header("retry-after") == b"1"
            # m1 down by its checks too: the checks' verdict wins
            m1.behaviour.health_status = 503

            async def m1_down() -> bool:
                return not (await upstreams(gw))["instances"][1]["active_check"]["up"]

            await until(m1_down)
            refused = await client.request(get("/echo/d"))
            assert_error(refused, 503, "no_healthy_upstream")
            assert refused.header("retry-after") == b"1"
            assert counts(gw) == [1, 1]
        finally:
            await client.close()


# -- what is not a failure of the backend, and the last connect timing out --------------------


@uvloop_test
async def test_a_slow_upload_is_not_charged_to_the_backend() -> None:
    # The route's backend timeout is 150 ms; the client takes 3 x 100 ms to send its body. The
    # backend's clock starts when it has the whole request, so this is a success, not a 504.
    breaker = {"failure_threshold": 1, "cooldown": "10s"}
    async with running(backends=1, extra=config(breaker=breaker)) as gw:
        client = await RawClient.connect(gw.port)
        try:
            await client.send(
                b"PUT /echo/slow/upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n\r\n"
            )
            for piece in (b"a", b"b", b"c"):
                await asyncio.sleep(0.1)  # the client's pace is the point of this test
                await client.send(piece)
            response = await client.read_one()
            assert_echoed(response, b"m0", "PUT", b"abc")
        finally:
            await client.close()
        health = gw.gateway.context.plan.health
        assert health.failures == [0] and health.breakers[0].state == CLOSED


@uvloop_test
async def test_the_last_connect_timing_out_is_a_504() -> None:
    import select
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # a full accept queue: further connects get no answer at all
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        _, writable, _ = select.select([], fillers[:1], [], 5.0)  # the queue is full then
        assert writable
        extra = {
            "gateway": {"routing": {"retry_attempts": 0, "connect_timeout": "200ms"}},
            "routing": {"health_check_interval": "60s"},
        }
        async with running(backends=0, dead_ports=[port], extra=extra) as gw:
            started = time.monotonic()
            response = await request_once(gw.port, get("/echo/x"))
            assert_error(response, 504, "upstream_timeout")
            assert 0.15 < time.monotonic() - started < 2.0
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@uvloop_test
async def test_failover_goes_past_the_cut_consistent_hash_order_to_the_whole_pool() -> None:
    from fastgw._speedups import HashRing
    from fastgw.limits import MIN_FAILOVER_DEPTH

    dead = [free_port() for _ in range(MIN_FAILOVER_DEPTH + 3)]
    extra = config(
        checks={
            "strategy": "consistent_hash",
            "health_check_interval": "100ms",
            "unhealthy_threshold": 1,
        }
    )
    async with running(backends=1, dead_ports=dead, extra=extra) as gw:
        # the instances in config order: the live mock first, then the dead ports
        keys = [b"127.0.0.1:%d" % gw.backends[0].port] + [b"127.0.0.1:%d" % p for p in dead]
        ring = HashRing(keys, [100] * len(keys))
        customer = next(
            b"c%d" % n
            for n in range(10_000)
            if 0 not in ring.fallback_order(b"c%d" % n, MIN_FAILOVER_DEPTH)
        )  # a customer whose first ring instances are all dead ones
        health = gw.gateway.context.plan.health
        await eventually(lambda: health.reachable() == 1)  # every dead port is marked down
        token = {"Authorization": f"Bearer dev_customer_{customer.decode()}"}
        response = await request_once(gw.port, get("/echo/private/x", headers=token))
        assert response.status == 200 and instance_of(response) == b"m0"
