"""Scenario request headers: from a scenario's setup to wrk's command line, the open-loop
generator's request bytes and the profiles' wrk runs; the JWT scenarios' setup (a key pair on
disk, a config fastgw accepts, a token that key verifies), which run now that in-process rate
limits have landed; the redis-limits scenario's definition and config. The probe against a real
fastgw: tests/system/test_bench_jwt_setup.py; every mode sending the token:
tests/system/test_bench_modes_headers.py; redis-limits run for real:
tests/system/test_bench_redis_limits.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from bench import runner
from bench.procs import BenchError, Services
from bench.scenarios import (
    BENCH_LIMITS,
    SCENARIOS,
    TOKEN_SLACK_S,
    jwt_config,
    jwt_setup,
    redis_limits_config,
    start_redis,
)
from bench.wrk import wrk_argv
from fastgw import features
from fastgw.config.load import parse_config

ROOT = Path(__file__).resolve().parents[2]
TOKEN = (("Authorization", "Bearer abc.def.ghi"), ("X-Bench", "1"))


def test_wrk_argv_has_one_h_per_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    argv = wrk_argv("http://127.0.0.1:9/x", duration_s=1, connections=2, script_dir=tmp_path,
                    headers=TOKEN)
    pairs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-H"]
    assert pairs == ["Authorization: Bearer abc.def.ghi", "X-Bench: 1"]
    assert argv[-1] == "http://127.0.0.1:9/x"  # the URL stays last
    plain = wrk_argv("http://127.0.0.1:9/x", duration_s=1, connections=2, script_dir=tmp_path)
    assert "-H" not in plain


def test_open_loop_request_carries_the_headers() -> None:
    raw = runner.request_bytes("/echo/x", 8080, TOKEN)
    assert raw == (b"GET /echo/x HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
                   b"Authorization: Bearer abc.def.ghi\r\nX-Bench: 1\r\n\r\n")
    assert runner.request_bytes("/", 1) == b"GET / HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n"


def test_load_generator_passes_the_headers_to_openloop(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    import bench.openloop

    seen: list[bytes] = []

    def fake(traffic: bench.openloop.Traffic, **_: object) -> None:
        seen.extend(traffic.requests)

    monkeypatch.setattr(bench.openloop, "run_open_loop", fake)
    opts = runner.Options(generator="openloop", path="/echo/x", headers=TOKEN, out=tmp_path)
    target = runner.Target("fastgw", None, 8080)  # type: ignore[arg-type]
    runner.LoadGenerator(opts).run(target, 1.0)
    assert seen == [runner.request_bytes("/echo/x", 8080, TOKEN)]


def _listed_state(listing: str, name: str) -> str:
    """The state line ``bench list`` prints under scenario ``name``."""
    lines = listing.splitlines()
    index = next(i for i, line in enumerate(lines) if line.split(" ", 1)[0] == name)
    return lines[index + 1].strip()


def test_jwt_scenarios_run_now_that_in_process_limits_landed() -> None:
    assert "memory-limits" in features.AVAILABLE
    for name in ("jwt-cached", "jwt-uncached"):
        scenario = SCENARIOS[name]
        assert scenario.gateway_config is jwt_config and scenario.setup is not None
        assert scenario.requires == ("proxy", "jwt", "memory-limits")
        assert scenario.peers == ()
        assert scenario.skip_reason() is None
    listing = subprocess.run([sys.executable, "-m", "bench", "list"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60, check=True).stdout
    for name in ("jwt-cached", "jwt-uncached"):
        assert _listed_state(listing, name) == "runs", listing


def test_jwt_config_turns_every_limit_level_on_without_refusing(tmp_path: Path) -> None:
    config = SCENARIOS["jwt-cached"].prepare(tmp_path, 60.0).config([9001], 9000)
    assert config["rate_limits"] is BENCH_LIMITS
    limits = parse_config(config, base_dir=tmp_path, env={}).rate_limits
    assert limits.global_limit.requests_per_second >= 1e9
    assert limits.endpoints["Passthrough"].requests_per_second >= 1e9
    free = limits.customer_tiers["free"]
    assert free.requests_per_second >= 1e9 and free.requests_per_day >= 10**15


def test_redis_limits_scenario_runs_once_its_feature_is_there(
        monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = SCENARIOS["redis-limits"]
    assert scenario.requires == ("proxy", "jwt", "redis-limits")
    assert scenario.gateway_config is redis_limits_config
    assert scenario.setup is jwt_setup and scenario.start is start_redis
    assert scenario.peers == () and scenario.shape == "load"
    without = frozenset(features.AVAILABLE - {"redis-limits"})
    monkeypatch.setattr(features, "AVAILABLE", without)
    assert scenario.skip_reason() == "needs rate limits in Redis: not in this build of fastgw yet"
    monkeypatch.setattr(features, "AVAILABLE", without | {"redis-limits"})
    assert scenario.skip_reason() is None


def test_redis_limits_config_is_jwt_cached_with_the_limits_in_redis(tmp_path: Path) -> None:
    made = jwt_setup(tmp_path, 60.0)
    socket = tmp_path / "redis.sock"
    config = redis_limits_config([9001], 9000, **made.config_args,
                                 redis_address=f"unix://{socket}")
    cached = jwt_config([9001], 9000, **made.config_args)
    assert config["gateway"]["rate_limiting"] == {
        "backend": "redis", "redis": {"address": f"unix://{socket}"}, "on_failure": "local"}
    del config["gateway"]["rate_limiting"]
    assert config == cached  # nothing else differs from jwt-cached
    parsed = parse_config(redis_limits_config([9001], 9000, **made.config_args,
                                              redis_address=f"unix://{socket}"),
                          base_dir=tmp_path, env={})
    assert parsed.gateway.rate_limiting.backend == "redis"
    assert parsed.gateway.rate_limiting.redis.address == f"unix://{socket}"


def test_a_scenario_with_helpers_is_not_prepared_without_the_runs_services(
        tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="needs the run's Services"):
        SCENARIOS["redis-limits"].prepare(tmp_path, 60.0)
    assert not (tmp_path / "redis.sock").exists()


def test_a_unix_socket_path_too_long_is_refused_before_anything_starts(
        tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    with Services() as services, pytest.raises(BenchError, match="shorter --out"):
        start_redis(services, deep)
    assert not deep.exists() and list(services) == []


def test_profiles_send_the_scenarios_headers(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    from bench import profile
    from bench.loadgen import LoadResult

    seen: list[tuple[str, object]] = []

    def fake(url: str, **kwargs: object) -> LoadResult:
        seen.append((url, kwargs["headers"]))
        return LoadResult(duration_s=1.0, requests=10, bytes=100, errors={"status": 0},
                          latency_ms={}, cpu_s=0.0, output="")

    monkeypatch.setattr(profile, "run_wrk", fake)
    opts = runner.Options(path="/echo/x", headers=TOKEN, out=tmp_path)
    target = runner.Target("fastgw", None, 8080)  # type: ignore[arg-type]
    load = profile.load_of(profile._load(target, opts, 2))
    assert seen == [("http://127.0.0.1:8080/echo/x", TOKEN)]
    assert load["requests"] == 10 and load["errors"] == 0


def test_helper_figures_get_medians_and_peaks() -> None:
    def record(run: int, redis_cpu: float, commands: float, rss: float) -> dict[str, object]:
        return {"run": run, "rps": 100.0, "requests": 100, "errors": 0, "errors_by_kind": {},
                "behind_s": None, "rss_mb": 50.0, "noisy": False,
                "proxy_cpu": {"exited": [], "started": []}, "cpu_us_per_request": 10.0,
                "helpers": ["redis"], "redis_cpu_us_per_request": redis_cpu,
                "redis_commands_per_request": commands, "redis_rss_mb": rss}

    summary = runner.summarize([record(1, 30.0, 2.0, 10.0), record(2, 50.0, 2.02, 12.0),
                                record(3, 40.0, 2.01, 11.0)])
    assert summary["helpers"] == ["redis"]
    assert summary["redis_cpu_us_per_request"] == 40.0
    assert summary["redis_commands_per_request"] == 2.01
    assert summary["redis_rss_mb"] == 12.0
    assert summary["cpu_us_per_request"] == 10.0  # the proxy's own, nothing added
    line = runner.helpers_line(record(1, 30.0, 2.0, 10.0))
    assert line == "  redis 30.0 CPU-µs/req 2.00 cmds/req"


@pytest.mark.parametrize(("name", "cache_size"), [("jwt-cached", 10_000),
                                                  ("jwt-uncached", 0)])
def test_jwt_setup_writes_a_key_config_and_token_that_agree(tmp_path: Path, name: str,
                                                            cache_size: int) -> None:
    prepared = SCENARIOS[name].prepare(tmp_path, 60.0)
    assert (tmp_path / "keys" / "private.pem").exists()
    config = prepared.config([9001], 9000)
    jwt_section = config["gateway"]["authentication"]["jwt"]
    assert jwt_section["public_key_file"] == str((tmp_path / "keys" / "public.pem").resolve())
    assert config["routes"][0]["auth"] == "required"
    parsed = parse_config(config, base_dir=tmp_path, env={})
    assert parsed.gateway.authentication.jwt.cache_max_entries == cache_size
    [(header, value)] = prepared.headers
    assert header == "Authorization" and value.startswith("Bearer ")
    public = (tmp_path / "keys" / "public.pem").read_bytes()
    claims = jwt.decode(value.removeprefix("Bearer "), public, algorithms=["RS256"])
    assert claims["customer_id"] == "bench"
    assert claims["exp"] - claims["iat"] >= 60 + TOKEN_SLACK_S
    # a second run into the same directory reuses the key (never overwritten) and still works
    again = SCENARIOS[name].prepare(tmp_path, 60.0)
    assert again.headers != prepared.headers  # a fresh token per run
    jwt.decode(again.headers[0][1].removeprefix("Bearer "), public, algorithms=["RS256"])

