"""Target selection's cost: CPU time per ``PoolBalancer.order`` with 100 instances.

For each strategy, the median of ``--repeats`` runs of ``--calls`` calls (``time.process_time``),
in µs per call, for requests of 1,000 known customers in turn (a consistent-hash order is then
a lookup in the per-customer map, as for a gateway's steady traffic) and with half the
instances in a pool the customers claim (so pool selection is included). The issue's budget is
1 µs per request. A second set of rows adds the health view's pick from the order with one
instance in ten held off (the forward stage's slow path; with every instance clear the stage
reads one flag instead).

Run: ``python -m bench.micro_routing [--calls 200000] [--repeats 5] [--instances 100]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from fastgw import _speedups
from fastgw.auth.context import CustomerContext
from fastgw.exchange import Exchange
from fastgw.routing.breaker import BreakerSettings
from fastgw.routing.health import HealthView
from fastgw.routing.strategies import STRATEGY_NAMES, Instance, PoolBalancer

CUSTOMERS = 1_000


def measure(
    strategy: str, instances: int, calls: int, repeats: int, *, gate: bool = False
) -> float:
    """µs per ``order``; with ``gate``, per order and the health view's pick from it, with one
    instance in ten held off (a breaker open): the forward stage's slow path."""
    fleet = [
        Instance(b"10.0.%d.%d:9000" % divmod(i, 250), 100, ("eu",) if i % 2 else ())
        for i in range(instances)
    ]
    balancer = PoolBalancer(strategy, fleet, depth=8, load=lambda index: index % 7)
    view = HealthView(None, 0, [str(i) for i in range(instances)], BreakerSettings(), len)
    exchanges = []
    for n in range(CUSTOMERS):
        ex = Exchange(None, 0.0)  # type: ignore[arg-type] - selection reads ex.customer only
        ex.customer = CustomerContext(b"cust-%d" % n, b"pro", frozenset(), pool=b"eu")
        exchanges.append(ex)
    order = balancer.order
    for ex in exchanges:  # warm: every customer's order is known
        order(ex)
    if gate:
        for index in range(0, instances, 10):
            view.usable[index] = 0
    view.all_clear = not gate
    pick = view.first_usable
    runs = []
    for _ in range(repeats):
        started = time.process_time()
        if gate:
            for i in range(calls):
                pick(order(exchanges[i % CUSTOMERS]), 0, 0.0)
        else:
            for i in range(calls):
                order(exchanges[i % CUSTOMERS])
        runs.append((time.process_time() - started) / calls * 1e6)
    return statistics.median(runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.micro_routing", description=__doc__)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--instances", type=int, default=100)
    args = parser.parse_args(argv)
    print(f"kernels: {_speedups.IMPLEMENTATION}; {args.instances} instances")
    for strategy in STRATEGY_NAMES:
        cost = measure(strategy, args.instances, args.calls, args.repeats)
        print(f"{strategy:<18} {cost:6.3f} µs per order")
    for strategy in STRATEGY_NAMES:
        cost = measure(strategy, args.instances, args.calls, args.repeats, gate=True)
        print(f"{strategy:<18} {cost:6.3f} µs per order + health pick, 1 in 10 held off")
    return 0


if __name__ == "__main__":
    sys.exit(main())
