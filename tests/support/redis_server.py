"""A real ``redis-server`` for tests (STYLE 11: Redis is never mocked).

- ``redis_server`` (session fixture): one server for the whole run, listening on a unix socket
  and on a free TCP port of 127.0.0.1, with no persistence (``--save '' --appendonly no``).
  It yields a ``RedisServer``: ``.address`` (``host:port``), ``.unix_path``,
  ``.unix_address`` (``unix:///...``), ``.client()`` (a sync ``redis.Redis``, closed at the end
  of the session at the latest).
- ``redis_clean`` (function fixture): the same server, FLUSHALLed before the test.
- ``start_redis(directory, ...)``: more servers, for tests that need their own (one that comes
  and goes, a one-node Cluster); the caller calls ``stop()``.

The binary comes from PATH. When it is missing the fixture fails, naming the package to
install: a missing Redis must never turn into a quiet skip. Readiness is a PING answered,
polled under a deadline; a TCP port lost to another process between ``free_port()`` and the
bind is retried on a new port.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from fastgw.listen import free_port

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
BIND_ATTEMPTS = 5
POLL_S = 0.01  # interval between two PINGs while waiting (always under a deadline)
MISSING = (
    "redis-server is not on PATH: the Redis tests need a real server "
    "(apt-get install -y redis-server; .ci/run installs it)"
)


@dataclass
class RedisServer:
    """One running redis-server; ``port`` 0 when it has no TCP listener."""

    host: str
    port: int
    unix_path: str
    directory: Path
    process: subprocess.Popen[bytes]
    cluster: bool = False
    _clients: list[redis.Redis] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def unix_address(self) -> str:
        return f"unix://{self.unix_path}"

    def client(self) -> redis.Redis:
        """A sync client over the unix socket (bytes replies); closed by ``stop()`` if the
        test did not close it (``with server.client() as c:``)."""
        client = redis.Redis(
            unix_socket_path=self.unix_path,
            socket_timeout=5.0,
            socket_connect_timeout=5.0,
            retry=Retry(NoBackoff(), 0),
        )
        self._clients.append(client)
        return client

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.directory / "redis.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_redis(
    directory: Path, *, tcp: bool = True, unix_path: Path | None = None, cluster: bool = False
) -> RedisServer:
    """Start a redis-server whose files (socket, log, cluster state) live in ``directory``."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(MISSING, pytrace=False)
    directory.mkdir(parents=True, exist_ok=True)
    socket_path = str(unix_path or directory / "redis.sock")
    for _attempt in range(BIND_ATTEMPTS):
        port = free_port() if tcp or cluster else 0
        argv = [
            binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--unixsocket", socket_path,
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(directory),
        ]  # fmt: skip
        if cluster:
            argv += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(directory / "nodes.conf"),
                "--cluster-port", str(free_port()),
                "--cluster-announce-ip", "127.0.0.1",
            ]  # fmt: skip
        with (directory / "redis.log").open("wb") as log:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        server = RedisServer("127.0.0.1", port, socket_path, directory, process, cluster)
        if _wait_ready(server):
            if cluster:
                _assign_all_slots(server)
            return server
        server.stop()
        if "Address already in use" not in server.log_tail(200):
            break
    pytest.fail(f"redis-server did not start:\n{server.log_tail()}", pytrace=False)


def _wait_ready(server: RedisServer) -> bool:
    """True once the server answers PING on every listener; False if it exited first."""
    probes = [redis.Redis(unix_socket_path=server.unix_path, **_PROBE)]
    if server.port:
        probes.append(redis.Redis(host=server.host, port=server.port, **_PROBE))
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        for probe in probes:
            while True:
                if server.process.poll() is not None:
                    return False
                try:
                    if probe.ping():
                        break
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    server.stop()
                    pytest.fail(
                        f"redis-server not answering PING after {START_TIMEOUT_S}s:\n"
                        f"{server.log_tail()}",
                        pytrace=False,
                    )
                time.sleep(POLL_S)
    finally:
        for probe in probes:
            probe.close()
    return True


_PROBE = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0, "retry": Retry(NoBackoff(), 0)}


def _assign_all_slots(server: RedisServer) -> None:
    """Make a one-node Cluster: every slot on this node, then wait for ``cluster_state:ok``."""
    with server.client() as client:
        client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        deadline = time.monotonic() + START_TIMEOUT_S
        while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
            if time.monotonic() > deadline:
                server.stop()
                pytest.fail("one-node redis cluster never reached cluster_state:ok", pytrace=False)
            time.sleep(POLL_S)


@contextlib.contextmanager
def running_redis(prefix: str = "fastgw-redis-", *, cluster: bool = False) -> Iterator[RedisServer]:
    """A redis-server in a fresh short temporary directory, stopped and removed at the end.

    Not tmp_path_factory: a unix socket path must fit in 107 bytes, and pytest's base
    temporary directory can be long (TMPDIR, user name, run number).
    """
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        server = start_redis(directory, cluster=cluster)
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture
def redis_clean(redis_server: RedisServer) -> RedisServer:
    """The session's server, emptied (FLUSHALL) before the test."""
    with redis_server.client() as client:
        client.flushall()
    return redis_server
