"""``python -m bench.micro_limits`` runs on each build and reports a decision that took."""

from __future__ import annotations

import json
from pathlib import Path

from bench import micro_limits
from fastgw._speedups import IMPLEMENTATION, Build


def test_micro_limits_reports_both_figures(speedups: Build, tmp_path: Path) -> None:
    out = tmp_path / "limits.json"
    assert micro_limits.main(
        ["--calls", "200", "--repeats", "1", "--builds", speedups.name, "--json", str(out)]
    ) == 0
    (row,) = json.loads(out.read_text())
    assert row["build"] == speedups.name
    assert row["table_us"] > 0 and row["stage_us"] > 0  # measure() checked every call passed
    if speedups.name == IMPLEMENTATION:  # the Redis row runs on the loaded build
        assert row["redis_us"] > 0  # every decision came from Redis (errors fail the run)
