"""The command line as a user meets it: exit codes and one line per problem, no tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).parent.parent / "data"


def fastgw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastgw", *args],
        check=False, capture_output=True, text=True, timeout=60,
    )


def test_check_config_accepts_the_reference_blocks() -> None:
    result = fastgw("check-config", "-c", str(DATA / "reference.yaml"))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_check_config_reports_every_problem_with_its_path(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "gateway:\n  server:\n    prot: 80\n"
        "routing:\n  metald_instances:\n    - {host: a, port: 1}\n    - {host: b, port: x}\n"
    )
    result = fastgw("check-config", "-c", str(config))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith("$.gateway.server.prot: unknown key") for line in lines), lines
    assert any(line.startswith("$.routing.metald_instances[1].port:") for line in lines), lines
    assert "Traceback" not in result.stderr


def test_check_config_names_a_missing_file(tmp_path: Path) -> None:
    result = fastgw("check-config", "-c", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "nope.yaml" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("routing: {metald_instances: []}\n")
    result = fastgw("serve", "-c", str(config), "--workers", "1")
    assert result.returncode == 2
    assert "$.routing.metald_instances" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_command_line_is_a_usage_error() -> None:
    result = fastgw("demo", "--workers", "zero")
    assert result.returncode == 2
    assert "--workers" in result.stderr
    assert "Traceback" not in result.stderr
