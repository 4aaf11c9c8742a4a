"""Rate-limit state shared by every worker of one machine: one decision, atomic across processes.

What it owns
    ``LimitTable``: the token buckets (customer, customer x endpoint, global) and the daily
    quota counters of the in-process rate limiter, in one shared-memory file that every worker
    maps, and ``decide``: all of one request's levels decided together under the locks of the
    slots it touches. It is ``customer.lua`` + ``global.lua`` for one machine, and decides
    exactly what ``fastgw.ratelimit.model.ReferenceModel.decide_all`` decides (tests compare
    them on random call sequences).

Layout (int64 cells; ``_HEADER_CELLS`` of header, then ``sets`` sets of ``_WAYS`` slots)
    header  magic, layout version, sets, build code (1 c, 2 py), global lock, global present,
            global micro-tokens, global µs stamp, and the global sliding window's length (µs),
            number, count and previous count
    set     lock cell, then per slot: fingerprint (0 = empty), a, b, expires_us
            bucket slot: a = micro-tokens, b = µs stamp; quota slot: a = units used, b = day
    A key lives only in set ``fingerprint % sets`` (set-associative, like a CPU cache), so
    finding or placing it touches one lock and ``_WAYS`` slots, never a probe chain.

Invariants
    * Arithmetic mirrors ``bucket.lua`` operation for operation: integer micro-tokens and µs,
      ``floor(elapsed * rate)`` refill in doubles, the same rounding of every wait, so a decision
      here equals Redis's for the same clock. Every stored value stays below 2**53.
    * A slot's ``expires_us`` is when its state becomes indistinguishable from a missing key (a
      bucket refilled to full, a quota's day over) plus the scripts' TTL margins. A slot past it
      is free to reuse and losing it changes nothing: that is the idle-key eviction. Only when
      all ``_WAYS`` slots of a set are live does a new key evict the one closest to expiry, which
      errs towards allowing; ``evictions`` counts those (size the table above the active keys).
    * A decision takes the locks of its sets in ascending order (the global lock first), holds
      them for a few hundred nanoseconds of arithmetic, and never across a call out: no
      deadlock, no await. Nothing is taken unless every enforced level allows.
    * Keys are fingerprints (61 random bits): the caller's ``customer_fp`` (see
      ``customer_fingerprint``) mixed with the level and the endpoint's id; a quota slot holds
      (units, its UTC day). Two keys share a slot only if their fingerprints collide: with a
      million live keys, about 1 chance in 4.6 million.

Locks: one source, two mechanisms
    The compiled build holds a lock cell by compare-and-swap of its pid (``bucket_c.pxd``). The
    master frees the locks of a worker a signal killed when it reaps it (``release_locks_of``);
    a waiter also takes over a lock whose holder no longer exists at all (a dead process that is
    not reaped yet still exists, so that is for a master that is gone too). Pure Python cannot
    do an atomic compare-and-swap, so the pure build takes an ``fcntl`` record lock on one byte
    per lock cell instead (the kernel drops those when a process dies); a table remembers which
    build made it and refuses the other.

Arguments
    Checked on every call, the same in both builds, with one exception: an integer beyond
    int64 is an OverflowError in the compiled build (the C signature) and a ValueError in the
    pure one; callers never pass one (the config and the request types bound every number).

Why like this
    Workers each granting the full limit would multiply every limit by the worker count. A
    shared table decided under short locks keeps the limit exact across workers at a cost of a
    couple of atomic operations, where a syscall lock (fcntl, a semaphore) would cost more than the
    whole decision (measured: an fcntl lock and unlock is 2.3 µs of CPU here).
"""

from __future__ import annotations

import fcntl
import math
import mmap
import os
from typing import Final

import cython

__all__ = [
    "LimitTable",
    "customer_fingerprint",
    "sets_for_keys",
    "table_bytes",
]

_WAYS: Final = 8
_SLOT_CELLS: Final = 4
_SET_CELLS: Final = 1 + _WAYS * _SLOT_CELLS
_HEADER_CELLS: Final = 12
_MAGIC: Final = 0x66617374_67776C74  # "fastgwlt"
_LAYOUT_VERSION: Final = 2

# header cells
_H_MAGIC, _H_VERSION, _H_SETS, _H_BUILD = 0, 1, 2, 3
_G_LOCK, _G_PRESENT, _G_TOKENS, _G_STAMP = 4, 5, 6, 7
_G_WINDOW_US, _G_WINDOW, _G_COUNT, _G_PREVIOUS = 8, 9, 10, 11  # the global sliding window

_UT: Final = 1_000_000  # micro-tokens per token, and µs per second
_DAY_US: Final = 86_400 * _UT
_BUCKET_MARGIN_US: Final = 5_000_000  # bucket.lua's BUCKET_TTL_MARGIN_MS
_QUOTA_MARGIN_US: Final = 60_000_000  # customer.lua's QUOTA_TTL_MARGIN_MS
_MAX_WAIT_US: Final = 1 << 50  # caps expires_us (35 years) so it stays exact in a double
_MASK62: Final = (1 << 62) - 1
_MASK64: Final = (1 << 64) - 1
_MIX: Final = 0x9E3779B97F4A7C15  # odd: multiplying by it is a bijection mod 2**64
_MAX_CLOCK_US: Final = 1 << 52
_MAX_DAILY_QUOTA: Final = 10**15  # decision.MAX_DAILY_QUOTA
_MAX_ENDPOINT_ID: Final = (1 << 40) - 1

# level codes and their mask bits (fastgw.ratelimit.decision.Level)
_CUSTOMER, _ENDPOINT, _QUOTA, _GLOBAL = 1, 2, 3, 4
_KIND_BUCKET, _KIND_ENDPOINT, _KIND_QUOTA = 1, 2, 3


def table_bytes(sets: int) -> int:
    """Size of a table of ``sets`` sets (``sets * _WAYS`` keys)."""
    return 8 * (_HEADER_CELLS + sets * _SET_CELLS)


def sets_for_keys(max_keys: int) -> int:
    """Sets a table needs to hold ``max_keys`` keys."""
    return max(1, (max_keys + _WAYS - 1) // _WAYS)


def customer_fingerprint(hash64_of_id: int) -> int:
    """A customer's fingerprint (1 .. 2**62-1) from ``hash64`` of its id (a 64-bit hash)."""
    return (hash64_of_id & _MASK62) | 1


def _mix(base: int, salt: int) -> int:
    """A level key's fingerprint: never 0 (0 marks an empty slot)."""
    return ((((base ^ salt) & _MASK64) * _MIX) & _MASK62) | 1


def _longer(a: int, b: int) -> bool:
    """Wait ``a`` is strictly longer than ``b`` (-1, never, is the longest)."""
    if b == -1:
        return False
    return a == -1 or a > b


def _estimate(previous: int, current: int, elapsed_us: int, window_us: int) -> float:
    """Requests in the sliding window ending now (model.py's ``_estimate``, same order)."""
    return previous * (float(window_us - elapsed_us) / window_us) + current


def _ceil_ms(us: float) -> int:
    return math.ceil(us / 1000)


def _refill_ms(need_ut: float, rate: float, lag_us: float) -> int:
    """ms from now until ``need_ut`` micro-tokens have refilled (``lag_us``: stamp - now)."""
    return _ceil_ms(lag_us + float(math.ceil(need_ut / rate)))


class _Level:
    """One level of the decision in progress (reused: a table owns four)."""

    __slots__ = (
        "bucket", "cell", "code", "elapsed", "fp", "have", "lag", "limit", "on", "previous",
        "rate", "reset_ms", "set_index", "stamp", "take", "wait", "window", "window_us",
    )  # fmt: skip

    def __init__(self, code: int) -> None:
        self.code = code
        self.on = False
        self.bucket = code != _QUOTA
        self.fp = 0
        self.set_index = -1  # -1: the global cells in the header
        self.cell = -1  # the slot's first cell, -1 when the key has no slot yet
        self.take = 0
        self.have = 0
        self.wait = 0
        self.limit = 0
        self.rate = 0.0
        self.stamp = 0
        self.lag = 0
        self.reset_ms = 0
        self.window_us = 0  # > 0: a sliding window (global level only)
        self.window = 0
        self.previous = 0
        self.elapsed = 0


class LimitTable:
    """The shared table, mapped from ``fd`` (a memfd or a file of ``table_bytes(sets)``)."""

    def __init__(self, fd: int, *, create: bool = False) -> None:
        size = os.fstat(fd).st_size
        if size < table_bytes(1) or size % 8:
            raise ValueError(f"limit table file of {size} bytes is not a table")
        self._fd = fd
        self._map = mmap.mmap(fd, size)
        self._cells = memoryview(self._map).cast("q")
        cells = self._cells
        if create:
            sets = (size // 8 - _HEADER_CELLS) // _SET_CELLS
            cells[_H_MAGIC] = _MAGIC
            cells[_H_VERSION] = _LAYOUT_VERSION
            cells[_H_SETS] = sets
            cells[_H_BUILD] = _build_code()
        if cells[_H_MAGIC] != _MAGIC or cells[_H_VERSION] != _LAYOUT_VERSION:
            raise ValueError("limit table file has another layout")
        if cells[_H_BUILD] != _build_code():
            raise ValueError("limit table was made by the other build (c vs py) of this kernel")
        self._sets = cells[_H_SETS]
        if self._sets < 1 or table_bytes(self._sets) > size:
            raise ValueError("limit table header names more sets than the file holds")
        self._pid = os.getpid()
        self._closed = False
        self._levels = (_Level(_CUSTOMER), _Level(_ENDPOINT), _Level(_QUOTA), _Level(_GLOBAL))
        self.evictions = 0
        self.would_refuse = 0
        self.retry_after_ms = 0
        self.header_level = 0
        self.limit = 0
        self.remaining = 0
        self.reset_ms = 0

    @property
    def sets(self) -> int:
        return self._sets

    @property
    def capacity(self) -> int:
        """Keys the table can hold at once."""
        return self._sets * _WAYS

    def close(self) -> None:
        """Unmap (the fd stays the caller's); the table is unusable afterwards."""
        self._closed = True  # decide() refuses from now on: the cells below are not a table
        self._cells = memoryview(bytearray(8)).cast("q")  # drop the map's only export
        self._map.close()

    # ------------------------------------------------------------------------------- decide

    def decide(  # noqa: PLR0917 - flat C arguments: no tuple or object built per call
        self,
        now_us: int,
        customer_fp: int,
        cost: int,
        rate: float,
        burst: int,
        endpoint_id: int,
        endpoint_rate: float,
        endpoint_burst: int,
        daily_quota: int,
        global_rate: float,
        global_burst: int,
        shadow: int,
        global_window_us: int = 0,
    ) -> int:
        """Decide every level of one request at ``now_us`` and take what it costs.

        Levels: the customer bucket (``rate``/``burst``, takes ``cost``); the endpoint bucket
        (``endpoint_id`` >= 0, any number below 2**40 naming the endpoint; takes 1); the daily
        quota (``daily_quota`` >= 0; takes ``cost``); the global bucket (``global_burst`` > 0;
        takes 1), or with ``global_window_us`` > 0 the global sliding window (``global_burst``
        requests per window, ``model.ReferenceModel._window``). ``customer_fp`` 0 turns the
        three customer levels off (a route without authentication: global only). ``shadow``:
        mask of level bits that count but never refuse. Returns the refusing level (0: allowed);
        the other reply fields are left in ``would_refuse``, ``retry_after_ms`` (-1: never),
        ``header_level``, ``limit``, ``remaining``, ``reset_ms``.
        """
        # HOT PATH: no allocation; locks held only across the arithmetic below.
        if self._closed:
            raise ValueError("limit table is closed")
        if not 0 < now_us < _MAX_CLOCK_US:
            raise ValueError("now_us must be in 1..2**52")
        if not 0 <= customer_fp <= _MASK62:
            raise ValueError("customer_fp must be in 0..2**62-1")
        if not 0 <= shadow <= 15:
            raise ValueError("shadow must be a mask of level bits (0..15)")
        levels = self._levels
        customer, endpoint, quota, glob = levels[0], levels[1], levels[2], levels[3]
        customer.on = customer_fp != 0
        if customer.on:
            _arm_bucket(customer, _mix(customer_fp, _KIND_BUCKET), rate, burst, cost)
            customer.set_index = customer.fp % self._sets
        endpoint.on = customer.on and endpoint_id >= 0
        if endpoint.on:
            if endpoint_id > _MAX_ENDPOINT_ID:
                raise ValueError("endpoint_id must be in -1..2**40-1")
            _arm_bucket(
                endpoint,
                _mix(customer_fp, _KIND_ENDPOINT + (endpoint_id << 2)),
                endpoint_rate,
                endpoint_burst,
                1,
            )
            endpoint.set_index = endpoint.fp % self._sets
        quota.on = customer.on and daily_quota >= 0
        day = 0
        if quota.on:
            _check_amount(cost, 1)
            if daily_quota > _MAX_DAILY_QUOTA:
                raise ValueError("daily_quota must be in 0..1e15")
            day = math.floor(now_us / _DAY_US)
            quota.fp = _mix(customer_fp, _KIND_QUOTA)
            quota.set_index = quota.fp % self._sets
            quota.limit = daily_quota
            quota.take = cost
        glob.on = global_burst > 0
        if glob.on:
            _arm_bucket(glob, 0, global_rate, global_burst, 1)
            glob.set_index = -1
            glob.window_us = global_window_us
            glob.bucket = global_window_us == 0
            if global_window_us != 0:
                if not 0 < global_window_us <= _DAY_US:
                    raise ValueError("global_window_us must be in 0..86400e6")
                glob.take = 1  # requests, not micro-tokens
        # the locks, in ascending order; one lock per distinct set
        a = customer.set_index if customer.on else -1
        b = endpoint.set_index if endpoint.on else -1
        c = quota.set_index if quota.on else -1
        if a > b:
            a, b = b, a
        if b > c:
            b, c = c, b
        if a > b:
            a, b = b, a
        # Each lock is released only if it was taken: the pure build's fcntl can fail while
        # waiting (ENOLCK, a signal handler raising), and a lock left behind by a live process
        # would block every worker for good.
        held = 0  # how many of (global, a, b, c) are held, in that order
        try:
            if glob.on:
                self._lock(_G_LOCK)
            held = 1
            if a >= 0:
                self._lock(self._set_cell(a))
            held = 2
            if b >= 0 and b != a:
                self._lock(self._set_cell(b))
            held = 3
            if c >= 0 and c != b:
                self._lock(self._set_cell(c))
            held = 4
            return self._decide_locked(now_us, day, shadow)
        finally:
            if held >= 4 and c >= 0 and c != b:
                self._unlock(self._set_cell(c))
            if held >= 3 and b >= 0 and b != a:
                self._unlock(self._set_cell(b))
            if held >= 2 and a >= 0:
                self._unlock(self._set_cell(a))
            if held >= 1 and glob.on:
                self._unlock(_G_LOCK)

    def _decide_locked(self, now_us: int, day: int, shadow: int) -> int:
        levels = self._levels
        for level in levels:
            if level.on:
                if level.window_us:
                    self._read_window(level, now_us)
                elif level.bucket:
                    self._read_bucket(level, now_us)
                else:
                    self._read_quota(level, now_us, day)
        refused = 0
        refused_wait = 0
        mask = 0
        shadow_wait = 0
        for level in levels:
            if level.on and level.wait != 0:
                bit = 1 << (level.code - 1)
                mask |= bit
                if shadow & bit:
                    if shadow_wait == 0 or _longer(level.wait, shadow_wait):
                        shadow_wait = level.wait
                elif refused == 0 or _longer(level.wait, refused_wait):
                    refused = level.code
                    refused_wait = level.wait
        header = 0
        limit = 0
        remaining = 0
        reset_ms = 0
        best_calls = -1
        best_reset = -1
        for level in levels:
            if not level.on:
                continue
            shadowed = (shadow >> (level.code - 1)) & 1
            if refused == 0 and (mask == 0 or not shadowed):
                self._take(level, now_us, day)
            if shadowed:
                continue
            if level.window_us:
                lim = level.limit
                estimate = _estimate(level.previous, level.have, level.elapsed, level.window_us)
                rem = math.floor(level.limit - estimate)
                rem = max(rem, 0)
                res = level.reset_ms
                calls = rem // level.take
            elif level.bucket:
                lim = level.limit
                rem = level.have // _UT
                res = _refill_ms(level.limit * _UT - level.have, level.rate, level.lag)
                calls = level.have // level.take
            else:
                lim = level.limit
                rem = level.limit - level.have
                rem = max(rem, 0)
                res = level.reset_ms
                calls = rem // level.take
            # refused: the refusing level; else the fewest calls left, then the longest reset
            fewer = best_calls < 0 or calls < best_calls
            if (refused != 0 and level.code == refused) or (
                refused == 0 and (fewer or (calls == best_calls and res > best_reset))
            ):
                header = level.code
                limit = lim
                remaining = rem
                reset_ms = res
                best_calls = calls
                best_reset = res
        self.would_refuse = mask
        self.retry_after_ms = refused_wait if refused != 0 else shadow_wait
        self.header_level = header
        self.limit = limit
        self.remaining = remaining
        self.reset_ms = reset_ms
        return refused

    # --------------------------------------------------------------------------- the levels

    def _find(self, level: _Level, now_us: int) -> None:
        """Point ``level.cell`` at its key's slot, or -1 when the key has none (reads as new)."""
        cells = self._cells
        first = self._set_cell(level.set_index) + 1
        level.cell = -1
        for way in range(_WAYS):
            cell = first + way * _SLOT_CELLS
            if cells[cell] == level.fp:
                if cells[cell + 3] > now_us:
                    level.cell = cell
                return  # an expired slot of this key reads exactly like a missing key

    def _read_bucket(self, level: _Level, now_us: int) -> None:
        cells = self._cells
        burst_ut = level.limit * _UT
        if level.set_index < 0:
            present = cells[_G_PRESENT] != 0
            tokens = cells[_G_TOKENS]
            stamp = cells[_G_STAMP]
        else:
            self._find(level, now_us)
            present = level.cell >= 0
            tokens = cells[level.cell + 1] if present else 0
            stamp = cells[level.cell + 2] if present else 0
        if not present:
            tokens = burst_ut
            stamp = now_us
        else:
            if now_us > stamp:
                add = math.floor((now_us - stamp) * level.rate)
                if add >= burst_ut - tokens:
                    tokens = burst_ut
                else:
                    tokens = tokens + cython.cast(cython.longlong, add)
                stamp = now_us
            if tokens > burst_ut:  # noqa: PLR1730 - the burst was lowered by a reload
                tokens = burst_ut
        level.have = tokens
        level.stamp = stamp
        level.lag = stamp - now_us
        level.wait = 0
        if level.take > burst_ut:
            level.wait = -1
        elif tokens < level.take:
            level.wait = _refill_ms(level.take - tokens, level.rate, level.lag)

    def _read_window(self, level: _Level, now_us: int) -> None:
        """The global sliding window (``window.lua``); state of another window length reads
        as empty."""
        cells = self._cells
        window_us = level.window_us
        number = (now_us - now_us % window_us) // window_us
        window = cells[_G_WINDOW]
        current = cells[_G_COUNT]
        previous = cells[_G_PREVIOUS]
        if cells[_G_WINDOW_US] != window_us or number > window + 1:
            window = number
            current = 0
            previous = 0
        elif number == window + 1:
            window = number
            previous = current
            current = 0
        # number <= window: the same window, or the clock went back (kept as it is)
        elapsed = now_us - window * window_us
        elapsed = max(elapsed, 0)
        limit = level.limit
        take = level.take
        wait = 0
        if take > limit:
            wait = -1
        elif _estimate(previous, current, elapsed, window_us) + take > limit:
            if current + take <= limit:  # the previous window's share has to fade enough
                fade_us = window_us - float(limit - current - take) * window_us / previous
                wait_us = fade_us - elapsed
            else:  # this window is full: in the next one its count is the previous one's
                fade_us = window_us - float(limit - take) * window_us / current
                fade_us = max(fade_us, 0.0)
                wait_us = (window + 1) * window_us - now_us + fade_us
            wait = _ceil_ms(wait_us)
            wait = max(wait, 1)
        level.have = current
        level.previous = previous
        level.window = window
        level.elapsed = elapsed
        level.wait = wait
        level.reset_ms = _ceil_ms((window + 1) * window_us - now_us)

    def _read_quota(self, level: _Level, now_us: int, day: int) -> None:
        """The customer's count of its last counted day; another day (a new one, or one the
        clock went back to) counts from zero (``customer.lua`` keeps one day per customer)."""
        self._find(level, now_us)
        used = 0
        if level.cell >= 0 and self._cells[level.cell + 2] == day:
            used = self._cells[level.cell + 1]
        level.have = used
        level.reset_ms = _ceil_ms((day + 1) * _DAY_US - now_us)
        level.wait = 0
        if level.take > level.limit:
            level.wait = -1
        elif used + level.take > level.limit:
            level.wait = level.reset_ms

    def _take(self, level: _Level, now_us: int, day: int) -> None:
        cells = self._cells
        if level.window_us:
            level.have = level.have + level.take
            cells[_G_WINDOW_US] = level.window_us
            cells[_G_WINDOW] = level.window
            cells[_G_COUNT] = level.have
            cells[_G_PREVIOUS] = level.previous
            return
        if not level.bucket:
            level.have = level.have + level.take
            self._store(level, now_us, level.have, day, (day + 1) * _DAY_US + _QUOTA_MARGIN_US)
            return
        level.have = level.have - level.take
        if level.set_index < 0:
            cells[_G_TOKENS] = level.have
            cells[_G_STAMP] = level.stamp
            cells[_G_PRESENT] = 1
            return
        wait_us = math.ceil((level.limit * _UT - level.have) / level.rate)
        if wait_us > _MAX_WAIT_US:  # noqa: PLR1730 - the same branch in both builds
            wait_us = _MAX_WAIT_US
        expires_us = cython.cast(cython.longlong, level.stamp + wait_us + _BUCKET_MARGIN_US)
        self._store(level, now_us, level.have, level.stamp, expires_us)

    def _store(self, level: _Level, now_us: int, a: int, b: int, expires_us: int) -> None:
        """Write a level's state to its slot, placing the key first when it has none."""
        cells = self._cells
        cell = level.cell
        if cell < 0:
            cell = self._place(level, now_us)
            level.cell = cell
            cells[cell] = level.fp
        cells[cell + 1] = a
        cells[cell + 2] = b
        cells[cell + 3] = expires_us

    def _place(self, level: _Level, now_us: int) -> int:
        """A slot for a new key: its own expired slot, an empty or expired one, else the live
        slot closest to expiry (an eviction). Slots this decision wrote are never taken."""
        cells = self._cells
        first = self._set_cell(level.set_index) + 1
        victim = -1
        victim_expires = 0
        for way in range(_WAYS):
            cell = first + way * _SLOT_CELLS
            if cells[cell] == level.fp:
                return cell
            if self._claimed(cell):
                continue
            expires = cells[cell + 3]
            if cells[cell] == 0 or expires <= now_us:
                if victim < 0 or victim_expires > now_us:
                    victim = cell
                    victim_expires = expires if cells[cell] != 0 else 0
            elif victim < 0 or expires < victim_expires:
                victim = cell
                victim_expires = expires
        if victim_expires > now_us:
            self.evictions += 1
        return victim

    def _claimed(self, cell: int) -> bool:
        """``cell`` holds a key of the decision in progress."""
        for level in self._levels:  # noqa: SIM110 - a C loop in the compiled build, any() is not
            if level.on and level.cell == cell:
                return True
        return False

    def _set_cell(self, set_index: int) -> int:
        return _HEADER_CELLS + set_index * _SET_CELLS

    # ----------------------------------------------------------------------------- locking

    def _lock(self, cell: int) -> None:
        if cython.compiled:
            fastgw_spin_lock(cython.address(self._cells[cell]), self._pid)
        else:
            fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, cell)

    def _unlock(self, cell: int) -> None:
        if cython.compiled:
            fastgw_spin_unlock(cython.address(self._cells[cell]))
        else:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, cell)

    def release_locks_of(self, pid: int) -> int:
        """Free every lock cell held by ``pid`` (a worker the master reaped); how many.
        The pure build's fcntl locks die with their process: nothing to free."""
        freed = 0
        if cython.compiled and pid > 0 and not self._closed:  # 0 marks a free lock cell
            freed += fastgw_release_if_owner(cython.address(self._cells[_G_LOCK]), pid)
            for set_index in range(self._sets):
                freed += fastgw_release_if_owner(
                    cython.address(self._cells[self._set_cell(set_index)]), pid
                )
        return freed


def _arm_bucket(level: _Level, fp: int, rate: float, burst: int, take: int) -> None:
    if not 1e-6 <= rate <= 1e9:  # decision.MIN_RATE_PER_S..MAX_RATE_PER_S; NaN fails too
        raise ValueError("rate must be in 1e-6..1e9 tokens/s")
    _check_amount(burst, 1)
    _check_amount(take, 1)
    level.on = True
    level.fp = fp
    level.rate = rate
    level.limit = burst
    level.take = take * _UT


def _check_amount(value: int, low: int) -> None:
    if not low <= value <= 1_000_000_000:  # decision.MAX_BURST / MAX_COST
        raise ValueError(f"amount must be in {low}..1e9, got {value}")


def _build_code() -> int:
    """The build that made a table, recorded in its header: 1 compiled, 2 pure."""
    return 1 if cython.compiled else 2


if not cython.compiled:  # the compiled build's lock primitives come from bucket_c.pxd

    def fastgw_spin_lock(word: object, pid: int) -> None:
        raise AssertionError("compiled build only")

    def fastgw_spin_unlock(word: object) -> None:
        raise AssertionError("compiled build only")

    def fastgw_release_if_owner(word: object, pid: int) -> int:
        raise AssertionError("compiled build only")
