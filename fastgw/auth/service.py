"""One worker's authentication, assembled from the configuration: token sources, keys (with
their background refresh), the revocation mirror, the verified-token cache, the verifier and
the stage that uses them; plus the start and stop of the background parts.

The plan builds one per worker and shares its stage between routes. The master builds one too
(``check_plan``), which loads the key files, so a bad key fails before any worker forks;
nothing here touches the network before ``start()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastgw.auth.cache import TokenCache
from fastgw.auth.refresh import KeySource
from fastgw.auth.revocation import RevocationPoller
from fastgw.auth.sources import token_reader
from fastgw.auth.verifier import TokenVerifier
from fastgw.stages.auth import AuthCounts, Authenticate

if TYPE_CHECKING:
    from fastgw.config import Config
    from fastgw.replies import ReplyTable


class AuthService:
    __slots__ = ("cache", "counts", "keys", "revocations", "stage", "verifier")

    def __init__(self, config: Config, replies: ReplyTable) -> None:
        auth = config.gateway.authentication
        jwt = auth.jwt
        self.counts = AuthCounts()
        self.cache = TokenCache(jwt.cache_max_entries)
        has_keys = any((jwt.public_key_file, jwt.jwks_file, jwt.jwks_url, jwt.hs_secret))
        # A key change drops every cached token: a token whose key left the set must fail now.
        self.keys = KeySource(jwt, on_change=self.cache.clear) if has_keys else None
        self.revocations = (
            RevocationPoller(
                config.gateway.rate_limiting.redis, auth.revocation.poll_interval_s
            )
            if auth.revocation.enabled
            else None
        )
        self.verifier = (
            None
            if self.keys is None
            else TokenVerifier(
                jwt,
                self.keys,
                frozenset(config.rate_limits.customer_tiers),
                config.rate_limits.default_tier,
            )
        )
        dev = auth.development
        self.stage = Authenticate(
            token_reader(auth.token_sources, jwt.max_token_bytes),
            dev.token_prefix.encode("ascii") if dev.enabled else None,
            cache=self.cache,
            verifier=self.verifier,
            revocations=self.revocations,
            replies=replies,
            counts=self.counts,
        )

    async def start(self) -> None:
        if self.keys is not None:
            await self.keys.start()
        if self.revocations is not None:
            await self.revocations.start()

    async def aclose(self) -> None:
        """Stop the background parts and wait until they have (tasks done, clients closed)."""
        if self.keys is not None:
            await self.keys.aclose()
        if self.revocations is not None:
            await self.revocations.wait_stopped()
