"""The token revocation list: kept in Redis, mirrored in every worker.

Redis layout (every key carries the hash tag ``{fastgw:revoked}``, so all of them live in one
Cluster slot and one Lua script may touch them together):

- ``{fastgw:revoked}:jti``: hash, jti → the token's ``exp`` (integer epoch seconds).
- ``{fastgw:revoked}:customer``: hash, customer id → not-before (epoch seconds, a float): every
  token of that customer issued before it (``iat`` < not-before), or carrying no ``iat``, is
  revoked. A token issued later in the same second is revoked too (``iat`` is whole seconds).
  Not-before comes from the clock of the machine running ``fastgw revoke``, ``iat`` from the
  issuer's: the two must be in NTP sync for "issued before" to mean what the operator meant.
- ``{fastgw:revoked}:version``: an integer bumped by every write, in the same Lua script as the
  change, so a poller refetches the hashes only when it moved. A missing version starts at the
  server's clock in microseconds: after a Redis restart that lost the data, versions do not
  repeat the old ones, so no poller mistakes a new list for the one it holds.

Each write also drops jti entries past ``exp + JTI_KEEP_AFTER_EXP_S`` (the largest leeway a
gateway may grant on ``exp``), so the jti hash holds only tokens that could still be accepted.
Customer entries stay until ``fastgw revoke --customer ID --forget``.

Propagation: each worker's ``RevocationPoller`` reads the version every ``poll_interval_s``
(0.05..0.9 s, config). A tick starts at most ``poll_interval_s`` after the previous one started
(unless a tick itself was slow), so a write that returned at time T is seen by the GET of the
next tick, and every worker honours it by T + ``poll_interval_s`` + one refetch round trip:
about 0.5 s at the default, under one second at the largest interval. The auth stage checks
this list on verified-token cache hits as well as misses, so no cache extends that. While
Redis is unreachable a worker keeps the last list it loaded (nothing can be honoured before it
is seen); a worker that booted without Redis starts empty and loads as soon as Redis answers.

A worker's list is a ``RevocationList`` that is never mutated after it is built: the poller
swaps in a new object, so a reader holding the old one never sees half an update.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Final

from fastgw.config.gateway import RedisConfig
from fastgw.errors import FastgwError
from fastgw.limits import CUSTOMER_ID_BYTES
from fastgw.redis_connect import (
    BACKGROUND_TIMEOUT_FLOOR_S,
    AsyncClient,
    SyncClient,
    async_client,
    connection_kwargs,
    describe,
)
from fastgw.tokens import TokenError
from fastgw.tokens import check_customer_id as check_minted

log = logging.getLogger("fastgw.revocation")

JTI_KEY: Final = "{fastgw:revoked}:jti"
CUSTOMER_KEY: Final = "{fastgw:revoked}:customer"
VERSION_KEY: Final = "{fastgw:revoked}:version"
KEYS: Final = (JTI_KEY, CUSTOMER_KEY, VERSION_KEY)

JTI_KEEP_AFTER_EXP_S: Final = 300.0
"""A jti entry outlives the token's exp by the largest ``jwt.leeway`` allowed (300 s): a gateway
with leeway still accepts the token that long after exp, so it must still know it is revoked."""

MAX_JTI_CHARS: Final = 256
MAX_POLL_INTERVAL_S: Final = 0.9
"""Largest poll interval: it is what bounds the time to honour a revocation (module docstring)."""
LOAD_TIMEOUT_S: Final = 2.0
"""Bound of one poll (version + hashes), and of the first load at start."""
ERROR_LOG_INTERVAL_S: Final = 10.0
"""At most one Redis error line per worker per this interval while Redis is failing."""
MAX_LOGGED_PROBLEMS: Final = 3
_LATEST_EXP: Final = 253402300799  # 9999-12-31T23:59:59Z: beyond it an exp is a mistake


# One write: prune expired jti entries, apply the change, bump the version when anything moved.
# KEYS: jti hash, customer hash, version. ARGV: 'jti' | 'customer', 'set' | 'del', field, value,
# prune jti entries whose exp is below this. Returns {entries changed, jti entries pruned}.
_WRITE_LUA: Final = """
local pruned = 0
local prune_below = tonumber(ARGV[5])
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do
  local exp = tonumber(flat[i + 1])
  if exp ~= nil and exp < prune_below then
    pruned = pruned + redis.call('HDEL', KEYS[1], flat[i])
  end
end
local target = KEYS[1]
if ARGV[1] == 'customer' then target = KEYS[2] end
local changed = 1
if ARGV[2] == 'set' then
  redis.call('HSET', target, ARGV[3], ARGV[4])
else
  changed = redis.call('HDEL', target, ARGV[3])
end
if changed + pruned > 0 then
  if redis.call('EXISTS', KEYS[3]) == 0 then
    local now = redis.call('TIME')
    redis.call('SET', KEYS[3], now[1] .. string.format('%06d', tonumber(now[2])))
  end
  redis.call('INCR', KEYS[3])
end
return {changed, pruned}
"""

OnChange = Callable[[frozenset[str], Mapping[bytes, float]], None]


class RevocationError(FastgwError):
    """A revocation that cannot be written as asked (bad jti, customer id or time); one line."""


class RevocationList:
    """One worker's mirror of the list. Built once, never mutated: replace, don't edit."""

    __slots__ = ("customers", "empty", "jtis")

    def __init__(
        self, jtis: dict[str, int] | None = None, customers: dict[bytes, float] | None = None
    ) -> None:
        self.jtis: dict[str, int] = {} if jtis is None else jtis
        self.customers: dict[bytes, float] = {} if customers is None else customers
        self.empty: bool = not self.jtis and not self.customers

    def revoked(self, jti: str | None, customer_id: bytes, iat: float | None) -> bool:
        """Whether a verified token with these claims is revoked (``jti`` None: no jti claim)."""
        # HOT PATH: no allocation, no await; one attribute test when nothing is revoked.
        if self.empty:
            return False
        if jti is not None and jti in self.jtis:
            return True
        not_before = self.customers.get(customer_id)
        return not_before is not None and (iat is None or iat < not_before)

    def __len__(self) -> int:
        return len(self.jtis) + len(self.customers)

    def __repr__(self) -> str:
        return f"RevocationList(jtis={len(self.jtis)}, customers={len(self.customers)})"


# ------------------------------------------------------------------------- parsing Redis data


def parse_jtis(raw: Mapping[bytes, bytes], problems: list[str]) -> dict[str, int]:
    """HGETALL of the jti hash → jti → exp; malformed entries are skipped, described in
    ``problems``."""
    jtis: dict[str, int] = {}
    for field, value in raw.items():
        try:
            jti = field.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"jti {field!r}: not UTF-8")
            continue
        try:
            jtis[jti] = int(value)
        except ValueError:
            problems.append(f"jti {jti!r}: exp {value!r} is not an integer")
    return jtis


def parse_customers(raw: Mapping[bytes, bytes], problems: list[str]) -> dict[bytes, float]:
    """HGETALL of the customer hash → customer id → not-before; malformed entries skipped."""
    customers: dict[bytes, float] = {}
    for field, value in raw.items():
        if CUSTOMER_ID_BYTES.match(field) is None:
            problems.append(f"customer {field!r}: not a valid customer id")
            continue
        try:
            not_before = float(value)
        except ValueError:
            not_before = math.nan
        if not math.isfinite(not_before):
            problems.append(f"customer {field.decode()!r}: not-before {value!r} is not a number")
            continue
        customers[field] = not_before
    return customers


# ------------------------------------------------------------------------------ the poller


class RevocationPoller:
    """Keeps ``revoked`` in step with Redis, in one background task on the worker's loop.

    ``await start()`` loads the list (bounded by ``LOAD_TIMEOUT_S``; on failure one error line
    and an empty list: the gateway must boot without Redis) and starts polling. ``stop()`` is
    sync (shutdown paths call it from signal handlers); ``await wait_stopped()`` also waits for
    the Redis client to be closed.
    ``on_change(newly_revoked_jtis, customers_with_new_or_later_not_before)`` is called on the
    loop after each swap that revoked something new, so the caller can purge cached tokens; its
    exceptions are logged, never raised into the loop.
    """

    __slots__ = (
        "_config",
        "_failing",
        "_interval_s",
        "_last_error_log",
        "_loaded",
        "_on_change",
        "_stopped",
        "_task",
        "_version",
        "_where",
        "last_poll_latency_s",
        "last_poll_s",
        "revoked",
    )

    def __init__(
        self, redis: RedisConfig, poll_interval_s: float, on_change: OnChange | None = None
    ) -> None:
        if not 0 < poll_interval_s <= MAX_POLL_INTERVAL_S:
            raise ValueError(f"poll_interval_s must be in (0, {MAX_POLL_INTERVAL_S}]")
        self.revoked: RevocationList = RevocationList()
        self._config = redis
        self._interval_s = poll_interval_s
        self._on_change = on_change
        connection_kwargs(redis)  # a config Redis can't use is a boot error (ConfigError)
        self._where = describe(redis)
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._version: bytes | str | None = None
        self._loaded = False  # False until a load succeeded, and again after any Redis error
        self._failing = False
        self._last_error_log = -math.inf
        # The last successful poll (monotonic; 0: none yet) and its round trip(s): what
        # /health/detailed reports for Redis when only revocation uses it.
        self.last_poll_s = 0.0
        self.last_poll_latency_s = 0.0

    @property
    def loaded(self) -> bool:
        """Whether the list mirrors Redis as of the last tick (False at boot or while failing)."""
        return self._loaded

    @property
    def failing(self) -> bool:
        """Whether the last poll failed."""
        return self._failing

    async def start(self) -> None:
        """Load the list (bounded by ``LOAD_TIMEOUT_S``), then keep polling in the background.
        Raises nothing for Redis: without it the gateway boots with an empty list."""
        if self._task is not None or self._stopped:
            raise RuntimeError("RevocationPoller.start() called twice, or after stop()")
        loop = asyncio.get_running_loop()
        first_load: asyncio.Future[None] = loop.create_future()
        task = loop.create_task(self._run(first_load), name="fastgw-revocation-poller")
        self._task = task
        try:
            # The task too: one stopped before its first step never resolves first_load.
            await asyncio.wait((first_load, task), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self.stop()
            raise
        if task.done() and not task.cancelled():
            task.result()  # a bug, not Redis: let it be seen

    def stop(self) -> None:
        """Stop polling. Sync, for shutdown paths that cannot await: it cancels the task, which
        closes its Redis client as it ends, the next time the loop runs. ``await
        wait_stopped()`` to know that happened. Safe to call twice or before ``start``."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()

    async def wait_stopped(self) -> None:
        """``stop()``, then wait until the task has ended and its client is closed."""
        self.stop()
        if self._task is not None:
            await asyncio.wait((self._task,))

    async def _run(self, first_load: asyncio.Future[None]) -> None:
        # The client is made and closed inside the task: a task cancelled before its first step
        # never runs its body, so a client made outside could be left open.
        client = async_client(
            self._config, min_timeout_s=BACKGROUND_TIMEOUT_FLOOR_S, max_connections=2
        )
        try:
            loop = asyncio.get_running_loop()
            next_at = loop.time() + self._interval_s
            try:
                await asyncio.wait_for(self._timed_poll(client), LOAD_TIMEOUT_S)
            except Exception as error:  # boot goes on with an empty list, whatever went wrong
                self._failed(error, first=True)
            finally:  # stop() during the first load ends start() too, without an error
                if not first_load.done():
                    first_load.set_result(None)
            while True:
                await asyncio.sleep(max(0.0, next_at - loop.time()))
                # From this tick's start: a slow tick delays the next one, never bunches them.
                next_at = loop.time() + self._interval_s
                try:
                    await asyncio.wait_for(self._timed_poll(client), LOAD_TIMEOUT_S)
                except Exception as error:  # never into the loop: keep the last list, retry
                    self._failed(error, first=False)
                else:
                    if self._failing:
                        self._failing = False
                        log.info("revocation list: Redis at %s answers again", self._where)
        finally:
            await client.aclose()

    async def _timed_poll(self, client: AsyncClient) -> None:
        began_s = time.monotonic()
        await self._poll(client)
        self.last_poll_s = time.monotonic()
        self.last_poll_latency_s = self.last_poll_s - began_s

    async def _poll(self, client: AsyncClient) -> None:
        version = await client.get(VERSION_KEY)
        if self._loaded and version == self._version:
            return
        # Read the version before the hashes: the data is at least as new as the version kept,
        # and a write landing in between moves the version again, so the next tick refetches.
        pipe = client.pipeline(transaction=False)
        pipe.hgetall(JTI_KEY)
        pipe.hgetall(CUSTOMER_KEY)
        raw_jtis, raw_customers = await pipe.execute()
        problems: list[str] = []
        now = time.time()
        jtis = {
            jti: exp
            for jti, exp in parse_jtis(raw_jtis, problems).items()
            if exp + JTI_KEEP_AFTER_EXP_S >= now
        }
        customers = parse_customers(raw_customers, problems)
        if problems:
            shown = "; ".join(problems[:MAX_LOGGED_PROBLEMS])
            more = len(problems) - MAX_LOGGED_PROBLEMS
            log.warning(
                "revocation list: skipped %d malformed entries: %s%s",
                len(problems),
                shown,
                f" (and {more} more)" if more > 0 else "",
            )
        self._swap(RevocationList(jtis, customers))
        self._version = version
        self._loaded = True

    def _swap(self, new: RevocationList) -> None:
        old, self.revoked = self.revoked, new
        if self._on_change is None:
            return
        new_jtis = frozenset(jti for jti in new.jtis if jti not in old.jtis)
        moved = {
            customer: not_before
            for customer, not_before in new.customers.items()
            if not_before > old.customers.get(customer, -math.inf)
        }
        if not new_jtis and not moved:
            return
        try:
            self._on_change(new_jtis, moved)
        except Exception:
            log.exception("revocation list: on_change failed")

    def _failed(self, error: Exception, *, first: bool) -> None:
        self._loaded = False  # refetch everything once Redis answers: it may have restarted
        self._failing = True
        now = time.monotonic()
        if not first and now - self._last_error_log < ERROR_LOG_INTERVAL_S:
            return
        self._last_error_log = now
        reason = _reason(error)
        if first:
            log.error(
                "revocation list: cannot load from Redis at %s (%s); starting with an empty "
                "list, retrying every %gs",
                self._where,
                reason,
                self._interval_s,
            )
        else:
            log.error(
                "revocation list: Redis at %s failed (%s); keeping the last list (%d entries)",
                self._where,
                reason,
                len(self.revoked),
            )


def _reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return f"no answer within {LOAD_TIMEOUT_S:g}s"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


# ---------------------------------------------------------------- writes (fastgw revoke, sync)


def check_jti(jti: str) -> str:
    """The jti unchanged, or a one-line ``RevocationError``."""
    if not jti or len(jti) > MAX_JTI_CHARS or not jti.isprintable():
        raise RevocationError(
            f"--jti: {jti[: MAX_JTI_CHARS + 1]!r} is not a valid jti "
            f"(1-{MAX_JTI_CHARS} printable characters)"
        )
    return jti


def check_customer_id(customer_id: str) -> str:
    """The customer id unchanged, or a one-line ``RevocationError`` (``fastgw token``'s rule
    and message)."""
    try:
        return check_minted(customer_id)
    except TokenError as error:
        raise RevocationError(str(error)) from None


def _write(
    client: SyncClient, target: str, action: str, field: str, value: float, *, now: float
) -> tuple[int, int]:
    prune_below = math.floor(now - JTI_KEEP_AFTER_EXP_S)
    reply = client.eval(_WRITE_LUA, len(KEYS), *KEYS, target, action, field, value, prune_below)
    changed, pruned = reply
    return int(changed), int(pruned)


def revoke_jti(client: SyncClient, jti: str, exp: int, now: float) -> None:
    """Revoke the token ``jti`` until its ``exp`` (epoch seconds; after it the token is dead)."""
    check_jti(jti)
    if isinstance(exp, bool) or not isinstance(exp, int) or exp > _LATEST_EXP:
        raise RevocationError(f"--until: {exp!r} is not an epoch time in seconds")
    if exp + JTI_KEEP_AFTER_EXP_S < now:
        raise RevocationError(f"--until: {exp} is in the past: that token has already expired")
    _write(client, "jti", "set", jti, exp, now=now)


def revoke_customer(client: SyncClient, customer_id: str, not_before: float, now: float) -> None:
    """Revoke every token of ``customer_id`` issued before ``not_before`` (epoch seconds)."""
    check_customer_id(customer_id)
    if isinstance(not_before, bool) or not math.isfinite(not_before) or not_before <= 0:
        raise RevocationError(f"--before: {not_before!r} is not an epoch time in seconds")
    if not_before > _LATEST_EXP:
        raise RevocationError(f"--before: {not_before!r} is too far in the future")
    _write(client, "customer", "set", customer_id, float(not_before), now=now)


def forget_jti(client: SyncClient, jti: str, now: float) -> bool:
    """Remove ``jti`` from the list; whether it was listed."""
    check_jti(jti)
    return _write(client, "jti", "del", jti, 0, now=now)[0] > 0


def forget_customer(client: SyncClient, customer_id: str, now: float) -> bool:
    """Remove ``customer_id`` from the list; whether it was listed."""
    check_customer_id(customer_id)
    return _write(client, "customer", "del", customer_id, 0, now=now)[0] > 0


def list_revocations(client: SyncClient) -> tuple[dict[str, int], dict[str, float]]:
    """Both lists as stored (jti → exp, customer id → not-before), expired jtis included until
    the next write prunes them; malformed entries are skipped."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(JTI_KEY)
    pipe.hgetall(CUSTOMER_KEY)
    raw_jtis, raw_customers = pipe.execute()
    problems: list[str] = []
    jtis = parse_jtis(raw_jtis, problems)
    customers = parse_customers(raw_customers, problems)
    return jtis, {customer.decode("ascii"): nb for customer, nb in customers.items()}
