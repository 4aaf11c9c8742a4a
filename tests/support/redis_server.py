"""A real ``redis-server`` for tests (STYLE 11: Redis is never mocked).

- ``redis_server`` (session fixture): one server for the whole run, listening on a unix socket
  and on a free TCP port of 127.0.0.1, with no persistence (``--save '' --appendonly no``).
  It yields a ``RedisServer``: ``.address`` (``host:port``), ``.unix_path``,
  ``.unix_address`` (``unix:///...``), ``.client()`` (a sync ``redis.Redis``, closed at the end
  of the session at the latest).
- ``redis_clean`` (function fixture): the same server, FLUSHALLed before the test.
- ``start_redis(directory, ...)``: more servers, for tests that need their own (one that comes
  and goes, on a fixed port or socket; a password; a one-node Cluster); the caller calls
  ``stop()``.
- ``start_cluster(directory, masters=3, replicas_per_master=0|1)`` / ``running_cluster(...)``:
  a real multi-node Redis Cluster, its slots split evenly over the masters, created with
  ``CLUSTER ADDSLOTSRANGE`` + ``CLUSTER MEET`` + ``CLUSTER REPLICATE`` and ready when every
  node reports ``cluster_state:ok``, knows every node, and every replica's link is up.

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
from collections.abc import Callable, Iterator
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
    cluster_port: int = 0
    password: str = ""
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
            password=self.password or None,
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

    def kill(self) -> None:
        """SIGKILL, no clean shutdown (a crash, as seen by clients and the Cluster)."""
        for client in self._clients:
            client.close()
        self._clients.clear()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

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
    directory: Path,
    *,
    tcp: bool = True,
    unix_path: Path | None = None,
    cluster: bool = False,
    port: int | None = None,
    password: str = "",
) -> RedisServer:
    """Start a redis-server whose files (socket, log, cluster state) live in ``directory``.

    ``port`` binds that TCP port (a restart on the same address) instead of a free one;
    ``password`` sets ``requirepass``. ``cluster`` makes a one-node Cluster owning every slot."""
    server = _spawn(
        directory, tcp=tcp, unix_path=unix_path, cluster=cluster, port=port, password=password
    )
    if cluster:
        _assign_all_slots(server)
    return server


def _spawn(
    directory: Path,
    *,
    tcp: bool,
    unix_path: Path | None,
    cluster: bool,
    port: int | None,
    password: str,
) -> RedisServer:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(MISSING, pytrace=False)
    directory.mkdir(parents=True, exist_ok=True)
    socket_path = str(unix_path or directory / "redis.sock")
    for _attempt in range(BIND_ATTEMPTS):
        tcp_port = port if port is not None else free_port() if tcp or cluster else 0
        bus_port = free_port() if cluster else 0
        argv = [
            binary,
            "--port", str(tcp_port),
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
                "--cluster-port", str(bus_port),
                "--cluster-announce-ip", "127.0.0.1",
                "--repl-diskless-sync-delay", "0",  # replicas sync at once, not after 5 s
                # Gossip every ~1 s instead of 7.5 s (a multi-node Cluster agrees quicker);
                # no automatic failover, so a slow CI machine cannot trigger one: tests use
                # CLUSTER FAILOVER TAKEOVER.
                "--cluster-node-timeout", "2000",
                "--cluster-replica-no-failover", "yes",
            ]  # fmt: skip
        if password:
            argv += ["--requirepass", password]
        with (directory / "redis.log").open("wb") as log:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        server = RedisServer(
            "127.0.0.1", tcp_port, socket_path, directory, process, cluster, bus_port, password
        )
        if _wait_ready(server):
            return server
        server.stop()
        if "Address already in use" not in server.log_tail(200) or port is not None:
            break
    pytest.fail(f"redis-server did not start:\n{server.log_tail()}", pytrace=False)


def _wait_ready(server: RedisServer) -> bool:
    """True once the server answers PING on every listener; False if it exited first."""
    auth = {"password": server.password or None}
    probes = [redis.Redis(unix_socket_path=server.unix_path, **auth, **_PROBE)]
    if server.port:
        probes.append(redis.Redis(host=server.host, port=server.port, **auth, **_PROBE))
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


@dataclass
class RedisClusterNodes:
    """A running multi-node Cluster: ``masters[i]`` owns the i-th share of the slots and
    ``replicas[i]`` (empty without replicas) replicate it."""

    directory: Path
    masters: list[RedisServer]
    replicas: list[list[RedisServer]]

    @property
    def nodes(self) -> list[RedisServer]:
        return self.masters + [r for group in self.replicas for r in group]

    @property
    def address(self) -> str:
        """A seed address (the first master's ``host:port``)."""
        return self.masters[0].address

    def node_ids(self) -> dict[str, RedisServer]:
        """Each live node by its Cluster node id."""
        ids = {}
        for node in self.nodes:
            if node.process.poll() is None:
                with node.client() as client:
                    ids[client.execute_command("CLUSTER", "MYID").decode()] = node
        return ids

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_cluster(
    directory: Path, *, masters: int = 3, replicas_per_master: int = 0
) -> RedisClusterNodes:
    """Start and join a Cluster whose nodes keep their files under ``directory`` (see the
    module docstring); every wait is bounded by ``START_TIMEOUT_S``."""
    started: list[RedisServer] = []

    def spawn(name: str) -> RedisServer:
        server = _spawn(
            directory / name, tcp=True, unix_path=None, cluster=True, port=None, password=""
        )
        started.append(server)
        return server

    try:
        primaries = [spawn(f"m{i}") for i in range(masters)]
        replicas = [
            [spawn(f"m{i}r{j}") for j in range(replicas_per_master)] for i in range(masters)
        ]
        share = 16384 // masters
        for i, node in enumerate(started):
            with node.client() as client:
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
                if i < masters:
                    last = 16383 if i == masters - 1 else (i + 1) * share - 1
                    client.execute_command("CLUSTER", "ADDSLOTSRANGE", i * share, last)
                for other in started[:i]:  # every pair meets: no waiting on gossip to spread
                    client.execute_command(
                        "CLUSTER", "MEET", other.host, other.port, other.cluster_port
                    )
        _wait_cluster(started, "every node to know every other", _knows(len(started)))
        for primary, group in zip(primaries, replicas, strict=True):
            with primary.client() as client:
                master_id = client.execute_command("CLUSTER", "MYID")
            for replica in group:
                with replica.client() as client:
                    client.execute_command("CLUSTER", "REPLICATE", master_id)
        _wait_cluster(started, "cluster_state:ok", _state_ok)
        linked = [replica for group in replicas for replica in group]
        _wait_cluster(linked, "replica links up", _link_up)
        _wait_cluster(started, "agreed masters", _masters(masters))
        return RedisClusterNodes(directory, primaries, replicas)
    except BaseException:
        for server in started:
            server.stop()
        raise


def _nodes_text(client: redis.Redis) -> bytes:
    reply = client.execute_command("CLUSTER", "NODES")
    return reply if isinstance(reply, bytes) else str(reply).encode()


def _knows(count: int) -> Callable[[redis.Redis], bool]:
    def ready(client: redis.Redis) -> bool:  # one line per node, none still in handshake
        text = _nodes_text(client)
        return text.count(b"\n") >= count and b"handshake" not in text

    return ready


def _state_ok(client: redis.Redis) -> bool:
    return client.cluster("INFO").get("cluster_state") == "ok"


def _link_up(client: redis.Redis) -> bool:
    return client.info("replication").get("master_link_status") == "up"


def _masters(count: int) -> Callable[[redis.Redis], bool]:
    def ready(client: redis.Redis) -> bool:  # exactly ``count`` healthy masters
        flags = [set(line.split()[2].split(b",")) for line in _nodes_text(client).splitlines()]
        return sum(b"master" in f and not f & {b"fail", b"fail?"} for f in flags) == count

    return ready


def _wait_cluster(
    nodes: list[RedisServer], what: str, ready: Callable[[redis.Redis], bool]
) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    for node in nodes:
        with node.client() as client:
            while not ready(client):
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"redis cluster: no {what} after {START_TIMEOUT_S}s ({node.address}):\n"
                        f"{_nodes_text(client).decode(errors='replace')}",
                        pytrace=False,
                    )
                time.sleep(POLL_S)


@contextlib.contextmanager
def running_cluster(
    prefix: str = "fgw-rc-", *, masters: int = 3, replicas_per_master: int = 0
) -> Iterator[RedisClusterNodes]:
    """A Cluster in a fresh short temporary directory, stopped and removed at the end."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        cluster = start_cluster(directory, masters=masters, replicas_per_master=replicas_per_master)
        try:
            yield cluster
        finally:
            cluster.stop()
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
