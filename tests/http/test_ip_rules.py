"""IP rules through a running gateway (gateway.security: ip_allow, ip_deny, trusted_proxies):
a refused peer gets 403 ip_blocked and nothing is forwarded; a trusted proxy's requests are
decided one by one for the client its X-Forwarded-For names, and the backend gets that chain
with the proxy appended; an untrusted peer's X-Forwarded-For is never believed."""

from __future__ import annotations

from typing import Any

import orjson

from tests.support.client import RawClient, Response, assert_error, get, request_once
from tests.support.gateway import running, uvloop_test


def security(**rules: Any) -> dict[str, Any]:
    return {"gateway": {"security": rules}}


def forwarded_for(response: Response) -> str | None:
    """The X-Forwarded-For the backend received (the mock's /echo lists the headers)."""
    headers = orjson.loads(response.body)["headers"]
    values = [value for name, value in headers if name.lower() == "x-forwarded-for"]
    assert len(values) <= 1, values
    return values[0] if values else None


@uvloop_test
async def test_a_denied_peer_gets_403_and_nothing_is_forwarded() -> None:
    async with running(extra=security(ip_deny=["127.0.0.0/8"])) as gw:
        client = await RawClient.connect(gw.port)
        response = await client.request(get("/echo/x"))
        assert_error(response, 403, "ip_blocked")
        assert response.header("connection") == b"close"
        assert await client.closed_by_peer()
        assert gw.backends[0].stats()["requests"] == 0


@uvloop_test
async def test_an_allow_list_admits_only_its_ranges() -> None:
    async with running(extra=security(ip_allow=["10.0.0.0/8", "::1/128"])) as gw:
        assert_error(await request_once(gw.port, get("/echo/x")), 403, "ip_blocked")
    async with running(extra=security(ip_allow=["127.0.0.1"], ip_deny=["10.0.0.0/8"])) as gw:
        assert (await request_once(gw.port, get("/echo/x"))).status == 200
    # deny wins over allow
    async with running(extra=security(ip_allow=["127.0.0.0/8"], ip_deny=["127.0.0.1"])) as gw:
        assert_error(await request_once(gw.port, get("/echo/x")), 403, "ip_blocked")


@uvloop_test
async def test_a_trusted_proxys_requests_are_decided_for_the_client_it_names() -> None:
    rules = security(trusted_proxies=["127.0.0.1/32"], ip_deny=["203.0.113.0/24"])
    async with running(extra=rules) as gw:
        client = await RawClient.connect(gw.port)
        refused = await client.request(get("/echo/a", headers={"X-Forwarded-For": "203.0.113.5"}))
        assert_error(refused, 403, "ip_blocked")
        assert refused.header("connection") != b"close"  # the proxy's connection stays usable
        served = await client.request(
            get("/echo/b", headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.7"})
        )
        assert served.status == 200
        # the right-most untrusted hop is the client; the chain goes on with the proxy
        assert forwarded_for(served) == "203.0.113.9, 198.51.100.7, 127.0.0.1"
        plain = await client.request(get("/echo/c"))  # the proxy's own request
        assert plain.status == 200 and forwarded_for(plain) == "127.0.0.1"
        await client.close()
        assert gw.backends[0].stats()["requests"] == 2


@uvloop_test
async def test_an_untrusted_peers_forwarded_for_is_never_believed() -> None:
    async with running(extra=security(ip_deny=["203.0.113.0/24"])) as gw:
        response = await request_once(
            gw.port, get("/echo/x", headers={"X-Forwarded-For": "10.9.9.9"})
        )
        assert response.status == 200
        assert forwarded_for(response) == "127.0.0.1"  # the client's claim was dropped
