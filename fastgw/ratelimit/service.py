"""The rate-limit side of one plan: policy, shared table, limiter, backend, and their lifetime.

What it owns
    ``LimitService``: builds what ``rate_limits`` and ``gateway.rate_limiting`` describe, gives
    the plan one ``RateLimit`` stage per route (``stage``), starts the Redis backend's
    connections with the server (``start``) and closes everything (``aclose``/``close``).

Invariants
    * The shared table comes from the master (``table_fd``, inherited over fork) so every worker
      of the instance decides against the same buckets; without one (a gateway in one process,
      ``check_plan``) the service makes and owns a table of its own.
    * The memory backend and the Redis backend's ``local`` fallback use the same table, so a
      Redis outage falls back to limits that are exact for this instance.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from fastgw.limits import REDIS_LIMITS_START_WAIT_S
from fastgw.ratelimit.limiter import RateLimiter
from fastgw.ratelimit.policy import LimitPolicy
from fastgw.ratelimit.redis_backend import RedisLimits
from fastgw.ratelimit.script import CUSTOMER, GLOBAL
from fastgw.ratelimit.shared import create_table_fd, open_table
from fastgw.resp import HotRedis, RespClient, RespCluster
from fastgw.stages.ratelimit import RateLimit

if TYPE_CHECKING:
    from fastgw.config import Config
    from fastgw.config.gateway import RedisConfig
    from fastgw.replies import ReplyTable
    from fastgw.stages.ratelimit import Check

__all__ = ["LimitService"]

log = logging.getLogger(__name__)



class LimitService:
    __slots__ = ("_check", "_owned_fd", "limiter", "policy", "redis", "table")

    def __init__(
        self, config: Config, replies: ReplyTable, *, workers: int, table_fd: int = -1
    ) -> None:
        settings = config.gateway.rate_limiting
        self.policy = LimitPolicy(config.rate_limits)
        self._owned_fd = -1
        if table_fd < 0:
            table_fd = self._owned_fd = create_table_fd(settings.max_keys)
        self.table = open_table(table_fd)
        self.limiter = RateLimiter(self.policy, self.table, replies, workers=workers)
        self.redis: RedisLimits | None = None
        self._check: Check = self.limiter.decide_locally
        if settings.backend == "redis":
            try:
                client = hot_client(settings.redis)
            except BaseException:
                self.close()  # no fd left behind by a config the plan refuses (a reload)
                raise
            self.redis = RedisLimits(
                client,
                self.limiter,
                on_failure=settings.on_failure,
                unavailable=replies.limits_unavailable,
                combined=not settings.redis.cluster,
            )
            self._check = self.redis.check

    @property
    def readiness(self) -> Callable[[], bool] | None:
        """What /ready asks: whether Redis is reachable, when an outage refuses requests
        (``on_failure: closed``); None when the limiter can always decide."""
        redis = self.redis
        if redis is None or redis.on_failure != "closed":
            return None
        client = redis.client
        return lambda: client.connected

    @property
    def covers_anonymous(self) -> bool:
        """Whether a route without authentication has anything to limit."""
        return self.policy.global_limits is not None or self.policy.max_concurrent is not None

    def stage(self, endpoint: str) -> RateLimit:
        return RateLimit(self.limiter, self.policy.route_limits(endpoint), self._check)

    async def start(self) -> None:
        """Connect to Redis (backend redis), loading the scripts. An unreachable Redis does not
        stop the worker: ``on_failure`` covers the requests until the client reconnects."""
        if self.redis is None:
            return
        client = self.redis.client
        if not await client.start(wait_s=REDIS_LIMITS_START_WAIT_S):
            log.warning("rate limiting: Redis is unreachable at start; on_failure applies")
            return
        for script in (CUSTOMER, GLOBAL):
            try:  # a cluster loads on its first NOSCRIPT instead; either way is correct
                await client.execute(b"SCRIPT", b"LOAD", script.source)
            except Exception as exc:
                log.info("rate limiting: SCRIPT LOAD %s: %s", script.name, exc)

    async def aclose(self) -> None:
        if self.redis is not None:
            await self.redis.client.aclose()
        self.close()

    def close(self) -> None:
        """Unmap the table and close the fd this service made (idempotent)."""
        self.table.close()
        if self._owned_fd >= 0:
            os.close(self._owned_fd)
            self._owned_fd = -1


def hot_client(config: RedisConfig) -> HotRedis:
    """The hot-path client for ``config``; it connects on ``start()``, in the worker."""
    if config.cluster:
        return RespCluster.from_address(
            config.address,
            password=config.password,
            pool_size=config.pool_size,
            timeout_s=config.timeout_s,
        )
    return RespClient.from_address(
        config.address,
        password=config.password,
        db=config.db,
        pool_size=config.pool_size,
        timeout_s=config.timeout_s,
    )
