"""bench/micro_tracing.py stays runnable and measures what its names say (it is not in the
default test path, so nothing else would notice it breaking)."""

from __future__ import annotations

import pytest
import uvloop

from bench.micro_tracing import VARIANTS, measure


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_completes_its_requests(name: str) -> None:
    # measure() asserts that every request was answered 200 and, with tracing on, that no
    # traced request was dropped and every queued span was taken by the export thread.
    assert uvloop.run(measure(name, 300)) > 0
