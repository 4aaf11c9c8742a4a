"""The auth stage's own decisions, on real parts (kernel head, token reader, cache, verifier):
revocation is checked on a cache miss and on a hit, a revoked token is never cached, and the
counters say which way each request went."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import jwt

from fastgw._speedups import scan_request_head
from fastgw.auth.cache import TokenCache
from fastgw.auth.keyring import ring_from_secret
from fastgw.auth.revocation import RevocationList
from fastgw.auth.sources import token_reader
from fastgw.auth.verifier import TokenVerifier
from fastgw.config.gateway import JwtConfig
from fastgw.pipeline import CONTINUE, RESPOND
from fastgw.replies import ReplyTable
from fastgw.stages.auth import AuthCounts, Authenticate

SECRET = b"stage-test-secret-stage-test-secret!!!!!"


class Keys:
    ring = ring_from_secret(SECRET, ("HS256",))

    def unknown_kid(self, kid: str | None) -> None:
        raise AssertionError("no kid lookups expected")


class Mirror:
    """Stands in for RevocationPoller: its ``revoked`` list is replaced whole, as the poller's."""

    def __init__(self) -> None:
        self.revoked = RevocationList()


def token(**claims: Any) -> bytes:
    body = {"customer_id": "acme", "exp": int(time.time()) + 600, "iat": int(time.time()) - 5}
    return jwt.encode({**body, **claims}, SECRET, algorithm="HS256").encode()


def exchange(raw: bytes) -> SimpleNamespace:
    head = scan_request_head([b"Host", b"gw", b"Authorization", b"Bearer " + raw], frozenset())
    return SimpleNamespace(head=head, query=b"", customer=None, reply=None)


def stage(mirror: Mirror) -> tuple[Authenticate, TokenCache, AuthCounts]:
    cache, counts = TokenCache(100), AuthCounts()
    config = JwtConfig(algorithms=("HS256",))
    verifier = TokenVerifier(config, Keys(), frozenset({"free"}), "free")
    auth = Authenticate(
        token_reader(("header",), 8192), None, cache=cache, verifier=verifier,
        revocations=mirror, replies=ReplyTable(b""), counts=counts,
    )  # fmt: skip
    return auth, cache, counts


def test_revocation_is_checked_on_a_miss_and_a_revoked_token_is_not_cached() -> None:
    mirror = Mirror()
    auth, cache, counts = stage(mirror)
    mirror.revoked = RevocationList(jtis={"stolen": int(time.time()) + 600})
    ex = exchange(token(jti="stolen"))
    assert auth.on_request(ex) == RESPOND  # type: ignore[arg-type]
    assert ex.customer is None and len(cache) == 0
    assert counts.as_dict()["invalid"] == 1


def test_revocation_is_checked_on_a_hit() -> None:
    mirror = Mirror()
    auth, cache, counts = stage(mirror)
    raw, other = token(jti="j1"), token(jti="j2")
    for value in (raw, other, raw):
        assert auth.on_request(exchange(value)) == CONTINUE  # type: ignore[arg-type]
    assert (counts.ok, counts.cached, len(cache)) == (2, 1, 2)
    mirror.revoked = RevocationList(customers={b"acme": time.time()})  # both issued before
    for value in (raw, other):
        assert auth.on_request(exchange(value)) == RESPOND  # type: ignore[arg-type]
    assert (counts.cached, counts.invalid) == (1, 2)
    mirror.revoked = RevocationList()  # the revocation was forgotten: the cache serves again
    assert auth.on_request(exchange(raw)) == CONTINUE  # type: ignore[arg-type]
    assert counts.cached == 2
