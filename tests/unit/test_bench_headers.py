"""Scenario request headers: from a scenario's setup to wrk's command line and the open-loop
generator's request bytes; and the JWT scenarios' setup (a key pair on disk, a config fastgw
accepts, a token that key verifies), while both scenarios stay skipped until in-process rate
limits land. The probe against a real fastgw: tests/system/test_bench_jwt_setup.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from bench import runner
from bench.scenarios import SCENARIOS, TOKEN_SLACK_S, jwt_config
from bench.wrk import wrk_argv
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


def test_jwt_scenarios_stay_skipped_for_rate_limits() -> None:
    for name in ("jwt-cached", "jwt-uncached"):
        scenario = SCENARIOS[name]
        assert scenario.gateway_config is jwt_config and scenario.setup is not None
        assert scenario.requires == ("proxy", "jwt", "memory-limits")
        assert scenario.peers == ()
        assert scenario.skip_reason() == ("needs in-process rate limits: not in this build "
                                          "of fastgw yet")
    listing = subprocess.run([sys.executable, "-m", "bench", "list"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60, check=True).stdout
    for name in ("jwt-cached", "jwt-uncached"):
        block = listing.split(name, 1)[1].splitlines()[:2]
        assert "skipped (needs in-process rate limits" in "\n".join(block), listing


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

