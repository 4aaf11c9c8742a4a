"""Verdicts and scenario selection of the benchmark suite (no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.scenarios import SCENARIOS, resolve
from bench.verdict import REFERENCE_LOAD, SUITE_LOAD, Limit, judge, load_targets, parse_cli
from fastgw import features


@pytest.mark.parametrize(("text", "key", "value"), [
    ("p99_ms=5", "p99_ms", 5.0),
    ("p99_ms=5ms", "p99_ms", 5.0),
    ("p99_ms=0.2s", "p99_ms", 200.0),
    ("rps=20000", "rps", 20000.0),
    ("cpu_vs_nginx=1.3", "cpu_vs_nginx", 1.3),
    ("errors=0", "errors", 0.0),
    ("error_share=0.0001", "error_share", 0.0001),
])
def test_cli_targets_parse(text: str, key: str, value: float) -> None:
    limit = parse_cli(text)
    assert (limit.key, limit.value, limit.source) == (key, pytest.approx(value), "cli")


@pytest.mark.parametrize("text", ["p98=3", "rps=abc", "rps=-1", "p99_ms", "cpu_vs_=2",
                                  "rps=5ms", "rps=0", "errors=-1"])
def test_bad_cli_targets_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        parse_cli(text)


def test_targets_file_common_and_per_scenario(tmp_path: Path) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text("p99_ms: 5ms\nscenarios:\n  passthrough: {rps: 30000}\n")
    targets = load_targets(path)
    assert [(lim.key, lim.value) for lim in targets.for_scenario("passthrough")] == [
        ("p99_ms", 5.0), ("rps", 30000.0)]
    assert [lim.key for lim in targets.for_scenario("idle-10k")] == ["p99_ms"]
    assert all(lim.source == str(path) for lim in targets.for_scenario("passthrough"))


@pytest.mark.parametrize(("text", "where"), [
    ("scenarios:\n  passthrough: {bogus: 1}\n", "$.scenarios.passthrough.bogus"),
    ("p99_ms: fast\n", "$.p99_ms"),
    ("- 1\n", "expected a mapping"),
    ("scenarios: [1]\n", "$.scenarios"),
    ("p99_ms: [\n", "targets.yaml"),
    ("scenarios:\n  passthru: {p99_ms: 1}\n", "$.scenarios.passthru: unknown scenario"),
])
def test_bad_targets_file_names_the_key(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"targets\.yaml") as caught:
        load_targets(path)
    assert where in str(caught.value)


def test_missing_targets_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nope\.yaml"):
        load_targets(tmp_path / "nope.yaml")


FASTGW = {"p50_ms": 2.0, "p95_ms": 4.0, "p99_ms": 6.0, "rps": 24000.0, "errors": 0}


def test_errors_fail_a_verdict_that_latency_alone_would_pass() -> None:
    fast_errors = {**FASTGW, "errors": 250000, "error_share": 0.9}
    assert judge(fast_errors, {}, REFERENCE_LOAD)["passed"]  # latency and RPS alone: fine
    verdict = judge(fast_errors, {}, REFERENCE_LOAD + SUITE_LOAD)
    assert not verdict["passed"]
    assert [c["name"] for c in verdict["checks"] if not c["ok"]] == ["error_share"]
    assert judge({**FASTGW, "error_share": 0.0}, {}, SUITE_LOAD)["passed"]


def test_reference_targets_are_strict_bounds() -> None:
    at_limit = {**FASTGW, "p50_ms": 10.0}  # the reference says p50 < 10 ms
    verdict = judge(at_limit, {}, REFERENCE_LOAD)
    assert [c["name"] for c in verdict["checks"] if not c["ok"]] == ["p50_ms"]
    assert judge(at_limit, {}, [Limit("p50_ms", 10.0, "cli")])["passed"]  # "at most" when given


def test_aliases_in_targets_files(tmp_path: Path) -> None:
    path = tmp_path / "targets.yaml"
    path.write_text("scenarios:\n  idle: {rss_mb: 120}\n")
    assert [lim.key for lim in load_targets(path).for_scenario("idle-10k")] == ["rss_mb"]


def test_reference_targets_pass_and_fail() -> None:
    assert judge(FASTGW, {}, REFERENCE_LOAD)["passed"]
    slow = {**FASTGW, "p99_ms": 150.0, "rps": 9000.0}
    verdict = judge(slow, {}, REFERENCE_LOAD)
    assert not verdict["passed"]
    assert {c["name"] for c in verdict["checks"] if not c["ok"]} == {"p99_ms", "rps"}


def test_a_ratio_target_reads_the_peer_ratio_and_fails_when_the_peer_did_not_run() -> None:
    limit = Limit("cpu_vs_nginx", 1.3, "cli")
    assert judge(FASTGW, {"fastgw/nginx": {"cpu_us_per_request": 1.2}}, [limit])["passed"]
    assert not judge(FASTGW, {"fastgw/nginx": {"cpu_us_per_request": 1.9}}, [limit])["passed"]
    missing = judge(FASTGW, {}, [limit])
    assert not missing["passed"]
    assert missing["checks"][0]["value"] is None


def test_scenario_selection() -> None:
    assert [s.name for s in resolve("all")] == list(SCENARIOS)
    assert [s.name for s in resolve("idle, passthrough,idle-10k")] == ["idle-10k", "passthrough"]
    with pytest.raises(ValueError, match="bogus"):
        resolve("passthrough,bogus")


def test_scenarios_name_only_known_features_and_skip_what_is_missing() -> None:
    for scenario in SCENARIOS.values():
        assert features.missing(scenario.requires) == [
            f for f in scenario.requires if f not in features.AVAILABLE]
        reason = scenario.skip_reason()
        if features.missing(scenario.requires):
            assert reason is not None
            for name in features.missing(scenario.requires):
                assert features.KNOWN[name] in reason
    assert SCENARIOS["passthrough"].skip_reason() is None
    with pytest.raises(ValueError, match="teleport"):
        features.missing(("proxy", "teleport"))
