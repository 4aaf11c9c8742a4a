"""The gateway's own CPU per proxied request, without sockets or a backend.

A request is fed to a real ``DownstreamProtocol``; the forward stage finds a pooled
``UpstreamProtocol`` whose transport only records writes; a canned backend response is fed to
it; the client transport records the answer. What is left is exactly the Python and Cython
work of the proxy path (parsing, kernels, stages, re-serialization, bookkeeping): the figure
to optimise, free of syscall and scheduler noise. Run: ``python -m bench.micro_pipeline``
(``--profile`` prints the top functions).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from pathlib import Path
from typing import Any

import uvloop

from fastgw.config import parse_config
from fastgw.http.downstream import DownstreamProtocol
from fastgw.http.upstream import UpstreamProtocol
from fastgw.plan import Plan, make_pools
from fastgw.worker_context import WorkerContext

REQUEST = (
    b"GET /echo/x HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: bench\r\n"
    b"Accept: */*\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Metald-Instance: m\r\n"
    b"Content-Length: 27\r\n\r\n" + b'{"ok":true,"padding":"xxx"}'
)


class RecordingTransport:
    """Just enough of a transport: records what is written, never blocks."""

    def __init__(self) -> None:
        self.written = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writelines(self, parts: Any) -> None:
        for part in parts:
            self.written += len(part)

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


def feed(protocol: asyncio.BufferedProtocol, data: bytes) -> None:
    buffer = protocol.get_buffer(len(data))
    buffer[: len(data)] = data
    protocol.buffer_updated(len(data))


async def measure(requests: int, profile: bool) -> float:
    loop = asyncio.get_running_loop()
    config = parse_config(
        {
            "routing": {"metald_instances": [{"host": "127.0.0.1", "port": 9}]},
            "routes": [{"endpoint": "Echo", "path_prefix": "/echo", "auth": "none"}],
        },
        base_dir=Path.cwd(),
        env={},
    )
    ctx = WorkerContext(loop)
    pools = make_pools(config, loop, ctx.read_buffer)
    ctx.plan = Plan(config, pools, workers=1)
    client = DownstreamProtocol(ctx)
    client.connection_made(RecordingTransport())  # type: ignore[arg-type]
    upstream = UpstreamProtocol(pools[0], ctx.read_buffer)
    upstream.connection_made(RecordingTransport())  # type: ignore[arg-type]
    pools[0].release(upstream)
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    started = time.process_time()
    for _ in range(requests):
        feed(client, REQUEST)
        feed(upstream, RESPONSE)
    elapsed = time.process_time() - started
    if profiler:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
    assert ctx.requests_done == requests, "requests did not complete"
    return elapsed / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    from fastgw import _speedups

    us = uvloop.run(measure(args.requests, args.profile))
    print(f"{us:.2f} CPU-µs per proxied request (speedups={_speedups.IMPLEMENTATION})")


if __name__ == "__main__":
    main()
