"""Authentication end to end: real client sockets → in-process gateway → real mock metald.

The gateway trusts one RS256 public key (``public_key_file``, written to tmp_path). Every token
of the attack catalogue (tests/support/jwt_attacks.py) is sent on one keep-alive connection and
must get the contract's 401 (JSON body, ``WWW-Authenticate``), counted under the catalogue's
result, with the connection still serving a valid request afterwards. Valid tokens reach the
backend as X-Customer-* headers (the mock's /echo route reports what arrived), are cached, and
stop working once their ``exp`` passes: the one test here where real time passes (~2 s).
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support import jwt_attacks as ja
from tests.support.client import RawClient, Response, assert_error, get
from tests.support.gateway import ECHO_ROUTES, Running, eventually, running, uvloop_test

PRIVATE = "/echo/private/x"
AUTH_ROUTES: list[dict[str, Any]] = [
    *ECHO_ROUTES,
    {"endpoint": "Create", "path_prefix": "/echo/private/create", "permissions": ["vm:create"]},
    {"endpoint": "Beta", "path_prefix": "/echo/private/beta", "features": ["beta"]},
    {
        "endpoint": "Both",
        "path_prefix": "/echo/private/both",
        "permissions": ["vm:create", "vm:delete"],
        "features": ["beta"],
    },
]


@functools.cache
def material() -> ja.Material:
    # Real time: the gateway reads the wall clock. Valid tokens live an hour from here.
    return ja.make_material(int(time.time()))


def auth_config(
    pem: Path,
    *,
    profile: ja.Profile = ja.PROFILES["default"],
    leeway_s: int | None = None,
    dev: bool = False,
    sources: list[str] | None = None,
) -> dict[str, Any]:
    jwt: dict[str, Any] = {
        "public_key_file": str(pem),
        "algorithm": "RS256",
        "issuer": profile.issuer,
        "audience": None if profile.audience is None else list(profile.audience),
        "leeway": f"{profile.leeway_s if leeway_s is None else leeway_s}s",
        "max_token_size": ja.MAX_TOKEN_BYTES,
    }
    authentication: dict[str, Any] = {"jwt": jwt, "development": {"enabled": dev}}
    if sources is not None:
        authentication["token_sources"] = sources
    return {"gateway": {"authentication": authentication}, "routes": AUTH_ROUTES}


def write_pem(tmp_path: Path) -> Path:
    path = tmp_path / "public.pem"
    path.write_bytes(material().public_pem)
    return path


def bearer(token: bytes | str) -> dict[str, str]:
    text = token.decode("latin-1") if isinstance(token, bytes) else token
    return {"Authorization": f"Bearer {text}"}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before[name] for name in after if after[name] != before[name]}


def assert_unauthorized(response: Response) -> None:
    assert_error(response, 401, "unauthorized")
    assert response.header("www-authenticate") == b'Bearer error="invalid_token"'


def echoed_headers(response: Response) -> list[tuple[str, str]]:
    echo = orjson.loads(response.body)
    return [(name.lower(), value) for name, value in echo["headers"]]


def customer_headers(response: Response) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for name, value in echoed_headers(response):
        if name.startswith("x-customer-"):
            seen.setdefault(name, []).append(value)
    return seen


class Session:
    """A running gateway and one keep-alive client connection to it."""

    def __init__(self, gw: Running, client: RawClient) -> None:
        self.gw = gw
        self.client = client

    def counts(self) -> dict[str, int]:
        result: dict[str, int] = self.gw.gateway.context.plan.auth.counts.as_dict()
        return result

    async def expect(
        self, path: str, headers: dict[str, str], status: int, counted: dict[str, int]
    ) -> Response:
        """GET ``path``; check the status, the error body, and which auth counters moved."""
        before = self.counts()
        response = await self.client.request(get(path, headers=headers))
        assert response.status == status, (response.status, response.body)
        if status == 401:
            assert_unauthorized(response)
        elif status == 403:
            assert_error(response, 403, "forbidden")
        assert delta(before, self.counts()) == counted
        return response


@asynccontextmanager
async def serving(tmp_path: Path, **options: Any) -> AsyncIterator[Session]:
    """A gateway configured by ``auth_config(**options)`` and a client, both closed after."""
    async with running(extra=auth_config(write_pem(tmp_path), **options)) as gw:
        client = await RawClient.connect(gw.port)
        try:
            yield Session(gw, client)
        finally:
            await client.close()


# -------------------------------------------------------------------------- the catalogue


@pytest.mark.parametrize("profile", sorted(ja.PROFILES))
@uvloop_test
async def test_every_catalogue_token_is_401_on_one_connection(tmp_path: Path, profile: str) -> None:
    m = material()
    attacks = ja.entries(profile=profile)
    assert attacks
    let_through: list[str] = []
    async with serving(tmp_path, profile=ja.PROFILES[profile]) as s:
        for attack in attacks:
            before = s.counts()
            response = await s.client.request(get(PRIVATE, headers=bearer(attack.token(m))))
            if response.status != 401:
                let_through.append(f"{attack.name}: {response.status}")
                continue
            assert_unauthorized(response)
            assert delta(before, s.counts()) == {attack.result: 1}, attack.name
        # the same connection still serves a valid request
        aud = ja.DROP if ja.PROFILES[profile].audience is None else ja.AUDIENCE
        valid = m.valid(aud=aud, jti="jti-after-the-catalogue")
        await s.expect(PRIVATE, bearer(valid), 200, {"ok": 1})
        assert not s.client.eof
    assert not let_through, f"not refused with 401: {let_through}"


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer a b",
        'Bearer "quoted"',
        "Bearer tok,other",
        "Bearer tok;x",
        "Bearer %41%42",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Token abc.def.ghi",
        "Bearer abc.def.ghi=x",
        "Bearer é",
    ],
)
@uvloop_test
async def test_authorization_values_that_are_no_b64token_are_401(
    tmp_path: Path, authorization: str
) -> None:
    async with serving(tmp_path) as s:
        await s.expect(PRIVATE, {"Authorization": authorization}, 401, {"invalid": 1})
        await s.expect(PRIVATE, bearer(material().valid()), 200, {"ok": 1})


# ---------------------------------------------------------------------- valid tokens


@uvloop_test
async def test_valid_token_reaches_backend_as_customer_headers(tmp_path: Path) -> None:
    token = material().valid(permissions=["vm:create", "vm:read", "vm:create"])
    forged = {
        **bearer(token),
        "X-Customer-ID": "victim",
        "X-Customer-Tier": "enterprise",
        "x-customer-permissions": "*",
        "X-Customer-Extra": "1",
    }
    async with serving(tmp_path) as s:
        first = await s.expect(PRIVATE, forged, 200, {"ok": 1})
        assert customer_headers(first) == {
            "x-customer-id": [ja.CUSTOMER],
            "x-customer-tier": ["pro"],
            "x-customer-permissions": ["vm:create,vm:read"],
        }
        second = await s.expect(PRIVATE, forged, 200, {"cached": 1})
        assert customer_headers(second) == customer_headers(first)
        # a route without auth forwards no customer identity, forged or not
        public = await s.expect("/echo/open", forged, 200, {})
        assert customer_headers(public) == {}


@uvloop_test
async def test_tier_default_and_numeric_customer_id(tmp_path: Path) -> None:
    m = material()
    async with serving(tmp_path) as s:
        for tier in ("platinum", ja.DROP):
            token = m.valid(customer_id=9001, permissions=ja.DROP, tier=tier)
            response = await s.expect(PRIVATE, bearer(token), 200, {"ok": 1})
            assert customer_headers(response) == {
                "x-customer-id": ["9001"],
                "x-customer-tier": [ja.DEFAULT_TIER],
                "x-customer-permissions": [""],
            }


@uvloop_test
async def test_missing_token_is_401_missing(tmp_path: Path) -> None:
    async with serving(tmp_path) as s:
        await s.expect(PRIVATE, {}, 401, {"missing": 1})
        # the default source is the header only: a query token is not looked at
        query = f"{PRIVATE}?access_token={material().valid().decode()}"
        await s.expect(query, {}, 401, {"missing": 1})


@uvloop_test
async def test_cached_token_is_refused_once_exp_passes(tmp_path: Path) -> None:
    m = material()
    async with serving(tmp_path, leeway_s=0) as s:
        exp = int(time.time()) + 2
        token = bearer(m.valid(exp=exp))
        await s.expect(PRIVATE, token, 200, {"ok": 1})
        await s.expect(PRIVATE, token, 200, {"cached": 1})
        await eventually(lambda: time.time() >= exp, timeout_s=5.0)  # the clock, not readiness
        await s.expect(PRIVATE, token, 401, {"expired": 1})
        await s.expect(PRIVATE, token, 401, {"expired": 1})  # no refusal is cached either


# ------------------------------------------------------------- permissions and features

CREATE = "/echo/private/create/vm"
BETA = "/echo/private/beta/x"
BOTH = "/echo/private/both/x"


@uvloop_test
async def test_route_permissions_and_features(tmp_path: Path) -> None:
    m = material()
    cases = [
        (CREATE, m.valid(permissions=["vm:read"]), 403),
        (CREATE, m.valid(permissions=ja.DROP), 403),
        (CREATE, m.valid(permissions=["vm:create"]), 200),
        (CREATE, m.valid(permissions="vm:read vm:create"), 200),
        (BETA, m.valid(features=["gamma"]), 403),
        (BETA, m.valid(features={"beta": False}), 403),
        (BETA, m.valid(features=ja.DROP), 403),
        (BETA, m.valid(features={"beta": True}), 200),
        (BETA, m.valid(features=["beta", "gamma"]), 200),
        (BOTH, m.valid(permissions=["vm:create", "vm:delete"]), 403),
        (BOTH, m.valid(permissions=["vm:create"], features=["beta"]), 403),
        (BOTH, m.valid(permissions=["vm:create", "vm:delete"], features=["beta"]), 200),
    ]
    async with serving(tmp_path) as s:
        for path, token, status in cases:
            counted = {"ok": 1} if status == 200 else {"ok": 1, "forbidden": 1}
            await s.expect(path, bearer(token), status, counted)
        # a cached token is checked against each route again
        token = bearer(m.valid(permissions=["vm:read"], jti="jti-cached"))
        await s.expect(PRIVATE, token, 200, {"ok": 1})
        await s.expect(CREATE, token, 403, {"cached": 1, "forbidden": 1})


# -------------------------------------------------------------------- development tokens


@uvloop_test
async def test_dev_tokens_when_enabled(tmp_path: Path) -> None:
    dev = bearer("dev_customer_123")
    async with serving(tmp_path, dev=True) as s:
        response = await s.expect(PRIVATE, dev, 200, {"dev": 1})
        assert customer_headers(response) == {
            "x-customer-id": ["123"],
            "x-customer-tier": ["dev"],
            "x-customer-permissions": ["*"],
        }
        for path in (CREATE, BETA, BOTH):  # every permission and feature
            await s.expect(path, dev, 200, {"dev": 1})
        for bad in ("dev_customer_", "dev_customer_a~b"):
            await s.expect(PRIVATE, bearer(bad), 401, {"invalid": 1})
        # JWTs still work beside them
        await s.expect(PRIVATE, bearer(material().valid()), 200, {"ok": 1})


@uvloop_test
async def test_dev_tokens_refused_when_disabled(tmp_path: Path) -> None:
    dev = bearer("dev_customer_123")
    async with serving(tmp_path, dev=False) as s:
        await s.expect(PRIVATE, dev, 401, {"invalid": 1})
        await s.expect(PRIVATE, dev, 401, {"invalid": 1})


# ------------------------------------------------------------------------ token sources


@uvloop_test
async def test_query_and_cookie_sources(tmp_path: Path) -> None:
    m = material()
    token = m.valid().decode()
    other = m.valid(customer_id="other").decode()
    cookie = {"Cookie": f"theme=dark; session={other}"}
    query = f"{PRIVATE}?access_token={token}"
    sources = ["header", "query:access_token", "cookie:session"]
    async with serving(tmp_path, sources=sources) as s:
        via_query = await s.expect(f"{PRIVATE}?a=1&access_token={token}", {}, 200, {"ok": 1})
        assert customer_headers(via_query)["x-customer-id"] == [ja.CUSTOMER]
        via_cookie = await s.expect(PRIVATE, cookie, 200, {"ok": 1})
        assert customer_headers(via_cookie)["x-customer-id"] == ["other"]
        # a token in two places is refused, valid or not: the backend would see both
        await s.expect(query, bearer(other), 401, {"invalid": 1})
        await s.expect(query, cookie, 401, {"invalid": 1})
        await s.expect(query, bearer("a b"), 401, {"invalid": 1})
        await s.expect(f"{PRIVATE}?access_token=", cookie, 401, {"invalid": 1})
        # present but malformed is refused, never skipped
        await s.expect(f"{PRIVATE}?access_token=a%20b", {}, 401, {"invalid": 1})
        await s.expect(PRIVATE, {"Cookie": "session=a b"}, 401, {"invalid": 1})
        # ambiguity is refused
        await s.expect(f"{query}&access_token={token}", {}, 401, {"invalid": 1})
        await s.expect(f"{PRIVATE}?acc%65ss_token={token}", {}, 401, {"invalid": 1})
        await s.expect(PRIVATE, {"Cookie": f"session={token}; session={token}"}, 401,
                       {"invalid": 1})  # fmt: skip
        # a present, well-formed but bad token is invalid wherever it came from
        await s.expect(f"{PRIVATE}?access_token=a.b.c", {}, 401, {"invalid": 1})
        await s.expect(PRIVATE, {"Cookie": "session=a.b.c"}, 401, {"invalid": 1})
        await s.expect(PRIVATE, {"Cookie": "theme=dark"}, 401, {"missing": 1})
