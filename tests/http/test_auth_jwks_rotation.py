"""Key rotation through a running gateway: ``jwks_url`` served by a real local HTTP server.

The issuer's JWKS goes old → old+new → new. Tokens signed with the old key work until the
old key leaves the document, tokens signed with the new key work as soon as the gateway has
fetched a document that has it, and no token valid under the document being served fails in
between. When the old key leaves, a cached old token stops working at once (a key change
empties the verified-token cache).
"""

from __future__ import annotations

import time
from typing import Any

from fastgw.keys import generate_private_key, jwks_document
from fastgw.tokens import mint_token
from tests.support.client import RawClient, get
from tests.support.gateway import ECHO_ROUTES, GENEROUS_LIMITS, eventually, running, uvloop_test
from tests.support.jwks_server import JwksServer

PRIVATE = "/echo/private/x"
REFRESH = "200ms"


def jwks(*entries: tuple[Any, str]) -> dict[str, Any]:
    keys: list[Any] = []
    for key, kid in entries:
        keys += jwks_document(key.public_key(), "ES256", kid)["keys"]  # type: ignore[operator]
    return {"keys": keys}


def jwks_url_config(url: str) -> dict[str, Any]:
    """Routes with auth, ES256 keys from ``url``, refreshed every ``REFRESH``."""
    jwt = {"jwks_url": url, "algorithm": "ES256", "refresh_interval": REFRESH}
    return {
        "gateway": {"authentication": {"jwt": jwt}},
        "routes": ECHO_ROUTES,
        "rate_limits": GENEROUS_LIMITS,
    }


@uvloop_test
async def test_rotation_old_then_both_then_new_never_fails_a_valid_token() -> None:
    old, new = generate_private_key("ES256"), generate_private_key("ES256")
    old_token = mint_token(old, customer_id="acme", kid="old", ttl_s=600.0)
    new_token = mint_token(new, customer_id="acme", kid="new", ttl_s=600.0)
    with JwksServer(jwks((old, "old"))) as server:
        async with running(extra=jwks_url_config(server.url)) as gw:
            client = await RawClient.connect(gw.port)
            try:
                counts = gw.gateway.context.plan.auth.counts

                async def status(token: str) -> int:
                    headers = {"Authorization": f"Bearer {token}"}
                    reply = await client.request(get(PRIVATE, headers=headers))
                    return reply.status

                assert await status(old_token) == 200  # fetched when the worker started
                assert await status(new_token) == 401  # unknown kid: refused, refetch requested

                server.document = jwks((old, "old"), (new, "new"))
                fetched = server.requests
                await eventually(lambda: server.requests > fetched + 1, 5.0)
                # Rotation window: both keys published, both tokens good, every time.
                for _ in range(20):
                    assert await status(old_token) == 200
                    assert await status(new_token) == 200

                cached_before = counts.cached
                assert await status(old_token) == 200
                assert counts.cached == cached_before + 1  # the old token is in the cache
                server.document = jwks((new, "new"))
                started = time.monotonic()
                while await status(old_token) == 200:  # until the gateway has the new document
                    assert time.monotonic() - started < 5.0, "old key never withdrawn"
                assert await status(new_token) == 200
                assert await status(old_token) == 401  # cache emptied with the key change
            finally:
                await client.close()


@uvloop_test
async def test_ready_waits_for_the_first_keys() -> None:
    key = generate_private_key("ES256")
    with JwksServer(jwks((key, "k")), listening=False) as server:  # the issuer is down
        async with running(extra=jwks_url_config(server.url)) as gw:
            client = await RawClient.connect(gw.port)
            try:
                reply = await client.request(get("/ready"))
                assert reply.status == 503  # no key: every token would be refused
                assert reply.json() == {"ready": False, "dependencies": ["metald", "jwt_keys"]}
                server.listen()
                keys = gw.gateway.context.plan.auth.keys
                assert keys is not None
                await eventually(lambda: len(keys.ring) > 0, 10.0)
                reply = await client.request(get("/ready"))
                assert reply.status == 200
                assert reply.json() == {"ready": True, "dependencies": ["metald", "jwt_keys"]}
            finally:
                await client.close()
