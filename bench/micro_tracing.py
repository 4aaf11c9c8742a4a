"""What tracing costs per request, without sockets: the micro_pipeline harness (a real plan, a
real client connection, a pooled backend connection that records writes) on an authenticated,
rate-limited route, in several tracing setups:

- ``none``: no trace handling at all (the routes' ``begin_trace`` removed): the baseline;
  ``none-parent``: the same with the ``traceparent`` header ``rate0-parent`` sends (its baseline:
  the header costs parsing and scanning even when nothing reads it);
- ``off``: ``tracing.enabled: false``: a new ``traceparent`` per request, nothing recorded;
- ``rate0``: enabled, ``sample_rate: 0``: the cost of an unsampled request;
- ``rate0-parent``: the same with a client ``traceparent`` (flags 00) to parse and continue;
- ``rate0.1`` / ``rate1``: sampled requests get 4 spans (request, auth, rate limit, upstream),
  encoded to OTLP protobuf and queued; the export thread joins them into batches (not POSTed:
  the client's ``_send`` is replaced; a POST carries 512 spans, its cost per request is small).

The figure is process CPU time per request (``time.process_time``: every thread, the export
thread included: the sink is closed, its queue sent, inside the timed window). Variants run in
rotation, ``--runs`` times each; the median is reported. Run: ``python -m bench.micro_tracing``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from unittest import mock

import uvloop

from bench.micro_pipeline import RESPONSE, Harness
from fastgw.obs.otlp import OtlpHttpClient
from fastgw.obs.tracing import Tracing
from fastgw.obs.tracing_export import start_sink

REQUEST = (
    b"GET /echo/x HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: bench\r\n"
    b"Authorization: Bearer dev_customer_1\r\nAccept: */*\r\n\r\n"
)
PARENT = b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00\r\n"
REQUEST_WITH_PARENT = REQUEST[:-2] + PARENT + b"\r\n"

VARIANTS: dict[str, tuple[bool, float | None, bytes]] = {
    # name: (trace handling present, sample_rate or None for tracing disabled, request)
    "none": (False, None, REQUEST),
    "none-parent": (False, None, REQUEST_WITH_PARENT),  # rate0-parent's baseline (same bytes)
    "off": (True, None, REQUEST),
    "rate0": (True, 0.0, REQUEST),
    "rate0-parent": (True, 0.0, REQUEST_WITH_PARENT),
    "rate0.1": (True, 0.1, REQUEST),
    "rate1": (True, 1.0, REQUEST),
}


def config(sample_rate: float | None) -> Mapping[str, Any]:
    tracing: dict[str, Any] = {"enabled": False}
    if sample_rate is not None:
        tracing = {"enabled": True, "endpoint": "http://127.0.0.1:9/", "sample_rate": sample_rate}
    return {
        "gateway": {
            "server": {"limits": {"max_requests_per_connection": 10**12}},
            "authentication": {"development": {"enabled": True}},
            "observability": {"metrics": {"enabled": False}, "tracing": tracing},
        },
        "routing": {"metald_instances": [{"host": "127.0.0.1", "port": 9}]},
        "routes": [{"endpoint": "Echo", "path_prefix": "/echo", "auth": "required"}],
    }


class NoPost(OtlpHttpClient):
    """Takes batches like the real client, sends nothing."""

    def _send(self, body: bytes) -> str | None:
        return None


@contextmanager
def handling(present: bool) -> Iterator[None]:
    if present:
        yield
    else:
        with mock.patch.object(Tracing, "route", lambda self, route: route):
            yield


async def measure(name: str, requests: int) -> float:
    present, sample_rate, request = VARIANTS[name]
    with handling(present):
        harness = Harness(config(sample_rate))
    tracing = harness.ctx.plan.tracing
    sink = None
    if tracing.export:
        sink = start_sink(tracing, scheme="http", client=NoPost("http://127.0.0.1:9/", 1.0))
    started = time.process_time()
    for _ in range(requests):
        harness.exchange(request, RESPONSE)
    await tracing.aclose()  # the export thread sends what is queued, then stops
    elapsed = time.process_time() - started
    assert harness.ctx.requests_done == requests, "requests did not complete"
    assert harness.client_transport.last_status() == 200, harness.client_transport.last_bytes()
    if sink is not None:
        assert sink.dropped == 0, f"{name}: {sink.dropped} traced requests dropped"
        assert sink.taken == sink.offered, "spans left unsent"
    return elapsed / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    from fastgw import _speedups

    names = [n for n in args.variants.split(",") if n]
    results: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.runs):
        for name in names:
            results[name].append(uvloop.run(measure(name, args.requests)))
    base = statistics.median(results[names[0]])
    print(f"CPU-µs per request, median of {args.runs} (speedups={_speedups.IMPLEMENTATION}, "
          f"{args.requests} requests a run)")
    for name in names:
        median = statistics.median(results[name])
        runs = " ".join(f"{v:.2f}" for v in results[name])
        print(f"  {name:13s} {median:7.2f}  ({median - base:+.2f} vs {names[0]})  runs: {runs}")


if __name__ == "__main__":
    main()
