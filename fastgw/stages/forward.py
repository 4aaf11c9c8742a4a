"""The terminal stage: send the exchange to a backend instance and relay the answer.

Choosing the instance
    Target selection (``routing/strategies.py``) gives an ordered candidate tuple: the pick,
    then the failover order. The first candidate the health view lets through is used
    (``routing/health.py``: active checks up, breaker not open). None at all → 503
    ``circuit_open`` when breakers hold them off, else ``no_healthy_upstream``.

Retries (at most ``retry_attempts`` after the first try, each on the next usable candidate)
    * A failed connect: for any method, at once (nothing was sent), outside the retry budget
      (the next try goes to another instance, so it does not load the failing one). When no
      instance is left: 502 ``bad_gateway``, or 504 ``upstream_timeout`` if the last connect
      timed out (``connect_timeout``).
    * A reused keep-alive connection closed before any response byte: once more on a fresh
      connection to the same instance, for requests that may be sent again (below; the kept
      body is resent): the backend closed an idle socket as we wrote, not a failure of the
      instance.
    * After the request's bytes reached a backend (a 502 or 503 answer, a timeout, a lost or
      unparseable response): only for idempotent methods or routes marked ``retryable``, only
      while the whole body sent is kept (``MAX_REPLAY_BODY_BYTES``) and nothing was relayed to
      the client, only within the retry budget, and after an exponential back-off with full
      jitter. Otherwise the client gets 502 ``bad_gateway`` (or 504 ``upstream_timeout``), or
      the backend's own 502/503.

Outcomes
    Each try's outcome feeds the instance's breaker: a response head below 500 is a success
    (its time since the request was sent is the latency), a 5xx head, a failed connect, a
    timeout, a lost or unparseable response are failures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, Protocol

from fastgw.exchange import ABORTED, PROXYING
from fastgw.obs.metrics import CONNECT_ERROR, ERROR, TIMEOUT
from fastgw.pipeline import PAUSE, RESPOND
from fastgw.routing.retry import RetryBudget, backoff_s

if TYPE_CHECKING:
    from fastgw._speedups import MetricCounters
    from fastgw.exchange import Exchange
    from fastgw.http.pool import UpstreamPool
    from fastgw.http.upstream import UpstreamProtocol
    from fastgw.replies import ErrorReply, ReplyTable
    from fastgw.routing.health import HealthView

IDEMPOTENT_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
RETRY_STATUSES: Final = frozenset({502, 503})

_clock = time.monotonic


class Balancer(Protocol):
    def order(self, ex: Exchange) -> tuple[int, ...]: ...

    def full_order(self, ex: Exchange) -> tuple[int, ...] | None: ...


class Backends:
    """What every route's forward stage of one plan shares: the instances, their health, the
    retry policy and its budget."""

    __slots__ = (
        "backoff_base_s",
        "balancer",
        "budget",
        "metrics",
        "pools",
        "replies",
        "retries",
        "retry_attempts",
        "view",
    )

    def __init__(
        self,
        balancer: Balancer,
        pools: Sequence[UpstreamPool],
        view: HealthView,
        replies: ReplyTable,
        *,
        retry_attempts: int,
        backoff_base_s: float,
        retry_budget: float,
        metrics: MetricCounters | None = None,
    ) -> None:
        self.balancer = balancer
        self.pools = tuple(pools)
        self.view = view
        self.replies = replies
        self.retry_attempts = retry_attempts
        self.backoff_base_s = backoff_base_s
        self.budget = RetryBudget(retry_budget, _clock())
        self.retries = 0  # tries after the first, in all (fastgw_retries_total)
        self.metrics = metrics  # per-try outcomes by instance (None: metrics off)

    def refusal(self, candidates: tuple[int, ...]) -> ErrorReply:
        if candidates and self.view.circuit_refused(candidates):
            return self.replies.circuit_open
        return self.replies.no_healthy_upstream


class Forward:
    __slots__ = ("_backends", "_retryable", "_timeout_s")

    def __init__(self, backends: Backends, timeout_s: float, retryable: bool) -> None:
        self._backends = backends
        self._timeout_s = timeout_s
        self._retryable = retryable

    # HOT PATH: with every instance clear and an idle pooled connection, one synchronous
    # write and no Task.
    def on_request(self, ex: Exchange) -> int:
        backends = self._backends
        candidates = backends.balancer.order(ex)
        backends.budget.requests += 1
        view = backends.view
        ex.candidates = candidates
        if view.all_clear and candidates:
            position = 0
        else:
            position = self._next_usable(ex, 0, _clock())
            if position < 0:
                ex.reply = backends.refusal(ex.candidates)
                return RESPOND
        ex.attempt = position
        ex.replay = self._retryable or ex.method in IDEMPOTENT_METHODS
        ex.move(PROXYING)
        self._dispatch(ex, fresh=False)
        return PAUSE

    def _next_usable(self, ex: Exchange, start: int, now_s: float) -> int:
        """The position in ``ex.candidates`` of the first usable instance from ``start``, or
        -1. A consistent-hash order holds the customer's first few ring instances; when none
        of those from ``start`` is usable the order is widened to the whole pool first (off
        the hot path: only when that many instances are down)."""
        view = self._backends.view
        position = view.first_usable(ex.candidates, start, now_s, ex)
        if position >= 0:
            return position
        full = self._backends.balancer.full_order(ex)
        short = ex.candidates
        if full is None or len(full) <= len(short):
            return -1
        same = 0  # the full order starts with the short one's ring part
        while same < len(short) and short[same] == full[same]:
            same += 1
        ex.candidates = full
        return view.first_usable(full, same, now_s, ex)

    def _dispatch(self, ex: Exchange, fresh: bool) -> None:
        index = ex.candidates[ex.attempt]
        pool = self._backends.pools[index]
        upstream = None if fresh else pool.acquire()
        ex.sent_s = _clock()
        if ex.trace is not None:
            ex.trace.try_started(ex)  # this try's span id becomes the backend's parent id
        if upstream is not None:
            upstream.start(ex, self, self._timeout_s)
            return

        def connected(upstream: UpstreamProtocol | None, error: BaseException | None) -> None:
            if ex.state == ABORTED:
                if upstream is not None:
                    pool.release(upstream)
                return
            if upstream is None:
                self._connect_failed(ex, index, error)
            else:
                upstream.start(ex, self, self._timeout_s)

        pool.connect(connected)

    def _connect_failed(self, ex: Exchange, index: int, error: BaseException | None) -> None:
        backends = self._backends
        now_s = _clock()
        backends.view.on_failure(index, now_s, ex.sent_s)
        if backends.metrics is not None:
            backends.metrics.on_upstream_failure(index, CONNECT_ERROR, now_s - ex.sent_s)
        if ex.trace is not None:
            ex.trace.try_failed("connect_timeout" if isinstance(error, TimeoutError) else "connect")
        if ex.retries < backends.retry_attempts:
            position = self._next_usable(ex, ex.attempt + 1, now_s)
            if position >= 0:
                ex.retries += 1
                backends.retries += 1
                ex.attempt = position
                ex.move(PROXYING)
                self._dispatch(ex, fresh=False)
                return
        replies = backends.replies
        timed_out = isinstance(error, TimeoutError)  # connect_timeout passed: a 504
        reply = replies.upstream_timeout if timed_out else replies.bad_gateway
        ex.conn.on_upstream_failed(ex, reply)

    def _plan_retry(self, ex: Exchange, now_s: float) -> bool:
        """After the request reached a backend: choose the next try if the rules allow one
        (see the module docstring); True when ``ex.attempt`` now names it."""
        backends = self._backends
        if not ex.replay or ex.response_started or ex.retries >= backends.retry_attempts:
            return False
        if not backends.budget.withdraw(now_s):
            return False
        position = self._next_usable(ex, ex.attempt + 1, now_s)
        if position < 0:
            backends.budget.refund()
            return False
        ex.retries += 1
        backends.retries += 1
        ex.attempt = position
        return True

    @staticmethod
    def _restore_body(ex: Exchange) -> None:
        """Put the body pieces already sent back in front of those still pending."""
        sent = ex.body_sent
        if sent:
            ex.body_pending = sent + ex.body_pending
            ex.body_pending_bytes += ex.body_sent_bytes
        ex.body_sent = None
        ex.body_sent_bytes = 0

    def _resend_later(self, ex: Exchange) -> None:
        """Send ``ex`` again after the back-off, with the body pieces already sent first."""
        self._restore_body(ex)
        delay_s = backoff_s(self._backends.backoff_base_s, ex.retries)
        asyncio.get_running_loop().call_later(delay_s, self._resend, ex)

    def _resend(self, ex: Exchange) -> None:
        if ex.state == ABORTED:
            return  # the client left during the back-off
        if not self._backends.view.usable[ex.candidates[ex.attempt]]:
            # Held off during the back-off (checks, another worker's ejection): the next one.
            position = self._next_usable(ex, ex.attempt + 1, _clock())
            if position < 0:
                ex.conn.on_upstream_failed(ex, self._backends.replies.bad_gateway)
                return
            ex.attempt = position
        ex.move(PROXYING)
        self._dispatch(ex, fresh=False)

    # -- called by UpstreamProtocol ----------------------------------------------------------

    # HOT PATH: one clock read and the instance's success count.
    def on_upstream_status(self, ex: Exchange, status: int) -> bool:
        """A response head arrived: count the outcome. False: do not relay it, the request
        goes to another instance instead (the caller drops this connection, then calls
        ``retry_dropped``)."""
        now_s = _clock()
        index = ex.candidates[ex.attempt]
        view = self._backends.view
        metrics = self._backends.metrics
        if metrics is not None:
            metrics.on_upstream_status(index, status, now_s - ex.sent_s)
        if ex.trace is not None:
            ex.trace.try_status(status)
        if status < 500:
            view.on_success(index, now_s, ex.sent_s)
            return True
        view.on_failure(index, now_s, ex.sent_s)
        return not (status in RETRY_STATUSES and self._plan_retry(ex, now_s))

    def retry_dropped(self, ex: Exchange) -> None:
        if ex.state != ABORTED:
            self._resend_later(ex)

    def on_upstream_done(self, ex: Exchange, upstream: UpstreamProtocol) -> None:
        if ex.trace is not None:
            ex.trace.try_done()
        ex.conn.on_upstream_done(ex)

    def on_upstream_lost(self, ex: Exchange, upstream: UpstreamProtocol) -> None:
        """The connection closed before the response ended."""
        if ex.state == ABORTED:
            return
        if upstream.reused and upstream.response_bytes == 0 and ex.replay:
            # A stale keep-alive socket: the backend closed it as we wrote, not a failure of
            # the instance. Once more on a fresh connection to it (the body kept is resent).
            self._restore_body(ex)
            self._dispatch(ex, fresh=True)
            return
        self._failed(ex, self._backends.replies.bad_gateway)

    def on_upstream_error(self, ex: Exchange, upstream: UpstreamProtocol) -> None:
        """The backend sent something we cannot parse or relay."""
        if ex.state != ABORTED:
            self._failed(ex, self._backends.replies.bad_gateway)

    def on_upstream_timeout(self, ex: Exchange, upstream: UpstreamProtocol) -> None:
        if ex.state != ABORTED:
            self._failed(ex, self._backends.replies.upstream_timeout)

    def _failed(self, ex: Exchange, reply: ErrorReply) -> None:
        now_s = _clock()
        backends = self._backends
        index = ex.candidates[ex.attempt]
        backends.view.on_failure(index, now_s, ex.sent_s)
        # A try is counted once: one whose response head came (relayed: no retry can follow
        # it) was counted under its status by on_upstream_status, as a cut-off response is.
        if backends.metrics is not None and not ex.response_started:
            failure = TIMEOUT if reply is backends.replies.upstream_timeout else ERROR
            backends.metrics.on_upstream_failure(index, failure, now_s - ex.sent_s)
        if ex.trace is not None:
            ex.trace.try_failed(reply.spec.code)  # bad_gateway or upstream_timeout
        if self._plan_retry(ex, now_s):
            self._resend_later(ex)
        else:
            ex.conn.on_upstream_failed(ex, reply)
