"""The Redis backend: one round trip per request, every level decided by the Lua scripts.

What it owns
    ``RedisLimits.check``: the rate-limit stage's decision when ``gateway.rate_limiting.backend``
    is ``redis``. It sends ``customer.lua`` by EVALSHA through the hot-path client
    (``fastgw.resp``), which writes it in one ``write`` with whatever else this loop iteration
    sent; the stage PAUSEs and the reply resumes the exchange. On a standalone Redis that one
    script decides every level, the global bucket included (its key is KEYS[2]): one command,
    one decision, as the memory backend makes it. On a Cluster the global key lives in another
    slot, so ``global.lua`` goes beside it in the same write (two commands, one round trip).
    ``on_failure`` when Redis fails.

Invariants
    * Redis ``TIME`` is the clock; the scripts' test hook is never set here.
    * NOSCRIPT (a restart, a failover, SCRIPT FLUSH) is answered by sending the same call once
      with EVAL and the whole source, which also reloads the script for the next EVALSHA.
    * Every request gets an answer within the client's deadline (``redis.timeout``, default
      20 ms; twice that after a NOSCRIPT, whose EVAL re-send has a deadline of its own): the
      client calls back with a timeout when Redis does not answer, and then
      ``on_failure`` decides: ``local`` the shared in-process table (exact for this instance),
      ``open`` lets the request through without headers, ``closed`` answers 503. Recovery
      needs nothing: the next request tries Redis again. Errors are counted by the client
      (``fastgw_redis_errors_total``).
    * On a Cluster the two scripts are not atomic together (different slots): when the global
      level refuses, the customer's levels have already taken (see ``script.py``).
    * Per request: one small object (``_Call``) that carries the exchange to the callbacks; the
      per-customer and per-route parts of the command are encoded once and reused.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Final

from fastgw.exchange import ABORTED, PAUSED
from fastgw.limits import MAX_ENCODED_CUSTOMERS
from fastgw.pipeline import CONTINUE, PAUSE, RESPOND
from fastgw.ratelimit.decision import REPLY_LENGTH, Level, longer_wait
from fastgw.ratelimit.policy import NO_ENDPOINT, NO_QUOTA
from fastgw.ratelimit.script import CUSTOMER, GLOBAL, customer_key, global_key, rate_arg
from fastgw.resp import ReplyError

if TYPE_CHECKING:
    from fastgw.exchange import Exchange
    from fastgw.ratelimit.limiter import RateLimiter
    from fastgw.ratelimit.policy import CustomerLimits, RouteLimits
    from fastgw.replies import ErrorReply
    from fastgw.resp import HotRedis

__all__ = ["RedisLimits"]

log = logging.getLogger(__name__)

EVALSHA: Final = b"EVALSHA"
EVAL: Final = b"EVAL"
_CUSTOMER_SHA: Final = CUSTOMER.sha1.encode("ascii")
_GLOBAL_SHA: Final = GLOBAL.sha1.encode("ascii")
_CUSTOMER_SHADOW: Final = Level.CUSTOMER.bit | Level.ENDPOINT.bit | Level.QUOTA.bit
REPORT_INTERVAL_S: Final = 10.0  # unusable replies are logged at most this often
_NO_CLOCK: Final = b"0"
_ABSENT: Final = b""


class RedisLimits:
    """The ``redis`` backend of one worker: ``check`` is the stage's decision function."""

    __slots__ = (
        "_client",
        "_combined",
        "_customer_parts",
        "_global_args",
        "_global_key",
        "_global_tail",
        "_limiter",
        "_on_failure",
        "_route_parts",
        "_shadow",
        "_unavailable",
    )

    def __init__(
        self,
        client: HotRedis,
        limiter: RateLimiter,
        *,
        on_failure: str,
        unavailable: ErrorReply,
        combined: bool = True,
    ) -> None:
        self._client = client
        self._limiter = limiter
        self._on_failure = on_failure
        self._unavailable = unavailable
        policy = limiter.policy
        top = policy.global_limits
        # Standalone Redis: customer.lua also decides the global level (KEYS[2]), one script,
        # atomically. Cluster: global.lua beside it, in its own slot (see script.py).
        self._combined = combined and top is not None
        shadow_bits = policy.shadow if self._combined else policy.shadow & _CUSTOMER_SHADOW
        self._shadow = b"%d" % shadow_bits
        self._global_tail: tuple[bytes, ...] = ()
        self._global_args: tuple[bytes, ...] | None = None
        self._global_key = global_key(0 if top is None else top.window_us)
        if top is not None:
            window = b"%d" % top.window_us if top.window_us else _ABSENT
            self._global_tail = (rate_arg(top.rate_per_s), b"%d" % top.burst, window)
            shadow = b"1" if policy.shadow & Level.GLOBAL.bit else b"0"
            self._global_args = (
                EVALSHA, _GLOBAL_SHA, b"1", self._global_key,
                b"1", rate_arg(top.rate_per_s), b"%d" % top.burst, shadow, _NO_CLOCK, window,
            )  # fmt: skip
        # Encoded command parts. Per endpoint name (a bytes key hashes once and caches it,
        # where the frozen RouteLimits would hash every field per request); per customer
        # limits object, bounded (cleared when full, rebuilt by the next request of each).
        self._route_parts: dict[bytes, tuple[bytes, bytes, bytes, bytes]] = {}
        self._customer_parts: dict[int, tuple[CustomerLimits, bytes, bytes, bytes, bytes]] = {}

    @property
    def client(self) -> HotRedis:
        return self._client

    @property
    def on_failure(self) -> str:
        return self._on_failure

    # HOT PATH
    def check(self, ex: Exchange, customer: CustomerLimits | None, route: RouteLimits) -> int:
        """Send the scripts and PAUSE; the replies resume (or answer) ``ex``."""
        global_args = self._global_args
        if customer is None and global_args is None:
            return CONTINUE  # nothing to decide (the plan adds no stage then; kept for safety)
        call = _Call(self, ex, customer, route)
        send = self._client.send
        if customer is not None:
            call.customer_args = args = self._customer_command(customer, route)
            call.pending += 1
            send(args, call.on_customer, args[3])  # routed by the customer's key
        if global_args is not None and (customer is None or not self._combined):
            call.pending += 1
            send(global_args, call.on_global, self._global_key)
        if call.pending:
            call.resumes = True  # the last reply resumes the exchange
            ex.move(PAUSED)
            return PAUSE
        # Every callback ran inside send (the client failed fast, nothing connected): decide
        # now, so the chain goes on without a pause.
        return call.verdict()

    @property
    def global_args(self) -> tuple[bytes, ...] | None:
        return self._global_args

    def _customer_command(self, customer: CustomerLimits, route: RouteLimits) -> tuple[bytes, ...]:
        parts = self._customer_parts.get(id(customer))
        if parts is None or parts[0] is not customer:
            key = customer_key(customer.customer_id)
            quota = customer.daily_quota
            parts = (
                customer,
                key,
                rate_arg(customer.rate_per_s),
                b"%d" % customer.burst,
                _ABSENT if quota == NO_QUOTA else b"%d" % quota,
            )
            if len(self._customer_parts) >= MAX_ENCODED_CUSTOMERS:
                self._customer_parts.clear()
            self._customer_parts[id(customer)] = parts
        route_parts = self._route_parts.get(route.endpoint)
        if route_parts is None:
            with_bucket = route.bucket_id != NO_ENDPOINT
            route_parts = (
                route.endpoint,
                b"%d" % route.cost,
                rate_arg(route.rate_per_s) if with_bucket else _ABSENT,
                b"%d" % route.burst if with_bucket else b"0",
            )
            self._route_parts[route.endpoint] = route_parts
        _, key, rate, burst, quota_arg = parts
        endpoint, cost, endpoint_rate, endpoint_burst = route_parts
        if self._combined:
            return (
                EVALSHA, _CUSTOMER_SHA, b"2", key, self._global_key, cost, rate, burst,
                endpoint, endpoint_rate, endpoint_burst, quota_arg, self._shadow, _NO_CLOCK,
                *self._global_tail,
            )  # fmt: skip
        return (
            EVALSHA, _CUSTOMER_SHA, b"1", key, cost, rate, burst,
            endpoint, endpoint_rate, endpoint_burst, quota_arg, self._shadow, _NO_CLOCK,
        )  # fmt: skip

    def fail(self, call: _Call) -> int:
        """``on_failure``: the verdict for a request Redis could not decide."""
        policy = self._on_failure
        if policy == "local":
            return self._limiter.decide_locally(call.ex, call.customer, call.route)
        if policy == "open":
            return CONTINUE
        call.ex.reply = self._unavailable
        return RESPOND


class _Call:
    """One request's trip to Redis: its replies, and the exchange to resume."""

    __slots__ = (
        "backend",
        "customer",
        "customer_args",
        "customer_reply",
        "ex",
        "failed",
        "global_reply",
        "pending",
        "reloaded",
        "resumes",
        "route",
    )

    def __init__(
        self,
        backend: RedisLimits,
        ex: Exchange,
        customer: CustomerLimits | None,
        route: RouteLimits,
    ) -> None:
        self.backend = backend
        self.ex = ex
        self.customer = customer
        self.route = route
        self.customer_args: tuple[bytes, ...] = ()
        self.customer_reply: list[int] | None = None
        self.global_reply: list[int] | None = None
        self.pending = 0
        self.failed = False
        self.resumes = False  # set once the stage PAUSEd: from then on a reply resumes
        self.reloaded = 0  # mask of the scripts already re-sent after NOSCRIPT (1 c, 2 g)

    # HOT PATH (callbacks from the client's data_received)
    def on_customer(self, reply: object) -> None:
        if _is_noscript(reply) and not self.reloaded & 1:
            self.reloaded |= 1  # once: a second NOSCRIPT is a real failure
            args = self.customer_args
            reload = (EVAL, CUSTOMER.source, *args[2:])
            self.backend.client.send(reload, self.on_customer, args[3])
            return
        self.customer_reply = self._checked(reply)
        self._arrived()

    def on_global(self, reply: object) -> None:
        if _is_noscript(reply) and not self.reloaded & 2:
            self.reloaded |= 2
            args = self.backend.global_args
            assert args is not None
            self.backend.client.send((EVAL, GLOBAL.source, *args[2:]), self.on_global, args[3])
            return
        self.global_reply = self._checked(reply)
        self._arrived()

    def _checked(self, reply: object) -> list[int] | None:
        # HOT PATH: the shape here; the items are integers or verdict() fails over (below).
        if type(reply) is list and len(reply) == REPLY_LENGTH:
            return reply
        if not isinstance(reply, BaseException):
            _unexpected(f"a reply of another shape: {reply!r:.200}")
        self.failed = True
        return None

    def _arrived(self) -> None:
        self.pending -= 1
        if self.pending or not self.resumes:
            return
        ex = self.ex
        if ex.state == ABORTED:
            return  # the client left while Redis answered: nothing to decide or to answer
        try:
            self.verdict()
            ex.resume()  # continues the chain, or answers ex.reply (set by verdict)
        except Exception:
            # Never a request left PAUSED with no deadline: close its connection instead.
            log.exception(
                "rate limiting: could not answer a request after Redis replied",
                extra={"request_id": ex.request_id},
            )
            transport = getattr(ex.conn, "transport", None)
            if transport is not None:
                transport.abort()

    def verdict(self) -> int:
        """The exchange's verdict; whatever goes wrong in reading the replies, ``on_failure``
        decides instead: a request is never left without an answer. On a Cluster one script
        may answer and the other fail: a refusal that did come back still stands."""
        if not self.failed:
            try:
                return self._decided()
            except Exception as exc:  # non-integer items, or a bug of ours
                _unexpected(f"{type(exc).__name__}: {exc}")
        else:
            limiter = self.backend._limiter
            for reply in (self.customer_reply, self.global_reply):
                if reply is not None and reply[0]:
                    active = limiter.active_levels(self.customer, self.route)
                    try:
                        return limiter.finish(self.ex, active, *reply[:7])
                    except Exception as exc:  # an unreadable refusal: fall back
                        _unexpected(f"{type(exc).__name__}: {exc}")
        return self.backend.fail(self)

    def _decided(self) -> int:
        backend = self.backend
        limiter = backend._limiter
        active = limiter.active_levels(self.customer, self.route)
        c, g = self.customer_reply, self.global_reply
        if c is None:
            assert g is not None
            return limiter.finish(self.ex, active, *g[:7])
        if g is None:
            return limiter.finish(self.ex, active, *c[:7])
        return limiter.finish(self.ex, active, *_combine(c, g))


def _combine(c: list[int], g: list[int]) -> tuple[int, int, int, int, int, int, int]:
    """The customer script's and the global script's replies as one decision (as
    ``LimitTable.decide`` makes it): the refusing level with the longer wait; the headers of
    the customer's tightest level, or of the global level when it alone refuses."""
    mask = c[1] | g[1]
    if c[0] and (not g[0] or not longer_wait(g[2], c[2])):
        return c[0], mask, c[2], c[3], c[4], c[5], c[6]
    if g[0]:
        return g[0], mask, g[2], g[3], g[4], g[5], g[6]
    retry = c[2] if not g[2] or (c[2] and not longer_wait(g[2], c[2])) else g[2]
    if c[3]:
        return 0, mask, retry, c[3], c[4], c[5], c[6]
    return 0, mask, retry, g[3], g[4], g[5], g[6]


_last_report = [0.0]


def _unexpected(what: str) -> None:
    """Log a reply the limiter could not read, at most once per ``REPORT_INTERVAL_S``."""
    now = time.monotonic()
    if now - _last_report[0] >= REPORT_INTERVAL_S:
        _last_report[0] = now
        log.error("rate limiting: unusable Redis reply (on_failure applies): %s", what)


def _is_noscript(reply: object) -> bool:
    return isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT")
