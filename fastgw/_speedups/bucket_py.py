"""Token-bucket table kernel: many independent buckets, an injected clock, bounded memory.

What it owns
    The per-key token buckets of the in-process rate limiter (customer, endpoint, global
    levels): refill, take, peek, and which keys are kept when the table is full.

Invariants
    * The caller passes ``now_s`` (seconds, any monotonic origin): the table never reads a clock,
      so tests and the limiter decide time, and one ``now`` serves every level of a decision.
    * Tokens after a refill are ``min(burst, tokens + (now_s - last_s) * rate_per_s)``; a new key
      starts full; a clock that goes backwards adds nothing and does not move ``last_s`` back.
    * ``take`` either subtracts ``cost`` and returns 0.0 (allowed) or subtracts nothing and
      returns the seconds until ``cost`` tokens will be there: always > 0, and ``math.inf``
      when ``cost > burst`` (never).
    * At most ``max_keys`` buckets are kept (ARCHITECTURE principle 6: every table has a bound).
      A full table forgets its least recently used key; a forgotten key comes back full, which
      errs towards allowing: the bound must be sized above the number of active keys.
    * Arguments are checked on every call (finite ``now_s``, finite positive ``rate_per_s`` and
      ``burst``, ``cost >= 0``): a NaN clock would freeze a bucket forever, silently.

Why like this
    This file is the spec *and* the pure-Python fallback. Cython compiles the same source as
    ``bucket_c`` with ``bucket_c.pxd`` adding C types: a bucket is a C struct of two doubles and
    all the arithmetic is on C doubles, while recency is a plain dict's insertion order
    (pop + re-insert on use, evict ``next(iter(dict))``), which both builds share.
"""

from __future__ import annotations

from typing import Final

__all__ = ["TokenBucketTable"]

_INF: Final = float("inf")
# A refusal always reports a positive wait, even when (cost - tokens) / rate underflows.
_MIN_WAIT_S: Final = 1e-9


class _Bucket:
    """One key's state: tokens at ``last_s``."""

    __slots__ = ("last_s", "tokens")

    def __init__(self, tokens: float, last_s: float) -> None:
        self.tokens = tokens
        self.last_s = last_s


class TokenBucketTable:
    """Token buckets by key (any hashable), at most ``max_keys`` of them, least recent evicted."""

    def __init__(self, max_keys: int) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be >= 1")
        self._max_keys = max_keys
        self._entries: dict[object, _Bucket] = {}  # insertion order = recency, oldest first

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def max_keys(self) -> int:
        return self._max_keys

    def take(
        self, key: object, now_s: float, rate_per_s: float, burst: float, cost: float
    ) -> float:
        """Take ``cost`` tokens from ``key``'s bucket: 0.0 if allowed, else seconds to wait."""
        # HOT PATH: a known key costs one dict pop and one insert, no allocation.
        _check(now_s, rate_per_s, burst)
        if not cost >= 0.0:
            raise ValueError("cost must be >= 0")
        entries = self._entries
        entry = entries.pop(key, None)
        if entry is None:
            if len(entries) >= self._max_keys:
                del entries[next(iter(entries))]  # the least recently used key
            entry = _Bucket(burst, now_s)
        tokens = _refilled(entry, now_s, rate_per_s, burst)
        if now_s > entry.last_s:  # noqa: PLR1730 - an if beats max() when interpreted
            entry.last_s = now_s
        entries[key] = entry  # (re)inserted last: now the most recently used
        if tokens >= cost:
            entry.tokens = tokens - cost
            return 0.0
        entry.tokens = tokens
        if cost > burst:
            return _INF
        wait = (cost - tokens) / rate_per_s
        return wait if wait > _MIN_WAIT_S else _MIN_WAIT_S

    def peek(self, key: object, now_s: float, rate_per_s: float, burst: float) -> float:
        """Tokens ``key`` would have at ``now_s``; changes nothing, recency included."""
        _check(now_s, rate_per_s, burst)
        entry = self._entries.get(key)
        if entry is None:
            return burst + 0.0  # a new key starts full (+ 0.0: a float in both builds)
        return _refilled(entry, now_s, rate_per_s, burst)

    def remove(self, key: object) -> None:
        """Forget ``key`` (its next use starts full); a key that is not there is not an error."""
        self._entries.pop(key, None)


def _check(now_s: float, rate_per_s: float, burst: float) -> None:
    # Written as "not (ok)" so that NaN, which fails every comparison, is refused too.
    if not -_INF < now_s < _INF:
        raise ValueError("now_s must be finite")
    if not 0.0 < rate_per_s < _INF:
        raise ValueError("rate_per_s must be > 0 and finite")
    if not 0.0 < burst < _INF:
        raise ValueError("burst must be > 0 and finite")


def _refilled(entry: _Bucket, now_s: float, rate_per_s: float, burst: float) -> float:
    """``entry``'s tokens at ``now_s``: a clock going backwards adds nothing."""
    tokens = entry.tokens
    elapsed = now_s - entry.last_s
    if elapsed > 0.0:
        tokens += elapsed * rate_per_s
    if tokens > burst:  # noqa: PLR1730 - an if beats min() when interpreted
        tokens = burst
    return tokens
