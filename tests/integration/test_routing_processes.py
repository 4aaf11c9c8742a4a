"""Routing and resilience with real processes: ``fastgw serve --workers 2`` in front of real
mock metald processes, steered through their ``/__mock/*`` controls and observed through their
stats, the gateway's ``GET /admin/upstreams`` (metrics port) and what each client gets.

What is checked (each with exact expectations):
  * consistent-hash affinity holds across both workers, and a SIGKILLed instance costs no
    request: its customers move to their ring fallback, everyone else stays put;
  * active health checks run once per gateway instance (not per worker), and every worker's
    admin view says the same;
  * the breaker's CLOSED -> OPEN -> HALF_OPEN -> CLOSED cycle, its ejection shared by both
    workers, and 503 ``circuit_open`` when every candidate is held open;
  * the retry budget bounds the backend requests under a failing backend (``retry.py``);
  * a request whose bytes reached a backend is retried only when idempotent or on a
    ``retryable`` route (dropped connection, backend 503, timeout).

Which worker served a request: each worker numbers request ids under its own random prefix
(``fastgw/ids.py``); the mock's ``/echo`` echoes the ``X-Request-ID`` the gateway sent and a
gateway error names its ``request_id``, and the admin server answers with one. The customer's
instance order is computed with the gateway's own hash ring (``HashRing`` over
``b"host:port"`` keys, as ``fastgw/plan.py`` builds it) and compared with what happens.

No fixed sleeps wait for readiness: readiness is a line on a process's output or a condition
polled under a deadline (the one ``time.sleep`` measures a health-check window).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import signal
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from fastgw._speedups import HashRing
from fastgw.listen import free_port
from fastgw.routing.retry import RETRY_BUDGET_FLOOR, RETRY_BUDGET_WINDOW_S
from tests.integration.conftest import IO_TIMEOUT_S, MockBackend, Proc, child_pids, wait_until
from tests.support.admission import serving_workers

pytestmark = pytest.mark.timeout(60)

WORKERS = 2
CHECK_INTERVAL_S = 0.1  # routing.health_check_interval
SETTLE_S = 10.0  # bound on any state change the test waits for
BREAKER_COOLDOWN_S = 1.5  # long enough to check, on a busy machine, that nobody sends
PROBE_DELAY_MS = 1500  # keeps the half-open probes in flight while the test looks


# -- processes --------------------------------------------------------------------------------


class NamedMock(MockBackend):
    """A mock metald process that names itself (``X-Metald-Instance``); started without
    waiting, so that several start at once."""

    def __init__(self, tmp: Path, name: str) -> None:
        self.name = name
        self.tmp = tmp
        self.proc = Proc(
            [sys.executable, "-m", "fastgw", "mock-metald", "--port", "0", "--name", name], tmp
        )
        self.port = 0

    def wait_ready(self) -> NamedMock:
        line = self.proc.wait_stdout("listening on")
        self.port = int(line.strip().rsplit(":", 1)[1])
        return self

    @property
    def alive(self) -> bool:
        return self.proc.popen.poll() is None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.control("/__mock/stats")
        return result

    def behave(self, **changes: Any) -> None:
        self.control("/__mock/behaviour", changes)

    def hits(self, path: str) -> int:
        count: int = self.stats()["by_path"].get(path, 0)
        return count

    def sigkill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait_exit()


@pytest.fixture(scope="module")
def mock_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NamedMock]]:
    tmp = tmp_path_factory.mktemp("routing-mocks")
    pool = [NamedMock(tmp, f"m{i}") for i in range(4)]
    try:
        for mock in pool:
            mock.wait_ready()
        yield pool
    finally:
        for mock in pool:
            mock.proc.kill()


@pytest.fixture
def mocks(mock_pool: list[NamedMock]) -> list[NamedMock]:
    """The four mocks m0..m3, alive (one a test killed is replaced), with fresh stats and the
    default behaviour."""
    for i, mock in enumerate(mock_pool):
        if not mock.alive:
            mock.proc.kill()
            mock_pool[i] = NamedMock(mock.tmp, mock.name).wait_ready()
    for mock in mock_pool:
        mock.control("/__mock/reset", {"behaviour": True})
    return list(mock_pool)


# -- HTTP ---------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # names lowercased
    body: bytes
    elapsed_s: float

    @property
    def instance(self) -> str | None:
        return self.headers.get("x-metald-instance")

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error_code(self) -> str | None:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return str(self.json()["error"]["code"])
        return None

    @property
    def worker(self) -> str | None:
        """The serving worker's request-id prefix: from the id the mock echoes, or from a
        gateway error's ``request_id``."""
        with contextlib.suppress(ValueError, KeyError, TypeError):
            data = self.json()
            if "error" in data:
                return str(data["error"]["request_id"]).rsplit("-", 1)[0]
            for name, value in data["headers"]:
                if name.lower() == "x-request-id":
                    return str(value).rsplit("-", 1)[0]
        return None


def dev_token(customer: str) -> dict[str, str]:
    return {"Authorization": f"Bearer dev_customer_{customer}"}


def call(
    port: int,
    method: str,
    path: str,
    customer: str | None = None,
    *,
    body: bytes | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> Reply:
    """One request: on ``conn`` (kept open) or on a new connection (closed after)."""
    own = conn is None
    connection = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT_S)
    headers = dev_token(customer) if customer is not None else {}
    started = time.monotonic()
    try:
        connection.request(method, path, body, headers)
        response = connection.getresponse()
        data = response.read()
    finally:
        if own:
            connection.close()
    elapsed = time.monotonic() - started
    return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data, elapsed)


@dataclass
class Served:
    port: int
    admin_port: int
    proc: Proc
    mocks: list[NamedMock]
    ring: Any = field(repr=False)

    def call(self, method: str, path: str, customer: str | None = None, **kw: Any) -> Reply:
        return call(self.port, method, path, customer, **kw)

    def upstreams(self) -> tuple[dict[str, Any], str]:
        """``GET /admin/upstreams`` on a new connection: the report, and the answering
        worker's request-id prefix."""
        reply = call(self.admin_port, "GET", "/admin/upstreams")
        assert reply.status == 200, (reply.status, reply.body)
        return reply.json(), reply.headers["x-request-id"].rsplit("-", 1)[0]

    def view(self, mock: NamedMock) -> dict[str, Any]:
        """``/admin/upstreams``'s entry for ``mock``."""
        report, _ = self.upstreams()
        (entry,) = [i for i in report["instances"] if i["instance"] == mock.address]
        return dict(entry)

    def wait_view(self, mock: NamedMock, check: Callable[[dict[str, Any]], bool], what: str
                  ) -> dict[str, Any]:  # fmt: skip
        seen: dict[str, Any] = {}

        def matches() -> bool:
            seen.clear()
            seen.update(self.view(mock))
            return check(seen)

        try:
            wait_until(matches, SETTLE_S, f"{mock.name}: {what}")
        except AssertionError as error:
            raise AssertionError(f"{error}; last view: {seen}") from None
        return dict(seen)

    def order(self, customer: str) -> list[NamedMock]:
        """The customer's instance order, as the gateway's consistent-hash ring gives it."""
        return [self.mocks[i] for i in self.ring.fallback_order(customer.encode(), 0)]

    def customer_of(self, mock: NamedMock) -> str:
        """A customer whose consistent-hash pick is ``mock``."""
        return next(c for c in (f"c{n}" for n in range(1000)) if self.order(c)[0] is mock)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Start ``fastgw serve --workers 2`` in front of the given mocks; killed after the test."""
    started: list[Proc] = []

    def start(
        mocks: list[NamedMock],
        *,
        strategy: str = "consistent_hash",
        gateway_routing: dict[str, Any] | None = None,
        routes: list[dict[str, Any]] | None = None,
    ) -> Served:
        port, admin_port = free_port(), free_port()
        while admin_port == port:
            admin_port = free_port()
        config = {
            "gateway": {
                "server": {"host": "127.0.0.1", "port": port},
                "authentication": {"development": {"enabled": True}},
                "observability": {
                    "metrics": {"port": admin_port},
                    "logging": {"level": "info", "format": "text", "output": "stderr"},
                },
                "routing": {"connect_timeout": "1s", "backend_timeout": "5s",
                            **(gateway_routing or {})},
            },
            "routing": {
                "strategy": strategy,
                "health_check_interval": f"{int(CHECK_INTERVAL_S * 1000)}ms",
                "unhealthy_threshold": 2,
                "recovery_threshold": 2,
                "metald_instances": [{"host": "127.0.0.1", "port": m.port} for m in mocks],
            },
            "routes": routes or [{"endpoint": "Echo", "path_prefix": "/echo"}],
            "rate_limits": {
                "customer_tiers": {"free": {"requests_per_second": 1e6, "burst_size": 10**6}},
            },
        }  # fmt: skip
        path = tmp_path / f"gateway-{len(started)}.yaml"
        path.write_text(yaml.safe_dump(config))
        argv = [sys.executable, "-m", "fastgw", "serve", "-c", str(path),
                "--workers", str(WORKERS), "--drain-timeout", "2s"]  # fmt: skip
        proc = Proc(argv, tmp_path)
        started.append(proc)
        proc.wait_stdout("fastgw listening on")
        ring = HashRing([m.address.encode() for m in mocks], [100] * len(mocks))
        served = Served(port, admin_port, proc, list(mocks), ring)

        def ready() -> bool:  # every worker published, every instance checked and up
            with contextlib.suppress(OSError, AssertionError):
                report, _ = served.upstreams()
                return all(
                    len(i["workers"]) == WORKERS and i["active_check"]["checks"] >= 1
                    and i["healthy"] for i in report["instances"]
                )  # fmt: skip
            return False

        try:
            wait_until(ready, SETTLE_S, "every worker's health view published")
        except AssertionError as error:
            raise AssertionError(f"{error}; stderr:\n{proc.stderr_text()[-4000:]}") from None
        return served

    yield start
    for proc in started:
        proc.kill()


# -- 1. affinity and failover ------------------------------------------------------------------


def test_consistent_hash_affinity_and_failover_lose_no_request(
    mocks: list[NamedMock], serve: Callable[..., Served]
) -> None:
    gw = serve(mocks, gateway_routing={"circuit_breaker": {"cooldown": "300ms"}})
    customers = [f"c{n}" for n in range(40)]
    owner: dict[str, str] = {}
    workers: set[str] = set()
    for _ in range(3):  # every request on a new connection: both workers serve
        for customer in customers:
            reply = gw.call("GET", "/echo/affinity", customer)
            assert reply.status == 200, (customer, reply.status, reply.body)
            assert owner.setdefault(customer, reply.instance or "") == reply.instance, customer
            workers.add(reply.worker or "")
    assert len(workers) == WORKERS, workers
    assert owner == {c: gw.order(c)[0].name for c in customers}  # the ring's pick

    counts = Counter(owner.values())
    victim = next(m for m in mocks if m.name == counts.most_common(1)[0][0])
    orphans = [c for c in customers if owner[c] == victim.name]
    victim.sigkill()

    after: dict[str, set[str | None]] = defaultdict(set)
    statuses: Counter[int] = Counter()
    workers.clear()

    def one_round() -> None:
        for customer in customers:
            reply = gw.call("GET", "/echo/failover", customer)
            statuses[reply.status] += 1
            assert reply.status == 200, (customer, reply.status, reply.body)
            after[customer].add(reply.instance)
            workers.add(reply.worker or "")

    deadline = time.monotonic() + SETTLE_S
    while gw.view(victim)["active_check"]["up"]:  # active checks have not marked it down yet
        assert time.monotonic() < deadline, "active checks never marked the killed mock down"
        one_round()
    view = gw.view(victim)
    assert view["healthy"] is False and view["active_check"]["up"] is False, view
    assert view["failures"] >= 1, view  # requests did go to it before, and were retried
    for _ in range(2):  # settled: the same again
        one_round()

    assert set(statuses) == {200}, statuses  # no request failed at any time
    assert len(workers) == WORKERS, workers
    for customer in customers:
        if owner[customer] != victim.name:
            assert after[customer] == {owner[customer]}, customer  # untouched
    moved = {c: after[c] for c in orphans}
    for customer, seen in moved.items():
        survivors = [m.name for m in gw.order(customer) if m is not victim]
        assert seen == {survivors[0]}, (customer, seen)  # one instance: its ring fallback
    # Spread, not piled on one survivor (a property of the ring for these ~10+ customers).
    assert len({next(iter(s)) for s in moved.values()}) >= 2, moved


# -- 2. active checks: one checker per gateway instance -----------------------------------------


def test_health_checks_run_once_per_gateway_and_every_worker_reports_the_same(
    mocks: list[NamedMock], serve: Callable[..., Served]
) -> None:
    watched = mocks[:3]
    gw = serve(watched)
    for mock in watched:
        mock.control("/__mock/reset", {})
    started = time.monotonic()
    time.sleep(1.0)  # a measurement window (the checker's pace), not a wait for readiness
    counts = {m.name: m.stats()["health_checks"] for m in watched}
    elapsed = time.monotonic() - started
    # One checker: a round every interval, so at most elapsed/interval + 1 rounds (+1 for a
    # round in flight at the reset). Two (one per worker) would be about twice that.
    most = math.floor(elapsed / CHECK_INTERVAL_S) + 2
    for name, count in counts.items():
        assert 3 <= count <= most, (name, count, elapsed)

    down = watched[1]
    down.behave(health_status=503)
    gw.wait_view(down, lambda v: not v["active_check"]["up"], "marked down by active checks")

    answers: dict[str, list[dict[str, Any]]] = defaultdict(list)
    pids = child_pids(gw.proc.pid)
    deadline = time.monotonic() + SETTLE_S
    while len(answers) < WORKERS or sum(map(len, answers.values())) < 8:
        assert time.monotonic() < deadline, f"admin answered only from {set(answers)}"
        report, worker = gw.upstreams()
        answers[worker].append(report)

    def health(report: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [
            (i["instance"], i["healthy"], i["active_check"]["up"], i["breaker"],
             i["ejected_for_ms"], i["ejection_streak"],
             sorted((w["slot"], w["pid"], w["breaker"]) for w in i["workers"]))
            for i in report["instances"]
        ]  # fmt: skip

    first = next(iter(answers.values()))[0]
    slots = sorted((w["slot"], w["pid"], "closed") for w in first["instances"][0]["workers"])
    assert [slot for slot, _, _ in slots] == list(range(WORKERS))
    assert {pid for _, pid, _ in slots} == pids  # the master's workers
    expected = [(m.address, m is not down, m is not down, "closed", 0, 0, slots) for m in watched]
    for worker, reports in answers.items():
        for report in reports:
            assert report["strategy"] == "consistent_hash"
            assert health(report) == expected, worker


# -- 3. breaker: open, shared ejection, half-open, closed ----------------------------------------


BREAKER = {
    "retry_attempts": 3,
    "circuit_breaker": {
        "enabled": True,
        "failure_threshold": 3,
        "error_rate": 1.0,
        "min_requests": 1000,  # only the consecutive failures open it
        "cooldown": f"{int(BREAKER_COOLDOWN_S * 1000)}ms",
        "max_cooldown": "10s",
        "half_open_probes": 1,
    },
}


def worker_states(view: dict[str, Any]) -> list[str]:
    return [w["breaker"] for w in view["workers"]]


def test_breaker_opens_is_shared_half_opens_and_closes(
    mocks: list[NamedMock], serve: Callable[..., Served]
) -> None:
    a, b = mocks[:2]
    gw = serve([a, b], gateway_routing=BREAKER)
    customer = gw.customer_of(a)
    assert [m.name for m in gw.order(customer)] == ["m0", "m1"]
    assert gw.call("POST", "/echo/warm", customer, body=b"{}").instance == "m0"

    # CLOSED -> OPEN: three 500s in a row on one keep-alive connection (one worker); the
    # non-idempotent POST on a non-retryable route is not retried, the 500 is relayed.
    a.behave(fail_rate=1.0, fail_status=500)
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=IO_TIMEOUT_S)
    try:
        replies = [gw.call("POST", "/echo/trip", customer, body=b"{}", conn=conn)
                   for _ in range(4)]  # fmt: skip
        first_sock = conn.sock
        after = gw.call("POST", "/echo/trip", customer, body=b"{}", conn=conn)
        assert conn.sock is first_sock  # one connection, so one worker, all along
    finally:
        conn.close()
    trip = [(r.status, r.instance) for r in replies]
    assert trip == [(500, "m0")] * 3 + [(200, "m1")], [r.body for r in replies]
    assert (after.status, after.instance) == (200, "m1")
    assert a.hits("/echo/trip") == 3

    view = gw.wait_view(
        a, lambda v: v["breaker"] == "open" and worker_states(v) == ["open"] * WORKERS,
        "open in both workers (one opened it, the other adopted the ejection)",
    )  # fmt: skip
    open_until = time.monotonic() + view["ejected_for_ms"] / 1000
    assert view["healthy"] is False and view["ejection_streak"] == 1, view
    assert 0 < view["ejected_for_ms"] <= BREAKER_COOLDOWN_S * 1000, view
    assert sorted(w["failures"] for w in view["workers"]) == [0, 3], view  # one worker's doing
    assert view["active_check"]["up"] is True  # only the breaker saw it

    # During the cool-down neither worker sends m0 anything (new connections: both workers).
    seen_workers: set[str | None] = set()
    requests_before = int(a.stats()["requests"])
    for _ in range(16):
        reply = gw.call("POST", "/echo/cooling", customer, body=b"{}")
        assert (reply.status, reply.instance) == (200, "m1"), reply.body
        seen_workers.add(reply.worker)
    assert time.monotonic() < open_until, "too slow to check inside the cool-down"
    assert len(seen_workers) == WORKERS, seen_workers
    assert a.stats()["requests"] == requests_before

    # OPEN -> HALF_OPEN: after the cool-down each worker lets one probe through; it is slow,
    # so it stays in flight while the view is read, and the worker's other requests go on.
    a.behave(fail_rate=0.0, delay_ms=PROBE_DELAY_MS)
    gw.wait_view(a, lambda v: v["ejected_for_ms"] == 0, "cool-down over")
    requests_before = int(a.stats()["requests"])
    probes: list[Reply] = []
    others: list[Reply] = []
    lock = threading.Lock()
    threads: list[threading.Thread] = []

    def send() -> None:
        reply = gw.call("POST", "/echo/probe", customer, body=b"{}")
        with lock:
            (probes if reply.instance == "m0" else others).append(reply)

    def probed() -> int:
        return int(a.stats()["requests"]) - requests_before

    deadline = time.monotonic() + SETTLE_S
    while probed() < WORKERS:  # new connections until both workers sent their probe
        assert time.monotonic() < deadline, "the workers did not both probe"
        answered, sent = len(others), probed()
        thread = threading.Thread(target=send)
        thread.start()
        threads.append(thread)

        def moved(answered: int = answered, sent: int = sent) -> bool:
            return len(others) > answered or probed() > sent

        wait_until(moved, SETTLE_S, "m1's answer or a probe at m0")
    view = gw.wait_view(
        a, lambda v: v["breaker"] == "half_open" and worker_states(v) == ["half_open"] * WORKERS,
        "half-open in both workers",
    )  # fmt: skip
    assert view["healthy"] is True and view["ejected_for_ms"] == 0, view
    for thread in threads:
        thread.join(IO_TIMEOUT_S)
    assert a.stats()["requests"] == requests_before + WORKERS  # one probe per worker
    assert [(r.status, r.elapsed_s >= PROBE_DELAY_MS / 1000) for r in probes] == [
        (200, True)
    ] * WORKERS
    assert {(r.status, r.instance) for r in others} <= {(200, "m1")}

    # HALF_OPEN -> CLOSED: each probe succeeded.
    a.behave(delay_ms=0)
    view = gw.wait_view(
        a, lambda v: v["breaker"] == "closed" and worker_states(v) == ["closed"] * WORKERS,
        "closed in both workers",
    )  # fmt: skip
    assert view["healthy"] is True and view["ejection_streak"] == 0, view
    assert gw.call("POST", "/echo/back", customer, body=b"{}").instance == "m0"

    # Every candidate held open: 503 circuit_open (one worker, one keep-alive connection).
    a.behave(fail_rate=1.0, fail_status=500)
    b.behave(fail_rate=1.0, fail_status=500)
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=IO_TIMEOUT_S)
    try:
        replies = [gw.call("POST", "/echo/both", customer, body=b"{}", conn=conn)
                   for _ in range(7)]  # fmt: skip
    finally:
        conn.close()
    assert [(r.status, r.instance) for r in replies] == [(500, "m0")] * 3 + [(500, "m1")] * 3 + [
        (503, None)
    ]
    assert replies[-1].error_code == "circuit_open"
    assert replies[-1].headers.get("retry-after") == "1"


# -- 4. the retry budget ---------------------------------------------------------------------------


def test_retry_budget_bounds_backend_requests_under_a_failing_backend(
    mocks: list[NamedMock], serve: Callable[..., Served]
) -> None:
    share = 0.2
    gw = serve(
        mocks,
        strategy="round_robin",
        gateway_routing={"retry_attempts": 3, "retry_budget": share, "retry_backoff": "0s",
                         "circuit_breaker": {"enabled": False}},
        routes=[{"endpoint": "Open", "path_prefix": "/echo", "auth": "none"}],
    )  # fmt: skip
    for mock in mocks:
        mock.behave(fail_rate=1.0, fail_status=503)
        mock.control("/__mock/reset", {})  # stats only
    clients, per_client = 4, 150  # 0.2 x 150 is whole: the bounds below are exact
    total = clients * per_client
    conns = [
        http.client.HTTPConnection("127.0.0.1", gw.port, timeout=IO_TIMEOUT_S)
        for _ in range(clients)
    ]
    try:
        for conn in conns:
            conn.connect()
        socks = [conn.sock for conn in conns]
        ports = [sock.getsockname()[1] for sock in socks]
        worker_of: dict[int, int] = wait_until(  # client port -> the worker pid serving it
            lambda: (found := serving_workers(child_pids(gw.proc.pid), gw.port, ports))
            and len(found) == clients and found,
            SETTLE_S, "every connection accepted by a worker",
        )  # fmt: skip

        def client(conn: http.client.HTTPConnection) -> Counter[tuple[int, bool]]:
            seen: Counter[tuple[int, bool]] = Counter()
            for _ in range(per_client):
                reply = gw.call("GET", "/echo/budget", conn=conn)
                seen[reply.status, reply.instance is not None] += 1
            return seen

        started = time.monotonic()
        with ThreadPoolExecutor(clients) as pool:
            outcomes = sum(pool.map(client, conns), Counter())
        elapsed = time.monotonic() - started
        assert [conn.sock for conn in conns] == socks  # kept alive: the worker map holds
    finally:
        for conn in conns:
            conn.close()
    assert outcomes == {(503, True): total}  # the backends' own 503, relayed at the end

    backend = sum(m.stats()["requests"] for m in mocks)
    retries = backend - total
    assert retries > 0
    requests_of: Counter[int] = Counter()
    for port in ports:
        requests_of[worker_of[port]] += per_client

    def tries_by_worker() -> dict[int, int]:  # each worker's outcomes, from its publications
        tries: Counter[int] = Counter()
        for instance in gw.upstreams()[0]["instances"]:
            for worker in instance["workers"]:
                tries[worker["pid"]] += worker["requests"]
        return dict(tries)

    tries = wait_until(
        lambda: (t := tries_by_worker()) and sum(t.values()) == backend and t,
        SETTLE_S, "the workers' published outcomes",
    )  # fmt: skip

    # retry.py: a worker withdraws a retry while retries + 1 <= share x requests + FLOOR over
    # its window (two half-window buckets, the first starting when the worker builds its plan). A
    # run shorter than half a window lies in at most two consecutive buckets, so at its end
    # each worker's window holds all it did.
    assert elapsed < RETRY_BUDGET_WINDOW_S / 2, f"run too slow for the one-window bound: {elapsed}"
    for pid, requests in requests_of.items():
        most = math.floor(share * requests) + RETRY_BUDGET_FLOOR
        # Every request wants 3 retries, so the budget is what stops them: the worker's last
        # requests withdraw until retries reach the bound, exactly.
        assert tries.get(pid, 0) - requests == most, (pid, requests, tries)
    # Summed: at most share x N + FLOOR per worker that served.
    assert retries <= math.floor(share * total) + len(requests_of) * RETRY_BUDGET_FLOOR
    assert retries == sum(tries.values()) - total


# -- 5. a request whose bytes reached a backend -------------------------------------------------

RETRY_ROUTES = [
    {"endpoint": "Echo", "path_prefix": "/echo"},
    {"endpoint": "Replayable", "path_prefix": "/echo/replayable", "retryable": True},
]
NO_BREAKER = {"retry_attempts": 3, "circuit_breaker": {"enabled": False}}


def test_bytes_that_reached_a_backend_are_retried_only_when_safe(
    mocks: list[NamedMock], serve: Callable[..., Served]
) -> None:
    a, b = mocks[:2]
    gw = serve([a, b], gateway_routing=NO_BREAKER, routes=RETRY_ROUTES)
    customer = gw.customer_of(a)
    assert gw.call("GET", "/echo/warm", customer).instance == "m0"  # a pooled connection too
    body = b"x" * 1000

    # m0 closes each connection on a request without answering.
    a.behave(drop_connection=True)
    reply = gw.call("POST", "/echo/post-dropped", customer, body=body)
    assert (reply.status, reply.error_code, reply.instance) == (502, "bad_gateway", None)
    assert (a.hits("/echo/post-dropped"), b.hits("/echo/post-dropped")) == (1, 0)
    reply = gw.call("GET", "/echo/get-dropped", customer)
    assert (reply.status, reply.instance) == (200, "m1")
    assert a.hits("/echo/get-dropped") >= 1 and b.hits("/echo/get-dropped") == 1
    reply = gw.call("POST", "/echo/replayable/dropped", customer, body=body)
    assert (reply.status, reply.instance) == (200, "m1")
    assert (reply.json()["body_len"], b.hits("/echo/replayable/dropped")) == (len(body), 1)

    # m0 answers 503: relayed for the POST, retried for the GET and the retryable route.
    a.behave(drop_connection=False, fail_rate=1.0, fail_status=503)
    reply = gw.call("POST", "/echo/post-503", customer, body=body)
    assert (reply.status, reply.instance, reply.json()["code"]) == (503, "m0", "unavailable")
    assert (a.hits("/echo/post-503"), b.hits("/echo/post-503")) == (1, 0)
    reply = gw.call("GET", "/echo/get-503", customer)
    assert (reply.status, reply.instance) == (200, "m1")
    assert (a.hits("/echo/get-503"), b.hits("/echo/get-503")) == (1, 1)
    reply = gw.call("POST", "/echo/replayable/503", customer, body=body)
    assert (reply.status, reply.instance, reply.json()["body_len"]) == (200, "m1", len(body))
    assert (a.hits("/echo/replayable/503"), b.hits("/echo/replayable/503")) == (1, 1)


# -- 6. timeouts --------------------------------------------------------------------------------


def test_a_timed_out_post_is_not_retried_and_a_get_is(
    mocks: list[NamedMock], serve: Callable[..., Served]
) -> None:
    a, b = mocks[:2]
    gw = serve([a, b], gateway_routing={**NO_BREAKER, "backend_timeout": "200ms"})
    customer = gw.customer_of(a)
    assert gw.call("GET", "/echo/warm", customer).instance == "m0"
    a.behave(delay_ms=1000)

    reply = gw.call("POST", "/echo/post-slow", customer, body=b"{}")
    assert (reply.status, reply.error_code) == (504, "upstream_timeout"), reply.body
    assert 0.18 <= reply.elapsed_s < 0.8, reply.elapsed_s  # the 200 ms deadline, once
    assert (a.hits("/echo/post-slow"), b.hits("/echo/post-slow")) == (1, 0)

    reply = gw.call("GET", "/echo/get-slow", customer)
    assert (reply.status, reply.instance) == (200, "m1")
    assert 0.18 <= reply.elapsed_s < 0.9, reply.elapsed_s  # a deadline, a back-off, m1
    assert (a.hits("/echo/get-slow"), b.hits("/echo/get-slow")) == (1, 1)
