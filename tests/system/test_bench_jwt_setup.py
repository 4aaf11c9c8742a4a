"""The JWT scenarios' setup against a real fastgw and mock backend: the config it builds makes
fastgw demand a token, and the readiness probe sends the scenario's token (200 with it, 401
and a one-line failure without). And redis-limits' helper: the redis-server it starts into the
run's services answers before prepare() returns, fastgw decides every request there (2 scripts
per request, counted by Redis itself), and the server is gone when the services stop, also
after a failure. Whole runs: tests/system/test_bench_redis_limits.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import runner
from bench.peers import get, start_backend, start_fastgw
from bench.procs import BenchError, Services
from bench.scenarios import SCENARIOS, redis_counters


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


def test_redis_limits_helper_serves_counts_and_stops(tmp_path: Path) -> None:
    socket = tmp_path / "redis.sock"
    with Services() as services:
        prepared = SCENARIOS["redis-limits"].prepare(tmp_path, 60.0, services)
        [redis] = prepared.helpers
        assert redis.name == "redis" and redis.service.alive() and socket.exists()
        assert redis.counters is not None
        backend = start_backend(services, tmp_path)
        fastgw = start_fastgw(services, tmp_path, [backend], workers=1, config=prepared.config)
        assert get(fastgw.port, "/echo/x")[0] == 401  # the token is still needed
        before = redis.counters()
        for _ in range(20):
            assert get(fastgw.port, "/echo/x", headers=prepared.headers)[0] == 200
        after = redis_counters(socket)
        # one script per request decides every level (on_failure: local would show fewer)
        assert after["commands"] - before["commands"] == 20
        assert after["script_errors"] == before["script_errors"]
        assert after["script_us"] > before["script_us"]
        pid = redis.service.pid
    assert not redis.service.alive() and not Path(f"/proc/{pid}").exists()
    assert not socket.exists()  # redis-server removes its socket on a clean shutdown


def test_redis_is_stopped_when_the_run_fails(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="answered 503"), Services() as services:
        prepared = SCENARIOS["redis-limits"].prepare(tmp_path, 60.0, services)
        [redis] = prepared.helpers
        backend = start_backend(services, tmp_path)
        fastgw = start_fastgw(services, tmp_path, [backend], workers=1, config=prepared.config)
        runner.check_targets([fastgw], "/status/503", prepared.headers)
    assert not redis.service.alive()
    assert not Path(f"/proc/{redis.service.pid}").exists()
