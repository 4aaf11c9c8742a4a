"""The process model end to end: ``fastgw serve`` as a real master with real forked workers, real
sockets on 127.0.0.1, a mock metald process as the backend, and signals sent by the test.

Which worker served a connection is read from the kernel (``socket_owner`` below), so the
gateway needs no extra header. Tests that need a fault no config can cause (a worker that
cannot bind, a blocked event loop) run the CLI from a small script that patches one function
first; the production code has no test hooks.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.blocking_client import (
    Response,
    get_with_stale_retry,
    http_request,
    read_response,
)

if TYPE_CHECKING:
    from conftest import Gateway, MockBackend

pytestmark = pytest.mark.timeout(60)

StartGateway = Callable[..., "Gateway"]

CLI_MAIN = "from fastgw.cli import main\nraise SystemExit(main(sys.argv[1:]))\n"


IO_TIMEOUT_S = 5.0
LOAD_S = 3.0
WaitUntil = Callable[..., Any]


# -- connections (the client itself: tests/support/blocking_client.py) ----------------------


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def get(port: int, path: str) -> Response:
    """One request on a new connection."""
    with connect(port) as sock:
        return http_request(sock, "GET", path)


def socket_owner(client: socket.socket, server_port: int, pids: set[int]) -> int | None:
    """Which of ``pids`` holds the server side of ``client``'s TCP connection.

    The kernel's table of TCP sockets (``/proc/net/tcp``) gives the inode of the socket whose
    local port is the gateway's and whose peer port is ours; the worker that has that inode
    among its ``/proc/<pid>/fd`` accepted the connection. No header, no backdoor.
    """
    client_port = client.getsockname()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        remote_port = int(fields[2].rsplit(":", 1)[1], 16)
        if local_port == server_port and remote_port == client_port:
            inode = fields[9]
            break
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        if target in links:
            return pid
    return None


def assert_serves(gateway: Gateway, requests: int = 5) -> None:
    for _ in range(requests):
        reply = get(gateway.port, "/echo/ok")
        assert reply.status == 200, reply


def test_reuseport_spreads_new_connections_over_workers(start_gateway: StartGateway) -> None:
    gateway = start_gateway(workers=2)
    workers = gateway.wait_workers(2)
    owners: Counter[int | None] = Counter()
    with contextlib.ExitStack() as open_connections:
        for _ in range(40):  # kept open, so the kernel still lists each one when we look
            sock = open_connections.enter_context(connect(gateway.port))
            assert http_request(sock, "GET", "/echo/spread").status == 200
            owners[socket_owner(sock, gateway.port, workers)] += 1
    # The kernel hashes each new connection's 4-tuple to one listener: with 40 connections the
    # chance that one worker got none is 2**-39.
    assert set(owners) == workers, owners


def test_sigterm_drains_in_flight_request_then_exits(
        start_gateway: StartGateway, mock_backend: MockBackend, wait_until: WaitUntil) -> None:
    gateway = start_gateway(workers=2, drain_timeout="10s")
    mock_backend.control("/__mock/behaviour", {"delay_ms": 1500})
    with connect(gateway.port) as slow:
        slow.sendall(b"GET /echo/slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
        wait_until(lambda: mock_backend.control("/__mock/stats")["by_path"].get("/echo/slow"),
                   IO_TIMEOUT_S, "the slow request to reach the backend")
        gateway.signal(signal.SIGTERM)

        def refused() -> bool:  # listeners close at once, while the slow request still runs
            try:
                connect(gateway.port).close()
            except ConnectionRefusedError:
                return True
            return False
        wait_until(refused, IO_TIMEOUT_S, "new connections to be refused")
        reply = read_response(slow)
    assert reply.status == 200, reply
    assert not reply.keep_alive  # a draining worker answers with Connection: close
    assert gateway.proc.wait_exit() == 0
    with pytest.raises(ConnectionRefusedError):
        connect(gateway.port)


@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    new_connections: int = 0
    stale_retries: int = 0  # a reused keep-alive connection closed before any response byte
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def load_loop(port: int, keep_alive: bool, stop: threading.Event, result: LoadResult) -> None:
    """Requests back to back (``get_with_stale_retry``: a reused keep-alive connection that
    gets no byte back is retried once on a new one). Any other error is a failure."""
    sock: socket.socket | None = None

    def stale() -> None:
        with result.lock:
            result.stale_retries += 1

    while not stop.is_set():
        reused = sock is not None
        try:
            if sock is None:
                sock = connect(port)
                with result.lock:
                    result.new_connections += 1
            sock, reply = get_with_stale_retry(
                sock, reused, lambda: connect(port), "/echo/load", stale
            )
            with result.lock:
                result.sent += 1
                if reply.status == 200:
                    result.ok += 1
                else:
                    result.failures.append(f"status {reply.status}: {reply.body[:120]!r}")
            if not keep_alive or not reply.keep_alive:
                sock.close()
                sock = None
        except Exception as error:
            with result.lock:
                result.sent += 1
                name = errno.errorcode.get(getattr(error, "errno", 0) or 0, "")
                result.failures.append(f"{'reused' if reused else 'new'}: "
                                       f"{type(error).__name__} {name} {error}")
            if sock is not None:
                sock.close()
            sock = None
    if sock is not None:
        sock.close()


def test_reload_under_load_loses_no_request(
        start_gateway: StartGateway, wait_until: WaitUntil) -> None:
    gateway = start_gateway(workers=2, drain_timeout="5s")
    before = gateway.wait_workers(2)
    result = LoadResult()
    stop = threading.Event()
    clients = [threading.Thread(target=load_loop, args=(gateway.port, keep_alive, stop, result))
               for keep_alive in (True, True, False, False)]
    for client in clients:
        client.start()
    started = time.monotonic()

    def elapsed(seconds: float) -> Callable[[], bool]:
        return lambda: time.monotonic() - started >= seconds
    try:  # ~3 s of load: a reload at ~0.75 s and another at ~1.75 s, then a tail on the new one
        for reload_number, at_s in ((1, 0.75), (2, 1.75)):
            wait_until(elapsed(at_s), LOAD_S, "the load to run a while")
            gateway.signal(signal.SIGHUP)
            gateway.proc.wait_stderr("reload complete", count=reload_number)
        wait_until(elapsed(LOAD_S), LOAD_S, "the end of the load")
    finally:
        stop.set()
        for client in clients:
            client.join(IO_TIMEOUT_S)
    after = gateway.wait_workers(2, exclude=before)
    print(f"\nreload under load: {result.sent} requests, {result.ok} ok, "
          f"{result.new_connections} new connections, {result.stale_retries} stale keep-alive "
          f"retries, {len(result.failures)} failures {result.failures[:5]}")
    assert result.failures == []
    assert result.ok == result.sent > 1000
    assert not before & after
    assert_serves(gateway)


def test_reload_with_invalid_config_keeps_old_generation(start_gateway: StartGateway) -> None:
    gateway = start_gateway(workers=2)
    before = gateway.wait_workers(2)
    text = gateway.config_path.read_text()
    gateway.config_path.write_text(text.replace("host:", "hots:"))
    gateway.signal(signal.SIGHUP)
    stderr = gateway.proc.wait_stderr("reload rejected: $.gateway.server.hots: unknown key")
    assert "Traceback" not in stderr
    assert gateway.worker_pids() == before
    assert_serves(gateway)
    gateway.signal(signal.SIGINT)
    assert gateway.proc.wait_exit() == 0


def test_respawn_after_worker_is_killed(start_gateway: StartGateway) -> None:
    gateway = start_gateway(workers=2)
    before = gateway.wait_workers(2)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    gateway.proc.wait_stderr(f"worker {victim} died (signal SIGKILL); respawning slot")
    assert_serves(gateway)  # the other worker serves meanwhile
    after = gateway.wait_workers(2, exclude={victim})
    assert after & before == before - {victim}
    assert_serves(gateway, requests=20)


def test_port_taken_exits_at_once_with_the_message(start_gateway: StartGateway) -> None:
    squatter = socket.socket()  # no SO_REUSEPORT: nobody may share this port
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    port = squatter.getsockname()[1]
    try:
        gateway = start_gateway(workers=2, port=port, wait=False)
        code = gateway.proc.wait_exit(timeout_s=10)
    finally:
        squatter.close()
    stderr = gateway.proc.stderr_text()
    assert code == 3, stderr
    assert f"cannot bind 127.0.0.1:{port}: Address already in use" in stderr
    assert "spawned worker" not in stderr and "Traceback" not in stderr


FAILING_BIND = """\
import os, sys
import fastgw.worker
from fastgw.errors import BootError

real_bind = fastgw.worker.bind_listener
MARKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fail-bind")

def bind_listener(host, port, backlog=2048):
    if os.path.exists(MARKER):
        raise BootError(f"cannot listen on {host}:{port}: injected by the test")
    return real_bind(host, port, backlog)

fastgw.worker.bind_listener = bind_listener
""" + CLI_MAIN


def test_worker_boot_error_halts_without_respawn(start_gateway: StartGateway) -> None:
    gateway = start_gateway(workers=2, script=FAILING_BIND, wait=False)
    (gateway.tmp / "fail-bind").touch()
    code = gateway.proc.wait_exit(timeout_s=10)
    stderr = gateway.proc.stderr_text()
    assert code == 3, stderr
    assert ": boot error: cannot listen on 127.0.0.1" in stderr
    assert "failed to boot: cannot listen on" in stderr and "halting" in stderr
    assert stderr.count("spawned worker") == 2  # no respawn loop
    assert not gateway.proc.stdout  # never announced as listening


def test_reload_whose_workers_cannot_boot_keeps_old_generation(
        start_gateway: StartGateway) -> None:
    gateway = start_gateway(workers=2, script=FAILING_BIND)
    before = gateway.wait_workers(2)
    (gateway.tmp / "fail-bind").touch()
    gateway.signal(signal.SIGHUP)
    gateway.proc.wait_stderr("reload failed: worker")
    (gateway.tmp / "fail-bind").unlink()
    assert gateway.wait_workers(2) == before
    assert_serves(gateway)
    gateway.signal(signal.SIGHUP)  # the cause is gone: the next reload goes through
    gateway.proc.wait_stderr("reload complete")
    gateway.wait_workers(2, exclude=before)
    assert_serves(gateway)


BLOCKING_LOOP = """\
import os, sys, time
import fastgw.supervisor, fastgw.worker

fastgw.supervisor.HEARTBEAT_TIMEOUT_S = 1.5  # the test's patience, not production's
MARKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "blocked-once")
real_beat = fastgw.worker.Worker.on_beat_due

def on_beat_due(self):
    if os.path.exists(MARKER):
        os.unlink(MARKER)  # only the first worker to see it blocks
        time.sleep(60)  # a callback that never yields: the loop stops beating
    real_beat(self)

fastgw.worker.Worker.on_beat_due = on_beat_due
""" + CLI_MAIN


def test_blocked_event_loop_is_killed_and_replaced(start_gateway: StartGateway) -> None:
    gateway = start_gateway(workers=2, script=BLOCKING_LOOP)
    before = gateway.wait_workers(2)
    (gateway.tmp / "blocked-once").touch()
    stderr = gateway.proc.wait_stderr("(event loop blocked): SIGKILL", timeout_s=10)
    blocked = next(pid for pid in before if f"worker {pid}: no heartbeat" in stderr)
    gateway.wait_workers(2, exclude={blocked})
    assert_serves(gateway)
