"""One Redis connection: RESP2 out with coalesced writes, ``hiredis.Reader`` in, one deadline timer.

What it owns
    A transport, the commands written on it and not yet answered (``_pending``, in send order),
    the bytes packed in this event-loop iteration and not yet written (``_out``), and one timer
    that enforces every pending command's deadline. It knows nothing of pools, reconnects or
    Cluster: its owner (``node.NodePool``) opens it, and hears of its end through ``on_lost``.

Invariants
    * Replies arrive in command order (RESP2, no pub/sub, no RESP3 push), so ``_pending`` is a
      FIFO of ``[callback, deadline]`` lists and reply *n* belongs to entry *n*. A command that
      timed out keeps its entry with the callback set to ``None`` (a placeholder): its late reply
      is read and dropped in turn, so no reply ever reaches another command's callback.
    * Every callback is called exactly once: with the reply, a ``ReplyError``, ``RedisTimeout``
      (deadline passed), ``RedisUnavailable`` (connection lost, closed, protocol error) or
      ``RedisOverloaded`` (refused at send). Exceptions are passed as values; a callback that
      raises is logged and the next reply is still delivered. Nothing raised here reaches the
      event loop's exception handler.
    * At most ``REDIS_MAX_PENDING_PER_CONNECTION`` entries, placeholders included. While the
      transport has paused writing (its buffer is above the high-water mark) every new command
      is refused with ``RedisOverloaded``, so the write buffer never holds more than the
      high-water mark plus what one loop iteration queued (itself under the pending bound).
    * One ``loop.call_soon(_flush)`` per loop iteration at most, one ``write()`` per flush.
      The commands ``send`` queues in one iteration share one deadline, read from the clock
      once, at the first of them (``_batch_deadline``): later ones in the iteration may time
      out by that iteration's length early, never late.
    * One timer: armed at the earliest deadline that matters. Commands normally arrive in
      deadline order (one ``timeout_s`` per connection), so the live entries after the
      placeholders are sorted and the timer only looks at the first one. An entry out of
      that order (a Cluster redirect keeps its first, earlier deadline; a handshake or a
      slot-map read has a longer one) sets ``_unordered``: the timer then scans the whole
      queue, until the queue next drains.
    * Dead peer: with entries pending and no byte received for ``max(REDIS_DEAD_PEER_MIN_S,
      REDIS_DEAD_PEER_TIMEOUTS * timeout_s)``, the connection is aborted (its owner reconnects).

Why no timer per command
    A ``TimerHandle`` costs about as much as the rest of the command's client-side work;
    per-command deadlines in a list cost one float.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Any, Final, cast

import hiredis

from fastgw.limits import (
    REDIS_DEAD_PEER_MIN_S,
    REDIS_DEAD_PEER_TIMEOUTS,
    REDIS_MAX_PENDING_PER_CONNECTION,
)
from fastgw.resp.calls import Args, Counters, pack_command
from fastgw.resp.errors import Callback, RedisOverloaded, RedisTimeout, RedisUnavailable, ReplyError

__all__ = ["RespConnection"]

log = logging.getLogger("fastgw.resp")

ProtocolError: Final = hiredis.ProtocolError
ASKING: Final = pack_command((b"ASKING",))
INF: Final = float("inf")
EARLY_S: Final = 0.001
"""A deadline within this of now counts as passed: uvloop's timers have millisecond
resolution and may fire that much early; without it the timer would re-arm in a spin."""


def _swallow(reply: object) -> None:
    """The callback of an ``ASKING`` sent before a redirected command: its ``+OK`` is noise."""


def _call(callback: Callback, value: object) -> None:
    try:
        callback(value)
    except Exception:
        log.exception("redis reply callback %r failed", callback)


class RespConnection(asyncio.Protocol):
    """One connection to one Redis server; see the module docstring."""

    __slots__ = (
        "_accepting",
        "_batch_deadline",
        "_batch_open",
        "_counters",
        "_dead",
        "_dead_after_s",
        "_flush_scheduled",
        "_loop",
        "_max_pending",
        "_on_lost",
        "_out",
        "_paused",
        "_pending",
        "_progress_at",
        "_reader",
        "_timeout_s",
        "_timer",
        "_timer_at",
        "_transport",
        "_unordered",
        "closed",
        "name",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        name: str,
        timeout_s: float,
        counters: Counters,
        max_pending: int = REDIS_MAX_PENDING_PER_CONNECTION,
    ) -> None:
        self.name = name
        self._loop = loop
        self._timeout_s = timeout_s
        self._dead_after_s = max(REDIS_DEAD_PEER_MIN_S, REDIS_DEAD_PEER_TIMEOUTS * timeout_s)
        self._counters = counters
        self._max_pending = max_pending
        # Error replies are counted as hiredis builds them, not by a type check per reply.
        self._reader = hiredis.Reader(replyError=self._on_reply_error)
        self._pending: deque[list[Any]] = deque()  # [callback | None, deadline]
        self._dead = 0  # placeholders (timed-out entries) in _pending
        self._unordered = False  # an entry's deadline is earlier than one before it
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._batch_deadline = 0.0  # of the commands send() queues in this loop iteration
        self._batch_open = False  # send() may use _batch_deadline (same iteration, in order)
        self._transport: asyncio.Transport | None = None
        self._accepting = False  # connected, not aborted, writing not paused
        self._paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = INF
        self._progress_at = 0.0  # last byte received, or when _pending last became non-empty
        self._on_lost: Callable[[RespConnection], None] | None = None
        self.closed: asyncio.Future[None] = loop.create_future()
        """Resolved once the transport is gone (``connection_lost`` ran)."""

    @property
    def in_flight(self) -> int:
        """Entries pending: commands not answered yet, and timed-out ones whose reply is due."""
        return len(self._pending)

    def set_on_lost(self, on_lost: Callable[[RespConnection], None]) -> None:
        """Call ``on_lost(self)`` once, when the connection stops accepting for good."""
        self._on_lost = on_lost

    # -- commands ---------------------------------------------------------------------------

    def send(self, args: Args, callback: Callback) -> None:
        """Queue one command with the deadline ``now + timeout_s``; see the module docstring."""
        # HOT PATH: no await, no Future; one list and the packed bytes per command; the clock,
        # the timer and call_soon once per loop iteration (_open_batch).
        pending = self._pending
        if not self._accepting or len(pending) >= self._max_pending:
            self._refuse(callback)
            return
        deadline = self._batch_deadline if self._batch_open else self._open_batch()
        pending.append([callback, deadline])
        self._out.append(pack_command(args))

    def _open_batch(self) -> float:
        """The first ``send`` of a loop iteration: read the clock, schedule the flush, arm."""
        pending = self._pending
        now = self._loop.time()
        deadline = now + self._timeout_s
        if not pending:
            self._progress_at = now
            self._unordered = False
        elif deadline < pending[-1][1]:  # behind a longer deadline (handshake, slot map)
            self._unordered = True
        self._batch_deadline = deadline
        self._batch_open = True
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        if deadline < self._timer_at:  # no timer, or only the dead-peer check is armed
            self._arm(deadline)
        return deadline

    def send_until(self, args: Args, callback: Callback, deadline: float) -> None:
        """Queue one command with a deadline of the caller's (a redirect keeps its first one)."""
        if self._admit(callback, deadline, 1):
            self._enqueue(pack_command(args), callback, deadline)

    def send_asking(self, args: Args, callback: Callback, deadline: float) -> None:
        """``ASKING`` then the command, back to back on this connection (a Cluster ``-ASK``)."""
        if self._admit(callback, deadline, 2):
            self._enqueue(ASKING, _swallow, deadline)
            self._enqueue(pack_command(args), callback, deadline)

    def _admit(self, callback: Callback, deadline: float, entries: int) -> bool:
        if not self._accepting or len(self._pending) + entries > self._max_pending:
            self._refuse(callback)
            return False
        if deadline <= self._loop.time():
            self._counters.errors += 1
            callback(RedisTimeout(f"redis {self.name}: deadline passed before sending"))
            return False
        return True

    def _enqueue(self, packed: bytes, callback: Callback, deadline: float) -> None:
        pending = self._pending
        if not pending:
            self._progress_at = self._loop.time()
            self._unordered = False
        elif deadline < pending[-1][1]:  # a redirect keeps its first, earlier deadline
            self._unordered = True
        if deadline > self._batch_deadline:  # send() must not queue an earlier one behind it
            self._batch_open = False
        pending.append([callback, deadline])
        self._out.append(packed)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        if deadline < self._timer_at:
            self._arm(deadline)

    def _refuse(self, callback: Callback) -> None:
        exc: RedisUnavailable
        if self._transport is None:
            exc = RedisUnavailable(f"redis {self.name}: connection closed")
        elif self._paused:
            exc = RedisOverloaded(f"redis {self.name}: socket not draining (writing paused)")
        else:
            exc = RedisOverloaded(f"redis {self.name}: {len(self._pending)} commands pending")
        self._counters.errors += 1
        callback(exc)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._batch_open = False  # the next send() is in a later iteration: a new deadline
        out = self._out
        transport = self._transport
        if not out or transport is None:
            return
        try:
            transport.write(out[0] if len(out) == 1 else b"".join(out))
        except Exception as exc:  # a transport closing under us: fail fast, the owner reconnects
            self.abort(f"redis {self.name}: write failed: {exc!r}")
            return
        out.clear()

    # -- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._accepting = True

    def data_received(self, data: bytes) -> None:
        # HOT PATH: one feed, then every complete reply to its callback, in order.
        reader = self._reader
        pending = self._pending
        reader.feed(data)
        self._progress_at = self._loop.time()
        while True:
            try:
                reply = reader.gets()
            except ProtocolError as exc:
                if self._transport is not None:  # else a callback closed us: nothing to say
                    self._abort_bad_peer(f"protocol error: {exc}")
                return
            if reply is False:
                return
            if not pending:  # _stop() empties it in place when a callback closed us
                if self._transport is not None:
                    self._abort_bad_peer(f"a reply with no command pending: {reply!r:.80}")
                return
            callback = pending.popleft()[0]
            if callback is None:  # timed out already: this late reply is nobody's
                self._dead -= 1
                if type(reply) is ReplyError:
                    self._counters.errors -= 1  # counted as a timeout already
                continue
            try:
                callback(reply)
            except Exception:
                log.exception("redis reply callback %r failed", callback)

    def _on_reply_error(self, message: str) -> ReplyError:
        self._counters.errors += 1
        return ReplyError(message)

    def pause_writing(self) -> None:
        self._paused = True
        self._accepting = False

    def resume_writing(self) -> None:
        self._paused = False
        self._accepting = self._transport is not None

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc is not None else ""
        self._stop(f"redis {self.name}: connection lost{reason}")
        if not self.closed.done():
            self.closed.set_result(None)

    # -- ending -----------------------------------------------------------------------------

    def abort(self, message: str) -> None:
        """Fail every pending command with ``RedisUnavailable(message)`` now, drop the socket."""
        transport = self._transport
        self._stop(message)
        if transport is not None:
            transport.abort()  # connection_lost follows and resolves ``closed``

    def _abort_bad_peer(self, what: str) -> None:
        log.warning("redis %s: %s; closing the connection", self.name, what)
        self.abort(f"redis {self.name}: {what}")

    def _stop(self, message: str) -> None:
        self._transport = None
        self._accepting = False
        self._batch_open = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = INF
        self._out.clear()
        callbacks = [entry[0] for entry in self._pending if entry[0] is not None]
        self._pending.clear()  # the same deque data_received may be iterating: it sees it empty
        self._dead = 0
        self._counters.errors += len(callbacks)
        for callback in callbacks:
            _call(callback, RedisUnavailable(message))
        on_lost, self._on_lost = self._on_lost, None
        if on_lost is not None:
            try:
                on_lost(self)
            except Exception:
                log.exception("redis %s: on_lost failed", self.name)

    # -- the deadline timer -----------------------------------------------------------------

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = INF
        pending = self._pending
        if not pending or self._transport is None:
            return  # the next send arms it again
        now = self._loop.time()
        silent_s = now - self._progress_at
        if silent_s >= self._dead_after_s - EARLY_S:
            log.warning(
                "redis %s: nothing received for %.1fs with %d commands pending; reconnecting",
                self.name,
                silent_s,
                len(pending),
            )
            self.abort(f"redis {self.name}: no reply for {silent_s:.1f}s (dead peer)")
            return
        expired: list[Callback] = []
        next_at = INF
        horizon = now + EARLY_S
        if self._unordered:
            for entry in pending:
                callback = entry[0]
                if callback is None:
                    continue
                if entry[1] <= horizon:
                    entry[0] = None
                    expired.append(callback)
                elif entry[1] < next_at:
                    next_at = entry[1]
        else:  # placeholders first, then live entries in deadline order
            for entry in islice(pending, self._dead, None):
                if entry[1] > horizon:
                    next_at = entry[1]
                    break
                expired.append(entry[0])
                entry[0] = None
        self._dead += len(expired)
        self._arm(min(next_at, self._progress_at + self._dead_after_s))
        self._counters.errors += len(expired)
        for callback in expired:  # after the scan: a callback may send (and append) at once
            _call(callback, RedisTimeout(f"redis {self.name}: no reply within the deadline"))
