"""The IP check's cost: CPU time per ``IpRules.allowed`` with 10,000 CIDR rules.

The rules are random networks, half IPv4 (prefix 16..32) and half IPv6 (prefix 32..128), given
as ``ip_deny`` with an ``ip_allow`` of their own (a tenth as many, wide ranges), so the decision
set has about as many intervals as there are rules. Addresses cycle through 1,024 prepared
ones per family, half inside a rule and half random (mostly misses), as ASCII bytes the way the
transport gives them. Each row is the median of ``--repeats`` runs of ``--calls`` calls
(``time.process_time``), in µs per call; the issue's budget is 1 µs per request.

Rows: ``allowed`` per family; ``contains`` (one ``IpSet``) per family; ``resolve`` with a
trusted peer and a 3-hop X-Forwarded-For (``client, proxy, proxy``); and parsing one address
with ``socket.inet_pton`` (what ``fastgw.security.ipset`` uses) against ``ipaddress``.

Run: ``python -m bench.micro_ipset [--rules 10000] [--calls 200000] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import statistics
import sys
import time
from collections.abc import Callable

from fastgw.security.ipset import ClientAddress, IpRules, IpSet, parse_address

ADDRESSES = 1_024  # distinct addresses per family, cycled


def _network(rng: random.Random, family: int) -> str:
    bits, prefix = (32, rng.randint(16, 32)) if family == 4 else (128, rng.randint(32, 128))
    cls = ipaddress.IPv4Network if family == 4 else ipaddress.IPv6Network
    return str(cls((rng.getrandbits(bits), prefix), strict=False))


def _wide(rng: random.Random, family: int) -> str:
    bits, prefix = (32, rng.randint(4, 12)) if family == 4 else (128, rng.randint(8, 24))
    cls = ipaddress.IPv4Network if family == 4 else ipaddress.IPv6Network
    return str(cls((rng.getrandbits(bits), prefix), strict=False))


def build_rules(count: int, seed: int = 7) -> tuple[list[str], list[str]]:
    """``(allow, deny)``: ``count`` deny rules, half per family, and ``count // 10`` wide allow
    rules."""
    rng = random.Random(seed)
    deny = [_network(rng, 4 if i % 2 == 0 else 6) for i in range(count)]
    allow = [_wide(rng, 4 if i % 2 == 0 else 6) for i in range(max(1, count // 10))]
    return allow, deny


def build_addresses(rules: list[str], family: int, seed: int = 11) -> list[bytes]:
    """ASCII addresses of a family: even slots inside one of ``rules``, odd slots random."""
    rng = random.Random(seed + family)
    nets = [n for n in map(ipaddress.ip_network, rules) if n.version == family]
    bits = 32 if family == 4 else 128
    cls = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
    out = []
    for i in range(ADDRESSES):
        if i % 2 == 0 and nets:
            net = rng.choice(nets)
            n = int(net.network_address) + rng.randrange(net.num_addresses)
        else:
            n = rng.getrandbits(bits)
        out.append(str(cls(n)).encode("ascii"))
    return out


def timed(call: Callable[[bytes], object], inputs: list[bytes], calls: int, repeats: int) -> float:
    """Median µs per ``call(input)`` over ``repeats`` runs of ``calls`` calls."""
    count = len(inputs)
    runs = []
    for _ in range(repeats):
        started = time.process_time()
        for i in range(calls):
            call(inputs[i % count])
        runs.append((time.process_time() - started) / calls * 1e6)
    return statistics.median(runs)


def timed_resolve(
    client: ClientAddress,
    rules: IpRules | None,
    fields: list[list[bytes]],
    args: argparse.Namespace,
) -> float:
    """Median µs per ``resolve`` from a trusted peer (and ``allowed`` on its answer with
    ``rules``) over ``args.repeats`` runs of ``args.calls`` calls."""
    resolve, count = client.resolve, len(fields)
    runs: list[float] = []
    for _ in range(args.repeats):
        started = time.process_time()
        if rules is None:
            for i in range(args.calls):
                resolve(b"10.0.0.1", fields[i % count])
        else:
            allowed = rules.allowed
            for i in range(args.calls):
                allowed(resolve(b"10.0.0.1", fields[i % count]))
        runs.append((time.process_time() - started) / args.calls * 1e6)
    return statistics.median(runs)


def _parse_with_ipaddress(address: bytes) -> tuple[int, int]:
    parsed = ipaddress.ip_address(address.decode("ascii"))
    return parsed.version, int(parsed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.micro_ipset", description=__doc__)
    parser.add_argument("--rules", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    allow, deny = build_rules(args.rules)
    rules = IpRules(allow, deny)
    deny_set = IpSet(deny)
    v4 = build_addresses(deny, 4)
    v6 = build_addresses(deny, 6)
    decided = sum(map(rules.allowed, v4 + v6))
    print(
        f"rules: {len(deny)} deny + {len(allow)} allow; {len(deny_set)} merged deny intervals; "
        f"{decided} of {len(v4) + len(v6)} addresses allowed"
    )

    def row(name: str, cost: float) -> None:
        print(f"{name:<34} {cost:6.3f} µs per call")

    row("IpRules.allowed v4", timed(rules.allowed, v4, args.calls, args.repeats))
    row("IpRules.allowed v6", timed(rules.allowed, v6, args.calls, args.repeats))
    row("IpSet.contains v4", timed(deny_set.contains, v4, args.calls, args.repeats))
    row("IpSet.contains v6", timed(deny_set.contains, v6, args.calls, args.repeats))

    proxies = ["10.0.0.0/8", "172.16.0.0/12", "fd00::/8"]
    client = ClientAddress(IpSet(proxies))
    fields = [[b"%s, 10.1.2.3, 172.16.0.9" % a] for a in v4[:512] + v6[:512]]
    row("ClientAddress.resolve 3-hop XFF", timed_resolve(client, None, fields, args))
    row("resolve 3-hop XFF + allowed", timed_resolve(client, rules, fields, args))
    row("parse_address v4 (inet_pton)", timed(parse_address, v4, args.calls, args.repeats))
    row("parse_address v6 (inet_pton)", timed(parse_address, v6, args.calls, args.repeats))
    row("ipaddress.ip_address v4", timed(_parse_with_ipaddress, v4, args.calls, args.repeats))
    row("ipaddress.ip_address v6", timed(_parse_with_ipaddress, v6, args.calls, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
