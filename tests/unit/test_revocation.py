"""The revocation list: its semantics, its Redis writes, and the per-worker poller, against a
real redis-server (tests/support/redis_server.py); Cluster mode against a one-node Cluster.

Waits are on the poller's own ``on_change`` (a queue filled by the callback) or on Redis state,
always under a deadline; the only sleeps are the ones that let ticks fail while Redis is down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import redis

from fastgw.auth.revocation import (
    CUSTOMER_KEY,
    JTI_KEEP_AFTER_EXP_S,
    JTI_KEY,
    LOAD_TIMEOUT_S,
    VERSION_KEY,
    RevocationError,
    RevocationList,
    RevocationPoller,
    check_customer_id,
    check_jti,
    forget_customer,
    forget_jti,
    list_revocations,
    parse_customers,
    parse_jtis,
    revoke_customer,
    revoke_jti,
)
from fastgw.config.gateway import RedisConfig
from fastgw.errors import ConfigError
from fastgw.keys import b64url
from fastgw.redis_connect import (
    BACKGROUND_TIMEOUT_FLOOR_S,
    connection_kwargs,
    describe,
    sync_client,
)
from fastgw.revoke import TokenArg, token_argument
from tests.support.gateway import uvloop_test
from tests.support.redis_server import RedisServer, running_redis, start_redis

WAIT_S = 3.0  # deadline of one wait for the poller (its interval here is 0.05..0.1 s)
LOGGER = "fastgw.revocation"

Change = tuple[frozenset[str], dict[bytes, float]]


class Changes:
    """``on_change`` that queues its calls, so a test awaits the next one with a deadline."""

    def __init__(self, fail: bool = False) -> None:
        self.queue: asyncio.Queue[Change] = asyncio.Queue()
        self.fail = fail

    def __call__(self, jtis: frozenset[str], customers: Mapping[bytes, float]) -> None:
        self.queue.put_nowait((jtis, dict(customers)))
        if self.fail:
            raise RuntimeError("purge failed")

    async def next(self, timeout_s: float = WAIT_S) -> Change:
        return await asyncio.wait_for(self.queue.get(), timeout_s)

    def already(self) -> Change:
        """The call that must have happened already (during ``start()``)."""
        return self.queue.get_nowait()


async def wait_for(condition: object, what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.01)


def calls(client: redis.Redis, command: str) -> int:
    stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory whose unix socket paths stay under the 107-byte limit."""
    directory = Path(tempfile.mkdtemp(prefix="fgw-rev-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def rc(redis_clean: RedisServer) -> Iterator[redis.Redis]:
    with redis_clean.client() as client:
        yield client


def config_for(server: RedisServer) -> RedisConfig:
    return RedisConfig(address=server.unix_address)


# ------------------------------------------------------------------------ RevocationList


def test_empty_list_revokes_nothing() -> None:
    revocations = RevocationList()
    assert revocations.empty
    assert not revocations.revoked("j", b"c", 1.0)
    assert not revocations.revoked(None, b"c", None)


def test_listed_jti_is_revoked_whatever_the_customer() -> None:
    revocations = RevocationList({"j1": 2_000_000_000})
    assert not revocations.empty
    assert revocations.revoked("j1", b"anyone", 1e12)
    assert not revocations.revoked("j2", b"anyone", 1.0)
    assert not revocations.revoked(None, b"anyone", None)


def test_customer_tokens_issued_before_not_before_are_revoked() -> None:
    revocations = RevocationList(customers={b"c1": 1000.5})
    assert revocations.revoked(None, b"c1", 999.0)
    assert revocations.revoked("other", b"c1", 1000.0)  # same second, earlier: revoked
    assert not revocations.revoked(None, b"c1", 1000.5)  # at not-before: issued after it
    assert not revocations.revoked(None, b"c1", 1001.0)
    assert revocations.revoked(None, b"c1", None)  # no iat: cannot prove it is newer
    assert not revocations.revoked(None, b"c2", None)


def test_parsers_skip_malformed_entries_and_say_why() -> None:
    problems: list[str] = []
    jtis = parse_jtis({b"ok": b"1700000000", b"bad": b"soon", b"\xff": b"1"}, problems)
    customers = parse_customers(
        {b"c1": b"1700000000.5", b"bad id": b"1", b"c2": b"nan", b"c3": b"x"}, problems
    )
    assert jtis == {"ok": 1_700_000_000}
    assert customers == {b"c1": 1_700_000_000.5}
    assert len(problems) == 5, problems


@pytest.mark.parametrize("jti", ["", "x" * 257, "a\nb", "tab\there"])
def test_bad_jti_is_refused(jti: str) -> None:
    with pytest.raises(RevocationError, match="--jti"):
        check_jti(jti)


@pytest.mark.parametrize("customer", ["", "a b", "x" * 129, "é", "a/b"])
def test_bad_customer_id_is_refused(customer: str) -> None:
    with pytest.raises(RevocationError, match="--customer"):
        check_customer_id(customer)


def test_good_ids_pass() -> None:
    assert check_jti("x" * 256) == "x" * 256
    assert check_customer_id("cust_01.a-b") == "cust_01.a-b"


# ------------------------------------------------------------------------ redis_connect


def test_connection_kwargs_for_tcp_unix_and_ipv6() -> None:
    tcp = connection_kwargs(RedisConfig(address="redis.local:6380", password="pw", db=3))
    assert (tcp["host"], tcp["port"], tcp["db"], tcp["password"]) == ("redis.local", 6380, 3, "pw")
    assert tcp["socket_timeout"] == tcp["socket_connect_timeout"] == 0.02  # the default timeout
    unix = connection_kwargs(RedisConfig(address="unix:///run/r.sock"), min_timeout_s=1.0)
    assert unix["unix_socket_path"] == "/run/r.sock" and "host" not in unix
    assert unix["password"] is None and unix["socket_timeout"] == 1.0
    assert connection_kwargs(RedisConfig(address="[::1]:6379"))["host"] == "::1"
    assert describe(RedisConfig(address="[::1]:6379", cluster=True)) == "[::1]:6379 (cluster)"


def test_cluster_config_problems_name_their_path() -> None:
    with pytest.raises(ConfigError) as caught:
        connection_kwargs(RedisConfig(address="unix:///r.sock", db=1, cluster=True))
    paths = [problem.path for problem in caught.value.problems]
    assert paths == ["$.gateway.rate_limiting.redis.address", "$.gateway.rate_limiting.redis.db"]
    assert "db" not in connection_kwargs(RedisConfig(address="h:1", cluster=True))


# ------------------------------------------------------------------------ writes


def test_writes_store_the_layout_and_bump_the_version(rc: redis.Redis) -> None:
    now = time.time()
    revoke_jti(rc, "j1", int(now) + 3600, now)
    first = int(rc.get(VERSION_KEY) or 0)
    assert first > 1_000_000_000_000_000  # a missing version starts at the server clock in µs
    revoke_customer(rc, "c1", now, now)
    assert rc.hgetall(JTI_KEY) == {b"j1": str(int(now) + 3600).encode()}
    assert float(rc.hget(CUSTOMER_KEY, "c1") or 0) == now
    assert int(rc.get(VERSION_KEY) or 0) == first + 1
    assert list_revocations(rc) == ({"j1": int(now) + 3600}, {"c1": now})
    assert forget_jti(rc, "j1", now)
    assert not forget_jti(rc, "j1", now)  # nothing changed: the version stays
    assert forget_customer(rc, "c1", now)
    assert not forget_customer(rc, "c1", now)
    assert int(rc.get(VERSION_KEY) or 0) == first + 3
    assert list_revocations(rc) == ({}, {})


def test_each_write_drops_jti_entries_past_exp_and_leeway(rc: redis.Redis) -> None:
    now = time.time()
    rc.hset(JTI_KEY, mapping={"long-dead": int(now - JTI_KEEP_AFTER_EXP_S - 10)})
    rc.hset(JTI_KEY, mapping={"in-leeway": int(now - 10), "garbage": "soon"})
    revoke_customer(rc, "c1", now, now)
    remaining = rc.hgetall(JTI_KEY)
    assert set(remaining) == {b"in-leeway", b"garbage"}  # malformed ones are left for --forget


def test_writes_validate_their_inputs(rc: redis.Redis) -> None:
    now = time.time()
    with pytest.raises(RevocationError, match="already expired"):
        revoke_jti(rc, "j1", int(now - JTI_KEEP_AFTER_EXP_S - 1), now)
    with pytest.raises(RevocationError, match="--until"):
        revoke_jti(rc, "j1", 1e10, now)  # type: ignore[arg-type]
    with pytest.raises(RevocationError, match="--before"):
        revoke_customer(rc, "c1", float("inf"), now)
    with pytest.raises(RevocationError, match="--customer"):
        revoke_customer(rc, "no spaces", now, now)
    assert rc.exists(JTI_KEY, CUSTOMER_KEY, VERSION_KEY) == 0


# ------------------------------------------------------------------------ the poller


def test_poll_interval_is_bounded() -> None:
    for bad in (0.0, -1.0, 1.5):
        with pytest.raises(ValueError, match="poll_interval_s"):
            RevocationPoller(RedisConfig(), bad, None)


@uvloop_test
async def test_poller_loads_then_reports_each_new_revocation(
    redis_clean: RedisServer, rc: redis.Redis
) -> None:
    now = time.time()
    revoke_jti(rc, "before-start", int(now) + 60, now)
    changes = Changes()
    interval_s = 0.1
    poller = RevocationPoller(config_for(redis_clean), interval_s, changes)
    try:
        await poller.start()
        assert poller.loaded
        assert poller.revoked.jtis == {"before-start": int(now) + 60}
        assert changes.already() == (frozenset({"before-start"}), {})

        before = poller.revoked
        revoke_jti(rc, "j2", int(now) + 60, time.time())
        written = time.monotonic()
        assert await changes.next() == (frozenset({"j2"}), {})
        # Honoured within one interval plus a round trip (the contract: within 1 s).
        assert time.monotonic() - written < min(1.0, interval_s + 0.5)
        assert poller.revoked is not before and set(before.jtis) == {"before-start"}
        assert poller.revoked.revoked("j2", b"x", None)

        revoke_customer(rc, "c1", 1000.0, time.time())
        assert await changes.next() == (frozenset(), {b"c1": 1000.0})
        revoke_customer(rc, "c1", 2000.0, time.time())  # later not-before: more tokens revoked
        assert await changes.next() == (frozenset(), {b"c1": 2000.0})
        assert poller.revoked.revoked(None, b"c1", 1500.0)

        # Earlier not-before and forgetting revoke nothing new: the list changes, no callback.
        revoke_customer(rc, "c1", 500.0, time.time())
        forget_jti(rc, "j2", time.time())
        await wait_for(
            lambda: poller.revoked.customers == {b"c1": 500.0} and "j2" not in poller.revoked.jtis,
            "the list to follow an earlier not-before and a forget",
        )
        assert changes.queue.empty()
    finally:
        await poller.wait_stopped()


@uvloop_test
async def test_unchanged_version_costs_one_get_per_tick_and_no_hgetall(
    redis_clean: RedisServer, rc: redis.Redis
) -> None:
    changes = Changes()
    poller = RevocationPoller(config_for(redis_clean), 0.05, changes)
    try:
        await poller.start()
        rc.config_resetstat()
        await wait_for(lambda: calls(rc, "get") >= 5, "five polls")
        assert calls(rc, "hgetall") == 0
        revoke_jti(rc, "j1", int(time.time()) + 60, time.time())
        await changes.next()
        # One HGETALL inside the write script (pruning), two from the poller's refetch.
        assert calls(rc, "hgetall") == 3
    finally:
        await poller.wait_stopped()


@uvloop_test
async def test_malformed_and_expired_entries_are_skipped_with_a_log_line(
    redis_clean: RedisServer, rc: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    now = time.time()
    rc.hset(JTI_KEY, mapping={"good": int(now) + 60, "bad": "x", "dead": int(now) - 3600})
    rc.hset(CUSTOMER_KEY, mapping={"c1": now, "bad id": now, "c2": "never"})
    rc.incr(VERSION_KEY)
    poller = RevocationPoller(config_for(redis_clean), 0.05, None)
    try:
        await poller.start()
    finally:
        await poller.wait_stopped()
    assert poller.revoked.jtis == {"good": int(now) + 60}
    assert poller.revoked.customers == {b"c1": now}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 3 malformed entries" in warnings[0], warnings


@uvloop_test
async def test_redis_down_at_start_boots_empty_then_recovers(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    socket_path = short_dir / "r.sock"
    changes = Changes()
    poller = RevocationPoller(RedisConfig(address=f"unix://{socket_path}"), 0.05, changes)
    server: RedisServer | None = None
    try:
        started = time.monotonic()
        await poller.start()
        assert time.monotonic() - started < LOAD_TIMEOUT_S + 0.5
        assert poller.revoked.empty and not poller.loaded
        await asyncio.sleep(0.3)  # several failing ticks: still one error line (rate limit)
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "starting with an empty list" in errors[0].getMessage()

        server = start_redis(short_dir / "one", tcp=False, unix_path=socket_path)
        with server.client() as client:
            revoke_jti(client, "j1", int(time.time()) + 60, time.time())
        assert await changes.next() == (frozenset({"j1"}), {})
        assert poller.loaded
        assert any("answers again" in r.getMessage() for r in caplog.records)

        server.stop()  # down again: the last list is kept
        await wait_for(lambda: not poller.loaded, "the poller to notice the outage")
        assert "j1" in poller.revoked.jtis

        # Back without its data (no persistence): the poller refetches, whatever the version.
        server = start_redis(short_dir / "two", tcp=False, unix_path=socket_path)
        with server.client() as client:
            revoke_customer(client, "c1", 1000.0, time.time())
        assert await changes.next() == (frozenset(), {b"c1": 1000.0})
        assert poller.revoked.jtis == {}
        assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
    finally:
        await poller.wait_stopped()
        if server is not None:
            server.stop()


@uvloop_test
async def test_on_change_errors_are_logged_and_polling_goes_on(
    redis_clean: RedisServer, rc: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    changes = Changes(fail=True)
    poller = RevocationPoller(config_for(redis_clean), 0.05, changes)
    try:
        await poller.start()
        revoke_jti(rc, "j1", int(time.time()) + 60, time.time())
        await changes.next()
        revoke_jti(rc, "j2", int(time.time()) + 60, time.time())
        assert await changes.next() == (frozenset({"j2"}), {})
        assert set(poller.revoked.jtis) == {"j1", "j2"}
    finally:
        await poller.wait_stopped()
    assert sum("on_change failed" in r.getMessage() for r in caplog.records) == 2


@uvloop_test
async def test_stop_is_sync_and_idempotent(redis_clean: RedisServer) -> None:
    poller = RevocationPoller(config_for(redis_clean), 0.05, None)
    poller.stop()  # before start: nothing to do
    poller = RevocationPoller(config_for(redis_clean), 0.05, None)
    await poller.start()
    poller.stop()
    poller.stop()
    await poller.wait_stopped()
    with pytest.raises(RuntimeError):
        await poller.start()


def test_a_missing_redis_server_fails_the_fixture_never_skips(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(short_dir))
    with pytest.raises(pytest.fail.Exception, match="redis-server is not on PATH"):
        start_redis(short_dir)


# ------------------------------------------------------------------------ Redis Cluster


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisServer]:
    with running_redis("fgw-cluster-", cluster=True) as server:
        yield server


@uvloop_test
async def test_cluster_mode_writes_and_polls(redis_cluster: RedisServer) -> None:
    with redis_cluster.client() as raw:
        raw.flushall()
    config = RedisConfig(address=redis_cluster.address, cluster=True)
    now = time.time()
    client = sync_client(config, min_timeout_s=BACKGROUND_TIMEOUT_FLOOR_S)
    with contextlib.closing(client):
        revoke_jti(client, "j1", int(now) + 60, now)
        revoke_customer(client, "c1", now, now)
        assert list_revocations(client) == ({"j1": int(now) + 60}, {"c1": now})
        changes = Changes()
        poller = RevocationPoller(config, 0.05, changes)
        try:
            await poller.start()
            assert changes.already() == (frozenset({"j1"}), {b"c1": now})
            assert forget_jti(client, "j1", time.time())
            await wait_for(lambda: not poller.revoked.jtis, "the forget to reach the poller")
        finally:
            await poller.wait_stopped()


# ------------------------------------------------- fastgw revoke --token: reading the token


def jwt_of(payload: bytes, signature: bytes = b"not-a-signature") -> str:
    return ".".join(b64url(part) for part in (b'{"alg":"ES256"}', payload, signature))


def test_token_argument_reads_jti_and_exp_without_checking_the_signature() -> None:
    token = jwt_of(json.dumps({"jti": "j1", "exp": 4102444800}).encode())
    assert token_argument(token) == TokenArg("j1", 4102444800)
    assert token_argument(jwt_of(b'{"jti":"j1"}', b"x")) == TokenArg("j1", None)


def test_token_argument_reads_stdin_for_a_dash() -> None:
    token = jwt_of(b'{"jti":"j1","exp":4102444800}')
    read = (f"  {token}\r\n").encode
    assert token_argument("-", read_stdin=read) == TokenArg("j1", 4102444800)


def test_token_exp_past_year_9999_is_kept_as_long_as_the_list_goes() -> None:
    # A larger exp is a date gateways accept (up to 2**53) but revoke_jti cannot store.
    token = jwt_of(json.dumps({"jti": "j1", "exp": 2**53 - 1}).encode())
    assert token_argument(token) == TokenArg("j1", 253402300799)


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b'{"exp":4102444800}', "has no jti claim"),
        (b'{"jti":"","exp":4102444800}', "its jti '' is not a valid jti"),
        (b'{"jti":"j","exp":true}', "exp claim that is not an integer date"),
        (b'{"jti":"j","exp":-1}', "exp claim that is not an integer date"),
        (b'{"jti":"j","exp":9007199254740992}', "exp claim that is not an integer date"),
        (b'{"jti":"j","jti":"k"}', "payload is not a JSON object"),
        (b"[]", "payload is not a JSON object"),
    ],
)
def test_token_argument_refuses_what_cannot_be_revoked_alone(payload: bytes, needle: str) -> None:
    token = jwt_of(payload)
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(needle)) as caught:
        token_argument(token)
    assert token not in str(caught.value)
