"""The micro benchmark drives real protocol objects; keep it runnable (it broke silently once)."""

from __future__ import annotations

import uvloop

from bench.micro_pipeline import measure


def test_micro_pipeline_completes_every_request() -> None:
    cost_us = uvloop.run(measure(200, profile=False))
    assert cost_us > 0
