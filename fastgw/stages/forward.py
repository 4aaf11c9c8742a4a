"""The terminal stage: send the exchange to a backend instance and relay the answer.

Target selection gives an ordered candidate tuple (the pick, then the failover order). A
connect failure moves to the next candidate for any method, because nothing was sent. A
reused keep-alive connection that dies before any response byte is retried once on a fresh
connection for idempotent methods only (the backend may have acted on anything else). After
``retry_attempts`` further tries the client gets 502 ``bad_gateway``; a backend that does not
answer within the route's timeout gives 504 ``upstream_timeout``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, Protocol

from fastgw.exchange import ABORTED, PROXYING
from fastgw.pipeline import PAUSE, RESPOND

if TYPE_CHECKING:
    from fastgw.exchange import Exchange
    from fastgw.http.pool import UpstreamPool
    from fastgw.http.upstream import UpstreamProtocol
    from fastgw.replies import ReplyTable

IDEMPOTENT_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


class Balancer(Protocol):
    def order(self, ex: Exchange) -> tuple[int, ...]: ...


class Forward:
    __slots__ = ("_balancer", "_pools", "_replies", "_retry_attempts", "_timeout_s")

    def __init__(
        self,
        balancer: Balancer,
        pools: Sequence[UpstreamPool],
        replies: ReplyTable,
        timeout_s: float,
        retry_attempts: int,
    ) -> None:
        self._balancer = balancer
        self._pools = tuple(pools)
        self._replies = replies
        self._timeout_s = timeout_s
        self._retry_attempts = retry_attempts

    # HOT PATH: with an idle pooled connection, one synchronous write and no Task.
    def on_request(self, ex: Exchange) -> int:
        candidates = self._balancer.order(ex)
        if not candidates:
            ex.reply = self._replies.no_healthy_upstream
            return RESPOND
        ex.candidates = candidates
        ex.attempt = 0
        ex.move(PROXYING)
        self._dispatch(ex, candidates[0], fresh=False)
        return PAUSE

    def _dispatch(self, ex: Exchange, index: int, fresh: bool) -> None:
        pool = self._pools[index]
        upstream = None if fresh else pool.acquire()
        if upstream is not None:
            upstream.start(ex, self, self._timeout_s)
            return

        def connected(upstream: UpstreamProtocol | None, error: BaseException | None) -> None:
            if ex.state == ABORTED:
                if upstream is not None:
                    pool.release(upstream)
                return
            if upstream is None:
                self._next_candidate(ex)
            else:
                upstream.start(ex, self, self._timeout_s)

        pool.connect(connected)

    def _next_candidate(self, ex: Exchange) -> None:
        ex.attempt += 1
        if ex.attempt <= self._retry_attempts and ex.attempt < len(ex.candidates):
            ex.move(PROXYING)
            self._dispatch(ex, ex.candidates[ex.attempt], fresh=False)
        else:
            ex.conn.on_upstream_failed(ex, self._replies.bad_gateway)

    # -- called by UpstreamProtocol ----------------------------------------------------------

    def on_upstream_done(self, ex: Exchange, upstream: UpstreamProtocol) -> None:
        ex.conn.on_upstream_done(ex)

    def on_upstream_lost(self, ex: Exchange, upstream: UpstreamProtocol) -> None:
        """The connection closed before the response ended."""
        if ex.state == ABORTED:
            return
        if (
            upstream.reused
            and upstream.response_bytes == 0
            and not ex.response_started
            and ex.method in IDEMPOTENT_METHODS
            and not ex.body_bytes  # a body already streamed cannot be replayed
        ):
            # A stale keep-alive socket: the backend closed it as we wrote. Once, fresh.
            self._dispatch(ex, ex.candidates[ex.attempt], fresh=True)
            return
        ex.conn.on_upstream_failed(ex, self._replies.bad_gateway)

    def on_upstream_error(self, ex: Exchange, upstream: UpstreamProtocol) -> None:
        """The backend sent something we cannot parse or relay."""
        if ex.state != ABORTED:
            ex.conn.on_upstream_failed(ex, self._replies.bad_gateway)

    def on_upstream_timeout(self, ex: Exchange, upstream: UpstreamProtocol) -> None:
        if ex.state != ABORTED:
            ex.conn.on_upstream_failed(ex, self._replies.upstream_timeout)
