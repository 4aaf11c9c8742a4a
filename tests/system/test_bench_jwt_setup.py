"""The jwt-cached scenario's setup against a real fastgw and mock backend: the config it builds
makes fastgw demand a token, and the readiness probe sends the scenario's token (200 with it,
401 and a one-line failure without). The scenario itself stays skipped until in-process rate
limits land; this is the plumbing it will run on."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import runner
from bench.peers import get, start_backend, start_fastgw
from bench.procs import BenchError, Services
from bench.scenarios import SCENARIOS


def test_fastgw_with_the_jwt_config_needs_the_token_and_the_probe_sends_it(
        tmp_path: Path) -> None:
    prepared = SCENARIOS["jwt-cached"].prepare(tmp_path, 60.0)
    with Services() as services:
        backend = start_backend(services, tmp_path)
        fastgw = start_fastgw(services, tmp_path, [backend], workers=1, config=prepared.config)
        assert get(fastgw.port, "/echo/x")[0] == 401
        assert get(fastgw.port, "/echo/x", headers=prepared.headers)[0] == 200
        probe = runner.check_targets([fastgw], "/echo/x", prepared.headers)
        assert probe["fastgw"]["status"] == 200
        with pytest.raises(BenchError, match="answered 401"):
            runner.check_targets([fastgw], "/echo/x")
