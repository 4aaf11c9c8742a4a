"""Redis connections from a ``RedisConfig`` (``gateway.rate_limiting.redis``).

This module owns how the config's address, password, database, pool size and timeout become
redis-py arguments, for the sync client (the ``fastgw revoke`` command) and the asyncio client
(workers: the revocation poller), standalone or Redis Cluster. The rate limiter's hot path
uses ``fastgw.resp`` instead (see ``fastgw/ratelimit/service.py``). It holds
no connection itself: every caller owns the client it asks for and closes it (``close()`` /
``await aclose()``).

Choices made here, once for every caller:

- No hidden retries with back-off. redis-py's default retries a failed command up to 10 times
  with growing pauses, which turns an outage into latency on the request path and a hang in
  the CLI. One immediate retry is kept: it covers a pooled connection the server closed while
  idle; anything else is the caller's policy (``on_failure``, the poller's next tick).
- Bytes in, bytes out (``decode_responses=False``): customer ids are bytes on the hot path.
- Cluster mode has one database (0) and TCP addresses only; both are config errors here, named
  with their config path, because redis-py would only fail at the first command.
"""

from __future__ import annotations

from typing import Any, Final, TypeAlias

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from fastgw.config.gateway import RedisConfig
from fastgw.errors import ConfigError
from fastgw.redis_address import cluster_problems, parse_address

SyncClient: TypeAlias = "redis.Redis | redis.cluster.RedisCluster"
AsyncClient: TypeAlias = "redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster"

BACKGROUND_TIMEOUT_FLOOR_S: Final = 1.0
"""Smallest socket timeout for background jobs and the CLI. ``timeout_s`` (default 50 ms) is the
deadline of a limiter call on the request path, where a late answer is worse than none. A
poller or an operator's command has no request waiting: the same 50 ms there would turn a
normal slow moment (a TCP + AUTH handshake across a data centre, a fork for BGSAVE, a failover)
into spurious failures and log noise, so they pass ``min_timeout_s=BACKGROUND_TIMEOUT_FLOOR_S``."""

IMMEDIATE_RETRIES: Final = 1
"""Retries of a failed command, without pause (see the module docstring)."""


def describe(config: RedisConfig) -> str:
    """Where ``config`` points, for messages (never the password)."""
    text = str(parse_address(config.address))
    return f"{text} (cluster)" if config.cluster else text


def connection_kwargs(config: RedisConfig, *, min_timeout_s: float = 0.0) -> dict[str, Any]:
    """Keyword arguments common to every redis-py client class: address, credentials, database
    and timeouts (``max(timeout_s, min_timeout_s)`` for both connect and read)."""
    address = parse_address(config.address)
    problems = cluster_problems(config.address, config.db, config.cluster)
    if problems:  # check-config reports them first; a caller without it still gets the paths
        raise ConfigError(problems)
    timeout_s = max(config.timeout_s, min_timeout_s)
    kwargs: dict[str, Any] = {
        "password": config.password or None,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "decode_responses": False,
    }
    if address.unix_path is not None:
        kwargs["unix_socket_path"] = address.unix_path
    else:
        kwargs["host"] = address.host
        kwargs["port"] = address.port
    if not config.cluster:
        kwargs["db"] = config.db
    return kwargs


def sync_client(
    config: RedisConfig, *, min_timeout_s: float = 0.0, max_connections: int | None = None
) -> SyncClient:
    """A blocking client (CLI, tools). ``max_connections`` defaults to ``pool_size``.

    A Cluster client contacts its startup node here and may raise ``RedisClusterException``."""
    kwargs = connection_kwargs(config, min_timeout_s=min_timeout_s)
    kwargs["max_connections"] = config.pool_size if max_connections is None else max_connections
    kwargs["retry"] = Retry(NoBackoff(), IMMEDIATE_RETRIES)
    if config.cluster:
        return redis.cluster.RedisCluster(**kwargs)
    return redis.Redis(**kwargs)


def async_client(
    config: RedisConfig, *, min_timeout_s: float = 0.0, max_connections: int | None = None
) -> AsyncClient:
    """An asyncio client for a worker's event loop; connects lazily, on the first command.

    ``max_connections`` defaults to ``pool_size`` (per node in Cluster mode)."""
    kwargs = connection_kwargs(config, min_timeout_s=min_timeout_s)
    kwargs["max_connections"] = config.pool_size if max_connections is None else max_connections
    kwargs["retry"] = AsyncRetry(NoBackoff(), IMMEDIATE_RETRIES)
    if config.cluster:
        return redis.asyncio.cluster.RedisCluster(**kwargs)
    return redis.asyncio.Redis(**kwargs)

