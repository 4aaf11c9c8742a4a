"""Rate limits shared through Redis by two real gateway instances, two workers each.

Two ``fastgw serve --workers 2`` (``gateway.rate_limiting.backend: redis``, separate ports)
share one real redis-server on a unix socket, started here. Many keep-alive connections,
spread over both instances and, by SO_REUSEPORT, over both workers of each (checked, see
``tests/support/admission.py``), hammer one customer at once:

- a token bucket admits across all four workers what one would (the bounds of
  ``assert_token_bucket``), and a daily quota admits exactly its size;
- Redis killed under load (``on_failure: local``): every request is answered 200 or 429, none
  waits longer than the Redis timeout plus scheduling slack; a new redis-server on the same
  socket is used again by every worker (each logs ``connected again``) with no restart, and a
  fresh customer's burst is then shared by both instances, not granted by each;
- Redis paused (SIGSTOP) under load: the same answers and bounds (each request costs one
  timeout at most), and shared limits again after SIGCONT.

The tests share one deployment (module fixture) and use a customer each; the kill test leaves
its replacement server in place for the tests after it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
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
from tests.support.admission import (
    ADMISSION_TIERS,
    BURST,
    DAILY_QUOTA,
    RATE_PER_S,
    Sample,
    after,
    assert_spread,
    assert_token_bucket,
    client_ports,
    first_429,
    keep_sending,
    serving_workers,
    until,
)
from tests.support.client import RawClient, get
from tests.support.redis_server import RedisServer, start_redis

Done = Callable[[Sample], bool]  # keep_sending's stop condition, one per connection

SECRET = "ratelimit-redis-processes-hs256-secret-0123"
INSTANCES = 2
WORKERS = 2
CONNECTIONS_PER_INSTANCE = 16  # all on one worker: 2 ** -15 with an even spread; checked anyway
PATH = "/echo/hammer"
HAMMER_S = 2.0
SHARED_BURST = 10  # the tier that shows one bucket for both instances (no refill in a test)
REDIS_TIMEOUT_S = 0.1
# Slack over the Redis timeout for one whole request (client, gateway, scheduling) on a noisy
# 2-core VM. Below PAUSE_S: a request held for the whole pause would fail the bound.
ANSWER_SLACK_S = 0.6
PAUSE_S = 1.0  # under the client's dead-peer close, max(1 s, 20 x timeout) = 2 s
LOAD_STEP = 200  # answers that show the load went on through a phase
WAIT_S = 10.0  # deadline of one wait for progress or a log line
# What a worker's Redis client logs on the transitions (fastgw/resp/node.py).
UNREACHABLE = "cannot connect"
RECONNECTED = "connected again"


def config(port: int, backend_port: int, redis_address: str) -> dict[str, Any]:
    return {
        "gateway": {
            "server": {"host": "127.0.0.1", "port": port},
            "authentication": {"jwt": {"algorithm": "HS256", "hs_secret": SECRET}},
            "rate_limiting": {
                "backend": "redis",
                # One connection per worker: its "connected again" means the worker is back.
                "redis": {"address": redis_address, "timeout": "100ms", "pool_size": 1},
                "on_failure": "local",
            },
            "observability": {"logging": {"level": "info"}, "metrics": {"port": 0}},
        },
        "routing": {"metald_instances": [{"host": "127.0.0.1", "port": backend_port}]},
        "routes": [{"endpoint": "Echo", "path_prefix": "/echo"}],
        "rate_limits": {
            "customer_tiers": {
                **ADMISSION_TIERS,
                "shared": {"requests_per_second": 0.001, "burst_size": SHARED_BURST},
            },
            "default_tier": "steady",
        },
    }


@dataclass(frozen=True)
class Instance:
    port: int
    proc: Proc

    def log_count(self, needle: str) -> int:
        return self.proc.stderr_text().count(needle)


@dataclass
class Deployment:
    instances: list[Instance]
    redis: RedisServer  # the server now on the socket (the kill test replaces it)
    socket: Path
    directory: Path

    def restart_redis(self, name: str) -> RedisServer:
        self.redis = start_redis(self.directory / name, tcp=False, unix_path=self.socket)
        return self.redis


@pytest.fixture(scope="module")
def deployment(mock_backend: MockBackend) -> Iterator[Deployment]:
    # Not tmp_path_factory: a unix socket path must fit in 107 bytes.
    directory = Path(tempfile.mkdtemp(prefix="fgw-rlrp-"))
    socket = directory / "redis.sock"
    procs: list[Proc] = []
    redis = start_redis(directory / "redis", tcp=False, unix_path=socket)
    deployed = Deployment([], redis, socket, directory)
    try:
        ports = [free_port() for _ in range(INSTANCES)]
        for index, port in enumerate(ports):  # both boot at once
            path = directory / f"gateway{index}.yaml"
            path.write_text(yaml.safe_dump(config(port, mock_backend.port, redis.unix_address)))
            argv = [sys.executable, "-m", "fastgw", "serve", "-c", str(path)]
            procs.append(Proc([*argv, "--workers", str(WORKERS)], directory))
        for proc in procs:
            proc.wait_stdout("fastgw listening on")  # after every worker connected to Redis
        deployed.instances = [Instance(port, proc) for port, proc in zip(ports, procs, strict=True)]
        yield deployed
    finally:
        for proc in procs:
            proc.kill()
        deployed.redis.stop()
        shutil.rmtree(directory, ignore_errors=True)


def bearer(customer: str, tier: str) -> dict[str, str]:
    claims = {"customer_id": customer, "tier": tier, "exp": int(time.time()) + 3600}
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


def request_for(customer: str, tier: str) -> bytes:
    return get(PATH, headers=bearer(customer, tier))


class Fleet:
    """``CONNECTIONS_PER_INSTANCE`` keep-alive connections to each instance."""

    def __init__(self, per_instance: list[tuple[Instance, list[RawClient]]]) -> None:
        self.per_instance = per_instance
        self.clients = [client for _, clients in per_instance for client in clients]

    async def hammer(self, request: bytes, done: Callable[[], Done]) -> list[Sample]:
        """Every connection sends ``request`` one after another until its ``done()`` says."""
        per_client = await asyncio.gather(
            *(keep_sending(client, request, done()) for client in self.clients)
        )
        return [sample for samples in per_client for sample in samples]

    def assert_spread(self) -> None:
        """Both workers of each instance serve some of its connections."""
        for instance, clients in self.per_instance:
            spread = serving_workers(
                child_pids(instance.proc.pid), instance.port, client_ports(clients)
            )
            assert_spread(spread, len(clients), WORKERS)


@asynccontextmanager
async def fleet(deployed: Deployment) -> AsyncIterator[Fleet]:
    opened: list[tuple[Instance, list[RawClient]]] = []
    try:
        for instance in deployed.instances:
            clients: list[RawClient] = []
            opened.append((instance, clients))
            for _ in range(CONNECTIONS_PER_INSTANCE):
                clients.append(await RawClient.connect(instance.port))
        yield Fleet(opened)
    finally:
        for _, clients in opened:
            for client in clients:
                await client.close()


class Load:
    """A ``done`` for ``keep_sending`` that runs until ``stop()``, and counts answers."""

    def __init__(self) -> None:
        self.answers = 0
        self.stopped = False
        self._progress = asyncio.Event()

    def __call__(self, _sample: Sample) -> bool:
        self.answers += 1
        self._progress.set()
        return self.stopped

    def stop(self) -> None:
        self.stopped = True

    async def answered(self, count: int) -> None:
        """Wait (bounded) until ``count`` more answers came back."""
        target = self.answers + count
        async with asyncio.timeout(WAIT_S):
            while self.answers < target:
                self._progress.clear()
                await self._progress.wait()


async def logged(deployed: Deployment, needle: str, baseline: list[int], what: str) -> None:
    """Wait (bounded, the loop running) until each instance logged ``needle`` once more per
    worker than ``baseline``: every worker went through that transition."""
    instances = deployed.instances
    deadline = time.monotonic() + WAIT_S
    while not all(
        i.log_count(needle) >= seen + WORKERS for i, seen in zip(instances, baseline, strict=True)
    ):
        if time.monotonic() > deadline:
            logs = "\n".join(i.proc.stderr_text()[-3000:] for i in instances)
            raise AssertionError(f"timed out after {WAIT_S}s waiting for {what}:\n{logs}")
        await asyncio.sleep(0.01)  # polling a log under a deadline; the load runs meanwhile


def assert_answered_by_policy(samples: list[Sample]) -> None:
    """``on_failure: local``: each request got 200 or 429, within timeout plus slack."""
    assert samples
    answers = {(s.status, s.code) for s in samples}
    assert answers <= {(200, None), (429, "rate_limited")}, answers
    slowest = max(s.latency_s for s in samples)
    assert slowest < REDIS_TIMEOUT_S + ANSWER_SLACK_S, slowest


async def assert_one_shared_burst(deployed: Deployment, crowd: Fleet, customer: str) -> None:
    """A fresh customer of the ``shared`` tier gets ``SHARED_BURST`` calls across both
    instances together, not per instance (each instance gets two requests per connection, more
    than the burst), each call with its own remainder."""
    samples = await crowd.hammer(request_for(customer, "shared"), lambda: after(2))
    admitted = [s for s in samples if s.status == 200]
    assert len(admitted) == SHARED_BURST, (len(admitted), len(samples))
    assert sorted(s.remaining for s in admitted if s.remaining is not None) == list(
        range(SHARED_BURST)
    )
    assert {(s.status, s.code) for s in samples if s.status != 200} == {(429, "rate_limited")}
    with deployed.redis.client() as direct:
        assert direct.exists(f"{{c:{customer}}}".encode())


def test_token_bucket_is_exact_across_instances_and_workers(deployment: Deployment) -> None:
    async def main() -> list[Sample]:
        async with fleet(deployment) as crowd:
            request = request_for("steady-customer", "steady")
            deadline = time.monotonic() + HAMMER_S
            samples = await crowd.hammer(request, lambda: until(deadline))
            crowd.assert_spread()
        return samples

    samples = uvloop.run(main())
    # The bucket is Redis's: full (BURST) at the first decision, RATE_PER_S tokens a second.
    assert_token_bucket(samples, burst=BURST, rate_per_s=RATE_PER_S)
    with deployment.redis.client() as direct:
        assert direct.exists(b"{c:steady-customer}")


def seconds_to_utc_midnight() -> float:
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - now).total_seconds()


def test_daily_quota_is_exact_across_instances(deployment: Deployment) -> None:
    if seconds_to_utc_midnight() < 30:  # a new UTC day would start a fresh quota mid-test
        pytest.skip("too close to 00:00 UTC for a daily-quota test")

    async def main() -> list[Sample]:
        async with fleet(deployment) as crowd:
            request = request_for("daily-customer", "daily")
            samples = await crowd.hammer(request, lambda: first_429)
            crowd.assert_spread()
        return samples

    samples = uvloop.run(main())
    admitted = [s for s in samples if s.status == 200]
    refused = [s for s in samples if s.status != 200]
    assert len(admitted) == DAILY_QUOTA
    assert len(refused) == INSTANCES * CONNECTIONS_PER_INSTANCE  # each stopped at its first
    assert {(s.status, s.code) for s in refused} == {(429, "quota_exceeded")}
    # One script run at a time in Redis: each admitted call saw its own remainder.
    assert sorted(s.remaining for s in admitted if s.remaining is not None) == list(
        range(DAILY_QUOTA)
    )


def test_redis_killed_under_load_then_replaced(deployment: Deployment) -> None:
    instances = deployment.instances

    async def main() -> list[Sample]:
        async with fleet(deployment) as crowd:
            unreachable = [i.log_count(UNREACHABLE) for i in instances]
            reconnected = [i.log_count(RECONNECTED) for i in instances]
            load = Load()
            hammer = asyncio.ensure_future(
                crowd.hammer(request_for("outage-customer", "steady"), lambda: load)
            )
            try:
                await load.answered(LOAD_STEP)  # decided by Redis
                await asyncio.to_thread(deployment.redis.kill)
                # Every worker saw the outage (a reconnect refused), and the load went on.
                await logged(deployment, UNREACHABLE, unreachable, "every worker's outage")
                await load.answered(LOAD_STEP)
                await asyncio.to_thread(deployment.restart_redis, "redis-replaced")
                # Every worker connects to the new server in the background, under load.
                await logged(deployment, RECONNECTED, reconnected, "every worker to reconnect")
                await load.answered(LOAD_STEP)
            finally:
                load.stop()
                samples = await hammer
            await assert_one_shared_burst(deployment, crowd, "after-outage")
        return samples

    try:
        samples = uvloop.run(main())
    finally:
        if deployment.redis.process.poll() is not None:  # leave a server for the next tests
            deployment.restart_redis("redis-after-failure")
    assert_answered_by_policy(samples)
    with deployment.redis.client() as direct:
        assert direct.exists(b"{c:outage-customer}")  # the load went back to Redis


def test_redis_paused_under_load(deployment: Deployment) -> None:
    instances = deployment.instances

    async def main() -> list[Sample]:
        async with fleet(deployment) as crowd:
            lost = [i.log_count("connection lost") for i in instances]
            load = Load()
            hammer = asyncio.ensure_future(
                crowd.hammer(request_for("pause-customer", "steady"), lambda: load)
            )
            pid = deployment.redis.process.pid
            try:
                await load.answered(LOAD_STEP)
                os.kill(pid, signal.SIGSTOP)
                try:
                    await asyncio.sleep(PAUSE_S)  # the length of the outage, not a readiness wait
                finally:
                    os.kill(pid, signal.SIGCONT)
                await load.answered(LOAD_STEP)  # Redis again, its backlog answered
            finally:
                load.stop()
                samples = await hammer
            # The pause stayed under the dead-peer bound: every connection is still up.
            assert [i.log_count("connection lost") for i in instances] == lost
            await assert_one_shared_burst(deployment, crowd, "after-pause")
        return samples

    samples = uvloop.run(main())
    assert_answered_by_policy(samples)
    # The pause did bite: requests waited for their Redis timeout, then the local table decided.
    assert max(s.latency_s for s in samples) >= REDIS_TIMEOUT_S
