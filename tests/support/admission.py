"""Measuring what a rate-limited gateway admits, from the client side, for process-level tests.

What it owns
    ``Sample`` (one request as the client saw it: when it was sent and answered, on the
    monotonic clock, and what came back), ``measure`` and ``keep_sending`` (keep-alive
    connections that send one request after another and record each), ``serving_workers``
    (which worker process holds the server side of each client connection) and
    ``assert_token_bucket`` (the admission window of a token bucket: the bounds every test that
    hammers one bucket checks).

Clocks. The gateway (or Redis, whose ``TIME`` the scripts use) decides on a wall clock, the
client measures on the monotonic clock; over a few seconds the two differ by far less than a
millisecond (NTP slews at most 500 ppm), well inside the one-token slack of the bounds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.client import RawClient

# The tiers both process tests (memory and Redis backends) measure: a steady bucket, and a
# daily quota with a bucket that never limits.
RATE_PER_S = 50
BURST = 100
DAILY_QUOTA = 300
ADMISSION_TIERS: dict[str, dict[str, float]] = {
    "steady": {"requests_per_second": RATE_PER_S, "burst_size": BURST},
    "daily": {
        "requests_per_second": 1_000_000,
        "burst_size": 1_000_000,
        "requests_per_day": DAILY_QUOTA,
    },
}
TCP_ESTABLISHED = "01"  # the st column of /proc/net/tcp
MAX_REQUESTS_PER_CONNECTION = 100_000  # a loop that is never told to stop fails instead


@dataclass(frozen=True)
class Sample:
    sent: float  # monotonic, just before the request was written
    received: float  # monotonic, once its whole response was read
    status: int
    code: str | None  # the error code of a gateway-made answer
    remaining: int | None  # RateLimit-Remaining

    @property
    def latency_s(self) -> float:
        return self.received - self.sent


async def measure(client: RawClient, request: bytes) -> Sample:
    """Send ``request`` on ``client`` and read its answer, timed."""
    sent = time.monotonic()
    response = await client.request(request)
    received = time.monotonic()
    code = None
    if response.status != 200:
        body = response.json()
        assert isinstance(body, dict), (response.status, response.body)
        code = body["error"]["code"]
    remaining = response.header("ratelimit-remaining")
    return Sample(
        sent, received, response.status, code, None if remaining is None else int(remaining)
    )


async def keep_sending(
    client: RawClient, request: bytes, done: Callable[[Sample], bool]
) -> list[Sample]:
    """Send ``request`` one after another on ``client`` until ``done(last sample)``."""
    samples: list[Sample] = []
    while True:
        sample = await measure(client, request)
        samples.append(sample)
        if done(sample):
            return samples
        assert len(samples) < MAX_REQUESTS_PER_CONNECTION, "never told to stop"


def until(deadline: float) -> Callable[[Sample], bool]:
    """``done`` for ``keep_sending``: stop at the first answer past ``deadline`` (monotonic)."""
    return lambda _sample: time.monotonic() >= deadline


def after(count: int) -> Callable[[Sample], bool]:
    """``done`` for ``keep_sending``: stop after ``count`` answers (one per connection)."""
    answered = 0

    def done(_sample: Sample) -> bool:
        nonlocal answered
        answered += 1
        return answered >= count

    return done


def first_429(sample: Sample) -> bool:
    """``done`` for ``keep_sending``: stop at the first refusal."""
    return sample.status == 429


def client_ports(clients: Sequence[RawClient]) -> list[int]:
    return [client.writer.get_extra_info("sockname")[1] for client in clients]


def serving_workers(worker_pids: set[int], port: int, client_ports: list[int]) -> dict[int, int]:
    """Which worker serves each client connection: ``{client port: worker pid}``, found from
    each worker's socket inodes (``/proc/<pid>/fd``) and the established connections of
    ``/proc/net/tcp``. Call it while the connections are open."""
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


def assert_spread(spread: dict[int, int], connections: int, workers: int) -> None:
    """Every connection was found on one worker, and every worker served some."""
    assert len(spread) == connections, spread
    assert len(set(spread.values())) == workers, spread


def assert_token_bucket(samples: Sequence[Sample], *, burst: int, rate_per_s: float) -> None:
    """The 200s among ``samples`` (requests that hammered one token bucket, full at the first
    decision, refilling ``rate_per_s`` a second, one token per admission) fit the bucket.

    Upper bound: by the last decision t_last at most ``burst + rate * (t_last - t_first)``
    tokens ever existed. Both decisions lie inside [first request sent, last response
    received], so ``elapsed_max`` bounds their distance from above (+1: slack for clock
    rounding).

    Lower bound: a refusal at t_r means less than one token was left then, so everything that
    had refilled by t_r, but that last token, had been admitted (the clients never paused long
    enough for the bucket to fill up and waste refill). The last refused request was decided
    after it was sent and the first decision came before the first response arrived, so
    ``elapsed_min`` bounds t_r - t_first from below. 0.98 leaves ~4 tokens of slack at the
    sizes the tests use."""
    admitted = [s for s in samples if s.status == 200]
    refused = [s for s in samples if s.status != 200]
    assert refused, "the clients never outran the bucket"
    assert {(s.status, s.code) for s in refused} == {(429, "rate_limited")}
    elapsed_max = max(s.received for s in samples) - min(s.sent for s in samples)
    assert len(admitted) <= burst + rate_per_s * elapsed_max + 1, (len(admitted), elapsed_max)
    elapsed_min = max(s.sent for s in refused) - min(s.received for s in samples)
    assert len(admitted) >= 0.98 * (burst + rate_per_s * elapsed_min), (
        len(admitted),
        elapsed_min,
    )
