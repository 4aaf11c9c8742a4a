"""Shared fixtures for process-level tests: real ``fastgw serve`` and mock metald processes on
127.0.0.1, each with its output collected, and torn down (SIGTERM, then SIGKILL) after the test.

Every wait here has a deadline: readiness is a line on a process's output, or a condition
polled with a bound; nothing sleeps a fixed time hoping something is ready.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fastgw.listen import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0  # a cold Python start plus imports and forks on a busy 2-core machine
STOP_TIMEOUT_S = 15.0
IO_TIMEOUT_S = 5.0
POLL_S = 0.02  # interval between two looks at a polled condition (always under a deadline)


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def fetch(
    port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One request on a new connection (new connections spread over the workers): its
    status and body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT_S)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(POLL_S)


class Proc:
    """A child process whose stdout and stderr are collected line by line by two threads."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.popen = subprocess.Popen(
            argv, cwd=cwd, env=subprocess_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self.stdout_lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._lock = threading.Lock()
        for stream, sink in ((self.popen.stdout, self.stdout), (self.popen.stderr, self.stderr)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

    def _pump(self, stream: Any, sink: list[str]) -> None:
        for line in stream:
            with self._lock:
                sink.append(line)
            if sink is self.stdout:
                self.stdout_lines.put(line)
        stream.close()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_stdout(self, needle: str, timeout_s: float = START_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or (self.popen.poll() is not None and self.stdout_lines.empty()):
                raise AssertionError(f"no {needle!r} on stdout (exit {self.popen.poll()}); "
                                     f"stderr:\n{self.stderr_text()}")
            with contextlib.suppress(queue.Empty):
                line = self.stdout_lines.get(timeout=min(left, 0.2))
                if needle in line:
                    return line

    def stderr_text(self) -> str:
        with self._lock:
            return "".join(self.stderr)

    def wait_stderr(self, needle: str, timeout_s: float = IO_TIMEOUT_S, count: int = 1) -> str:
        try:
            wait_until(lambda: self.stderr_text().count(needle) >= count, timeout_s,
                       f"{needle!r} x{count} on stderr")
        except AssertionError as error:
            raise AssertionError(f"{error}; stderr:\n{self.stderr_text()}") from None
        return self.stderr_text()

    def wait_exit(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        return self.popen.wait(timeout=timeout_s)

    def kill(self) -> None:
        """Teardown: SIGTERM, then SIGKILL the process and its remaining children."""
        if self.popen.poll() is None:
            children = child_pids(self.pid)
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                for pid in [self.pid, *children]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.popen.wait(timeout=STOP_TIMEOUT_S)


def child_pids(pid: int) -> set[int]:
    """Live child processes of ``pid`` (zombies excluded)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return set()
    alive = set()
    for child in map(int, text.split()):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                alive.add(child)
    return alive


# -- processes ------------------------------------------------------------------------------------


class MockBackend:
    """A mock metald in its own process (its own GIL: the client threads don't slow it)."""

    def __init__(self, tmp: Path) -> None:
        self.proc = Proc([sys.executable, "-m", "fastgw", "mock-metald", "--port", "0",
                          "--name", "pm-mock"], tmp)
        line = self.proc.wait_stdout("listening on")
        self.port = int(line.strip().rsplit(":", 1)[1])

    def control(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """GET (no body) or POST one of the mock's ``/__mock/*`` controls; its JSON answer."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=IO_TIMEOUT_S)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            conn.request("POST" if body is not None else "GET", path, payload,
                         {"Content-Type": "application/json"})
            reply = conn.getresponse()
            data = reply.read()
        finally:
            conn.close()
        assert reply.status == 200, (reply.status, data)
        return json.loads(data)


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> Callable[..., Any]:
    """The polling helper above, for test modules (which do not import conftest)."""
    return wait_until


@pytest.fixture(scope="session")
def mock_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockBackend]:
    mock = MockBackend(tmp_path_factory.mktemp("mock"))
    yield mock
    mock.proc.kill()


def gateway_config(port: int, backend_port: int, **server: Any) -> str:
    """The YAML of a small config: one backend, ``/echo`` open without auth."""
    fields = ", ".join(f"{k}: {v}" for k, v in {"host": "127.0.0.1", "port": port,
                                                  **server}.items())
    return (
        "gateway:\n"
        f"  server: {{{fields}}}\n"
        "  observability: {metrics: {port: 0}}\n"
        "routing:\n"
        f"  metald_instances: [{{host: 127.0.0.1, port: {backend_port}}}]\n"
        "routes: [{endpoint: Echo, path_prefix: /echo, auth: none}]\n"
    )


class Gateway:
    """A ``fastgw serve`` master (and its workers), started on a free port."""

    def __init__(self, tmp: Path, backend: MockBackend, *, workers: int = 2,
                 drain_timeout: str = "5s", script: str | None = None,
                 port: int | None = None) -> None:
        self.tmp = tmp
        self.port = port or free_port()
        self.config_path = tmp / "gateway.yaml"
        self.config_path.write_text(gateway_config(self.port, backend.port))
        args = ["-c", str(self.config_path), "--workers", str(workers),
                "--drain-timeout", drain_timeout]
        if script is None:
            argv = [sys.executable, "-m", "fastgw", "serve", *args]
        else:  # a test that patches something first runs its own script, which calls the CLI
            (tmp / "run_gateway.py").write_text(script)
            argv = [sys.executable, str(tmp / "run_gateway.py"), "serve", *args]
        self.proc = Proc(argv, tmp)
        self.workers = workers

    def wait_listening(self) -> str:
        line = self.proc.wait_stdout("fastgw listening on")
        assert f"http://127.0.0.1:{self.port} ({self.workers} workers, pid {self.proc.pid})" \
            in line, line
        return line

    def worker_pids(self) -> set[int]:
        return child_pids(self.proc.pid)

    def wait_workers(self, count: int, exclude: set[int] = frozenset(),  # type: ignore[assignment]
                     timeout_s: float = START_TIMEOUT_S) -> set[int]:
        """Wait until the master has exactly ``count`` children, none of them in ``exclude``."""
        def settled() -> set[int] | None:
            pids = self.worker_pids()
            return pids if len(pids) == count and not pids & exclude else None
        result: set[int] = wait_until(settled, timeout_s, f"{count} workers not in {exclude}")
        return result

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)


@pytest.fixture
def start_gateway(tmp_path: Path, mock_backend: MockBackend) -> Iterator[Callable[..., Gateway]]:
    """Start gateways in ``tmp_path`` (each must print its listening line); kill them after."""
    started: list[Gateway] = []

    def start(workers: int = 2, drain_timeout: str = "5s", script: str | None = None,
              wait: bool = True, port: int | None = None) -> Gateway:
        gateway = Gateway(tmp_path, mock_backend, workers=workers, drain_timeout=drain_timeout,
                          script=script, port=port)
        started.append(gateway)
        if wait:
            gateway.wait_listening()
        return gateway

    yield start
    for gateway in started:
        gateway.proc.kill()
    mock_backend.control("/__mock/reset", {"behaviour": True})
