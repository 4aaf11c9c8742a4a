"""The verified-token cache: LRU order and bound, expiry at ``valid_until`` (injected ``now``),
the check bytes that make a digest collision a miss, clear, ``cache_size: 0``; and the
verifier's ``valid_until`` = min(now + cache_ttl, exp + leeway), so a cached token never
outlives its ``exp``.
"""

from __future__ import annotations

import functools

import pytest

from fastgw.auth.cache import CHECK_BYTES, TokenCache
from fastgw.auth.context import CustomerContext
from fastgw.auth.errors import EXPIRED, TokenError
from fastgw.auth.keyring import ring_from_pem
from fastgw.auth.verifier import TokenVerifier
from fastgw.config.gateway import JwtConfig
from tests.support import jwt_attacks as ja

NOW = 1_750_000_000.0


def ctx(customer: str, valid_until: float = NOW + 300, jti: str | None = None) -> CustomerContext:
    return CustomerContext(
        customer.encode(), b"free", frozenset(), jti=jti, valid_until=valid_until
    )


def tok(n: int) -> bytes:
    return b"header.payload.signature-%08d" % n


def test_hit_returns_the_same_context() -> None:
    cache = TokenCache(10)
    context = ctx("a")
    cache.put(tok(1), context)
    assert cache.get(tok(1), NOW) is context
    assert cache.get(tok(2), NOW) is None
    assert len(cache) == 1


def test_bound_evicts_least_recently_used_first() -> None:
    cache = TokenCache(3)
    for n in (1, 2, 3):
        cache.put(tok(n), ctx(str(n)))
    assert cache.get(tok(1), NOW) is not None  # 1 is now the most recent; 2 is the oldest
    cache.put(tok(4), ctx("4"))
    assert len(cache) == 3
    assert cache.get(tok(2), NOW) is None
    cache.put(tok(5), ctx("5"))  # then 3 goes
    assert cache.get(tok(3), NOW) is None
    assert [cache.get(tok(n), NOW) is not None for n in (1, 4, 5)] == [True, True, True]
    assert len(cache) == 3


def test_bound_holds_under_many_puts() -> None:
    cache = TokenCache(100)
    for n in range(1000):
        cache.put(tok(n), ctx(str(n)))
        assert len(cache) <= 100
    assert all(cache.get(tok(n), NOW) is not None for n in range(900, 1000))
    assert all(cache.get(tok(n), NOW) is None for n in range(900))


def test_entry_dropped_at_valid_until() -> None:
    cache = TokenCache(10)
    cache.put(tok(1), ctx("a", valid_until=NOW + 10))
    assert cache.get(tok(1), NOW + 9.999) is not None
    assert cache.get(tok(1), NOW + 10) is None  # at valid_until, not after
    assert len(cache) == 0  # dropped, not kept to be found again
    assert cache.get(tok(1), NOW) is None


def test_digest_collision_is_a_miss() -> None:
    """Two tokens with one digest: the other token's entry must not answer."""
    cache = TokenCache(10)
    victim = b"eyJh.eyJj.victim-signature-0123456789abcdef"
    attacker = b"eyJh.eyJj.attacker-signature-0123456789xyz"
    cache.put(victim, ctx("victim"))
    # Simulate hash(attacker) == hash(victim): move the victim's entry under the other digest.
    entries = cache._entries
    entries[hash(attacker)] = entries.pop(hash(victim))
    assert cache.get(attacker, NOW) is None


def test_collision_with_same_length_but_other_tail_is_a_miss() -> None:
    cache = TokenCache(10)
    token = tok(1)
    cache.put(token, ctx("a"))
    length, check, context = cache._entries[hash(token)]
    assert (length, check) == (len(token), token[-CHECK_BYTES:])
    cache._entries[hash(token)] = (length, b"x" * CHECK_BYTES, context)
    assert cache.get(token, NOW) is None
    cache._entries[hash(token)] = (length + 1, check, context)
    assert cache.get(token, NOW) is None


def test_clear() -> None:
    cache = TokenCache(10)
    for n in range(5):
        cache.put(tok(n), ctx(str(n)))
    cache.clear()
    assert len(cache) == 0
    assert cache.get(tok(0), NOW) is None


def test_cache_size_zero_disables_it() -> None:
    cache = TokenCache(0)
    cache.put(tok(1), ctx("a"))
    assert len(cache) == 0
    assert cache.get(tok(1), NOW) is None


# ----------------------------------------------------- valid_until set by the verifier


class StubKeys:
    def __init__(self, m: ja.Material) -> None:
        self.ring = ring_from_pem(m.public_pem, ["RS256"])

    def unknown_kid(self, kid: str | None) -> None:
        raise AssertionError("a PEM ring answers every kid")


@functools.cache
def material() -> ja.Material:
    return ja.make_material(int(NOW))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def verifier(clock: Clock, cache_ttl_s: float = 300.0, leeway_s: float = 30.0) -> TokenVerifier:
    config = JwtConfig(
        issuer=ja.ISSUER, audience=(ja.AUDIENCE,), leeway_s=leeway_s, cache_ttl_s=cache_ttl_s
    )
    return TokenVerifier(config, StubKeys(material()), ja.TIERS, ja.DEFAULT_TIER, clock=clock)


@pytest.mark.parametrize(
    ("exp_in_s", "ttl_s", "leeway_s", "valid_for_s"),
    [
        (100, 300, 30, 130),  # exp + leeway comes first
        (10_000, 300, 30, 300),  # the cache ttl comes first
        (100, 300, 0, 100),
        (270, 300, 30, 300),  # equal: either
        (100, 0, 30, 0),  # cache_ttl 0: never served from the cache
    ],
)
def test_valid_until_is_min_of_ttl_and_exp_plus_leeway(
    exp_in_s: int, ttl_s: float, leeway_s: float, valid_for_s: float
) -> None:
    m = material()
    clock = Clock(NOW + 0.25)
    context = verifier(clock, ttl_s, leeway_s).verify(m.valid(exp=int(NOW) + exp_in_s))
    expected = min(clock.now + ttl_s, NOW + exp_in_s + leeway_s)
    assert context.valid_until == expected
    assert context.valid_until == pytest.approx(NOW + 0.25 + valid_for_s, abs=0.25)


def test_cached_token_expires_with_its_exp() -> None:
    """Cache and verifier agree at the edge: the entry goes exactly when the token expires."""
    m = material()
    clock = Clock(NOW)
    v = verifier(clock, cache_ttl_s=300, leeway_s=30)
    token = m.valid(exp=int(NOW) + 60)
    cache = TokenCache(10)
    cache.put(token, v.verify(token))
    clock.now = NOW + 60 + 30 - 0.001
    assert cache.get(token, clock.now) is not None
    v.verify(token)  # still valid for the verifier too
    clock.now = NOW + 60 + 30
    assert cache.get(token, clock.now) is None
    with pytest.raises(TokenError) as info:
        v.verify(token)
    assert info.value.result == EXPIRED
