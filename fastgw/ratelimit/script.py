"""The Redis rate-limit scripts: their source and SHA1, the KEYS/ARGV layout, EVALSHA + NOSCRIPT.

What it owns
    ``CUSTOMER`` (``customer.lua``: every per-customer level of one request, atomically) and
    ``GLOBAL`` (``global.lua``: the global bucket), read once from the package at import; the
    functions that lay out their KEYS and ARGV (the only code that knows the layout, which the
    scripts' headers document); ``evalsha_or_load`` for redis-py sync clients.

Invariants
    * The layout functions are plain values in, bytes out, and touch no client; the hot path
      (``redis_backend.py``) lays out the same ARGV from parts it encodes once.
    * A customer is ONE key, the hash ``{c:<id>}`` holding every per-customer level (see the
      header of ``customer.lua`` for its fields and why one key matters on a Cluster).
      Customer ids and endpoint names never hold ``{``, ``}`` or ``:`` (the token and config
      validators allow ``[A-Za-z0-9_.-]`` only), so neither keys nor field names collide.
    * The global key is in a slot of its own. On a standalone Redis it is ``customer.lua``'s
      KEYS[2] and one script decides every level atomically (what the memory backend decides).
      A Cluster refuses a script whose keys span slots, so there the caller sends
      ``global.lua`` beside it in the same round trip; the two are *not* atomic together: the
      global bucket takes its token even when the customer script refuses, and the customer
      script takes even when the global level refuses. The global level is a gateway-wide
      safety valve, not a per-customer promise.
    * The clock is Redis ``TIME``. The ``now_us`` argument of the ARGV functions is a TEST HOOK
      (the scripts' last ARGV): production callers leave it None, which sends ``0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import sha1
from importlib.resources import files
from typing import Final

import redis
import redis.cluster
from redis.exceptions import NoScriptError

from fastgw.ratelimit.decision import CustomerRequest, GlobalRequest, Level

__all__ = [
    "CUSTOMER",
    "GLOBAL",
    "GLOBAL_KEY",
    "LuaScript",
    "customer_argv",
    "customer_key",
    "endpoint_fields",
    "evalsha_or_load",
    "global_argv",
    "global_key",
    "rate_arg",
]


INCLUDE: Final = b"--@include "


@dataclass(frozen=True, slots=True)
class LuaScript:
    """A script's source and the SHA1 that EVALSHA names it by."""

    name: str
    source: bytes
    sha1: str

    @classmethod
    def from_package(cls, name: str) -> LuaScript:
        """The script ``name`` with each ``--@include <file>`` line replaced by that file."""
        package = files(__package__)
        lines = package.joinpath(name).read_bytes().splitlines(keepends=True)
        source = b"".join(
            package.joinpath(line.split()[1].decode()).read_bytes()
            if line.startswith(INCLUDE)
            else line
            for line in lines
        )
        return cls(name, source, sha1(source).hexdigest())


CUSTOMER: Final = LuaScript.from_package("customer.lua")
GLOBAL: Final = LuaScript.from_package("global.lua")

GLOBAL_KEY: Final = b"{g}:b"
"""The global bucket's key: a hash tag of its own, so a slot of its own."""


def global_key(window_us: int = 0) -> bytes:
    """The global level's key: ``GLOBAL_KEY`` for the token bucket; for a sliding window one
    per window length (``{g}:w:<µs>``), so a changed ``window_size`` starts clean instead of
    reading counts of another length."""
    return GLOBAL_KEY if window_us == 0 else b"{g}:w:%d" % window_us

_NO_CLOCK: Final = b"0"  # the test-hook ARGV in production: use Redis TIME
_ABSENT: Final = b""  # an ARGV for a level that is off (tonumber('') is nil in Lua)


def customer_key(customer_id: bytes) -> bytes:
    """The customer's hash (KEYS[1] of ``customer.lua``), its own hash tag."""
    return b"{c:" + customer_id + b"}"


def endpoint_fields(endpoint: bytes) -> tuple[bytes, bytes]:
    """The customer hash's fields of an endpoint bucket: micro-tokens, last µs."""
    return b"e:" + endpoint + b":t", b"e:" + endpoint + b":ts"


def rate_arg(rate_per_s: float) -> bytes:
    """A rate as a script ARGV: repr is the shortest text that reads back as the same double
    (Lua's tonumber is strtod)."""
    return repr(float(rate_per_s)).encode("ascii")


def _clock(now_us: int | None) -> bytes:
    if now_us is None:
        return _NO_CLOCK
    if type(now_us) is not int or now_us <= 0:
        raise ValueError("now_us (test hook) must be a positive integer")
    return b"%d" % now_us


def customer_argv(
    request: CustomerRequest,
    global_request: GlobalRequest | None = None,
    *,
    now_us: int | None = None,
) -> tuple[bytes, ...]:
    """ARGV of ``customer.lua`` (layout in its header); ``now_us`` is the test hook. With
    ``global_request`` the script also decides the global level (KEYS[2]: ``global_key``)."""
    endpoint_rate = request.endpoint_rate_per_s
    quota = request.daily_quota
    shadow = request.shadow & (Level.CUSTOMER.bit | Level.ENDPOINT.bit | Level.QUOTA.bit)
    argv = (
        b"%d" % request.cost,
        rate_arg(request.rate_per_s),
        b"%d" % request.burst,
        request.endpoint,
        _ABSENT if endpoint_rate is None else rate_arg(endpoint_rate),
        b"%d" % (request.endpoint_burst or 0),
        _ABSENT if quota is None else b"%d" % quota,
        b"%d" % (shadow | (Level.GLOBAL.bit if global_request and global_request.shadow else 0)),
        _clock(now_us),
    )
    if global_request is None:
        return argv
    if global_request.cost != 1:
        raise ValueError("the global level takes 1 per request in customer.lua")
    window = b"%d" % global_request.window_us if global_request.window_us else _ABSENT
    return (*argv, rate_arg(global_request.rate_per_s), b"%d" % global_request.burst, window)


def global_argv(request: GlobalRequest, *, now_us: int | None = None) -> tuple[bytes, ...]:
    """ARGV of ``global.lua`` (layout in its header); ``now_us`` is the test hook."""
    return (
        b"%d" % request.cost,
        rate_arg(request.rate_per_s),
        b"%d" % request.burst,
        b"1" if request.shadow else b"0",
        _clock(now_us),
        b"%d" % request.window_us if request.window_us else _ABSENT,
    )


def evalsha_or_load(
    client: redis.Redis | redis.cluster.RedisCluster,
    script: LuaScript,
    keys: Sequence[bytes],
    argv: Sequence[bytes],
) -> object:
    """Run ``script`` by its SHA1; after NOSCRIPT (a restart, a failover to a replica that never
    saw it, SCRIPT FLUSH) send it whole with EVAL, which also caches it for the next EVALSHA.
    Off the hot path (redis-py sync); returns the raw reply (``decode_reply`` reads it)."""
    try:
        return client.evalsha(script.sha1, len(keys), *keys, *argv)
    except NoScriptError:
        return client.eval(script.source, len(keys), *keys, *argv)  # type: ignore[arg-type]
