"""``GET /metrics`` on the metrics port of a running gateway (in process, real sockets): known
traffic in, exact numbers out, parsed with ``prometheus_client``'s own parser.

Covered: requests by endpoint and status (200, 401, 404, 429, a relayed 502, the health
endpoint), the duration histograms' counts, auth results, rate-limit levels, upstream tries by
instance and outcome (status, connect error, timeout) with the retries they caused, the
connection and in-flight gauges, connections shed at ``max_connections``, and metrics off.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from fastgw.listen import free_port
from tests.support.client import RawClient, get, request_once
from tests.support.gateway import ECHO_ROUTES, Running, running, uvloop_test

FROZEN_RATE = 0.001  # tokens/s: no refill during a test
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(gw: Running) -> Samples:
    response = await request_once(gw.gateway.admin_port, get("/metrics"))
    assert response.status == 200, response.body
    assert response.header("content-type") == b"text/plain; version=0.0.4; charset=utf-8"
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.body.decode())
        for sample in family.samples
    }


def pick(samples: Samples, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    """Samples of ``name`` whose labels include ``labels`` (by their full label sets)."""
    wanted = set(labels.items())
    return {key: value for (n, key), value in samples.items() if n == name and wanted <= key}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def until_scraped(gw: Running, check: Any, timeout_s: float = 5.0) -> Samples:
    """Scrape until ``check(samples)`` holds (bounded)."""
    async with asyncio.timeout(timeout_s):
        while True:
            samples = await scrape(gw)
            if check(samples):
                return samples
            await asyncio.sleep(0.01)


@uvloop_test
async def test_known_traffic_gives_exact_counts() -> None:
    extra = {
        "gateway": {"routing": {"retry_attempts": 0, "circuit_breaker": {"enabled": False}}},
        "rate_limits": {"global": {"requests_per_second": FROZEN_RATE, "burst_size": 6}},
    }
    async with running(1, extra) as gw:
        statuses: list[int] = []
        for _ in range(5):
            statuses.append((await request_once(gw.port, get("/echo/ok"))).status)
        mock = gw.backends[0]
        mock.behaviour.fail_status, mock.behaviour.fail_rate = 502, 1.0
        statuses.append((await request_once(gw.port, get("/echo/bad"))).status)
        mock.behaviour.fail_rate = 0.0
        for _ in range(3):  # the global bucket (6) is empty now
            statuses.append((await request_once(gw.port, get("/echo/late"))).status)
        for _ in range(2):
            statuses.append((await request_once(gw.port, get("/echo/private/x"))).status)
        for _ in range(4):
            statuses.append((await request_once(gw.port, get("/nope"))).status)
        statuses.append((await request_once(gw.port, get("/health"))).status)
        assert statuses == [200] * 5 + [502] + [429] * 3 + [401] * 2 + [404] * 4 + [200]

        samples = await until_scraped(  # the last connection is released a moment later
            gw, lambda s: value(s, "fastgw_connections_active") == 0
        )
        requests = {
            (dict(key)["endpoint"], dict(key)["code"]): count
            for key, count in pick(samples, "fastgw_requests_total").items()
        }
        assert requests == {
            ("Echo", "200"): 5, ("Echo", "502"): 1, ("Echo", "429"): 3,
            ("Private", "401"): 2, ("(unrouted)", "404"): 4, ("health", "200"): 1,
        }  # fmt: skip
        counts = {
            dict(key)["endpoint"]: count
            for key, count in pick(samples, "fastgw_request_duration_seconds_count").items()
        }
        assert counts == {
            "(unrouted)": 4, "health": 1, "Echo": 9, "Stream": 0, "CloseDelimited": 0,
            "Status": 0, "Private": 2, "ListVMs": 0, "CreateVM": 0,
        }  # fmt: skip
        inf = value(samples, "fastgw_request_duration_seconds_bucket", endpoint="Echo", le="+Inf")
        assert inf == 9
        assert 0 < value(samples, "fastgw_request_duration_seconds_sum", endpoint="Echo") < 9 * 5

        auth = {dict(k)["result"]: v for k, v in pick(samples, "fastgw_auth_total").items()}
        assert auth == {
            "ok": 0, "cached": 0, "dev": 0, "missing": 2, "invalid": 0, "expired": 0,
            "forbidden": 0,
        }  # fmt: skip
        assert value(samples, "fastgw_ratelimit_total", level="global", result="allowed") == 6
        assert value(samples, "fastgw_ratelimit_total", level="global", result="limited") == 3
        assert value(samples, "fastgw_ratelimit_total", level="customer", result="allowed") == 0

        instance = f"127.0.0.1:{mock.port}"
        upstream = {
            dict(key)["code"]: count
            for key, count in pick(samples, "fastgw_upstream_requests_total").items()
        }
        assert upstream == {"200": 5, "502": 1}
        assert value(samples, "fastgw_upstream_duration_seconds_count", instance=instance) == 6
        assert value(samples, "fastgw_upstream_healthy", instance=instance) == 1
        assert value(samples, "fastgw_circuit_state", instance=instance) == 0
        assert value(samples, "fastgw_retries_total") == 0
        assert value(samples, "fastgw_requests_inflight") == 0
        assert {v for v in pick(samples, "fastgw_shed_total").values()} == {0}
        assert value(samples, "fastgw_redis_errors_total") == 0


@uvloop_test
async def test_upstream_failures_are_counted_by_instance_and_outcome() -> None:
    dead = free_port()
    extra = {
        "gateway": {"routing": {"retry_attempts": 1, "circuit_breaker": {"enabled": False}}},
        "routing": {"health_check_interval": "1h", "unhealthy_threshold": 10},
        "routes": [
            *ECHO_ROUTES,
            {"endpoint": "Slow", "path_prefix": "/slow", "auth": "none", "timeout": "150ms"},
        ],
    }
    async with running(1, extra, dead_ports=[dead]) as gw:
        for n in range(6):
            response = await request_once(gw.port, get(f"/echo/{n}"))
            assert response.status == 200, response.body  # a failed connect is retried
        mock = gw.backends[0]
        mock.behaviour.delay_ms = 1000
        timed_out = await request_once(gw.port, get("/slow/x"))
        mock.behaviour.delay_ms = 0
        samples = await scrape(gw)
        live, gone = f"127.0.0.1:{mock.port}", f"127.0.0.1:{dead}"
        at_live = {
            dict(k)["code"]: v
            for k, v in pick(samples, "fastgw_upstream_requests_total", instance=live).items()
        }
        at_dead = {
            dict(k)["code"]: v
            for k, v in pick(samples, "fastgw_upstream_requests_total", instance=gone).items()
        }
        assert set(at_dead) == {"connect_error"} and at_dead["connect_error"] >= 1
        assert at_live.get("200", 0) == 6  # every /echo request ended there
        retries = value(samples, "fastgw_retries_total")
        assert retries == at_dead["connect_error"]  # each failed connect was retried once
        # The slow request timed out at the mock once, before or after a failed connect to
        # the dead one: 504, or 502 when the connect failure was its last try.
        assert timed_out.status in (502, 504) and at_live["timeout"] == 1
        tries = sum(at_live.values()) + sum(at_dead.values())
        durations = pick(samples, "fastgw_upstream_duration_seconds_count")
        assert sum(durations.values()) == tries
        assert value(samples, "fastgw_requests_total", endpoint="Echo", code="200") == 6


@uvloop_test
async def test_gauges_and_connections_shed_at_the_limit() -> None:
    extra = {"gateway": {"server": {"limits": {"max_connections": 1}}}}
    async with running(1, extra) as gw:
        held = await RawClient.connect(gw.port)
        try:
            assert (await held.request(get("/echo/first"))).status == 200
            refused = await RawClient.connect(gw.port)
            try:
                answer = await refused.read_one()
                assert answer.status == 503
            finally:
                await refused.close()
            gw.backends[0].behaviour.delay_ms = 500
            await held.send(get("/echo/slow"))
            samples = await until_scraped(
                gw, lambda s: value(s, "fastgw_requests_inflight") == 1
            )
            assert value(samples, "fastgw_connections_active") == 1
            assert value(samples, "fastgw_shed_total", reason="connections") == 1
            assert value(samples, "fastgw_shed_total", reason="concurrency") == 0
            assert (await held.read_one()).status == 200
            samples = await until_scraped(
                gw, lambda s: value(s, "fastgw_requests_inflight") == 0
            )
            assert value(samples, "fastgw_requests_total", endpoint="Echo", code="200") == 2
        finally:
            await held.close()


@uvloop_test
async def test_metrics_off_counts_nothing_and_serves_no_metrics_port() -> None:
    async with running(1, {"gateway": {"observability": {"metrics": {"enabled": False}}}}) as gw:
        assert (await request_once(gw.port, get("/echo/x"))).status == 200
        ctx = gw.gateway.context
        assert ctx.plan.metrics is None and ctx.plan.backends.metrics is None
        assert ctx.requests_done == 1
        try:
            port = gw.gateway.admin_port
        except AssertionError:
            port = None
        assert port is None
