"""``python -m bench.micro_ipset`` builds its rules and prints a cost for every row."""

from __future__ import annotations

import re

import pytest

from bench import micro_ipset
from fastgw.security.ipset import IpSet

ROWS = [
    "IpRules.allowed v4",
    "IpRules.allowed v6",
    "IpSet.contains v4",
    "IpSet.contains v6",
    "ClientAddress.resolve 3-hop XFF",
    "resolve 3-hop XFF + allowed",
    "parse_address v4 (inet_pton)",
    "parse_address v6 (inet_pton)",
    "ipaddress.ip_address v4",
    "ipaddress.ip_address v6",
]


def test_micro_ipset_reports_every_row(capsys: pytest.CaptureFixture[str]) -> None:
    assert micro_ipset.main(["--rules", "200", "--calls", "2000", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("rules: 200 deny + 20 allow; ")
    assert re.search(r"; \d+ merged deny intervals; \d+ of 2048 addresses allowed$", lines[0])
    assert len(lines) == 1 + len(ROWS)
    for row, line in zip(ROWS, lines[1:], strict=True):
        assert re.fullmatch(rf"{re.escape(row)} +-?\d+\.\d{{3}} µs per call", line), line


def test_rules_are_half_per_family_and_addresses_half_hits() -> None:
    allow, deny = micro_ipset.build_rules(100)
    assert len(deny) == 100 and len(allow) == 10
    assert sum(":" in rule for rule in deny) == 50
    v4 = micro_ipset.build_addresses(deny, 4)
    assert len(v4) == micro_ipset.ADDRESSES and all(b":" not in a for a in v4)
    hits = sum(map(IpSet(deny).contains, v4))
    assert hits >= len(v4) // 2
