"""The memory rate limiter's cost: CPU time per decision, table alone and whole stage.

Two figures per build of the kernels (``c``, ``py``), CPU-µs per call (``time.process_time``),
the median of ``--repeats`` runs of ``--calls`` calls, for one known customer on a route where
every level is on (customer bucket, endpoint bucket, daily quota, global bucket) and nothing
ever refuses (huge numbers), so each call is a whole decision that takes from every level:

- ``table``: ``LimitTable.decide`` alone (locks, four levels, the reply fields);
- ``stage``: the ``RateLimit`` stage's ``on_request`` as the plan builds it (the customer's
  numbers cached on its context, the clock, the decision, the counters, the
  ``RateLimit-*`` header line);
- ``redis``: the same stage with ``backend: redis`` against a real redis-server on a unix
  socket (started here, from PATH): the command built and sent through ``fastgw.resp``, the
  reply parsed, the decision applied and the exchange resumed, with ``--in-flight`` requests
  (default 16) in flight as in a loaded worker. Only this process's CPU is counted, not
  Redis's; ``redis - stage`` is what a Redis-limited request costs the gateway more than a
  memory-limited one. The resumed exchange goes nowhere (a stand-in connection starts the next
  request), so the downstream and upstream work every request has anyway is not in either
  figure.

Run: ``python -m bench.micro_limits [--calls 200000] [--repeats 5] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import uvloop

from bench.micro_chain import CONFIG, use_build
from fastgw import _speedups
from fastgw.auth.context import CustomerContext
from fastgw.config import parse_config
from fastgw.exchange import DONE, IN_CHAIN, Exchange
from fastgw.pipeline import PAUSE

CUSTOMER: Final = b"acme-42"
ENDPOINT: Final = "Account"  # every level on in bench.micro_chain.CONFIG


def cpu_us_per_call(fn: Callable[[], object], calls: int, repeats: int) -> float:
    """Median over ``repeats`` of the CPU time of ``calls`` calls, per call, in µs."""
    runs = []
    for _ in range(repeats):
        started = time.process_time()
        for _ in range(calls):
            fn()
        runs.append((time.process_time() - started) / calls * 1e6)
    return statistics.median(runs)


def measure(build: str, calls: int, repeats: int) -> dict[str, Any]:
    with use_build(build):
        from fastgw.plan import Plan

        plan = Plan(parse_config(CONFIG, base_dir=Path.cwd(), env={}), [], workers=1)
        try:
            stage = plan.limits.stage(ENDPOINT)
            ex = Exchange(None, 0.0)  # type: ignore[arg-type] - the stage never touches conn
            ex.customer = CustomerContext(CUSTOMER, b"pro", frozenset())
            limiter = plan.limits.limiter
            table = plan.limits.table
            limits = plan.limits.policy.customer_limits(ex.customer)
            route = plan.limits.policy.route_limits(ENDPOINT)
            now_us = time.time_ns() // 1000

            def table_only() -> object:
                return table.decide(
                    now_us, limits.fingerprint, route.cost, limits.rate_per_s, limits.burst,
                    route.bucket_id, route.rate_per_s, route.burst, limits.daily_quota,
                    1e9, 1_000_000_000, 0,
                )  # fmt: skip

            def whole_stage() -> object:
                ex.response_headers = b""
                return stage.on_request(ex)

            assert whole_stage() == 0 and table_only() == 0, "the bench customer was refused"
            row = {
                "build": build,
                "table_us": round(cpu_us_per_call(table_only, calls, repeats), 3),
                "stage_us": round(cpu_us_per_call(whole_stage, calls, repeats), 3),
            }
            assert limiter.counts.by_masks[15 << 4] > 0  # every level on, none refused
            return row
        finally:
            plan.limits.close()


class _Chain:
    """Stands in for the client connection: when the stage resumes an exchange (Redis
    answered), the next request starts, so ``in_flight`` requests are always waiting."""

    def __init__(self, stage: Any, customer: CustomerContext, total: int) -> None:
        self.on_request = stage.on_request
        self.customer = customer
        self.left = total
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.verdicts = [0, 0, 0]

    def start(self) -> None:
        if self.left <= 0:
            return
        self.left -= 1
        ex = Exchange(self, 0.0)  # type: ignore[arg-type] - only run_exchange is called
        ex.customer = self.customer
        ex.state = IN_CHAIN
        verdict = self.on_request(ex)
        self.verdicts[verdict] += 1
        if verdict != PAUSE:
            self.finished(ex)

    def run_exchange(self, ex: Exchange) -> None:  # Exchange.resume() calls this
        self.finished(ex)

    def finished(self, ex: Exchange) -> None:
        ex.state = DONE
        if self.left > 0:
            self.start()
        elif not self.done.done() and sum(self.verdicts) == self.total_started():
            self.done.set_result(None)

    def total_started(self) -> int:
        return self.verdicts[0] + self.verdicts[1] + self.verdicts[2]


async def _redis_us(address: str, calls: int, repeats: int, in_flight: int) -> float:
    from fastgw.plan import Plan

    config = copy.deepcopy(CONFIG)
    # a generous deadline: on a busy machine a 20 ms timeout would measure the fallback
    redis_settings = {"address": address, "timeout": "2s"}
    config["gateway"]["rate_limiting"] = {"backend": "redis", "redis": redis_settings}
    plan = Plan(parse_config(config, base_dir=Path.cwd(), env={}), [], workers=1)
    await plan.limits.start()
    try:
        stage = plan.limits.stage(ENDPOINT)
        customer = CustomerContext(CUSTOMER, b"pro", frozenset())
        redis = plan.limits.redis
        assert redis is not None
        runs = []
        for _ in range(repeats + 1):  # the first run warms up (script load, connections)
            per_chain = max(1, calls // in_flight)
            chains = [_Chain(stage, customer, per_chain) for _ in range(in_flight)]
            errors = redis.client.errors
            started = time.process_time()
            for chain in chains:
                chain.start()
            await asyncio.gather(*(chain.done for chain in chains))
            runs.append((time.process_time() - started) / (per_chain * in_flight) * 1e6)
            if redis.client.errors != errors:
                raise RuntimeError("Redis errors in the run: the figure would be the fallback's")
        counts = plan.limits.limiter.counts.by_masks
        assert counts[15 << 4] >= calls, "every decision covers all four levels and allows"
        return statistics.median(runs[1:])
    finally:
        await plan.limits.aclose()


def measure_redis(calls: int, repeats: int, in_flight: int) -> float:
    """CPU-µs per request of the stage on the Redis backend (compiled build)."""
    from bench.micro_redis import own_redis_server

    with own_redis_server() as ends:
        return uvloop.run(_redis_us(f"unix://{ends.unix_path}", calls, repeats, in_flight))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.micro_limits", description=__doc__)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--builds", default="c,py", help="comma-separated: c, py")
    parser.add_argument("--in-flight", type=int, default=16, help="Redis row: requests waiting")
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis row")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    rows = []
    for build in args.builds.split(","):
        calls = args.calls if build == "c" else max(1, args.calls // 20)  # py is ~20x slower
        rows.append(measure(build, calls, args.repeats))
    if not args.no_redis:
        redis_calls = max(args.in_flight, args.calls // 10)  # a Redis row is ~10x slower
        redis_us = measure_redis(redis_calls, args.repeats, args.in_flight)
        for row in rows:
            if row["build"] == _speedups.IMPLEMENTATION:
                row["redis_us"] = round(redis_us, 3)
    print(f"{'build':<6} {'table µs':>9} {'stage µs':>9} {'redis µs':>9}")
    for row in rows:
        redis_text = f"{row['redis_us']:>9.3f}" if "redis_us" in row else f"{'-':>9}"
        print(f"{row['build']:<6} {row['table_us']:>9.3f} {row['stage_us']:>9.3f} {redis_text}")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
