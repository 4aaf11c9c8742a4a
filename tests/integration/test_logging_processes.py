"""Logging in the real process model: ``fastgw serve --workers 2`` with ``logging.output`` a
file (relative to the config file), debug level and the access log on. The file holds JSON
lines from the master and from both workers, one access line per request, and no token of any
kind; a logrotate-style rename is followed without a signal; a reload switches the format."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt

from fastgw.listen import free_port
from tests.integration.conftest import (
    IO_TIMEOUT_S,
    REPO_ROOT,
    Gateway,
    MockBackend,
    Proc,
    fetch,
    gateway_config,
    subprocess_env,
    wait_until,
)
from tests.integration.test_process_model import FAILING_BIND  # workers that cannot boot

SECRET = "logging-process-test-secret-logging!!!!"
ROTATION_TIMEOUT_S = 10.0  # every worker checks the path once a second, when it writes


def config_text(
    port: int, backend: int, fmt: str = "json", output: str = "logs/gateway.log"
) -> str:
    return (
        "gateway:\n"
        f"  server: {{host: 127.0.0.1, port: {port}}}\n"
        "  authentication:\n"
        f"    jwt: {{algorithm: HS256, hs_secret: '{SECRET}'}}\n"
        "    development: {enabled: true}\n"
        "    token_sources: [header, 'query:access_token', 'cookie:session']\n"
        "  observability:\n"
        "    metrics: {port: 0}\n"
        f"    logging: {{level: debug, format: {fmt}, output: {output},"
        " access_log: true}\n"
        "routing:\n"
        f"  metald_instances: [{{host: 127.0.0.1, port: {backend}}}]\n"
        "routes: [{endpoint: Echo, path_prefix: /echo}]\n"
    )


def secrets() -> dict[str, str]:
    now = int(time.time())
    return {
        "valid": jwt.encode({"customer_id": "acme", "exp": now + 600}, SECRET, "HS256"),
        "expired": jwt.encode({"customer_id": "acme", "exp": now - 600}, SECRET, "HS256"),
        "forged": jwt.encode({"customer_id": "acme", "exp": now + 600}, "f" * 40, "HS256"),
        "dev": "dev_customer_777",
        "garbage": "zz9-not-a-token_at-all",
    }


def send(port: int, path: str, headers: dict[str, str] | None = None) -> int:
    """One request on a new connection (new connections spread over both workers)."""
    return fetch(port, path, headers=headers)[0]


def json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_json_logs_from_every_process_without_tokens(
    tmp_path: Path, mock_backend: MockBackend
) -> None:
    port = free_port()
    (tmp_path / "logs").mkdir()
    config = tmp_path / "gateway.yaml"
    config.write_text(config_text(port, mock_backend.port))
    log = tmp_path / "logs" / "gateway.log"
    tokens = secrets()
    proc = Proc([sys.executable, "-m", "fastgw", "serve", "-c", str(config), "--workers", "2"],
                tmp_path)  # fmt: skip
    try:
        proc.wait_stdout("fastgw listening on")
        sent: list[tuple[str, int]] = []
        for name, token in tokens.items():
            for where in ("header", "query", "cookie"):
                if where == "header":
                    status = send(port, "/echo/x", {"Authorization": f"Bearer {token}"})
                elif where == "query":
                    status = send(port, f"/echo/x?access_token={token}")
                else:
                    status = send(port, "/echo/x", {"Cookie": f"session={token}"})
                sent.append((name, status))
        assert {status for name, status in sent if name in ("valid", "dev")} == {200}
        assert {status for name, status in sent if name not in ("valid", "dev")} == {401}

        # The first generation's lines, before anything moves the file.
        wait_until(lambda: sum('"fastgw.access"' in line for line in log.read_text().splitlines())
                   >= len(sent), IO_TIMEOUT_S, "every access line")  # fmt: skip
        lines = json_lines(log)
        master = [line for line in lines if "worker" not in line]
        workers = {line["worker"] for line in lines if "worker" in line}
        assert workers == {0, 1}
        assert any("spawned worker" in line["msg"] for line in master)
        assert all(line["pid"] == proc.pid for line in master)
        access = [line for line in lines if line["logger"] == "fastgw.access"]
        assert len(access) == len(sent)
        assert sorted(line["status"] for line in access) == sorted(s for _, s in sent)
        assert {line["customer_id"] for line in access if line["status"] == 200} == {
            "acme", "777",
        }  # fmt: skip

        # logrotate's create mode: rename, then the processes follow within a second or so.
        log.rename(tmp_path / "logs" / "gateway.log.1")

        def rotated() -> bool:
            send(port, "/echo/after-rotation", {"Authorization": "Bearer dev_customer_1"})
            return log.exists() and '"fastgw.access"' in log.read_text()

        wait_until(rotated, ROTATION_TIMEOUT_S, "an access line in the new file")

        # An output that cannot be opened rejects the reload; logging goes on where it was.
        config.write_text(config_text(port, mock_backend.port, output="missing/gateway.log"))
        proc.popen.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload rejected: $.gateway.observability.logging.output: cannot "
                   "open log output" in log.read_text(), IO_TIMEOUT_S, "the rejection")  # fmt: skip

        # A reload that switches to text: the master at once, the new workers from their fork.
        config.write_text(config_text(port, mock_backend.port, fmt="text"))
        proc.popen.send_signal(signal.SIGHUP)
        wait_until(lambda: "INFO fastgw.supervisor: reload complete" in log.read_text(),
                   IO_TIMEOUT_S * 2, "the reload, logged as text")  # fmt: skip
        wait_until(lambda: send(port, "/echo/text") == 401 and
                   " INFO fastgw.access: GET /echo/text 401 " in log.read_text(),
                   IO_TIMEOUT_S, "a text access line from the new generation")  # fmt: skip
    finally:
        proc.kill()
    assert proc.popen.returncode == 0
    everything = "".join(
        [path.read_text() for path in sorted((tmp_path / "logs").iterdir())]
        + proc.stdout + proc.stderr
    )
    assert proc.stderr == []  # every line went to the configured file
    assert "Traceback" not in everything
    for name, token in tokens.items():
        assert token not in everything, name
        for piece in token.split("."):
            assert len(piece) < 8 or piece not in everything, (name, piece)
    assert (tmp_path / "logs" / "gateway.log.1").read_text().endswith("\n")


def test_an_output_that_cannot_be_opened_stops_serve_with_the_key_path(
    tmp_path: Path, mock_backend: MockBackend
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(config_text(free_port(), mock_backend.port, output="nope/gateway.log"))
    done = subprocess.run(
        [sys.executable, "-m", "fastgw", "serve", "-c", str(config), "--workers", "1"],
        cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("$.gateway.observability.logging.output: cannot open log output")
    assert str(tmp_path / "nope" / "gateway.log") in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_a_reload_whose_workers_cannot_boot_gives_the_master_its_logging_back(
    start_gateway: Any, mock_backend: MockBackend
) -> None:
    gateway: Gateway = start_gateway(workers=2, script=FAILING_BIND)  # JSON lines on stderr
    text = gateway_config(gateway.port, mock_backend.port).replace(
        "observability: {metrics: {port: 0}}",
        "observability: {metrics: {port: 0}, logging: {format: text}}",
    )
    assert "format: text" in text
    gateway.config_path.write_text(text)
    (gateway.tmp / "fail-bind").touch()
    gateway.signal(signal.SIGHUP)  # checks pass: the master switches to text, then boots
    gateway.proc.wait_stderr("reload failed: worker")
    assert " ERROR fastgw.supervisor: reload failed: worker" in gateway.proc.stderr_text()

    # The old generation serves, and the master logs as it did before that reload: JSON.
    gateway.config_path.write_text("routes: not-a-list\n")
    gateway.signal(signal.SIGHUP)
    gateway.proc.wait_stderr("reload rejected")
    rejected = [line for line in gateway.proc.stderr if "reload rejected" in line]
    assert rejected and all(json.loads(line)["level"] == "error" for line in rejected), rejected
