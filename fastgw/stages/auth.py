"""Authentication: the request's token becomes ``ex.customer``, or the request gets a 401.

The stage decides in this order, cheapest first: read the token from the configured sources
(none: ``missing``; present but malformed: ``invalid``) → a development token when they are
enabled (``dev_customer_<id>``: that customer, every permission, the dev tier) → the
verified-token cache (``cached``; a revoked token is refused on a hit too) → full verification
(``ok``, or ``invalid``/``expired``). Every refusal is the same pre-encoded 401 with
``WWW-Authenticate: Bearer error="invalid_token"`` and the connection stays usable. A cache
hit awaits nothing and allocates only what reading the token and the clock take.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from fastgw.auth.context import CustomerContext, development_context
from fastgw.auth.errors import TokenError
from fastgw.limits import CUSTOMER_ID_BYTES, MAX_DEV_CONTEXTS
from fastgw.pipeline import CONTINUE, RESPOND

if TYPE_CHECKING:
    from fastgw.auth.cache import TokenCache
    from fastgw.auth.revocation import RevocationList
    from fastgw.auth.sources import TokenReader
    from fastgw.auth.verifier import TokenVerifier
    from fastgw.exchange import Exchange
    from fastgw.replies import ReplyTable



class Revocations(Protocol):
    """What the stage needs from the revocation mirror (``revocation.RevocationPoller``)."""

    revoked: RevocationList


class AuthCounts:
    """``fastgw_auth_total`` by result, for this worker (the metrics issue exports them)."""

    __slots__ = ("cached", "dev", "expired", "forbidden", "invalid", "missing", "ok")

    def __init__(self) -> None:
        self.ok = 0
        self.cached = 0
        self.dev = 0
        self.missing = 0
        self.invalid = 0
        self.expired = 0
        self.forbidden = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class Authenticate:
    __slots__ = (
        "_cache",
        "_clock",
        "_dev",
        "_dev_prefix",
        "_read",
        "_replies",
        "_revocations",
        "_verifier",
        "counts",
    )

    def __init__(
        self,
        read_token: TokenReader,
        dev_prefix: bytes | None,
        *,
        cache: TokenCache,
        verifier: TokenVerifier | None,
        revocations: Revocations | None = None,
        replies: ReplyTable,
        counts: AuthCounts,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._read = read_token
        self._dev_prefix = dev_prefix
        self._dev: dict[bytes, CustomerContext] = {}
        self._cache = cache
        self._verifier = verifier
        self._revocations = revocations
        self._replies = replies
        self.counts = counts
        self._clock = clock

    # HOT PATH
    def on_request(self, ex: Exchange) -> int:
        head = ex.head
        assert head is not None
        try:
            token = self._read(head, ex.query)
        except TokenError:
            return self._refuse(ex, "invalid")
        if token is None:
            return self._refuse(ex, "missing")
        prefix = self._dev_prefix
        if prefix is not None and token.startswith(prefix):
            return self._development(ex, token, prefix)
        context = self._cache.get(token, self._clock())
        if context is None:
            return self._verify(ex, token)
        if self._is_revoked(context):
            return self._refuse(ex, "invalid")
        self.counts.cached += 1
        ex.customer = context
        return CONTINUE

    def _verify(self, ex: Exchange, token: bytes) -> int:
        verifier = self._verifier
        if verifier is None:  # no key source and no HS secret: only dev tokens could pass
            return self._refuse(ex, "invalid")
        try:
            context = verifier.verify(token)
        except TokenError as exc:
            return self._refuse(ex, exc.result)
        if self._is_revoked(context):
            return self._refuse(ex, "invalid")  # not cached: a hit would check again anyway
        self._cache.put(token, context)
        self.counts.ok += 1
        ex.customer = context
        return CONTINUE

    def _is_revoked(self, context: CustomerContext) -> bool:
        """Whether the revocation list (hits and misses alike) names this token or customer."""
        revocations = self._revocations
        if revocations is None:
            return False
        listed = revocations.revoked  # the poller replaces it whole: read it once
        return not listed.empty and listed.revoked(context.jti, context.customer_id, context.iat)

    def _development(self, ex: Exchange, token: bytes, prefix: bytes) -> int:
        context = self._dev.get(token)
        if context is None:
            customer = token[len(prefix) :]
            if CUSTOMER_ID_BYTES.match(customer) is None:
                return self._refuse(ex, "invalid")
            context = development_context(customer)
            if len(self._dev) < MAX_DEV_CONTEXTS:
                self._dev[token] = context
        self.counts.dev += 1
        ex.customer = context
        return CONTINUE

    def _refuse(self, ex: Exchange, result: str) -> int:
        counts = self.counts
        setattr(counts, result, getattr(counts, result) + 1)
        ex.reply = self._replies.unauthorized
        return RESPOND
