"""Automatic bans across two ``fastgw serve`` gateways (two workers each) sharing one real
redis-server: 401s earned on one gateway ban the client on every worker of both, and an
operator's lift on the other gateway's admin port lifts it on every worker of both."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fastgw.listen import free_port
from tests.integration.conftest import MockBackend, Proc, fetch, wait_until
from tests.support.redis_server import RedisServer

THRESHOLD = 3
WORKERS = 2
SHARED_WITHIN_S = 2.0  # sync every 250 ms + a worker refresh every 100 ms, with room for CI
PROBES = 8  # fresh connections per gateway per check: the kernel spreads them over workers


def _config(port: int, admin_port: int, backend: int, redis_address: str) -> str:
    return (
        "gateway:\n"
        f"  server: {{host: 127.0.0.1, port: {port}}}\n"
        "  authentication: {development: {enabled: true}}\n"
        f"  rate_limiting: {{backend: redis, redis: {{address: '{redis_address}'}}}}\n"
        f"  observability: {{metrics: {{port: {admin_port}}}}}\n"
        "  security:\n"
        f"    auto_ban: {{enabled: true, threshold: {THRESHOLD}, window: 60s, ban: 10m}}\n"
        "routing:\n"
        f"  metald_instances: [{{host: 127.0.0.1, port: {backend}}}]\n"
        "routes: [{endpoint: Echo, path_prefix: /echo}]\n"
        "rate_limits:\n"
        "  customer_tiers: {free: {requests_per_second: 1000000, burst_size: 1000000}}\n"
    )


@dataclass
class Instance:
    port: int
    admin_port: int
    proc: Proc


def status(port: int, headers: dict[str, str]) -> int:
    return fetch(port, "/echo/x", headers=headers)[0]


DEV = {"Authorization": "Bearer dev_customer_acme"}


@pytest.fixture
def instances(
    tmp_path: Path, mock_backend: MockBackend, redis_clean: RedisServer
) -> Iterator[list[Instance]]:
    started: list[Instance] = []
    try:
        for name in ("east", "west"):
            port, admin_port = free_port(), free_port()
            while admin_port == port:
                admin_port = free_port()
            path = tmp_path / f"{name}.yaml"
            path.write_text(_config(port, admin_port, mock_backend.port, redis_clean.address))
            proc = Proc(
                [sys.executable, "-m", "fastgw", "serve", "-c", str(path),
                 "--workers", str(WORKERS)],
                tmp_path,
            )
            proc.wait_stdout("fastgw listening on")
            started.append(Instance(port, admin_port, proc))
        yield started
    finally:
        for instance in started:
            instance.proc.kill()


def every_worker_answers(instances: list[Instance], wanted: int) -> bool:
    return all(
        status(instance.port, DEV) == wanted for instance in instances for _ in range(PROBES)
    )


def test_a_ban_earned_on_one_gateway_holds_on_every_worker_of_both_and_lifts_everywhere(
    instances: list[Instance],
) -> None:
    east, west = instances
    assert every_worker_answers(instances, 200)
    # Counting is per worker: at most WORKERS x THRESHOLD failures before one worker bans.
    for _ in range(WORKERS * THRESHOLD):
        if status(east.port, {}) == 403:
            break
    wait_until(lambda: every_worker_answers(instances, 403), SHARED_WITHIN_S, "ban everywhere")

    lifted = fetch(west.admin_port, "/admin/bans/lift?ip=127.0.0.1", method="POST")
    assert lifted[0] == 200, lifted
    wait_until(lambda: every_worker_answers(instances, 200), SHARED_WITHIN_S, "lift everywhere")
