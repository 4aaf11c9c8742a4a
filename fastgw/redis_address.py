"""A Redis ``address`` setting, parsed: the one piece both Redis clients need.

``gateway.rate_limiting.redis.address`` is ``'host:port'``, ``'[v6]:port'`` or
``'unix:///path'``. redis-py's clients (``redis_connect.py``) and the hot-path client
(``fastgw.resp``) read it through ``parse_address``; this module imports neither, so either may
import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from fastgw.errors import ConfigError, Problem

__all__ = ["CONFIG_PATH", "RedisAddress", "cluster_problems", "parse_address"]

CONFIG_PATH: Final = "$.gateway.rate_limiting.redis"


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """A parsed ``address``: ``host`` and ``port``, or ``unix_path``."""

    host: str | None = None
    port: int | None = None
    unix_path: str | None = None

    def __str__(self) -> str:
        if self.unix_path is not None:
            return f"unix://{self.unix_path}"
        host = f"[{self.host}]" if self.host is not None and ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_address(address: str) -> RedisAddress:
    """``'host:port'``, ``'[v6]:port'`` or ``'unix:///path'`` (already checked by the config)."""
    if address.startswith("unix://"):
        return RedisAddress(unix_path=address[len("unix://") :])
    host, _, port = address.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not host or not 1 <= number <= 65535:
        raise ConfigError(
            [
                Problem(
                    f"{CONFIG_PATH}.address",
                    f"expected 'host:port' or 'unix:///path', got {address!r}",
                )
            ]
        )
    return RedisAddress(host=host.strip("[]"), port=number)


def cluster_problems(address: str, db: int, cluster: bool) -> list[Problem]:
    """What Redis Cluster mode refuses in an otherwise valid setting: a unix socket (a Cluster
    seed is a node's ``host:port``) and a database other than 0 (a Cluster has one)."""
    if not cluster:
        return []
    problems = []
    if parse_address(address).unix_path is not None:
        problems.append(
            Problem(f"{CONFIG_PATH}.address", "cluster: true needs a 'host:port' address")
        )
    if db != 0:
        problems.append(Problem(f"{CONFIG_PATH}.db", "must be 0 with cluster: true"))
    return problems
