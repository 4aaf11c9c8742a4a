"""``python -m bench.micro_routing`` runs every strategy and prints a cost for each."""

from __future__ import annotations

import pytest

from bench import micro_routing
from fastgw.routing.strategies import STRATEGY_NAMES


def test_micro_routing_reports_every_strategy(capsys: pytest.CaptureFixture[str]) -> None:
    assert micro_routing.main(["--calls", "2000", "--repeats", "1", "--instances", "20"]) == 0
    out = capsys.readouterr().out
    for strategy in STRATEGY_NAMES:
        assert strategy in out
    assert out.count("µs per order") == 2 * len(STRATEGY_NAMES)
    assert out.count("health pick") == len(STRATEGY_NAMES)
