"""The memory rate limiter's cost: CPU time per decision, table alone and whole stage.

Two figures per build of the kernels (``c``, ``py``), CPU-µs per call (``time.process_time``),
the median of ``--repeats`` runs of ``--calls`` calls, for one known customer on a route where
every level is on (customer bucket, endpoint bucket, daily quota, global bucket) and nothing
ever refuses (huge numbers), so each call is a whole decision that takes from every level:

- ``table``: ``LimitTable.decide`` alone (locks, four levels, the reply fields);
- ``stage``: the ``RateLimit`` stage's ``on_request`` as the plan builds it (the customer's
  numbers cached on its context, the clock, the decision, the counters, the
  ``RateLimit-*`` header line).

Run: ``python -m bench.micro_limits [--calls 200000] [--repeats 5] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from bench.micro_chain import CONFIG, use_build
from fastgw.auth.context import CustomerContext
from fastgw.config import parse_config
from fastgw.exchange import Exchange

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
                    route.index, route.rate_per_s, route.burst, limits.daily_quota,
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.micro_limits", description=__doc__)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--builds", default="c,py", help="comma-separated: c, py")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    rows = []
    for build in args.builds.split(","):
        calls = args.calls if build == "c" else max(1, args.calls // 20)  # py is ~20x slower
        rows.append(measure(build, calls, args.repeats))
    print(f"{'build':<6} {'table µs':>9} {'stage µs':>9}")
    for row in rows:
        print(f"{row['build']:<6} {row['table_us']:>9.3f} {row['stage_us']:>9.3f}")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
