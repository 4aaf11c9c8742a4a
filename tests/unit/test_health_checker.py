"""``fastgw.routing.checker``: ``probe`` and ``HealthChecker`` against real sockets on loopback.

Backends are the mock metald and ``RawServer``, a listening socket scripted per test (silent,
junk, an endless head, a head and then nothing). Each test runs on a fresh uvloop that fails it
when anything reaches the loop's exception handler. Waits are on events or conditions under a
deadline, never a sleep for readiness; client sockets still open are counted from
``/proc/net/tcp`` (Linux), so "closed before it returns" is checked at once, without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fastgw.listen import free_port
from fastgw.mock.metald import MockMetald
from fastgw.routing.checker import MAX_HEALTH_RESPONSE_BYTES, HealthChecker, _host_header, probe
from tests.support.callbacks import WAIT_S, checked_uvloop, wait_until

SLACK_S = 0.5  # scheduling slack beyond a deadline on a busy VM
EARLY_S = 0.03  # a deadline may fire this much early by perf_counter: uvloop caches its clock
INTERVAL_S = 0.05
PROC_NET_TCP = Path("/proc/net/tcp")


def client_sockets_to(port: int) -> int:
    """Open (owned by a file descriptor) TCP sockets whose peer is 127.0.0.1:``port``."""
    count = 0
    for line in PROC_NET_TCP.read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].rsplit(":", 1)[1], 16)
        if remote_port == port and fields[9] != "0":  # inode 0: closed, only the kernel's now
            count += 1
    return count


def host_header(port: int) -> bytes:
    return b"127.0.0.1:%d" % port


class _RawProtocol(asyncio.Protocol):
    def __init__(self, server: RawServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        self.server.accepted += 1
        self.server.changed()
        if self.server.greet is not None:
            self.server.greet(self.transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.server.received += data
        if self.server.on_request is not None and b"\r\n\r\n" in self.server.received:
            self.server.on_request(self.transport)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.server.changed()


class RawServer:
    """A listener on 127.0.0.1: ``greet(transport)`` at accept (default: nothing, ever),
    ``on_request(transport)`` once a request head arrived; counts connections still open."""

    def __init__(
        self,
        greet: Callable[[asyncio.Transport], None] | None = None,
        on_request: Callable[[asyncio.Transport], None] | None = None,
    ) -> None:
        self.greet = greet
        self.on_request = on_request
        self.connections: set[_RawProtocol] = set()
        self.accepted = 0
        self.received = bytearray()
        self.port = 0
        self._event = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None

    @property
    def open(self) -> int:
        return len(self.connections)

    def changed(self) -> None:
        self._event.set()

    async def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(WAIT_S):
                while not condition():
                    self._event.clear()
                    await self._event.wait()
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None

    async def __aenter__(self) -> RawServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _RawProtocol(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for protocol in list(self.connections):
            if protocol.transport is not None:
                protocol.transport.abort()
        await self._server.wait_closed()
        await self.wait_for(lambda: not self.connections, "the server's connections to close")


class Results:
    """``on_result``: records each call; ``wait_for`` awaits a condition on the calls."""

    def __init__(self, raise_for: int | None = None) -> None:
        self.calls: list[tuple[int, bool, float]] = []
        self.raise_for = raise_for
        self._event = asyncio.Event()

    def __call__(self, index: int, passed: bool, latency_s: float) -> None:
        self.calls.append((index, passed, latency_s))
        self._event.set()
        if index == self.raise_for:
            raise RuntimeError(f"on_result fails for instance {index}")

    async def wait_for(self, condition: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
        async with asyncio.timeout(timeout_s):
            while not condition():
                self._event.clear()
                await self._event.wait()

    def by_round(self, targets: int) -> list[dict[int, bool]]:
        """The calls of each completed round; checks each target came exactly once in each."""
        whole = len(self.calls) - len(self.calls) % targets
        rounds = []
        for start in range(0, whole, targets):
            calls = self.calls[start : start + targets]
            assert sorted(index for index, _, _ in calls) == list(range(targets)), calls
            rounds.append({index: passed for index, passed, _ in calls})
        return rounds


# ------------------------------------------------------------------------------------- probe


@checked_uvloop
async def test_probe_passes_a_healthy_mock_and_fails_a_503() -> None:
    async with MockMetald() as mock:
        passed, latency_s = await probe(
            "127.0.0.1", mock.port, "/health", 2.0, host_header(mock.port)
        )
        assert passed
        assert 0 < latency_s < 2.0
        mock.behaviour.health_status = 503
        passed, latency_s = await probe(
            "127.0.0.1", mock.port, "/health", 2.0, host_header(mock.port)
        )
        assert not passed
        assert 0 < latency_s < 2.0
        assert client_sockets_to(mock.port) == 0


@checked_uvloop
async def test_probe_sends_the_documented_request() -> None:
    def answer(transport: asyncio.Transport) -> None:
        transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        transport.close()

    async with RawServer(on_request=answer) as server:
        passed, _ = await probe("127.0.0.1", server.port, "/healthz?deep=1", 2.0, b"backend:1")
        assert passed
        assert bytes(server.received) == (
            b"GET /healthz?deep=1 HTTP/1.1\r\nHost: backend:1\r\nConnection: close\r\n"
            b"User-Agent: fastgw-health\r\n\r\n"
        )


@checked_uvloop
async def test_probe_of_a_port_with_no_listener_fails_quickly() -> None:
    port = free_port()
    passed, latency_s = await probe("127.0.0.1", port, "/health", 2.0, host_header(port))
    assert not passed
    assert 0 < latency_s < SLACK_S


@checked_uvloop
async def test_probe_of_a_silent_server_times_out_and_closes_its_socket() -> None:
    async with RawServer() as server:
        timeout_s = 0.2
        passed, latency_s = await probe("127.0.0.1", server.port, "/health", timeout_s, b"x")
        assert not passed
        assert timeout_s - EARLY_S <= latency_s < timeout_s + SLACK_S
        assert client_sockets_to(server.port) == 0  # closed before probe() returned
        await server.wait_for(lambda: server.accepted == 1 and server.open == 0, "EOF/reset")


@pytest.mark.parametrize(
    "greeting",
    [
        b"\x00\x01\x02 this is not HTTP\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Le",  # then EOF: no complete head
        b"",  # EOF at once
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
        b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["junk", "eof-mid-head", "eof", "upgrade", "redirect"],
)
@checked_uvloop
async def test_probe_fails_on_junk_eof_and_non_2xx(greeting: bytes) -> None:
    def greet(transport: asyncio.Transport) -> None:
        transport.write(greeting)
        transport.close()

    async with RawServer(greet) as server:
        passed, latency_s = await probe("127.0.0.1", server.port, "/health", 2.0, b"x")
        assert not passed
        assert latency_s < SLACK_S
        assert client_sockets_to(server.port) == 0


@checked_uvloop
async def test_probe_stops_reading_an_endless_head() -> None:
    loop = asyncio.get_running_loop()
    sent = [0]
    line = b"X-Filler: " + b"f" * 54 + b"\r\n"  # 66 bytes

    def more(transport: asyncio.Transport) -> None:
        if not transport.is_closing():
            transport.write(line * 64)
            sent[0] += len(line) * 64
            loop.call_later(0.005, more, transport)

    def greet(transport: asyncio.Transport) -> None:
        transport.write(b"HTTP/1.1 200 OK\r\n" + line * 512)  # 33 KiB of head at once
        sent[0] += len(line) * 512
        loop.call_later(0.005, more, transport)

    async with RawServer(greet) as server:
        passed, latency_s = await probe("127.0.0.1", server.port, "/health", 3.0, b"x")
        assert not passed
        assert latency_s < 1.0  # decided on the byte budget, not the deadline
        assert sent[0] > MAX_HEALTH_RESPONSE_BYTES
        assert client_sockets_to(server.port) == 0
        await server.wait_for(lambda: server.open == 0, "the server to see the probe go")


@checked_uvloop
async def test_probe_decides_at_the_head_without_waiting_for_the_body() -> None:
    def greet(transport: asyncio.Transport) -> None:  # a head, then the body never comes
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")

    async with RawServer(greet) as server:
        passed, latency_s = await probe("127.0.0.1", server.port, "/health", 3.0, b"x")
        assert passed
        assert latency_s < 1.0
        assert client_sockets_to(server.port) == 0
        await server.wait_for(lambda: server.open == 0, "the server to see the probe go")


@checked_uvloop
async def test_probe_waits_past_an_interim_1xx() -> None:
    def greet(transport: asyncio.Transport) -> None:
        transport.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 OK\r\n\r\n")

    async with RawServer(greet) as server:
        passed, _ = await probe("127.0.0.1", server.port, "/health", 2.0, b"x")
        assert passed


# ------------------------------------------------------------------------------ HealthChecker


def test_host_header_brackets_ipv6_and_checker_checks_its_settings() -> None:
    assert _host_header("127.0.0.1", 8001) == b"127.0.0.1:8001"
    assert _host_header("::1", 8001) == b"[::1]:8001"
    loop = asyncio.new_event_loop()
    try:
        for path, interval_s, timeout_s in [("health", 1, 1), ("/a b", 1, 1), ("/h", 0, 1)]:
            with pytest.raises(ValueError):
                HealthChecker(loop, [], path, interval_s, timeout_s, Results())
    finally:
        loop.close()


@checked_uvloop
async def test_first_round_runs_at_once_and_sends_the_targets_host_header() -> None:
    def answer(transport: asyncio.Transport) -> None:
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        transport.close()

    async with RawServer(on_request=answer) as server:
        results = Results()
        checker = HealthChecker(
            asyncio.get_running_loop(), [("127.0.0.1", server.port)], "/health", 30.0, 1.0, results
        )
        checker.start()
        try:
            await results.wait_for(lambda: len(results.calls) == 1, timeout_s=1.0)
            await wait_until(lambda: checker.rounds == 1, "the first round to complete")
            assert results.calls[0][:2] == (0, True)
            assert b"\r\nHost: 127.0.0.1:%d\r\n" % server.port in server.received
            with pytest.raises(RuntimeError):
                checker.start()
        finally:
            await checker.aclose()
        assert len(results.calls) == 1 and checker.rounds == 1  # the next round was 30 s away


@checked_uvloop
async def test_checker_reports_each_target_once_per_round_at_the_interval() -> None:
    dead = free_port()
    async with MockMetald("a") as mock_a, MockMetald("b") as mock_b:
        targets = [("127.0.0.1", mock_a.port), ("127.0.0.1", mock_b.port), ("127.0.0.1", dead)]
        results = Results()
        checker = HealthChecker(
            asyncio.get_running_loop(), targets, "/health", INTERVAL_S, 1.0, results
        )
        started = time.monotonic()
        checker.start()
        try:
            await wait_until(lambda: checker.rounds >= 3, "three rounds")
            elapsed_s = time.monotonic() - started
            assert elapsed_s >= 2 * INTERVAL_S - EARLY_S  # rounds 2 and 3 waited for their slots
            rounds = results.by_round(3)
            assert len(rounds) >= 3
            assert all(r == {0: True, 1: True, 2: False} for r in rounds), rounds

            mock_a.behaviour.health_status = 503  # seen in a later round
            seen = len(results.calls)
            await results.wait_for(lambda: (0, False) in [c[:2] for c in results.calls[seen:]])
            mock_a.behaviour.health_status = 200
            seen = len(results.calls)
            await results.wait_for(lambda: (0, True) in [c[:2] for c in results.calls[seen:]])
            assert all(r[1] and not r[2] for r in results.by_round(3))
        finally:
            await checker.aclose()


@checked_uvloop
async def test_on_result_raising_is_logged_and_rounds_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, "fastgw.health")
    async with MockMetald() as mock:
        targets = [("127.0.0.1", mock.port), ("127.0.0.1", mock.port)]
        results = Results(raise_for=1)
        checker = HealthChecker(
            asyncio.get_running_loop(), targets, "/health", INTERVAL_S, 1.0, results
        )
        checker.start()
        try:
            await wait_until(lambda: checker.rounds >= 3, "three rounds despite on_result raising")
        finally:
            await checker.aclose()
        assert all(r == {0: True, 1: True} for r in results.by_round(2))
        failures = [r for r in caplog.records if r.name == "fastgw.health"]
        assert len(failures) >= 3
        assert all(r.exc_info and r.exc_info[0] is RuntimeError for r in failures)


@checked_uvloop
async def test_a_silent_target_times_out_within_the_interval() -> None:
    async with RawServer() as silent, MockMetald() as mock:
        targets = [("127.0.0.1", silent.port), ("127.0.0.1", mock.port)]
        results = Results()
        checker = HealthChecker(  # timeout 10 s: clamped to the interval
            asyncio.get_running_loop(), targets, "/health", INTERVAL_S, 10.0, results
        )
        checker.start()
        try:
            await wait_until(lambda: checker.rounds >= 3, "three rounds with a silent target")
        finally:
            await checker.aclose()
        assert all(r == {0: False, 1: True} for r in results.by_round(2))
        silent_latencies = [latency for index, _, latency in results.calls if index == 0]
        assert all(INTERVAL_S - EARLY_S <= s < INTERVAL_S + SLACK_S for s in silent_latencies), (
            silent_latencies
        )


@checked_uvloop
async def test_aclose_stops_callbacks_and_leaves_no_socket_open() -> None:
    dead = free_port()
    async with RawServer() as silent, MockMetald() as mock:
        targets = [("127.0.0.1", mock.port), ("127.0.0.1", silent.port), ("127.0.0.1", dead)]
        results = Results()
        checker = HealthChecker(
            asyncio.get_running_loop(), targets, "/health", INTERVAL_S, 10.0, results
        )
        checker.start()
        await wait_until(lambda: checker.rounds >= 1, "a first round")
        await silent.wait_for(lambda: silent.open == 1, "a probe in flight to the silent server")
        await checker.aclose()
        assert client_sockets_to(silent.port) == 0  # the in-flight probe's socket is closed
        assert client_sockets_to(mock.port) == 0
        calls, rounds = len(results.calls), checker.rounds
        await silent.wait_for(lambda: silent.open == 0, "the silent server to see EOF")
        await wait_until(lambda: not mock.instance.protocols, "the mock's connections to close")
        await checker.aclose()  # idempotent
        with pytest.raises(RuntimeError):
            checker.start()
        await asyncio.sleep(4 * INTERVAL_S)  # not waiting for readiness: proving an absence
        assert (len(results.calls), checker.rounds) == (calls, rounds)
