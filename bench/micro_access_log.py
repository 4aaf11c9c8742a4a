"""What the access log costs per proxied request: the CPU of the whole process (event loop and
the writer thread) over the same proxied requests as ``bench/micro_pipeline.py``, with
``gateway.observability.logging.access_log`` off, on in JSON, and on in text, the lines
written to a real file.

Rounds alternate off / json / text so that machine noise hits all three alike; the figure
reported for each is the median round. Run: ``python -m bench.micro_access_log``
(``--requests`` per round, ``--rounds``, ``--out`` the file the lines go to).

``--per-call`` instead times one ``AccessLog`` call on the loop thread against the standard
library's way (``logger.info(..., extra=...)`` into a ``QueueHandler``, before any formatting),
best of 20 batches of 10,000: why the access log does not go through ``logging``.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import queue
import statistics
import tempfile
import time
import timeit
from pathlib import Path

import uvloop

from bench.micro_pipeline import PIPELINE_CONFIG, REQUEST, RESPONSE, Harness
from fastgw.auth.context import CustomerContext
from fastgw.exchange import DONE, Exchange
from fastgw.obs.logging_access import AccessLog
from fastgw.obs.logging_sink import LogSink
from fastgw.plan import RoutePlan

MODES = ("off", "json", "text")


async def measure(requests: int, rounds: int, out: Path) -> dict[str, float]:
    """CPU-µs per request for each mode (median of ``rounds``)."""
    harness = Harness(PIPELINE_CONFIG)
    ctx = harness.ctx
    per_mode: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(rounds):
        for mode in MODES:
            access = None
            if mode != "off":
                access = AccessLog(LogSink(str(out)), labels=["127.0.0.1:9"], json=mode == "json")
                access.start()
            ctx.access_log = access
            started = time.process_time()
            for _ in range(requests):
                harness.exchange(REQUEST, RESPONSE)
            if access is not None:
                access.close()  # the writer's last batch counts too
            per_mode[mode].append((time.process_time() - started) / requests * 1e6)
            ctx.access_log = None
    return {mode: statistics.median(values) for mode, values in per_mode.items()}


def per_call(batch: int = 10_000, repeat: int = 20) -> tuple[float, float]:
    """µs per call: an ``AccessLog`` call, and ``logger.info`` into a ``QueueHandler``."""
    ex = Exchange(None, time.monotonic())  # type: ignore[arg-type]
    ex.method, ex.path, ex.client = b"POST", b"/vmprovisioner.v1.VmService/ListVms", b"127.0.0.1"
    ex.request_id, ex.status, ex.state = b"0f3c9a0e6b2d4c1e-2a", 200, DONE
    ex.route = RoutePlan("ListVMs", None, ())
    ex.customer = CustomerContext(b"acme", b"free", frozenset())
    ex.sent_s, ex.candidates = time.monotonic(), (0,)
    access = AccessLog(LogSink("/dev/null"), labels=["127.0.0.1:9"])

    def ours() -> None:
        for _ in range(batch):
            access(ex)
        access._pending.clear()

    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    logger = logging.getLogger("bench.access")
    logger.propagate = False
    logger.addHandler(logging.handlers.QueueHandler(records))
    logger.setLevel(logging.INFO)
    extra = {"request_id": "0f3c9a0e6b2d4c1e-2a", "client": "127.0.0.1", "method": "POST",
             "path": "/vmprovisioner.v1.VmService/ListVms", "endpoint": "ListVMs",
             "status": 200, "customer_id": "acme", "duration_ms": 1.0, "upstream": "x:9",
             "upstream_ms": 1.0, "retries": 0, "request_bytes": 0, "aborted": False}  # fmt: skip

    def stdlib() -> None:
        for _ in range(batch):
            logger.info("request", extra=extra)
        while not records.empty():
            records.get_nowait()

    return tuple(  # type: ignore[return-value]
        min(timeit.repeat(fn, number=1, repeat=repeat)) / batch * 1e6 for fn in (ours, stdlib)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="file for the lines (temp)")
    parser.add_argument("--per-call", action="store_true", help="time one call (see above)")
    args = parser.parse_args()
    from fastgw import _speedups

    if args.per_call:
        ours, stdlib = per_call()
        print(f"speedups={_speedups.IMPLEMENTATION}: AccessLog call {ours:.2f} µs, "
              f"logger.info + QueueHandler {stdlib:.2f} µs (before formatting)")  # fmt: skip
        return

    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch) / "access.log"
        figures = uvloop.run(measure(args.requests, args.rounds, out))
        lines = len(out.read_bytes().splitlines())
    base = figures["off"]
    print(f"speedups={_speedups.IMPLEMENTATION}, {args.requests} requests x {args.rounds} rounds")
    for mode in MODES:
        extra = "" if mode == "off" else f"  (+{figures[mode] - base:.2f})"
        print(f"  access_log {mode:<4}: {figures[mode]:6.2f} CPU-µs per request{extra}")
    print(f"  lines written: {lines}")


if __name__ == "__main__":
    main()
