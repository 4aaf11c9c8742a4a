"""Rate limits are exact across workers: one real ``fastgw serve --workers 2`` (memory backend),
hammered by many keep-alive connections at once.

The workers share one limit table (made by the master, inherited over fork), so two workers must
grant together what one would: a token bucket admits no more than it refills, and a daily quota
admits exactly its size. Connections are spread over both workers by SO_REUSEPORT (each worker
has its own listener); the test checks that both served, by finding which worker holds the
server side of each client connection (``/proc/<pid>/fd`` and ``/proc/net/tcp``). The measuring
helpers and the bucket's bounds (and why they hold) are in ``tests/support/admission.py``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
import uvloop
import yaml

from fastgw.listen import free_port
from tests.integration.conftest import MockBackend, Proc, child_pids
from tests.support.admission import (
    ADMISSION_TIERS,
    BURST,
    DAILY_QUOTA,
    RATE_PER_S,
    Sample,
    assert_spread,
    assert_token_bucket,
    client_ports,
    first_429,
    keep_sending,
    serving_workers,
    until,
)
from tests.support.client import RawClient, get

SECRET = "rate-limit-processes-hs256-secret-0123456789"
WORKERS = 2
CONNECTIONS = 16  # all on one worker: 2 ** -15 with an even spread; checked anyway
HAMMER_S = 2.0


@dataclass(frozen=True)
class Served:
    port: int
    proc: Proc


def config(port: int, backend_port: int) -> dict[str, Any]:
    return {
        "gateway": {
            "server": {"host": "127.0.0.1", "port": port},
            "authentication": {"jwt": {"algorithm": "HS256", "hs_secret": SECRET}},
            "rate_limiting": {"backend": "memory"},
            "observability": {"metrics": {"port": 0}},
        },
        "routing": {"metald_instances": [{"host": "127.0.0.1", "port": backend_port}]},
        "routes": [{"endpoint": "Echo", "path_prefix": "/echo"}],
        "rate_limits": {
            "customer_tiers": ADMISSION_TIERS,
            "default_tier": "steady",
        },
    }


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, mock_backend: MockBackend
) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("ratelimit")
    port = free_port()
    path = tmp / "gateway.yaml"
    path.write_text(yaml.safe_dump(config(port, mock_backend.port)))
    proc = Proc(
        [sys.executable, "-m", "fastgw", "serve", "-c", str(path), "--workers", str(WORKERS)], tmp
    )
    try:
        proc.wait_stdout("fastgw listening on")
        yield Served(port, proc)
    finally:
        proc.kill()


def bearer(customer: str, tier: str) -> dict[str, str]:
    claims = {"customer_id": customer, "tier": tier, "exp": int(time.time()) + 3600}
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


async def run_clients(
    served: Served, auth: dict[str, str], *, stop_at_first_429: bool
) -> tuple[list[Sample], dict[int, int]]:
    """``CONNECTIONS`` keep-alive connections, each sending one request after another: for
    ``HAMMER_S`` seconds, or until its first 429. Returns every sample and the worker spread."""
    clients = [await RawClient.connect(served.port) for _ in range(CONNECTIONS)]
    request = get("/echo/hammer", headers=auth)
    done = first_429 if stop_at_first_429 else until(time.monotonic() + HAMMER_S)
    try:
        per_client = await asyncio.gather(*(keep_sending(c, request, done) for c in clients))
        ports = client_ports(clients)
        spread = serving_workers(child_pids(served.proc.pid), served.port, ports)
    finally:
        for client in clients:
            await client.close()
    return [sample for samples in per_client for sample in samples], spread


def test_token_bucket_is_exact_across_workers(gateway: Served) -> None:
    samples, spread = uvloop.run(
        run_clients(gateway, bearer("steady-customer", "steady"), stop_at_first_429=False)
    )
    assert_spread(spread, CONNECTIONS, WORKERS)
    # The bucket is full (BURST) at the gateway's first decision and refills RATE_PER_S tokens a
    # second; every admission takes one token (bounds: tests/support/admission.py).
    assert_token_bucket(samples, burst=BURST, rate_per_s=RATE_PER_S)


def seconds_to_utc_midnight() -> float:
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - now).total_seconds()


def test_daily_quota_is_exact_across_workers(gateway: Served) -> None:
    if seconds_to_utc_midnight() < 30:  # a new UTC day would start a fresh quota mid-test
        pytest.skip("too close to 00:00 UTC for a daily-quota test")
    samples, spread = uvloop.run(
        run_clients(gateway, bearer("daily-customer", "daily"), stop_at_first_429=True)
    )
    assert_spread(spread, CONNECTIONS, WORKERS)
    admitted = [s for s in samples if s.status == 200]
    refused = [s for s in samples if s.status != 200]
    assert len(admitted) == DAILY_QUOTA
    assert len(refused) == CONNECTIONS  # each connection stopped at its first refusal
    assert {(s.status, s.code) for s in refused} == {(429, "quota_exceeded")}
    # One decision at a time across both workers: each admitted call saw its own remainder.
    assert sorted(s.remaining for s in admitted if s.remaining is not None) == list(
        range(DAILY_QUOTA)
    )
