"""What ``/health/detailed`` and ``/ready`` report beyond the backends: the event loop's lag
and the Redis connection, each measured by a timer of its own, never by the request.

What it owns
    ``LoopLag`` (how late the loop runs a timer: the ``http_server`` component), ``RedisProbe``
    (a ``PING`` through the rate limiter's own hot-path client), ``PollerProbe`` (the token
    revocation poller's last round trip, when Redis serves only revocation) and
    ``HealthProbes``, which a plan builds (no timer: the master builds throwaway plans) and the
    server starts and closes in the worker.

Why a timer and not a PING per request
    Load balancers poll health endpoints, some many times a second, and every worker of every
    instance answers them: a PING per request would turn that into Redis traffic and make the
    endpoint's answer wait on Redis (a PAUSE and a resume per probe request). One PING per
    ``REDIS_PROBE_INTERVAL_S`` per worker costs Redis nothing, the endpoints stay synchronous
    and allocation-light, and the answer says how old its measurement is (``checked_s_ago``).
    The PING goes through the limiter's client, so it shares its connections, its deadline
    (``redis.timeout``) and its fate: "healthy" means the limiter's next call would be answered
    in time. The callback ``send`` creates no Task or Future; a probe failure while Redis is
    down is also one more ``fastgw_redis_errors_total`` per second and worker.

Statuses: ``healthy``, ``unhealthy``, ``unknown`` (no answer yet since start), and
``not_configured`` (no Redis in the config).

What the answer says about a failure: only its category (``error``: ``timeout``,
``unavailable``, ``overloaded``, ``auth``, ``error_reply``, ``error``). The endpoints are on
the main port without authentication, and the exception's text names Redis's address and what
it answered (a refused password); that detail goes to the log instead (logger
``fastgw.health``), once per change of the outcome, not once per PING.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Final

from fastgw.limits import LOOP_LAG_DEGRADED_S, LOOP_LAG_INTERVAL_S, REDIS_PROBE_INTERVAL_S
from fastgw.resp.errors import RedisOverloaded, RedisTimeout, RedisUnavailable, ReplyError

if TYPE_CHECKING:
    from fastgw.auth.revocation import RevocationPoller
    from fastgw.ratelimit.service import LimitService
    from fastgw.resp import HotRedis

__all__ = ["HEALTHY", "UNHEALTHY", "HealthProbes", "LoopLag", "PollerProbe", "RedisProbe"]

HEALTHY: Final = "healthy"
DEGRADED: Final = "degraded"
UNHEALTHY: Final = "unhealthy"
UNKNOWN: Final = "unknown"
NOT_CONFIGURED: Final = "not_configured"
PING: Final = (b"PING",)
_AUTH_REPLIES: Final = ("NOAUTH", "WRONGPASS", "NOPERM", "ERR AUTH", "ERR INVALID PASSWORD")

log = logging.getLogger("fastgw.health")
_clock = time.monotonic


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def error_category(error: BaseException) -> str:
    """What kind of failure ``error`` is, in words that name no host, port or reply text."""
    if isinstance(error, RedisTimeout):
        return "timeout"
    if isinstance(error, RedisOverloaded):
        return "overloaded"  # refused here, before sending: too much in flight
    if isinstance(error, RedisUnavailable):
        return "unavailable"  # no connection: refused, lost, never made
    if isinstance(error, ReplyError):
        return "auth" if str(error).upper().startswith(_AUTH_REPLIES) else "error_reply"
    return "error"


class LoopLag:
    """How late this worker's event loop ran its last timer (every ``LOOP_LAG_INTERVAL_S``):
    near 0 when the loop keeps up; large when callbacks hog it or it is overloaded."""

    __slots__ = ("_due_s", "_loop", "_timer", "checked_s", "lag_s")

    def __init__(self) -> None:
        self.lag_s = 0.0
        self.checked_s = 0.0  # when the last measurement was taken (monotonic); 0: none yet
        self._due_s = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._schedule()

    def _schedule(self) -> None:
        assert self._loop is not None
        self._due_s = _clock() + LOOP_LAG_INTERVAL_S
        self._timer = self._loop.call_later(LOOP_LAG_INTERVAL_S, self._on_due)

    def _on_due(self) -> None:
        now_s = self.checked_s = _clock()
        self.lag_s = max(0.0, now_s - self._due_s)
        self._schedule()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def report(self) -> dict[str, Any]:
        status = DEGRADED if self.lag_s >= LOOP_LAG_DEGRADED_S else HEALTHY
        out: dict[str, Any] = {"name": "http_server", "status": status,
                               "latency_ms": _ms(self.lag_s)}  # fmt: skip
        if self.checked_s:
            out["checked_s_ago"] = round(_clock() - self.checked_s, 3)
        return out


class RedisProbe:
    """``PING`` through ``client`` every ``REDIS_PROBE_INTERVAL_S``; the last outcome."""

    __slots__ = ("_client", "_closed", "_loop", "_sent_s", "_timer", "checked_s", "error",
                 "latency_s", "status")  # fmt: skip

    def __init__(self, client: HotRedis) -> None:
        self._client = client
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._sent_s = 0.0
        self.status = UNKNOWN
        self.latency_s = 0.0
        self.checked_s = 0.0  # when the last outcome came (monotonic); 0: none yet
        self.error: str | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._send()

    def _send(self) -> None:
        self._timer = None
        if self._closed:
            return
        self._sent_s = _clock()
        # The client calls back exactly once: the reply, its timeout (redis.timeout) or, with
        # no connection up, RedisUnavailable at once (before send returns).
        self._client.send(PING, self._on_reply)

    def _on_reply(self, reply: object) -> None:
        now_s = _clock()
        self.latency_s = now_s - self._sent_s
        self.checked_s = now_s
        was = self.error
        if isinstance(reply, BaseException):
            self.status = UNHEALTHY
            self.error = error_category(reply)
            if self.error != was:  # the detail, for the operator: once per change
                log.warning("redis probe: PING failed (%s): %s: %s", self.error,
                            type(reply).__name__, reply)  # fmt: skip
        else:
            self.status = HEALTHY
            self.error = None
            if was is not None:
                log.info("redis probe: PING answered again")
        if not self._closed and self._loop is not None:
            self._timer = self._loop.call_later(REDIS_PROBE_INTERVAL_S, self._send)

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @property
    def usable(self) -> bool:
        """For /ready: connected, and the last PING (if any yet) was answered in time."""
        return self._client.connected and self.status != UNHEALTHY

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": "redis_connection",
            "status": self.status,
            "latency_ms": _ms(self.latency_s),
        }
        if self.checked_s:
            out["checked_s_ago"] = round(_clock() - self.checked_s, 3)
        if self.error is not None:
            out["error"] = self.error
        return out


class PollerProbe:
    """Redis as the revocation poller last found it (when rate limiting does not use Redis):
    its polls are this worker's only Redis traffic, so they are the probe."""

    __slots__ = ("_poller",)

    def __init__(self, poller: RevocationPoller) -> None:
        self._poller = poller

    def report(self) -> dict[str, Any]:
        poller = self._poller
        polled_s = poller.last_poll_s
        status = HEALTHY if poller.loaded else UNHEALTHY if poller.failing else UNKNOWN
        out: dict[str, Any] = {
            "name": "redis_connection",
            "status": status,
            "latency_ms": _ms(poller.last_poll_latency_s),
        }
        if polled_s:
            out["checked_s_ago"] = round(_clock() - polled_s, 3)
        return out


class HealthProbes:
    """The probes of one worker's plan: built with the plan, started by the server."""

    __slots__ = ("loop_lag", "poller", "redis", "redis_refuses", "redis_uses")

    def __init__(self, limits: LimitService, revocations: RevocationPoller | None) -> None:
        self.loop_lag = LoopLag()
        backend = limits.redis
        self.redis = None if backend is None else RedisProbe(backend.client)
        self.poller = (
            PollerProbe(revocations) if revocations is not None and backend is None else None
        )
        # Whether a Redis outage refuses requests (then it makes the gateway unhealthy).
        self.redis_refuses = backend is not None and backend.on_failure == "closed"
        uses = []
        if backend is not None:
            uses.append(f"rate_limiting (on_failure: {backend.on_failure})")
        if revocations is not None:
            uses.append("revocation")
        self.redis_uses = uses

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop_lag.start(loop)
        if self.redis is not None:
            self.redis.start(loop)

    def close(self) -> None:
        self.loop_lag.close()
        if self.redis is not None:
            self.redis.close()

    def redis_report(self) -> dict[str, Any]:
        if self.redis is not None:
            out = self.redis.report()
        elif self.poller is not None:
            out = self.poller.report()
        else:
            return {"name": "redis_connection", "status": NOT_CONFIGURED, "latency_ms": 0.0}
        out["used_for"] = self.redis_uses
        return out
