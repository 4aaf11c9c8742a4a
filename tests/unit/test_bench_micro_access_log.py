"""bench/micro_access_log.py stays runnable and measures what it says: every request of an
"on" round leaves exactly one line in the file."""

from __future__ import annotations

from pathlib import Path

import uvloop

from bench.micro_access_log import MODES, measure, per_call


def test_each_on_round_writes_one_line_per_request(tmp_path: Path) -> None:
    out = tmp_path / "access.log"
    figures = uvloop.run(measure(requests=50, rounds=2, out=out))
    assert set(figures) == set(MODES) and all(value > 0 for value in figures.values())
    lines = out.read_bytes().splitlines()
    assert len(lines) == 50 * 2 * 2  # two "on" modes per round
    assert sum(line.startswith(b"{") for line in lines) == 100  # the json rounds


def test_per_call_times_both_ways() -> None:
    ours, stdlib = per_call(batch=100, repeat=2)
    assert ours > 0 and stdlib > 0
