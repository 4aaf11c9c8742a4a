"""CORS and the security response headers end to end: real client sockets → in-process gateway
→ real mock backend.

CORS (``gateway.security.cors``): preflights are answered by the gateway (204, never forwarded,
never authenticated, on method-restricted routes too); actual requests from an allowed origin
get ``Access-Control-Allow-Origin`` on every answer, proxied or gateway-made (401, 429, 5xx),
and a refused origin gets none. Security headers: ``response_headers`` (nosniff by default) on
every kind of answer; ``Content-Security-Policy`` only on what the gateway makes itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest

from fastgw.listen import free_port
from fastgw.stages.cors import AMBIGUOUS, ORIGIN, field_value, normalize_origin
from tests.support.client import RawClient, Response, assert_error, get
from tests.support.gateway import ECHO_ROUTES, Running, eventually, running, uvloop_test

APP = "https://app.example"
LOCAL = "http://localhost:3000"
CSP = b"default-src 'none'; frame-ancestors 'none'"
PRIVATE = "/echo/private/x"  # auth: required, any method
LIST_VMS = "/vmprovisioner.v1.VmService/ListVms"  # auth: required, POST only
POLICY: dict[str, Any] = {
    "enabled": True,
    "allow_origins": [APP, "HTTP://LocalHost:3000"],  # normalized to what browsers send
    "allow_methods": ["GET", "POST", "DELETE"],
    "allow_headers": ["Authorization", "Content-Type", "X-Trace"],
    "allow_credentials": True,
    "max_age": "90s",
}


def cors(routes: list[dict[str, Any]] | None = None, **changes: Any) -> dict[str, Any]:
    extra: dict[str, Any] = {"gateway": {"security": {"cors": {**POLICY, **changes}}}}
    if routes is not None:
        extra["routes"] = routes
    return extra


def request(method: str, path: str, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: gw"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def preflight(
    path: str, origin: str = APP, method: str = "POST", headers: str | None = None
) -> bytes:
    fields = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers is not None:
        fields["Access-Control-Request-Headers"] = headers
    return request("OPTIONS", path, fields)


def backend_requests(gw: Running) -> int:
    return sum(int(mock.stats()["requests"]) for mock in gw.backends)


def cors_names(response: Response) -> list[bytes]:
    return [n for n in response.header_names() if n.startswith(b"access-control-")]


def echo_headers(response: Response) -> dict[str, str]:
    echo = orjson.loads(response.body)
    return {name.lower(): value for name, value in echo["headers"]}


@asynccontextmanager
async def client_of(
    extra: dict[str, Any] | None = None,
) -> AsyncIterator[tuple[Running, RawClient]]:
    async with running(extra=extra) as gw:
        client = await RawClient.connect(gw.port)
        try:
            yield gw, client
        finally:
            await client.close()


def assert_allowed(response: Response, origin: str = APP) -> None:
    """The CORS headers of an actual request from an allowed origin (credentials on)."""
    assert response.header("access-control-allow-origin") == origin.encode()
    assert response.header("access-control-allow-credentials") == b"true"
    assert response.header("vary") == b"Origin"
    assert response.header("access-control-allow-methods") is None  # preflight only


def assert_gateway_made(response: Response) -> None:
    assert response.header("content-security-policy") == CSP
    assert response.header("x-content-type-options") == b"nosniff"


# ----------------------------------------------------------------------------- preflight


@uvloop_test
async def test_allowed_preflight_is_answered_with_exact_headers_and_no_auth() -> None:
    async with client_of(cors()) as (gw, client):
        response = await client.request(preflight(PRIVATE, headers="content-type,x-trace"))
        assert response.status == 204
        assert response.body == b""
        names = response.header_names()
        assert names == [
            b"content-security-policy",
            b"x-content-type-options",
            b"access-control-allow-origin",
            b"vary",
            b"access-control-allow-credentials",
            b"access-control-allow-methods",
            b"access-control-allow-headers",
            b"access-control-max-age",
            b"date",
            b"x-request-id",
        ], names
        assert response.header("access-control-allow-origin") == APP.encode()
        assert response.header("access-control-allow-credentials") == b"true"
        assert response.header("access-control-allow-methods") == b"GET, POST, DELETE"
        assert response.header("access-control-allow-headers") == (
            b"Authorization, Content-Type, X-Trace"
        )
        assert response.header("access-control-max-age") == b"90"
        assert response.header("vary") == b"Origin"
        assert_gateway_made(response)
        # never forwarded, and the connection goes on (keep-alive)
        assert backend_requests(gw) == 0
        follow = await client.request(get("/echo/after"))
        assert follow.status == 200
        assert backend_requests(gw) == 1


@uvloop_test
async def test_preflight_reaches_method_restricted_and_health_routes() -> None:
    async with client_of(cors()) as (gw, client):
        for path in (LIST_VMS, "/health", "/ready"):
            response = await client.request(preflight(path, origin=LOCAL))
            assert response.status == 204, (path, response.body)
            assert response.header("access-control-allow-origin") == LOCAL.encode()
            assert_gateway_made(response)
        # an OPTIONS that is not a preflight still finds no route there, as before
        assert_error(
            await client.request(request("OPTIONS", LIST_VMS, {"Origin": APP})), 404, "no_route"
        )
        assert_error(await client.request(request("OPTIONS", "/health")), 404, "no_route")
        assert backend_requests(gw) == 0


@pytest.mark.parametrize(
    ("origin", "method", "headers"),
    [
        ("https://evil.example", "POST", None),  # origin not allowed
        ("https://app.example:8443", "POST", None),  # another port is another origin
        ("null", "POST", None),
        (APP, "PATCH", None),  # method not allowed
        (APP, "post", None),  # methods are case-sensitive
        (APP, "POST", "content-type, x-other"),  # one header not allowed
    ],
)
@uvloop_test
async def test_refused_preflight_is_204_without_cors_headers(
    origin: str, method: str, headers: str | None
) -> None:
    async with client_of(cors()) as (gw, client):
        for path in (PRIVATE, LIST_VMS):
            response = await client.request(preflight(path, origin, method, headers))
            assert response.status == 204
            assert cors_names(response) == []
            assert response.header("vary") == b"Origin"
            assert_gateway_made(response)
        assert backend_requests(gw) == 0


@uvloop_test
async def test_preflight_field_names_and_header_lists_ignore_case() -> None:
    async with client_of(cors()) as (gw, client):
        raw = (
            b"OPTIONS /echo/private/x HTTP/1.1\r\nHost: gw\r\nORIGIN: https://app.example\r\n"
            b"access-control-request-METHOD: DELETE\r\n"
            b"Access-Control-Request-Headers: X-TRACE ,Authorization,,content-type\r\n\r\n"
        )
        response = await client.request(raw)
        assert response.status == 204
        assert response.header("access-control-allow-origin") == APP.encode()
        assert backend_requests(gw) == 0


@uvloop_test
async def test_duplicate_origin_is_refused() -> None:
    async with client_of(cors()) as (gw, client):
        raw = (
            b"OPTIONS /echo HTTP/1.1\r\nHost: gw\r\nOrigin: https://app.example\r\n"
            b"Origin: https://evil.example\r\nAccess-Control-Request-Method: GET\r\n\r\n"
        )
        response = await client.request(raw)
        assert response.status == 204
        assert cors_names(response) == []
        actual = await client.request(
            b"GET /echo HTTP/1.1\r\nHost: gw\r\nOrigin: https://app.example\r\n"
            b"origin: https://app.example\r\n\r\n"
        )
        assert actual.status == 200
        assert cors_names(actual) == []
        assert backend_requests(gw) == 1


@uvloop_test
async def test_options_that_is_not_a_preflight_is_routed_as_before() -> None:
    get_only = {
        "endpoint": "EchoGet",
        "path_prefix": "/echo/get",
        "methods": ["GET"],
        "auth": "none",
    }
    routes = [*ECHO_ROUTES, get_only]
    async with client_of(cors(routes)) as (gw, client):
        # /echo/get refuses OPTIONS: a plain OPTIONS falls through to /echo (any method)...
        plain = await client.request(request("OPTIONS", "/echo/get/x", {"Origin": APP}))
        assert plain.status == 200
        assert orjson.loads(plain.body)["method"] == "OPTIONS"
        assert_allowed(plain)
        assert backend_requests(gw) == 1
        # ...while a preflight there is answered by the gateway
        answered = await client.request(preflight("/echo/get/x", method="GET"))
        assert answered.status == 204
        assert answered.header("access-control-allow-origin") == APP.encode()
        assert backend_requests(gw) == 1


@uvloop_test
async def test_pipelined_preflight_then_request_answered_in_order() -> None:
    async with client_of(cors()) as (gw, client):
        await client.send(
            preflight("/echo/a", method="DELETE")
            + request("DELETE", "/echo/a", {"Origin": APP})
            + preflight("/echo/b", origin="https://evil.example")
        )
        first, second, third = await client.read_responses(3)
        assert first.status == 204
        assert first.header("access-control-max-age") == b"90"
        assert second.status == 200
        assert orjson.loads(second.body)["method"] == "DELETE"
        assert_allowed(second)
        assert third.status == 204
        assert cors_names(third) == []
        assert backend_requests(gw) == 1


# ------------------------------------------------------------------------- actual requests


@uvloop_test
async def test_allowed_origin_gets_headers_on_a_proxied_answer() -> None:
    async with client_of(cors()) as (_, client):
        response = await client.request(get("/echo/a", headers={"Origin": APP}))
        assert response.status == 200
        assert_allowed(response)
        assert response.header("content-security-policy") is None  # the backend decides
        assert response.header("x-content-type-options") == b"nosniff"
        assert echo_headers(response)["origin"] == APP  # the backend still sees it
        local = await client.request(get("/echo/a", headers={"Origin": LOCAL}))
        assert_allowed(local, LOCAL)


@pytest.mark.parametrize("origin", [None, "https://evil.example", "null"])
@uvloop_test
async def test_other_or_no_origin_gets_no_cors_headers(origin: str | None) -> None:
    headers = {} if origin is None else {"Origin": origin}
    async with client_of(cors()) as (gw, client):
        response = await client.request(get("/echo/a", headers=headers))
        assert response.status == 200
        assert cors_names(response) == []
        # the answer depends on Origin, so caches must key on it even without CORS headers
        assert response.header("vary") == b"Origin"
        refused = await client.request(get(PRIVATE, headers=headers))
        assert_error(refused, 401, "unauthorized")
        assert cors_names(refused) == []
        assert backend_requests(gw) == 1


@uvloop_test
async def test_allowed_origin_gets_headers_on_gateway_made_answers() -> None:
    async with client_of(cors()) as (_, client):
        unauthorized = await client.request(get(PRIVATE, headers={"Origin": APP}))
        assert_error(unauthorized, 401, "unauthorized")
        assert_allowed(unauthorized)
        assert unauthorized.header("www-authenticate") is not None
        assert_gateway_made(unauthorized)
        health = await client.request(get("/health", headers={"Origin": APP}))
        assert health.status == 200
        assert_allowed(health)
        assert_gateway_made(health)


@uvloop_test
async def test_allowed_origin_gets_headers_on_upstream_failures() -> None:
    async with running(backends=0, dead_ports=[free_port()], extra=cors()) as gw:
        client = await RawClient.connect(gw.port)
        response = await client.request(get("/echo/a", headers={"Origin": APP}))
        assert response.status in (502, 503), response.body
        assert_allowed(response)
        assert_gateway_made(response)
        await client.close()


@uvloop_test
async def test_allowed_origin_gets_headers_on_429_and_rate_limit_headers_stay() -> None:
    limits = {
        "customer_tiers": {"free": {"requests_per_second": 1e6, "burst_size": 1_000_000}},
        "global": {"requests_per_second": 0.001, "burst_size": 1},
    }
    async with client_of({**cors(), "rate_limits": limits}) as (gw, client):
        allowed = await client.request(get("/echo/a", headers={"Origin": APP}))
        assert allowed.status == 200
        assert_allowed(allowed)
        assert allowed.header("ratelimit-limit") == b"1"
        assert allowed.header("ratelimit-remaining") == b"0"
        refused = await client.request(get("/echo/a", headers={"Origin": APP}))
        assert_error(refused, 429, "rate_limited")
        assert_allowed(refused)
        assert refused.header("retry-after") is not None
        assert refused.header("ratelimit-limit") == b"1"
        assert_gateway_made(refused)
        assert backend_requests(gw) == 1


@uvloop_test
async def test_wildcard_origin_without_credentials() -> None:
    extra = cors(allow_origins=["*"], allow_credentials=False)
    async with client_of(extra) as (gw, client):
        answered = await client.request(preflight(LIST_VMS, origin="https://any.example"))
        assert answered.status == 204
        assert answered.header("access-control-allow-origin") == b"*"
        assert answered.header("access-control-allow-credentials") is None
        assert answered.header("access-control-allow-methods") == b"GET, POST, DELETE"
        assert answered.header("vary") is None  # the same answer for every origin
        actual = await client.request(get("/echo/a", headers={"Origin": "https://x.example"}))
        assert actual.header("access-control-allow-origin") == b"*"
        assert actual.header("access-control-allow-credentials") is None
        assert actual.header("vary") is None
        plain = await client.request(get("/echo/a"))
        assert cors_names(plain) == []
        assert backend_requests(gw) == 2


@uvloop_test
async def test_cors_disabled_options_is_proxied_as_before() -> None:
    async with client_of() as (gw, client):
        response = await client.request(preflight("/echo/a", headers="x-trace"))
        assert response.status == 200
        assert orjson.loads(response.body)["method"] == "OPTIONS"
        assert cors_names(response) == []
        assert response.header("vary") is None
        assert backend_requests(gw) == 1
        assert_error(await client.request(preflight(LIST_VMS)), 404, "no_route")
        actual = await client.request(get("/echo/a", headers={"Origin": APP}))
        assert cors_names(actual) == []


# -------------------------------------------------------------------- security headers


@uvloop_test
async def test_nosniff_everywhere_and_csp_only_on_gateway_made_answers() -> None:
    async with client_of() as (gw, client):
        await eventually(lambda: gw.gateway.context.plan.backend_view.reachable() > 0)
        proxied = await client.request(get("/echo/a"))
        assert proxied.status == 200
        assert proxied.header("x-content-type-options") == b"nosniff"
        assert proxied.header("content-security-policy") is None
        backend_error = await client.request(get("/status/500"))
        assert backend_error.status == 500  # relayed: the backend's answer, not ours
        assert backend_error.header("content-security-policy") is None
        assert backend_error.header("x-content-type-options") == b"nosniff"
        for path, status in (("/health", 200), ("/health/detailed", 200), ("/ready", 200)):
            local = await client.request(get(path))
            assert local.status == status, (path, local.body)
            assert_gateway_made(local)
        # HEAD: the same head, no body (read raw: the test client would wait for the body)
        head_client = await RawClient.connect(gw.port)
        await head_client.send(request("HEAD", "/health"))
        head = await head_client.reader.readuntil(b"\r\n\r\n")
        assert b"\r\nContent-Security-Policy: " + CSP + b"\r\n" in head
        assert b"\r\nX-Content-Type-Options: nosniff\r\n" in head
        await head_client.close()
        no_route = await client.request(get("/nowhere"))
        assert_error(no_route, 404, "no_route")
        assert_gateway_made(no_route)
        unauthorized = await client.request(get(PRIVATE))
        assert_error(unauthorized, 401, "unauthorized")
        assert_gateway_made(unauthorized)
        # a framing error, answered before any route or stage
        bad = await client.request(b"GET /echo HTTP/1.1\r\nHost: gw\r\nContent-Length: x\r\n\r\n")
        assert_error(bad, 400, "bad_request")
        assert_gateway_made(bad)


@uvloop_test
async def test_configured_response_headers_replace_the_default() -> None:
    headers = {"X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}
    extra = {"gateway": {"security": {"response_headers": headers}}}
    async with client_of(extra) as (_, client):
        for raw in (get("/echo/a"), get("/health"), get("/nowhere")):
            response = await client.request(raw)
            assert response.header("x-frame-options") == b"DENY"
            assert response.header("referrer-policy") == b"no-referrer"
            assert response.header("x-content-type-options") is None


# ------------------------------------------------------------------------------ helpers


def test_normalize_origin() -> None:
    assert normalize_origin("HTTPS://App.Example:443") == "https://app.example"
    assert normalize_origin("http://a.example:80") == "http://a.example"
    assert normalize_origin("http://a.example:8080") == "http://a.example:8080"
    assert normalize_origin("https://[::1]:8443") == "https://[::1]:8443"
    assert normalize_origin("*") == "*"


def test_field_value_finds_whole_names_only() -> None:
    block = b"X-Origin: a\r\nOrigin:  https://a.example \r\nUser-Agent: t\r\n"
    assert field_value(block.lower(), block, ORIGIN) == b"https://a.example"
    first = b"origin: https://b.example\r\n"
    assert field_value(first, first, ORIGIN) == b"https://b.example"
    assert field_value(b"x-origin: a\r\n", b"x-origin: a\r\n", ORIGIN) is None
    twice = b"Origin: a\r\nX: 1\r\nORIGIN: b\r\n"
    assert field_value(twice.lower(), twice, ORIGIN) is AMBIGUOUS
