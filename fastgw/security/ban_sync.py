"""Bans shared between gateway instances through Redis (``auto_ban`` with the rate-limit
backend ``redis``): a ban decided by any instance is honoured by every instance, and an
operator's lift on one lifts it everywhere.

Redis layout (one hash tag, ``{fastgw:bans}``, so a Cluster keeps both keys in one slot and one
script may touch them together):

- ``{fastgw:bans}:active``: sorted set, address -> end of the ban (epoch milliseconds). The
  bans in force, for an instance that starts or lost track; expired members are pruned by
  every write.
- ``{fastgw:bans}:events``: stream, one entry per ban or lift (``ip``, ``until`` in epoch ms
  or 0 for a lift, ``from``: the writing syncer's random id), trimmed to about
  ``STREAM_KEEP`` entries. Instances follow it from the last entry they read.

Who talks to Redis: one ``BanSync`` per gateway instance, in worker slot 0 (like the active
health checks). Every ``SYNC_INTERVAL_S`` it

1. *pushes* the events the workers' sections of the ban board gained (bans and lifts made by
   this instance), each with one script call (prune, ZADD GT or ZREM, XADD); how far it pushed
   is kept on the board, so a respawned slot 0 goes on from there;
2. *pulls* the stream entries after the last one it read, skips its own, and publishes the
   others in the board's shared section, where every worker applies them at its refresh.

It starts, and starts over after a Redis error or when the stream was trimmed past the last
entry it read, with a *resync* (after its push, so a lift waiting on the board is not undone):
the active set and the stream's last id read in one script; every ban in the set is
published, and a ban the board holds that is no longer in the set (lifted elsewhere while
this instance was not following) is lifted. So an instance that was cut off converges on the
set when Redis answers again; meanwhile its own bans still hold locally, and pushes wait on
the board (up to its ring size per worker) until Redis answers.

Times: the board counts in this machine's monotonic microseconds, Redis in epoch
milliseconds (comparable between machines): a ban's end is converted each way with the local
wall clock, so clock skew between gateway machines shortens or lengthens a shared ban by that
skew (keep them in NTP sync). A ban reaches the other instances within about
``SYNC_INTERVAL_S`` + one worker refresh (100 ms). Needs Redis >= 6.2 (ZADD GT, exclusive
XRANGE).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Final

from redis.commands.core import AsyncScript

from fastgw.config.gateway import RedisConfig
from fastgw.obs.logging_errors import ThrottledLog
from fastgw.redis_connect import (
    BACKGROUND_TIMEOUT_FLOOR_S,
    async_client,
    connection_kwargs,
    describe,
)
from fastgw.security.bans import MAX_ADDRESS_BYTES, BanBoard, running_bans
from fastgw.security.ipset import format_address, parse_address

log = logging.getLogger("fastgw.bans")

ACTIVE_KEY: Final = "{fastgw:bans}:active"
EVENTS_KEY: Final = "{fastgw:bans}:events"
SYNC_INTERVAL_S: Final = 0.25
TICK_TIMEOUT_S: Final = 5.0
STREAM_KEEP: Final = 10_000
"""Stream entries kept (about: MAXLEN ~). An instance further behind than this resyncs."""
PULL_BATCH: Final = 1000
MAX_SNAPSHOT: Final = 100_000
"""Most bans a resync reads from the active set."""
ERROR_LOG_INTERVAL_S: Final = 10.0

# KEYS: active, events. ARGV: address, until (epoch ms; 0: a lift), origin, stream length kept.
# Returns the entry id, or false for a ban already over by Redis's clock (nothing written).
_PUSH_LUA: Final = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
local until_ms = tonumber(ARGV[2])
if until_ms == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
elseif until_ms > now_ms then
  redis.call('ZADD', KEYS[1], 'GT', until_ms, ARGV[1])
else
  return false
end
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
                  'ip', ARGV[1], 'until', ARGV[2], 'from', ARGV[3])
"""

# KEYS: active, events. ARGV: most bans returned. Returns {last entry id, {member, score, ...}}.
_SNAPSHOT_LUA: Final = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local id = '0-0'
if #last > 0 then id = last[1][1] end
return {id, redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now_ms, '+inf', 'WITHSCORES',
                       'LIMIT', 0, tonumber(ARGV[1]))}
"""

# KEYS: events. ARGV: last id read, most entries. Returns {first id or false, entries after}.
_PULL_LUA: Final = """
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local first_id = false
if #first > 0 then first_id = first[1][1] end
return {first_id, redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])}
"""


def stream_id(raw: bytes | str) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _address(raw: object) -> bytes | None:
    """A canonical address from Redis, or None for anything else (never trusted blindly)."""
    if not isinstance(raw, bytes) or len(raw) > MAX_ADDRESS_BYTES:
        return None
    parsed = parse_address(raw.decode("latin-1"))
    return None if parsed is None else format_address(*parsed)


class BanSync:
    """Keeps one gateway instance's ban board in step with Redis (module docstring).

    ``start()`` begins the background task on the running loop; ``await aclose()`` stops it
    and closes its Redis client."""

    __slots__ = ("_board", "_config", "_errors", "_failing", "_last_id", "_origin",
                 "_task", "_where", "pulled", "pushed")  # fmt: skip

    def __init__(self, board: BanBoard, redis: RedisConfig) -> None:
        connection_kwargs(redis)  # a config Redis can't use is a boot error (ConfigError)
        self._board = board
        self._config = redis
        self._where = describe(redis)
        self._origin = os.urandom(8).hex().encode()
        self._last_id: bytes | None = None  # None: resync first
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._errors = ThrottledLog(log, ERROR_LOG_INTERVAL_S)
        self.pushed = 0  # events written to Redis (for tests and the logs)
        self.pulled = 0  # other instances' events applied

    @property
    def following(self) -> bool:
        """Whether this syncer follows the stream (it resynced and Redis answered since)."""
        return self._last_id is not None and not self._failing

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("BanSync.start() called twice")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="fastgw-ban-sync")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait((self._task,))

    async def _run(self) -> None:
        # The client is made and closed inside the task, so a cancel before its first step
        # leaves nothing open.
        client = async_client(
            self._config, min_timeout_s=BACKGROUND_TIMEOUT_FLOOR_S, max_connections=1
        )
        push = client.register_script(_PUSH_LUA)
        snapshot = client.register_script(_SNAPSHOT_LUA)
        pull = client.register_script(_PULL_LUA)
        try:
            while True:
                try:
                    await asyncio.wait_for(self._tick(push, snapshot, pull), TICK_TIMEOUT_S)
                except Exception as error:  # never into the loop: resync at the next tick
                    self._last_id = None
                    self._failed(error)
                else:
                    if self._failing:
                        self._failing = False
                        log.info("shared bans: Redis at %s answers again", self._where)
                await asyncio.sleep(SYNC_INTERVAL_S)
        finally:
            await client.aclose()

    async def _tick(self, push: AsyncScript, snapshot: AsyncScript, pull: AsyncScript) -> None:
        # Push first: a lift still waiting on the board must leave the active set before a
        # resync reads it, or the resync would publish the ban again after the lift.
        pushed_through = _now_us()  # every board event up to here is in Redis after the push
        await self._push(push)
        if self._last_id is None:
            await self._resync(snapshot, pushed_through)
        while await self._pull(pull):
            pass

    async def _push(self, push: AsyncScript) -> None:
        board = self._board
        for section in range(board.slots):
            cursor = board.pushed(section)
            if board.written(section) == cursor:
                continue
            written, events = board.read(section, cursor)
            now_us, now_ms = _now_us(), time.time_ns() // 1_000_000
            for _, until, address in events:
                if until == 0 or until > now_us:  # a ban over by now needs no sharing
                    until_ms = 0 if until == 0 else now_ms + (until - now_us) // 1000
                    await push(
                        keys=[ACTIVE_KEY, EVENTS_KEY],
                        args=[address, until_ms, self._origin, STREAM_KEEP],
                    )
                    self.pushed += 1
            board.set_pushed(section, written)

    async def _resync(self, snapshot: AsyncScript, pushed_through: int) -> None:
        """Make the board agree with the active set: publish its bans, and lift the bans the
        board holds (pushed, so Redis had them) that are no longer in it: lifted or cut short
        elsewhere while this syncer was not following."""
        last_id, flat = await snapshot(keys=[ACTIVE_KEY, EVENTS_KEY], args=[MAX_SNAPSHOT])
        now_us, now_ms = _now_us(), time.time_ns() // 1_000_000
        active: dict[bytes, int] = {}
        for n in range(0, len(flat), 2):
            address = _address(flat[n])
            if address is not None:
                active[address] = now_us + (int(float(flat[n + 1])) - now_ms) * 1000
        board = self._board
        pushed = [event for event in board.events() if event[0] <= pushed_through]
        for address in running_bans(pushed, now_us):
            if address not in active:
                board.publish(board.shared, address, now_us, 0)
        for address, until in active.items():
            if until > now_us:
                board.publish(board.shared, address, now_us, until)
        self._last_id = last_id if isinstance(last_id, bytes) else str(last_id).encode()

    async def _pull(self, pull: AsyncScript) -> bool:
        """Apply the next batch of other instances' events; True when there may be more."""
        assert self._last_id is not None
        first_id, entries = await pull(keys=[EVENTS_KEY], args=[self._last_id, PULL_BATCH])
        if first_id and self._last_id != b"0-0" and stream_id(first_id) > stream_id(self._last_id):
            self._last_id = None  # trimmed past what we read (or Redis lost the stream)
            return False
        now_us, now_ms = _now_us(), time.time_ns() // 1_000_000
        for entry_id, flat in entries:
            self._last_id = entry_id
            fields = dict(zip(flat[::2], flat[1::2], strict=False))
            address = _address(fields.get(b"ip"))
            if fields.get(b"from") == self._origin or address is None:
                continue
            try:
                until_ms = int(fields.get(b"until", b""))
            except ValueError:
                continue
            until = 0 if until_ms == 0 else now_us + (until_ms - now_ms) * 1000
            if until == 0 or until > now_us:  # a ban already over needs nothing
                self._board.publish(self._board.shared, address, now_us, until)
                self.pulled += 1
        return len(entries) == PULL_BATCH

    def _failed(self, error: Exception) -> None:
        self._failing = True
        if self._errors.due():
            self._errors.log(
                logging.WARNING,
                "shared bans: Redis at %s failed (%s: %s); local bans still apply, sharing "
                "resumes when it answers",
                self._where,
                type(error).__name__,
                error,
                extra={},
            )


def _now_us() -> int:
    return time.monotonic_ns() // 1000
