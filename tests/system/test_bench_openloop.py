"""The open-loop generator against a real mock metald, in real processes.

One backend for the module (``bench.peers.start_backend`` inside ``bench.procs.Services``, as
the bench itself runs it); each test resets its stats and behaviour first. Runs are short (a
second or two) and every bound below is derived from the schedule, so that a generator that
drops requests, measures from the send instead of the intended time, or leaves a process
behind fails here.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.openloop import Progress, Traffic, run_open_loop
from bench.peers import Target, get, start_backend
from bench.procs import BenchError, Services
from fastgw.listen import free_port

HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    with Services() as services:
        yield start_backend(services, tmp_path_factory.mktemp("openloop"))


@pytest.fixture
def mock(backend: Target) -> Target:
    _post(backend.port, "/__mock/reset", {"behaviour": True})
    return backend


def _post(port: int, path: str, body: dict[str, object]) -> None:
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200, response.read()
        response.read()
    finally:
        conn.close()


def _stats(port: int) -> dict[str, object]:
    status, _, body = get(port, "/__mock/stats")
    assert status == 200
    stats: dict[str, object] = json.loads(body)
    return stats


def _request(port: int, path: str = "/echo/x") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()


def _workers() -> list[int]:
    """Live worker processes started by this test process (found by their --parent argument,
    so that one re-parented to init after an escape is found too)."""
    found = []
    wanted = ["--parent", str(os.getpid())]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if "bench.openloop_worker" in argv and all(w in argv for w in wanted):
            found.append(int(entry))
    return found


def test_constant_rate_is_delivered_and_measured(mock: Target) -> None:
    ticks: list[Progress] = []
    result = run_open_loop(Traffic(HOST, mock.port, (_request(mock.port),)), rate=400,
                           duration_s=1.5, connections=4, processes=2, progress=ticks.append)
    assert 540 <= result.requests <= 660, result.output
    assert result.error_total == 0, result.output
    assert result.status_codes == {200: result.requests}
    assert result.sent == result.requests
    assert result.offered_rps == 400 and result.generator == "openloop"
    order = ("p50", "p75", "p90", "p95", "p99", "p999", "max")
    values = [result.latency_ms[k] for k in order]
    assert values == sorted(values) and values[0] > 0, result.latency_ms
    assert 0 < result.latency_ms["mean"] <= result.latency_ms["max"]
    assert result.bytes > 0 and result.cpu_s > 0
    assert _stats(mock.port)["requests"] == result.requests  # the backend saw the same
    assert ticks and ticks[0].elapsed_s == 1.0
    assert 300 <= ticks[0].completed <= 500, ticks  # about one second of 400/s, both summed
    assert _workers() == []


def test_latency_counts_from_the_intended_time(mock: Target) -> None:
    """Every answer takes 100 ms and there is one connection, so requests intended every
    20 ms queue behind each other: request k leaves at k * 100 ms and is answered at
    (k + 1) * 100 ms, k * 80 ms + 100 ms after it was intended. A closed-loop generator would
    report ~100 ms for all of them."""
    _post(mock.port, "/__mock/behaviour", {"delay_ms": 100})
    result = run_open_loop(Traffic(HOST, mock.port, (_request(mock.port),)), rate=50,
                           duration_s=1.0, connections=1, processes=1)
    assert 8 <= result.requests <= 11, result.output  # one connection, 100 ms each
    assert result.error_total == 0, result.output
    assert result.latency_ms["p50"] >= 100
    # the 9th response already waited 8 * 80 + 100 = 740 ms from its intended time
    assert result.latency_ms["p99"] > 600, result.output
    assert result.latency_ms["max"] < 1100, result.output
    assert result.sent is not None and result.sent < 50
    assert result.behind_s is not None and result.behind_s >= 0.7  # ~40 requests never left
    assert "unsent" in result.output


def test_connect_errors_when_nothing_listens() -> None:
    port = free_port()  # nothing listens there
    started = time.monotonic()
    result = run_open_loop(Traffic(HOST, port, (_request(port),)), rate=100, duration_s=0.5,
                           connections=2, processes=1, timeout_s=1.0)
    assert time.monotonic() - started < 10
    assert result.requests == 0 and result.sent == 0
    assert 40 <= result.errors["connect"] <= 50, result.output  # each request tried once
    assert result.error_total == result.errors["connect"]


def test_status_errors_are_counted(mock: Target) -> None:
    _post(mock.port, "/__mock/behaviour", {"fail_rate": 1.0, "fail_status": 500})
    result = run_open_loop(Traffic(HOST, mock.port, (_request(mock.port),)), rate=200,
                           duration_s=0.5, connections=2, processes=1)
    assert result.requests >= 90, result.output
    assert result.errors == {"connect": 0, "read": 0, "write": 0, "timeout": 0,
                             "status": result.requests}
    assert result.status_codes == {500: result.requests}


def test_slow_answers_time_out_and_the_run_ends(mock: Target) -> None:
    _post(mock.port, "/__mock/behaviour", {"delay_ms": 5000})
    started = time.monotonic()
    result = run_open_loop(Traffic(HOST, mock.port, (_request(mock.port),)), rate=20,
                           duration_s=0.5, connections=2, processes=1, timeout_s=0.3)
    assert time.monotonic() - started < 4  # not the 5 s the backend would take
    assert result.requests == 0
    # two connections, each a request every 0.3 s until 0.5 s, the last ones in the drain
    assert 2 <= result.errors["timeout"] <= 6, result.output
    assert result.error_total == result.errors["timeout"]


def test_distinct_requests_are_all_sent_in_turn(mock: Target) -> None:
    paths = [f"/echo/{n}" for n in range(5)]
    traffic = Traffic(HOST, mock.port, tuple(_request(mock.port, p) for p in paths))
    result = run_open_loop(traffic, rate=500, duration_s=0.5, connections=4, processes=2)
    assert result.error_total == 0, result.output
    by_path = _stats(mock.port)["by_path"]
    assert isinstance(by_path, dict)
    assert set(by_path) == set(paths)
    assert sum(by_path.values()) == result.requests
    share = result.requests / len(paths)
    assert all(share - 2 <= n <= share + 2 for n in by_path.values()), by_path


def test_no_worker_survives_an_error_in_the_parent(mock: Target) -> None:
    def fail(tick: Progress) -> None:
        assert len(_workers()) == 2  # they are running now...
        raise RuntimeError("stop here")

    traffic = Traffic(HOST, mock.port, (_request(mock.port),))
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="stop here"):
        run_open_loop(traffic, rate=100, duration_s=5.0, connections=2, processes=2,
                      progress=fail)
    assert time.monotonic() - started < 4  # stopped at the first tick, not after 5 s
    assert _workers() == []  # ...and gone now, reaped


def test_a_worker_that_dies_is_reported(mock: Target) -> None:
    def kill_one(tick: Progress) -> None:
        os.kill(min(_workers()), signal.SIGKILL)

    traffic = Traffic(HOST, mock.port, (_request(mock.port),))
    with pytest.raises(BenchError, match=r"openloop worker \d .*exited with status -9"):
        run_open_loop(traffic, rate=100, duration_s=3.0, connections=2, processes=2,
                      progress=kill_one)
    assert _workers() == []
