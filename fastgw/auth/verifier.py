"""The uncached path: a token becomes a customer context, or a TokenError.

Order, and why: split the compact JWS (shape, strict base64url, header JSON) → find *our* key
by ``kid`` (an unknown kid asks the key source for one rate-limited refetch, and this request
is refused: keys are never fetched on a request's path) → the token's ``alg`` must be that
key's one algorithm (RFC 8725 §3.1: the algorithm is ours, never the token's; HS/RS confusion
and ``none`` die here) → signature → only now the payload JSON → registered claims → customer
claims. Revocation is the auth stage's check, made on cache hits and misses alike. Every
failure, whatever raised it, is a TokenError: a 401, never a 5xx.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

from fastgw.auth import jws
from fastgw.auth.claims import ClaimRules
from fastgw.auth.context import CustomerContext, context_from_claims
from fastgw.auth.errors import TokenError

if TYPE_CHECKING:
    from fastgw.auth.keyring import KeyRing
    from fastgw.config.gateway import ClaimNamesConfig, JwtConfig

log = logging.getLogger("fastgw.auth")

UNEXPECTED_LOG_INTERVAL_S: Final = 10.0
"""At most one traceback per interval for tokens that broke something no check foresaw: the
token is the client's to choose, so an unbounded log would be the client's to fill."""


class Keys(Protocol):
    """What the verifier needs from a key source (``refresh.KeySource``)."""

    ring: KeyRing

    def unknown_kid(self, kid: str | None) -> None: ...


class TokenVerifier:
    """Full verification of one token; built once per worker from the JWT configuration."""

    __slots__ = (
        "_cache_ttl_s",
        "_clock",
        "_default_tier",
        "_headers",
        "_keys",
        "_logged_at",
        "_names",
        "_rules",
        "_tiers",
    )

    def __init__(
        self,
        jwt: JwtConfig,
        keys: Keys,
        tiers: frozenset[str],
        default_tier: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._rules = ClaimRules(
            jwt.effective_required_claims, jwt.issuer, jwt.audience, jwt.leeway_s
        )
        self._names: ClaimNamesConfig = jwt.claims
        self._tiers = tiers
        self._default_tier = default_tier
        self._cache_ttl_s = jwt.cache_ttl_s
        self._clock = clock
        self._headers: dict[bytes, jws.Header] = {}
        self._logged_at = -UNEXPECTED_LOG_INTERVAL_S

    def claims(self, token: bytes) -> dict[str, Any]:
        """The verified claims of ``token`` (signature and registered claims checked)."""
        return self._verified(token, self._clock())

    def verify(self, token: bytes) -> CustomerContext:
        """The customer context of ``token``; TokenError for any reason not to trust it."""
        now = self._clock()
        claims = self._verified(token, now)
        # The context outlives neither the token nor cache_ttl (it is what the cache keeps).
        valid_until = now + self._cache_ttl_s
        exp = claims.get("exp")
        if exp is not None and exp + self._rules.leeway_s < valid_until:
            valid_until = exp + self._rules.leeway_s
        try:
            context = context_from_claims(
                claims, self._names, self._tiers, self._default_tier, valid_until
            )
        except TokenError:
            raise
        except Exception:  # a claim shape no rule foresaw: refuse, and say so in the log
            self._log_unexpected("reading a verified token's claims")
            raise TokenError("unreadable claims") from None
        return context

    def _verified(self, token: bytes, now: float) -> dict[str, Any]:
        try:
            parts = jws.split(token, self._headers)
            key = self._keys.ring.find(parts.kid)
            if key is None:
                self._keys.unknown_kid(parts.kid)
                raise TokenError("no key for this kid")
            if parts.alg != key.alg:
                raise TokenError("algorithm is not the key's")
            if not key.verify(parts.signing_input, parts.signature):
                raise TokenError("bad signature")
            claims = jws.payload(parts)
            self._rules.check(claims, now)
        except TokenError:
            raise
        except Exception:  # never a 5xx for a token, whatever broke
            self._log_unexpected("verifying a token")
            raise TokenError("unverifiable token") from None
        return claims

    def _log_unexpected(self, doing: str) -> None:
        now = time.monotonic()
        if now - self._logged_at >= UNEXPECTED_LOG_INTERVAL_S:
            self._logged_at = now
            log.exception("unexpected failure %s (401; logged at most every %.0fs)",
                          doing, UNEXPECTED_LOG_INTERVAL_S)
