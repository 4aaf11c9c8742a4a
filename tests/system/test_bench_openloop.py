"""The open-loop generator against a real mock metald, in real processes.

One backend for the module (``bench.peers.start_backend`` inside ``bench.procs.Services``, as
the bench itself runs it); each test resets its stats and behaviour first. Runs are short (a
second or two) and every bound below is derived from the schedule, so that a generator that
drops requests, measures from the send instead of the intended time, or leaves a process
behind fails here. The schedule's split over processes and the backlog's latencies are also
checked without a network, on :func:`bench.openloop.plan` and the worker's ``Generator``.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.openloop import Progress, Traffic, WorkerPlan, plan, run_open_loop
from bench.openloop_worker import Generator, histogram, record_backlog
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
    assert result.sent is not None and result.unsent is not None
    assert result.sent + result.unsent == 600, result.output  # exactly the schedule
    assert 540 <= result.requests <= result.sent, result.output
    assert result.error_total == 0, result.output
    assert result.status_codes == {200: result.requests}
    assert result.sent == result.requests
    assert result.processes == 2 and result.connections == 4
    assert result.hold_ms is not None and result.hold_ms > 0
    assert result.offered_rps == 400 and result.generator == "openloop"
    order = ("p50", "p75", "p90", "p95", "p99", "p999", "max")
    values = [result.latency_ms[k] for k in order]
    assert values == sorted(values) and values[0] > 0, result.latency_ms
    assert 0 < result.latency_ms["mean"] <= result.latency_ms["max"]
    assert result.bytes > 0 and result.cpu_s > 0
    assert _stats(mock.port)["requests"] == result.requests  # the backend saw the same
    assert ticks and ticks[0].elapsed_s == 1.0
    # Each worker takes its first tick at 1 s or later (later on a busy machine, and a worker
    # may be further on when the slowest one's tick arrives): by then the 401 requests intended
    # in [0, 1 s] were due, answered, failed or still in flight, and at most the whole run was.
    first = ticks[0]
    assert 400 <= first.completed + first.errors + first.in_flight <= 600, ticks
    assert 0 < first.completed <= 600, ticks
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
    assert result.unsent is not None and result.sent + result.unsent == 50
    assert result.behind_s is not None and result.behind_s >= 0.7  # ~40 requests never left
    assert result.behind_s == pytest.approx(result.unsent / 50)
    assert "unsent" in result.output


def test_unsent_requests_are_in_the_histogram(mock: Target) -> None:
    """One connection, answers after 1.2 s: request 0 is answered at 1.2 s and requests 1..49,
    intended every 20 ms, never leave. Measured on the responses alone, every percentile would
    be 1.2 s; with the 49 unsent ones recorded at what they had waited when the schedule ended
    at 1 s (980 ms down to 20 ms), the median is about half a second."""
    _post(mock.port, "/__mock/behaviour", {"delay_ms": 1200})
    result = run_open_loop(Traffic(HOST, mock.port, (_request(mock.port),)), rate=50,
                           duration_s=1.0, connections=1, processes=1)
    assert result.requests == result.sent == 1, result.output
    assert result.unsent == 49, result.output
    assert 250 <= result.latency_ms["p50"] <= 800, result.output
    assert result.latency_ms["max"] >= 1200, result.output
    assert "49 unsent" in result.output


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
    result = run_open_loop(traffic, rate=500, duration_s=0.5, connections=3, processes=2)
    assert result.error_total == 0, result.output
    assert result.connections == 3, result.output  # 2 + 1, not 3 // 2 each
    assert "over 3 connection(s) (2 + 1) in 2 process(es)" in result.output
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


# -- without a target ------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "duration_s", "connections", "processes"), [
    (400, 1.5, 4, 2), (100, 0.5, 50, 4), (1000, 0.25, 7, 3), (333, 1.0, 5, 5), (7, 1.0, 2, 2)])
def test_the_processes_interleave_into_one_even_schedule(
        rate: float, duration_s: float, connections: int, processes: int) -> None:
    plans = plan(rate=rate, duration_s=duration_s, connections=connections,
                 processes=processes)
    intended = math.ceil(rate * duration_s - 1e-9)
    assert [p.index for p in plans] == list(range(processes))
    assert sum(p.total for p in plans) == intended
    assert sum(p.connections for p in plans) == connections  # exactly, not // processes
    assert max(p.connections for p in plans) - min(p.connections for p in plans) <= 1
    # what each worker intends (Generator.go and pump: start + offset_s + j / rate)
    times = sorted(p.offset_s + j / p.rate for p in plans for j in range(p.total))
    assert times == pytest.approx([i / rate for i in range(intended)], abs=1e-9)
    assert times[-1] < duration_s
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g == pytest.approx(1 / rate) for g in gaps)  # no bursts of `processes` at once


def _generator(loop: asyncio.AbstractEventLoop, share: WorkerPlan, processes: int) -> Generator:
    return Generator({"host": HOST, "port": 9, "index": share.index, "processes": processes,
                      "rate": share.rate, "offset_s": share.offset_s, "total": share.total,
                      "connections": share.connections, "duration_s": 1.0, "timeout_s": 1.0,
                      "requests": [base64.b64encode(_request(9)).decode()]}, loop)


def test_a_worker_starts_at_its_offset_and_records_its_backlog() -> None:
    """Worker 1 of 2 at 50/s for 1 s intends its 25 requests at 20 ms, 60 ms, ... 980 ms. With
    no connection free all run long, at the end of the schedule all 25 are unsent and recorded
    at what they had waited then: from 980 ms (the oldest) down to 20 ms."""
    share = plan(rate=50, duration_s=1.0, connections=2, processes=2)[1]
    loop = asyncio.new_event_loop()
    try:
        gen = _generator(loop, share, 2)
        gen.idle.clear()  # every connection busy: nothing is ever sent
        gen.busy = len(gen.slots)
        start = time.monotonic() - 1.0  # the schedule is over already
        gen.go(start)
        assert gen.start == start + 0.02 and gen.end == start + 1.0
        gen.close_schedule()
        waited = time.monotonic() - start  # at least the 1 s of the schedule
        gen.close_schedule()  # only once
        assert gen.sent == 0 and gen.unsent == 25
        assert gen.hist.get_total_count() == 25
        oldest = gen.hist.get_max_value() / 1e6
        assert 0.979 <= oldest <= (waited - 0.02) * 1.001 + 1e-6
        assert 0.0199 <= gen.hist.get_min_value() / 1e6 <= (waited - 0.98) * 1.001 + 1e-6
        gen.waker.close()
    finally:
        loop.close()


@pytest.mark.parametrize(("lowest_s", "step_s", "count"), [
    (0.0, 0.02, 49), (-0.001, 1e-5, 100_000), (0.5, 1e-6, 300_000), (59.9, 0.01, 100),
    (0.0, 0.0, 10)])
def test_a_backlog_is_recorded_as_one_value_each(lowest_s: float, step_s: float,
                                                 count: int) -> None:
    fast, slow = histogram(), histogram()
    record_backlog(fast, lowest_s, step_s, count)
    for k in range(count):
        slow.record_value(min(max(int((lowest_s + k * step_s) * 1e6), 1), 60_000_000))
    assert fast.get_total_count() == slow.get_total_count() == count
    for q in (0, 1, 10, 25, 50, 75, 90, 99, 99.9, 100):
        assert fast.get_value_at_percentile(q) == slow.get_value_at_percentile(q), q
    assert fast.get_max_value() == slow.get_max_value()


@pytest.mark.parametrize(("settings", "message"), [
    ({"duration_s": 0}, r"^bad open-loop settings: duration_s must be > 0 \(got 0\)$"),
    ({"rate": -5, "timeout_s": 0}, r"rate must be > 0 \(got -5\); timeout_s must be > 0"),
    ({"connections": 3, "processes": 4},
     r"connections \(3\) must be at least processes \(4\)"),
    ({"connections": 0}, r"connections must be > 0"),
])
def test_bad_settings_are_one_line_bench_errors(settings: dict[str, float],
                                                message: str) -> None:
    args: dict[str, float] = {"rate": 100, "duration_s": 1.0, "connections": 4, "processes": 2,
                              **settings}
    with pytest.raises(BenchError, match=message) as caught:
        run_open_loop(Traffic(HOST, 9, (_request(9),)), **args)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)
    with pytest.raises(BenchError, match="no request"):
        run_open_loop(Traffic(HOST, 9, ()), rate=100, duration_s=1.0, connections=1)
    assert _workers() == []


def test_without_hdrhistogram_the_generator_says_what_to_install() -> None:
    """hdrhistogram is the optional [bench] extra: importing the generator must work without
    it, and using it must be a BenchError naming the extra, not a ModuleNotFoundError."""
    script = """
import sys
sys.modules["hdrh"] = None  # as if not installed: importing it raises ImportError
from bench.openloop import Traffic, require_hdr, run_open_loop
from bench.procs import BenchError
for call in (require_hdr,
             lambda: run_open_loop(Traffic("127.0.0.1", 9, (b"x",)), rate=1, duration_s=1,
                                   connections=1)):
    try:
        call()
    except BenchError as error:
        print(error)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "the open-loop generator needs hdrhistogram: pip install 'fastgw[bench]'"] * 2
