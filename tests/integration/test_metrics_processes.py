"""Metrics with real processes: ``fastgw serve --workers 2`` in front of a mock metald; traffic
on many connections (so that both workers serve), then ``GET /metrics`` on the metrics port,
parsed with ``prometheus_client``'s parser.

What is checked, exactly:
  * the counts summed over both workers equal the traffic sent, per endpoint and status, and
    the auth, rate-limit, upstream and histogram totals agree (polled until the other worker's
    tick has published, under a bound);
  * a worker killed with SIGKILL and respawned into its slot continues its counts: the totals
    right after the respawn equal those before the kill, and later traffic adds to them;
  * a SIGHUP reload (with a route added) while traffic flows and a scraper polls: no counter
    of any scrape is ever below the same counter in an earlier scrape (503s, which old workers
    answer while the new generation boots, are skipped), and once the old generation has
    exited and its totals were carried over, the totals equal everything ever sent.
  * a reload that fails (its workers cannot listen) to a config with metrics off: the serving
    workers answer scrapes again at once, with the same totals (no board of its own to fold).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from fastgw.listen import free_port
from tests.integration.conftest import (
    IO_TIMEOUT_S,
    MockBackend,
    Proc,
    child_pids,
    fetch,
    wait_until,
)
from tests.integration.test_process_model import FAILING_BIND

pytestmark = pytest.mark.timeout(90)

WORKERS = 2
SETTLE_S = 10.0  # bound on any state the test waits for
CLIENT_THREADS = 8
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
# One round of traffic: (path, expected status, endpoint label), each on a new connection.
ROUND = [("/echo/a", 200, "Echo")] * 40 + [("/private/x", 401, "Private")] * 12 + [
    ("/nope", 404, "(unrouted)")
] * 8


class Gateway:
    def __init__(self, tmp: Path, backend_port: int, script: str | None = None) -> None:
        self.port, self.admin_port = free_port(), free_port()
        while self.admin_port == self.port:
            self.admin_port = free_port()
        self.path = tmp / "gateway.yaml"
        self.backend_port = backend_port
        self.write_config(extra_route=False)
        argv = [sys.executable, "-m", "fastgw", "serve", "-c", str(self.path),
                "--workers", str(WORKERS), "--drain-timeout", "2s"]  # fmt: skip
        if script is not None:  # a script that patches something first, then runs the CLI
            (tmp / "run_gateway.py").write_text(script)
            argv[1:3] = [str(tmp / "run_gateway.py")]
        self.proc = Proc(argv, tmp)
        self.proc.wait_stdout("fastgw listening on")

    def write_config(self, *, extra_route: bool, metrics: bool = True) -> None:
        routes: list[dict[str, Any]] = [
            {"endpoint": "Echo", "path_prefix": "/echo", "auth": "none"},
            {"endpoint": "Private", "path_prefix": "/private"},
        ]
        if extra_route:
            routes.append({"endpoint": "Extra", "path_prefix": "/extra", "auth": "none"})
        config = {
            "gateway": {
                "server": {"host": "127.0.0.1", "port": self.port},
                "authentication": {"development": {"enabled": True}},
                "observability": {
                    "metrics": {"enabled": metrics, "port": self.admin_port},
                    "logging": {"level": "info", "format": "text", "output": "stderr"},
                },
            },
            "routing": {"metald_instances": [{"host": "127.0.0.1", "port": self.backend_port}]},
            "routes": routes,
            # Every anonymous request takes one global decision, never refused.
            "rate_limits": {"global": {"requests_per_second": 1e9, "burst_size": 10**9}},
        }
        self.path.write_text(yaml.safe_dump(config))

    def get(self, path: str) -> tuple[int, str]:
        """One request on a new connection: its status and the serving worker's id prefix."""
        status, body = fetch(self.port, path)
        data = json.loads(body)
        if "error" in data:
            request_id = data["error"]["request_id"]
        else:
            request_id = dict(data["headers"])["X-Request-ID"]
        return status, request_id.rsplit("-", 1)[0]

    def send(self, traffic: list[tuple[str, int, str]]) -> set[str]:
        """Send every request (each on a new connection, from several threads); the workers
        that served them."""
        with ThreadPoolExecutor(CLIENT_THREADS) as pool:
            answers = list(pool.map(lambda item: self.get(item[0]), traffic))
        assert [status for status, _ in answers] == [status for _, status, _ in traffic]
        return {worker for _, worker in answers}

    def scrape(self) -> Samples | None:
        """``GET /metrics``, parsed; None for a 503 (a reload's old worker) or no answer."""
        try:
            status, body = fetch(self.admin_port, "/metrics")
        except OSError:
            return None
        if status == 503:
            return None
        assert status == 200, (status, body)
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples
        }

    def scrape_until(self, check: Callable[[Samples], bool], what: str) -> Samples:
        seen: list[Samples] = []

        def matches() -> bool:
            samples = self.scrape()
            if samples is None:
                return False
            seen[:] = [samples]
            return check(samples)

        try:
            wait_until(matches, SETTLE_S, what)
        except AssertionError as error:
            last = {k: v for k, v in (seen[0] if seen else {}).items() if "_total" in k[0]}
            raise AssertionError(f"{error}; last counters: {last}") from None
        return seen[0]


@pytest.fixture
def gateway(tmp_path: Path, mock_backend: MockBackend) -> Iterator[Gateway]:
    gw = Gateway(tmp_path, mock_backend.port)
    try:
        gw.scrape_until(lambda s: True, "the metrics port answers")
        yield gw
    finally:
        gw.proc.kill()


def requests_by(samples: Samples) -> dict[tuple[str, str], float]:
    return {
        (dict(key)["endpoint"], dict(key)["code"]): value
        for (name, key), value in samples.items()
        if name == "fastgw_requests_total"
    }


def one(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def expected_requests(rounds: int) -> dict[tuple[str, str], float]:
    counted = Counter((endpoint, str(status)) for _, status, endpoint in ROUND)
    return {key: count * rounds for key, count in counted.items()}


def exact(samples: Samples, rounds: int) -> bool:
    """Every total equals ``rounds`` rounds of traffic (the scrape itself never counts)."""
    echo = rounds * 40
    return (
        requests_by(samples) == expected_requests(rounds)
        and one(samples, "fastgw_request_duration_seconds_count", endpoint="Echo") == echo
        and one(samples, "fastgw_request_duration_seconds_count", endpoint="Private") == rounds * 12
        and one(samples, "fastgw_auth_total", result="missing") == rounds * 12
        and one(samples, "fastgw_ratelimit_total", level="global", result="allowed") == echo
        and one(samples, "fastgw_ratelimit_total", level="global", result="limited") == 0
        and sum(
            v for (n, _), v in samples.items() if n == "fastgw_upstream_requests_total"
        ) == echo
        and sum(
            v for (n, _), v in samples.items() if n == "fastgw_upstream_duration_seconds_count"
        ) == echo
    )  # fmt: skip


def counters(samples: Samples) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The samples that may only grow: counters and histogram series."""
    return {
        key: value
        for key, value in samples.items()
        if key[0].endswith(("_total", "_bucket", "_count", "_sum"))
    }


def test_totals_over_both_workers_survive_a_respawn_and_a_reload(gateway: Gateway) -> None:
    # 1. Exact totals over both workers.
    workers = gateway.send(ROUND)
    assert len(workers) == WORKERS, workers  # both served, so both sections are summed
    first = gateway.scrape_until(lambda s: exact(s, 1), "one round counted exactly")
    assert one(first, "fastgw_upstream_requests_total",
               instance=f"127.0.0.1:{gateway.backend_port}", code="200") == 40  # fmt: skip
    assert one(first, "fastgw_retries_total") == 0

    # 2. SIGKILL one worker: its slot's successor continues its counts.
    victim = min(child_pids(gateway.proc.pid))
    os.kill(victim, signal.SIGKILL)  # the master respawns its slot after a 1 s back-off
    wait_until(
        lambda: len(child_pids(gateway.proc.pid)) == WORKERS
        and victim not in child_pids(gateway.proc.pid),
        SETTLE_S, "the killed worker respawned",
    )  # fmt: skip
    gateway.proc.wait_stderr("ready (generation 1)", count=WORKERS + 1)
    after_kill = gateway.scrape_until(lambda s: True, "a scrape after the respawn")
    assert counters(after_kill) == counters(first)  # nothing lost, nothing doubled
    gateway.send(ROUND)
    gateway.scrape_until(lambda s: exact(s, 2), "two rounds counted exactly after the respawn")

    # 3. SIGHUP (a route added) under traffic, with a scraper polling all along.
    scrapes: list[Samples] = []
    stop = threading.Event()

    def scraper() -> None:
        while not stop.is_set():
            samples = gateway.scrape()
            if samples is not None:
                scrapes.append(samples)

    watcher = threading.Thread(target=scraper, daemon=True)
    watcher.start()
    old = child_pids(gateway.proc.pid)
    try:
        gateway.write_config(extra_route=True)
        gateway.proc.popen.send_signal(signal.SIGHUP)
        gateway.send(ROUND)  # while the new generation boots and the old one drains
        gateway.proc.wait_stderr("reload complete", timeout_s=SETTLE_S)
        gateway.send(ROUND)
        wait_until(lambda: not child_pids(gateway.proc.pid) & old, SETTLE_S,
                   "the old generation exited")  # fmt: skip
        final = gateway.scrape_until(lambda s: exact(s, 4), "four rounds counted after reload")
    finally:
        stop.set()
        watcher.join(timeout=IO_TIMEOUT_S)
    scrapes.append(final)
    assert len(scrapes) > 3, len(scrapes)
    for earlier, later in itertools.pairwise(scrapes):
        grown = counters(later)
        for key, value in counters(earlier).items():
            if key[1] and dict(key[1]).get("endpoint") == "Extra":
                continue
            assert grown.get(key, 0.0) >= value, (key, value, grown.get(key))
    # The reload's new endpoint is a label from now on; nothing was sent to it.
    assert ("fastgw_request_duration_seconds_count", frozenset({("endpoint", "Extra")})) in final
    assert one(final, "fastgw_request_duration_seconds_count", endpoint="Extra") == 0


def test_a_failed_reload_to_metrics_off_leaves_scrapes_answered(
    tmp_path: Path, mock_backend: MockBackend
) -> None:
    # While a reload boots, the serving workers answer 503 (they cannot see the new board);
    # a reload that fails must lift that, even when its config had no board to fold.
    gateway = Gateway(tmp_path, mock_backend.port, script=FAILING_BIND)
    try:
        gateway.scrape_until(lambda s: True, "the metrics port answers")
        gateway.send(ROUND)
        gateway.write_config(extra_route=False, metrics=False)
        (tmp_path / "fail-bind").touch()  # the new generation's workers cannot listen
        gateway.proc.popen.send_signal(signal.SIGHUP)
        gateway.proc.wait_stderr("reload failed: worker", timeout_s=SETTLE_S)
        gateway.scrape_until(lambda s: exact(s, 1), "scrapes answered after the failed reload")
    finally:
        gateway.proc.kill()
