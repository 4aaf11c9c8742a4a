"""In-process gateway + real mock backends on loopback, for data-plane tests.

The gateway's ``GatewayServer`` and the ``MockMetald`` instances run in the test's own uvloop
event loop on real sockets (127.0.0.1, port 0). Process-model tests use real worker
processes instead (tests/integration).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec

import uvloop

from fastgw.config import Config, parse_config
from fastgw.mock.metald import MockMetald
from fastgw.server import GatewayServer

P = ParamSpec("P")

ECHO_ROUTES: list[dict[str, Any]] = [
    {"endpoint": "Echo", "path_prefix": "/echo", "auth": "none"},
    {"endpoint": "Stream", "path_prefix": "/stream", "auth": "none"},
    {"endpoint": "CloseDelimited", "path_prefix": "/close-delimited", "auth": "none"},
    {"endpoint": "Status", "path_prefix": "/status", "auth": "none"},
    {"endpoint": "Private", "path_prefix": "/echo/private", "auth": "required"},
    {"endpoint": "ListVMs", "path": "/vmprovisioner.v1.VmService/ListVms", "methods": ["POST"]},
    {"endpoint": "CreateVM", "path": "/vmprovisioner.v1.VmService/CreateVm", "methods": ["POST"]},
]

# For tests about something else: a default tier no test traffic comes near.
GENEROUS_LIMITS: dict[str, Any] = {
    "customer_tiers": {"free": {"requests_per_second": 1e6, "burst_size": 1_000_000}},
}


def uvloop_test(fn: Callable[P, Awaitable[None]]) -> Callable[P, None]:
    """Run an async test function to completion on a fresh uvloop event loop."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        uvloop.run(fn(*args, **kwargs))  # type: ignore[arg-type]

    return wrapper


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def make_config(backend_ports: list[int], extra: dict[str, Any] | None = None) -> Config:
    data: dict[str, Any] = {
        "gateway": {
            "server": {"host": "127.0.0.1", "port": 0, "workers": 1},
            "authentication": {"development": {"enabled": True}},
            "routing": {"retry_attempts": 1, "backend_timeout": "5s", "connect_timeout": "1s"},
            "observability": {"metrics": {"port": 0}},
        },
        "routing": {
            "strategy": "round_robin",
            "metald_instances": [{"host": "127.0.0.1", "port": p} for p in backend_ports],
        },
        "routes": ECHO_ROUTES,
    }
    if extra:
        data = merge(data, extra)
    return parse_config(data, base_dir=Path.cwd(), env={})


@dataclass
class Running:
    gateway: GatewayServer
    backends: list[MockMetald]

    @property
    def port(self) -> int:
        return self.gateway.port


@asynccontextmanager
async def running(
    backends: int = 1, extra: dict[str, Any] | None = None, dead_ports: list[int] | None = None
) -> AsyncIterator[Running]:
    """Start ``backends`` mock instances and a gateway in front of them (plus unreachable
    instances at ``dead_ports``); stop everything and check nothing leaked."""
    mocks: list[MockMetald] = []
    gateway: GatewayServer | None = None
    try:
        for index in range(backends):
            mock = MockMetald(name=f"m{index}")
            mocks.append(mock)
            await mock.start("127.0.0.1", 0)
        ports = [m.port for m in mocks] + list(dead_ports or [])
        gateway = GatewayServer(make_config(ports, extra))
        await gateway.start()
        yield Running(gateway, mocks)
    finally:
        if gateway is not None:
            await gateway.close()
        for mock in mocks:
            await mock.stop()


async def eventually(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait (bounded) until ``predicate()`` holds; the loop keeps running meanwhile."""
    import asyncio

    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.005)
