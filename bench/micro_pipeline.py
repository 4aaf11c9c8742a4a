"""The gateway's own CPU per proxied request, without sockets or a backend.

A request is fed to a real ``DownstreamProtocol``; the forward stage finds a pooled
``UpstreamProtocol`` whose transport only records writes; a canned backend response is fed to
it; the client transport records the answer. What is left is exactly the Python and Cython
work of the proxy path (parsing, kernels, stages, re-serialization, bookkeeping): the figure
to optimise, free of syscall and scheduler noise. Run: ``python -m bench.micro_pipeline``
(``--profile`` prints the top functions; ``--metrics off`` turns
``gateway.observability.metrics`` off, to measure what counting costs per request).

``Harness`` (the two connections around a real plan) and ``RecordingTransport`` are shared
with ``bench/micro_chain.py``, which runs several request shapes through the same objects.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import uvloop

from fastgw.config import parse_config
from fastgw.http.downstream import DownstreamProtocol
from fastgw.http.upstream import UpstreamProtocol
from fastgw.plan import Plan, make_pools
from fastgw.worker_context import WorkerContext

T = TypeVar("T")

REQUEST = (
    b"GET /echo/x HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: bench\r\n"
    b"Accept: */*\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Metald-Instance: m\r\n"
    b"Content-Length: 27\r\n\r\n" + b'{"ok":true,"padding":"xxx"}'
)
# Port 9 (discard) is never connected to: the one backend connection is put in the pool by hand.
PIPELINE_CONFIG: Mapping[str, Any] = {
    # one client connection carries every request, as wrk's do: no per-connection quota
    "gateway": {"server": {"limits": {"max_requests_per_connection": 10**12}}},
    "routing": {"metald_instances": [{"host": "127.0.0.1", "port": 9}]},
    "routes": [{"endpoint": "Echo", "path_prefix": "/echo", "auth": "none"}],
}


class RecordingTransport:
    """Just enough of a transport: keeps a reference to the last write (no copy, no counter:
    counting bytes in a Python int would allocate, and land in micro_chain's allocation
    figures), so a caller can check what a client or the backend got."""

    def __init__(self) -> None:
        self.last: bytes | Sequence[bytes] = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.last = data

    def writelines(self, parts: Sequence[bytes]) -> None:
        self.last = parts

    def last_bytes(self) -> bytes:
        return self.last if isinstance(self.last, bytes) else b"".join(self.last)

    def last_status(self) -> int:
        """The status of the response in the last write (0 when it does not start one)."""
        data = self.last_bytes()
        if not data.startswith(b"HTTP/1.1 "):
            return 0
        return int(data[9:12])

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


def feed(protocol: DownstreamProtocol | UpstreamProtocol, data: bytes) -> None:
    """Deliver ``data`` the way the event loop does: into the protocol's buffer, one read."""
    buffer = protocol.get_buffer(len(data))
    buffer[: len(data)] = data
    protocol.buffer_updated(len(data))


class Harness:
    """One client connection and one pooled backend connection of a real worker plan.

    Build it inside a running loop (``UpstreamProtocol.connection_made`` asks for it). Every
    ``exchange`` is one request: the client's bytes, then (for a request the gateway forwards)
    the backend's answer, each as one read, as a keep-alive connection sees them.
    """

    def __init__(self, config_data: Mapping[str, Any] = PIPELINE_CONFIG) -> None:
        loop = asyncio.get_running_loop()
        config = parse_config(dict(config_data), base_dir=Path.cwd(), env={})
        self.ctx = ctx = WorkerContext(loop)
        pools = make_pools(config, loop, ctx.read_buffer)
        ctx.plan = Plan(config, pools, workers=1)
        self.client_transport = RecordingTransport()
        self.upstream_transport = RecordingTransport()
        self.client = DownstreamProtocol(ctx)
        self.client.connection_made(self.client_transport)  # type: ignore[arg-type]
        self.upstream = UpstreamProtocol(pools[0], ctx.read_buffer)
        self.upstream.connection_made(self.upstream_transport)  # type: ignore[arg-type]
        pools[0].release(self.upstream)

    def exchange(self, request: bytes, response: bytes | None) -> None:
        feed(self.client, request)
        if response is not None:
            feed(self.upstream, response)


def in_loop(fn: Callable[[], T]) -> T:
    """``fn()`` called from a callback of a fresh uvloop loop, where the gateway's code runs."""

    async def call() -> T:
        return fn()

    return uvloop.run(call())


def pipeline_config(metrics: bool = True) -> Mapping[str, Any]:
    """``PIPELINE_CONFIG``, with the per-request metrics on (the default) or off."""
    if metrics:
        return PIPELINE_CONFIG
    gateway = {**PIPELINE_CONFIG["gateway"], "observability": {"metrics": {"enabled": False}}}
    return {**PIPELINE_CONFIG, "gateway": gateway}


async def measure(requests: int, profile: bool, metrics: bool = True) -> float:
    harness = Harness(pipeline_config(metrics))
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    started = time.process_time()
    for _ in range(requests):
        harness.exchange(REQUEST, RESPONSE)
    elapsed = time.process_time() - started
    if profiler:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
    assert harness.ctx.requests_done == requests, "requests did not complete"
    return elapsed / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--metrics", choices=("on", "off"), default="on")
    args = parser.parse_args()
    from fastgw import _speedups

    us = uvloop.run(measure(args.requests, args.profile, args.metrics == "on"))
    print(
        f"{us:.2f} CPU-µs per proxied request (speedups={_speedups.IMPLEMENTATION}, "
        f"metrics={args.metrics})"
    )


if __name__ == "__main__":
    main()
