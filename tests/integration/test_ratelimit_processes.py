"""Rate limits are exact across workers: one real ``fastgw serve --workers 2`` (memory backend),
hammered by many keep-alive connections at once.

The workers share one limit table (made by the master, inherited over fork), so two workers must
grant together what one would: a token bucket admits no more than it refills, and a daily quota
admits exactly its size. Connections are spread over both workers by SO_REUSEPORT (each worker
has its own listener); the test checks that both served, by finding which worker holds the
server side of each client connection (``/proc/<pid>/fd`` and ``/proc/net/tcp``).

Clocks. The gateway decides on the wall clock, the client measures on the monotonic clock; over
two seconds the two differ by far less than a millisecond (NTP slews at most 500 ppm), well
inside the one-token slack of the bounds below.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
import uvloop
import yaml

from fastgw.listen import free_port
from tests.integration.conftest import MockBackend, Proc, child_pids
from tests.support.client import RawClient, get

SECRET = "rate-limit-processes-hs256-secret-0123456789"
WORKERS = 2
CONNECTIONS = 16  # all on one worker: 2 ** -15 with an even spread; checked anyway
RATE_PER_S = 50
BURST = 100
HAMMER_S = 2.0
TCP_ESTABLISHED = "01"  # the st column of /proc/net/tcp
DAILY_QUOTA = 300


@dataclass(frozen=True)
class Served:
    port: int
    proc: Proc


@dataclass(frozen=True)
class Sample:
    sent: float  # monotonic, just before the request was written
    received: float  # monotonic, once its whole response was read
    status: int
    code: str | None  # the error code of a gateway-made answer
    remaining: int | None  # RateLimit-Remaining


def config(port: int, backend_port: int) -> dict[str, Any]:
    return {
        "gateway": {
            "server": {"host": "127.0.0.1", "port": port},
            "authentication": {"jwt": {"algorithm": "HS256", "hs_secret": SECRET}},
            "rate_limiting": {"backend": "memory"},
        },
        "routing": {"metald_instances": [{"host": "127.0.0.1", "port": backend_port}]},
        "routes": [{"endpoint": "Echo", "path_prefix": "/echo"}],
        "rate_limits": {
            "customer_tiers": {
                "steady": {"requests_per_second": RATE_PER_S, "burst_size": BURST},
                "daily": {
                    "requests_per_second": 1_000_000,
                    "burst_size": 1_000_000,
                    "requests_per_day": DAILY_QUOTA,
                },
            },
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


def serving_workers(worker_pids: set[int], port: int, client_ports: list[int]) -> dict[int, int]:
    """Which worker serves each client connection: ``{client port: worker pid}``."""
    owner: dict[int, int] = {}  # socket inode -> worker pid
    for worker in worker_pids:
        for fd in os.listdir(f"/proc/{worker}/fd"):
            try:
                target = os.readlink(f"/proc/{worker}/fd/{fd}")
            except OSError:
                continue  # closed meanwhile
            if target.startswith("socket:["):
                owner[int(target[len("socket:[") : -1])] = worker
    served: dict[int, int] = {}
    wanted = set(client_ports)
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] != TCP_ESTABLISHED:  # an earlier connection from a reused client port
            continue
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        remote_port = int(fields[2].rsplit(":", 1)[1], 16)
        pid = owner.get(int(fields[9]))
        if local_port == port and remote_port in wanted and pid is not None:
            assert remote_port not in served, f"two server sockets for client port {remote_port}"
            served[remote_port] = pid
    return served


async def one(client: RawClient, request: bytes) -> Sample:
    sent = time.monotonic()
    response = await client.request(request)
    received = time.monotonic()
    code = None
    if response.status != 200:
        body = response.json()
        assert isinstance(body, dict), response.body
        code = body["error"]["code"]
    remaining = response.header("ratelimit-remaining")
    return Sample(
        sent, received, response.status, code, None if remaining is None else int(remaining)
    )


async def run_clients(
    served: Served, auth: dict[str, str], *, stop_at_first_429: bool
) -> tuple[list[Sample], dict[int, int]]:
    """``CONNECTIONS`` keep-alive connections, each sending one request after another: for
    ``HAMMER_S`` seconds, or until its first 429. Returns every sample and the worker spread."""
    clients = [await RawClient.connect(served.port) for _ in range(CONNECTIONS)]
    request = get("/echo/hammer", headers=auth)
    deadline = time.monotonic() + HAMMER_S

    async def loop(client: RawClient) -> list[Sample]:
        samples: list[Sample] = []
        while stop_at_first_429 or time.monotonic() < deadline:
            sample = await one(client, request)
            samples.append(sample)
            if stop_at_first_429 and sample.status == 429:
                break
            assert len(samples) < 100_000, "never refused"
        return samples

    try:
        per_client = await asyncio.gather(*(loop(client) for client in clients))
        client_ports = [client.writer.get_extra_info("sockname")[1] for client in clients]
        spread = serving_workers(child_pids(served.proc.pid), served.port, client_ports)
    finally:
        for client in clients:
            await client.close()
    return [sample for samples in per_client for sample in samples], spread


def assert_both_workers_served(spread: dict[int, int]) -> None:
    assert len(spread) == CONNECTIONS, spread  # every connection found, on one worker each
    assert len(set(spread.values())) == WORKERS, spread


def test_token_bucket_is_exact_across_workers(gateway: Served) -> None:
    samples, spread = uvloop.run(
        run_clients(gateway, bearer("steady-customer", "steady"), stop_at_first_429=False)
    )
    assert_both_workers_served(spread)
    admitted = [s for s in samples if s.status == 200]
    refused = [s for s in samples if s.status != 200]
    assert {(s.status, s.code) for s in refused} == {(429, "rate_limited")}
    assert refused, "the clients never outran the bucket"
    # The bucket is full (BURST) at the gateway's first decision t_first and refills RATE_PER_S
    # tokens a second; every admission takes one token.
    #
    # Upper bound: by the last decision t_last at most BURST + RATE * (t_last - t_first) tokens
    # ever existed. Both decisions lie inside [first request sent, last response received], so
    # elapsed_max bounds their distance from above (+1: slack for clock rounding).
    elapsed_max = max(s.received for s in samples) - min(s.sent for s in samples)
    assert len(admitted) <= BURST + RATE_PER_S * elapsed_max + 1, (len(admitted), elapsed_max)
    # Lower bound: a refusal at t_r means less than one token was left then, so everything
    # that had refilled by t_r, but that last token, had been admitted (the clients never
    # paused long enough for the bucket to fill up and waste refill). The last refused request
    # was decided after it was sent and the first decision came before the first response
    # arrived, so elapsed_min bounds t_r - t_first from below. 0.98 leaves ~4 tokens of slack.
    last_refused_sent = max(s.sent for s in refused)
    elapsed_min = last_refused_sent - min(s.received for s in samples)
    assert len(admitted) >= 0.98 * (BURST + RATE_PER_S * elapsed_min), (
        len(admitted),
        elapsed_min,
    )


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
    assert_both_workers_served(spread)
    admitted = [s for s in samples if s.status == 200]
    refused = [s for s in samples if s.status != 200]
    assert len(admitted) == DAILY_QUOTA
    assert len(refused) == CONNECTIONS  # each connection stopped at its first refusal
    assert {(s.status, s.code) for s in refused} == {(429, "quota_exceeded")}
    # One decision at a time across both workers: each admitted call saw its own remainder.
    assert sorted(s.remaining for s in admitted if s.remaining is not None) == list(
        range(DAILY_QUOTA)
    )
