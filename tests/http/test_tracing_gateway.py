"""Tracing through a running gateway: W3C traceparent propagation to the backend, the span
tree exported over OTLP/HTTP to a real local receiver (which decodes the protobuf), sampling,
and a collector that is down or hangs never holding requests up.

Spans are read after the gateway closed: closing flushes what is queued (bounded), so every
finished request's spans have arrived by then. The mock backend's ``/echo`` answers with the
headers it received, so the tests see exactly the ``traceparent`` the backend got.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import orjson
import pytest

from fastgw.limits import TRACE_EXPORT_TIMEOUT_S, TRACE_FLUSH_TIMEOUT_S
from fastgw.listen import free_port
from fastgw.obs import tracing_export
from tests.support.client import Response, get, request_once
from tests.support.gateway import GENEROUS_LIMITS, eventually, merge, running, uvloop_test
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan, otlp_receiver

# Closing a gateway whose collector is down or hung: the flush deadline plus the thread's margin
# (0.5 s), plus slack for a loaded 2-core machine; still well under what an unbounded close
# would take (a try's 10 s export timeout, an 8 s back-off).
CLOSE_BOUND_S = TRACE_FLUSH_TIMEOUT_S + 3.0
assert CLOSE_BOUND_S < TRACE_EXPORT_TIMEOUT_S
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_PARENT = "b7ad6b7169203331"
SENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})\Z")
DEV = {"Authorization": "Bearer dev_customer_42"}


def tracing(endpoint: str, rate: float = 1.0, **extra: Any) -> dict[str, Any]:
    """An ``extra`` for ``running``: tracing to ``endpoint`` plus ``extra`` (merged)."""
    config: dict[str, Any] = {
        "gateway": {
            "observability": {
                "tracing": {"enabled": True, "endpoint": endpoint, "sample_rate": rate}
            }
        },
        "rate_limits": GENEROUS_LIMITS,
    }
    return merge(config, extra)


def backend_headers(response: Response) -> dict[str, list[str]]:
    """The trace headers the backend received (every field of each name, lowercased)."""
    assert response.status == 200, (response.status, response.body)
    seen: dict[str, list[str]] = {}
    for name, value in orjson.loads(response.body)["headers"]:
        if name.lower() in ("traceparent", "tracestate"):
            seen.setdefault(name.lower(), []).append(value)
    return seen


def request_id(response: Response) -> str:
    """The X-Request-ID the backend received."""
    ids = [v for n, v in orjson.loads(response.body)["headers"] if n.lower() == "x-request-id"]
    assert len(ids) == 1
    return str(ids[0])


def sent_traceparent(response: Response) -> tuple[str, str, str]:
    values = backend_headers(response)["traceparent"]
    assert len(values) == 1, values
    match = SENT.match(values[0])
    assert match, values
    trace_id, parent_id, flags = match.groups()
    return trace_id, parent_id, flags


def one(rx: OtlpReceiver, name: str, trace_id: str) -> ReceivedSpan:
    found = [s for s in rx.trace(trace_id) if s.name == name]
    assert len(found) == 1, (name, [(s.name, s.trace_id) for s in rx.spans])
    return found[0]


def nested(child: ReceivedSpan, parent: ReceivedSpan) -> None:
    assert child.parent_span_id == parent.span_id
    assert child.trace_id == parent.trace_id
    assert parent.start_ns <= child.start_ns <= child.end_ns <= parent.end_ns


@uvloop_test
async def test_client_trace_continues_through_the_gateway_to_the_backend() -> None:
    async with otlp_receiver() as rx, running(1, tracing(rx.endpoint, rate=0.0)) as gw:
        headers = {
            **DEV,
            "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01",
            "tracestate": "rojo=00f067aa0ba902b7",
        }
        response = await request_once(gw.port, get("/echo/private/x", headers=headers))
        backend_port = gw.backends[0].port
    trace_id, parent_id, flags = sent_traceparent(response)
    assert (trace_id, flags) == (CLIENT_TRACE, "01")  # parent-based: sampled at rate 0
    assert backend_headers(response)["tracestate"] == ["rojo=00f067aa0ba902b7"]

    request = one(rx, "GET Private", CLIENT_TRACE)
    assert request.kind == "server" and request.parent_span_id == CLIENT_PARENT
    assert request.attributes == {
        "http.request.method": "GET",
        "url.path": "/echo/private/x",
        "url.scheme": "http",
        "fastgw.endpoint": "Private",
        "fastgw.request_id": request_id(response),
        "http.response.status_code": 200,
        "fastgw.customer.id": "42",
        "fastgw.customer.tier": "dev",
    }
    assert request.status_code == 0
    assert request.resource["service.name"] == "fastgw" and request.scope == "fastgw"

    auth = one(rx, "auth", CLIENT_TRACE)
    limit = one(rx, "ratelimit", CLIENT_TRACE)
    upstream = one(rx, "upstream", CLIENT_TRACE)
    for child in (auth, limit, upstream):
        nested(child, request)
    assert auth.kind == limit.kind == "internal" and upstream.kind == "client"
    assert auth.attributes == {"fastgw.auth.result": "ok"}
    assert limit.attributes == {"fastgw.ratelimit.result": "allowed"}
    assert auth.end_ns <= limit.start_ns and limit.end_ns <= upstream.start_ns  # chain order
    # The backend's parent is the gateway's upstream span.
    assert parent_id == upstream.span_id
    assert upstream.attributes == {
        "http.request.method": "GET",
        "server.address": "127.0.0.1",
        "server.port": backend_port,
        "http.response.status_code": 200,
    }
    assert len(rx.spans) == 4
    assert rx.paths == ["POST /v1/traces"] and rx.content_types == ["application/x-protobuf"]


@uvloop_test
async def test_a_token_in_the_path_or_request_id_never_reaches_the_collector() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJlLXBhcnQ"
    async with otlp_receiver() as rx, running(1, tracing(rx.endpoint)) as gw:
        headers = {"X-Request-ID": "dev_customer_42"}
        response = await request_once(gw.port, get(f"/echo/{jwt}/x", headers=headers))
    trace_id, _, _ = sent_traceparent(response)
    attributes = one(rx, "GET Echo", trace_id).attributes
    assert attributes["url.path"] == "/echo/[REDACTED]/x"  # as the access log shows it
    assert attributes["fastgw.request_id"] == "[REDACTED]"
    for span in rx.spans:
        assert not any(
            secret in str(value)
            for value in span.attributes.values()
            for secret in ("eyJzdWIiOiIxMjMifQ", "dev_customer_42")
        ), span


@uvloop_test
async def test_cors_preflights_are_answered_and_not_traced() -> None:
    cors = {"security": {"cors": {"enabled": True, "allow_origins": ["https://app.example"]}}}
    async with otlp_receiver() as rx, running(1, tracing(rx.endpoint, gateway=cors)) as gw:
        asks = b"Origin: https://app.example\r\nAccess-Control-Request-Method: POST\r\n"
        preflight = await request_once(
            gw.port, b"OPTIONS /echo/x HTTP/1.1\r\nHost: gw\r\n" + asks + b"\r\n"
        )
        actual = await request_once(
            gw.port, get("/echo/x", headers={"Origin": "https://app.example"})
        )
    assert preflight.status == 204 and actual.status == 200
    trace_id, _, _ = sent_traceparent(actual)
    assert {s.name for s in rx.spans} == {"GET Echo", "upstream"}
    assert {s.trace_id for s in rx.spans} == {trace_id}


@uvloop_test
async def test_a_request_without_traceparent_starts_a_trace() -> None:
    async with otlp_receiver() as rx, running(1, tracing(rx.endpoint)) as gw:
        first = await request_once(gw.port, get("/echo/a"))
        second = await request_once(gw.port, get("/echo/b"))
    trace_id, parent_id, flags = sent_traceparent(first)
    assert flags == "01" and trace_id != sent_traceparent(second)[0]
    assert "tracestate" not in backend_headers(first)
    request = one(rx, "GET Echo", trace_id)
    assert request.parent_span_id == ""  # the root of a new trace
    assert one(rx, "upstream", trace_id).span_id == parent_id
    assert not rx.by_name("auth")  # an auth: none route without limits
    assert len(rx.spans) == 4


@uvloop_test
async def test_sample_rate_zero_exports_nothing_but_still_propagates() -> None:
    unsampled = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-00"}
    async with otlp_receiver() as rx, running(1, tracing(rx.endpoint, rate=0.0)) as gw:
        responses = [await request_once(gw.port, get("/echo/x")) for _ in range(20)]
        unsampled_parent = await request_once(gw.port, get("/echo/x", headers=unsampled))
    sent = [sent_traceparent(r) for r in responses]
    assert all(flags == "00" for _, _, flags in sent)
    assert len({trace_id for trace_id, _, _ in sent}) == 20
    trace_id, parent_id, flags = sent_traceparent(unsampled_parent)
    assert (trace_id, flags) == (CLIENT_TRACE, "00") and parent_id != CLIENT_PARENT
    assert rx.spans == [] and rx.posts == 0


@uvloop_test
async def test_tracing_off_passes_the_client_trace_through_and_starts_one_otherwise() -> None:
    value = f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"
    async with running(1, {"rate_limits": GENEROUS_LIMITS}) as gw:
        passed = await request_once(
            gw.port, get("/echo/x", headers={"traceparent": value, "tracestate": "a=1"})
        )
        fresh = await request_once(gw.port, get("/echo/x"))
    assert backend_headers(passed) == {"traceparent": [value], "tracestate": ["a=1"]}
    assert sent_traceparent(fresh)[2] == "00"


@pytest.mark.parametrize(
    "headers",
    [
        {"traceparent": f"00-{CLIENT_TRACE}-0000000000000000-01", "tracestate": "a=1"},
        {"traceparent": f"00-{CLIENT_TRACE.upper()}-{CLIENT_PARENT}-01", "tracestate": "a=1"},
        {"traceparent": f"ff-{CLIENT_TRACE}-{CLIENT_PARENT}-01"},
    ],
)
@uvloop_test
async def test_an_invalid_client_traceparent_is_replaced(headers: dict[str, str]) -> None:
    async with otlp_receiver() as rx, running(1, tracing(rx.endpoint, rate=0.0)) as gw:
        response = await request_once(gw.port, get("/echo/x", headers=headers))
    trace_id, _, flags = sent_traceparent(response)
    assert trace_id.lower() != CLIENT_TRACE.lower() and flags == "00"
    assert "tracestate" not in backend_headers(response)
    assert rx.spans == []


@uvloop_test
async def test_two_client_traceparents_restart_the_trace() -> None:
    raw = (
        b"GET /echo/x HTTP/1.1\r\nHost: gw\r\n"
        b"traceparent: 00-12345678901234567890123456789011-1234567890123456-01\r\n"
        b"traceparent: 00-12345678901234567890123456789012-1234567890123456-01\r\n\r\n"
    )
    async with running(1, {"rate_limits": GENEROUS_LIMITS}) as gw:
        response = await request_once(gw.port, raw)
    trace_id, _, _ = sent_traceparent(response)
    assert not trace_id.startswith("1234567890123456789012345678901")


@uvloop_test
async def test_refusals_are_traced_with_their_stage() -> None:
    limits = {"global": {"requests_per_second": 0.001, "burst_size": 1}}
    async with otlp_receiver() as rx, running(1, tracing(rx.endpoint, rate_limits=limits)) as gw:
        refused = await request_once(gw.port, get("/echo/private/x"))  # no token
        allowed = await request_once(gw.port, get("/echo/x"))
        limited = await request_once(gw.port, get("/echo/x"))
    assert (refused.status, allowed.status, limited.status) == (401, 200, 429)
    auth = rx.by_name("auth")
    assert [s.attributes for s in auth] == [{"fastgw.auth.result": "refused"}]
    results = sorted(str(s.attributes["fastgw.ratelimit.result"]) for s in rx.by_name("ratelimit"))
    assert results == ["allowed", "limited"]
    echo = rx.by_name("GET Echo")
    assert sorted(int(s.attributes["http.response.status_code"]) for s in echo) == [200, 429]
    assert len(rx.by_name("upstream")) == 1  # only the allowed request reached a backend
    refused_request = one(rx, "GET Private", auth[0].trace_id)
    assert refused_request.status_code == 0  # a 4xx is not a server error
    nested(auth[0], refused_request)


@uvloop_test
async def test_each_try_is_a_span_and_the_backend_sees_its_own() -> None:
    async with otlp_receiver() as rx:
        routing = {"retry_attempts": 1, "retry_backoff": "1ms"}
        extra = tracing(rx.endpoint, gateway={"routing": routing})
        dead = free_port()
        async with running(1, extra, dead_ports=[dead]) as gw:
            first = await request_once(gw.port, get("/echo/a"))  # round robin: the live one
            second = await request_once(gw.port, get("/echo/b"))  # the dead one, then retried
    assert first.status == second.status == 200
    trace_id, parent_id, _ = sent_traceparent(second)
    tries = sorted(rx.trace(trace_id), key=lambda s: s.start_ns)
    request, failed, retried = tries[0], *[s for s in tries if s.name == "upstream"]
    assert failed.attributes["server.port"] == dead
    assert failed.attributes["error.type"] == "connect" and failed.status_code == 2
    assert retried.attributes["http.request.resend_count"] == 1
    assert retried.attributes["http.response.status_code"] == 200
    assert retried.span_id == parent_id != failed.span_id
    nested(failed, request)
    nested(retried, request)
    assert failed.end_ns <= retried.start_ns


@uvloop_test
async def test_a_5xx_answer_marks_the_spans_as_errors() -> None:
    async with otlp_receiver() as rx, running(1, tracing(rx.endpoint)) as gw:
        response = await request_once(gw.port, get("/status/500"))
    assert response.status == 500
    request = rx.by_name("GET Status")[0]
    upstream = rx.by_name("upstream")[0]
    assert request.status_code == upstream.status_code == 2
    assert upstream.attributes["error.type"] == "500"


@uvloop_test
async def test_an_unreachable_collector_costs_requests_nothing() -> None:
    async with running(1, tracing(f"http://127.0.0.1:{free_port()}/v1/traces")) as gw:
        started = time.monotonic()
        for _ in range(50):
            response = await request_once(gw.port, get("/echo/x"))
            assert response.status == 200
        elapsed_s = time.monotonic() - started
        closing = time.monotonic()
    closed_s = time.monotonic() - closing
    assert elapsed_s < 5.0
    assert closed_s < CLOSE_BOUND_S


@uvloop_test
async def test_a_hung_collector_fills_a_bounded_queue_and_never_blocks(monkeypatch: Any) -> None:
    # A small queue, so that this test crosses the bound (limits.TRACE_QUEUE_SPANS).
    monkeypatch.setattr(tracing_export, "TRACE_QUEUE_SPANS", 24)
    monkeypatch.setattr(tracing_export, "TRACE_BATCH_SPANS", 6)
    async with otlp_receiver(hang=True) as rx:
        async with running(1, tracing(rx.endpoint)) as gw:
            sink = gw.gateway.context.plan.tracing.sink
            assert sink is not None
            slowest_s = 0.0
            for _ in range(40):  # 3 spans each: 120 spans for a queue of 24
                started = time.monotonic()
                response = await request_once(gw.port, get("/echo/x"))
                slowest_s = max(slowest_s, time.monotonic() - started)
                assert response.status == 200
            await eventually(lambda: rx.posts >= 1)  # the export thread is stuck in a POST
            assert sink.dropped > 0  # requests whose spans found no room, dropped whole
            assert sink.offered - sink.taken <= 24
            closing = time.monotonic()
        closed_s = time.monotonic() - closing
    assert slowest_s < 1.0
    assert closed_s < CLOSE_BOUND_S


@uvloop_test
async def test_closing_cuts_a_post_to_a_hung_collector_and_the_export_thread_ends() -> None:
    # The collector accepts the connection, reads the POST and never answers: the export
    # thread is blocked in it (a 10 s socket timeout) when the gateway closes.
    async with otlp_receiver(hang=True) as rx:
        async with running(1, tracing(rx.endpoint)) as gw:
            sink = gw.gateway.context.plan.tracing.sink
            assert sink is not None
            assert (await request_once(gw.port, get("/echo/x"))).status == 200
            await eventually(lambda: rx.posts >= 1)  # the spans' POST, unanswered
            assert (await request_once(gw.port, get("/echo/y"))).status == 200  # queued
            closing = time.monotonic()
        closed_s = time.monotonic() - closing
        # Cut at the flush deadline, not left behind: the thread has ended.
        assert not sink.exporting
        assert sink.taken == sink.offered  # the queued request had its (failed) try
    assert closed_s < CLOSE_BOUND_S


@uvloop_test
async def test_a_client_that_leaves_mid_request_still_gets_its_spans_exported() -> None:
    async with otlp_receiver() as rx, running(1, tracing(rx.endpoint)) as gw:
        gw.backends[0].behaviour.delay_ms = 2000  # the backend is slow to answer
        pool = gw.gateway.context.plan.pools[0]
        _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(get("/echo/slow"))
        await writer.drain()
        await eventually(lambda: pool.open_connections > 0)  # sent upstream (same callback)
        writer.close()  # the client gives up before the answer
        await eventually(lambda: not gw.gateway.context.connections)
        gw.backends[0].behaviour.delay_ms = 0
    [request] = rx.by_name("GET Echo")
    upstream = one(rx, "upstream", request.trace_id)
    assert request.attributes["fastgw.aborted"] is True
    assert "http.response.status_code" not in request.attributes  # nothing was answered
    assert upstream.attributes["error.type"] == "client_aborted"
    nested(upstream, request)
