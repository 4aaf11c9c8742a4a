"""``python -m bench run --set PATH=VALUE``: a change to fastgw's config for one run (the A/B
of one feature, e.g. metrics on vs off in the full scenario)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import _override, build_parser
from bench.procs import BenchError
from bench.scenarios import SCENARIOS, _overridden


def config(*_: Any, **__: Any) -> dict[str, Any]:
    return {"gateway": {"observability": {"metrics": {"enabled": True, "port": 0}}}}


def test_values_are_yaml_and_paths_are_dotted() -> None:
    assert _override("gateway.observability.metrics.enabled=false") == (
        "gateway.observability.metrics.enabled",
        False,
    )
    assert _override("a.b=0.1") == ("a.b", 0.1)
    assert _override("a=x=y") == ("a", "x=y")
    for bad in ("novalue", "=1", "a..b=1", ".a=1"):
        with pytest.raises(argparse.ArgumentTypeError):
            _override(bad)


def test_overrides_set_keys_and_make_missing_mappings() -> None:
    built = _overridden(
        config,
        (("gateway.observability.metrics.enabled", False), ("gateway.tracing.x", 1)),
    )
    assert built["gateway"]["observability"]["metrics"] == {"enabled": False, "port": 0}
    assert built["gateway"]["tracing"] == {"x": 1}


def test_a_path_through_a_value_is_refused() -> None:
    with pytest.raises(BenchError, match="'port' is not a mapping"):
        _overridden(config, (("gateway.observability.metrics.port.x", 1),))


def test_the_run_command_passes_them_to_the_scenario(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        [
            "run",
            "--scenario",
            "passthrough",
            "--set",
            "gateway.server.workers=3",
            "--set",
            "routes=[]",
        ]
    )
    assert args.overrides == [("gateway.server.workers", 3), ("routes", [])]
    prepared = SCENARIOS["passthrough"].prepare(tmp_path, 1.0, overrides=args.overrides)
    built = prepared.config([1234], 8080)
    assert built["gateway"]["server"]["workers"] == 3 and built["routes"] == []
