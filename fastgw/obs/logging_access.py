"""The access log (``gateway.observability.logging.access_log: true``): one line per finished
exchange, in the configured format, on the configured output, whatever the level.

What it owns
    ``AccessLog``: called by ``WorkerContext.on_exchange_done`` for every exchange that ends
    (answered, or cut off), it builds the line on the event loop and queues it; a writer
    thread of the worker writes what is queued every ``ACCESS_LOG_FLUSH_INTERVAL_S``, one
    ``write(2)`` per batch (``LogSink.write_lines``).

Why this shape (measured: docs/observability.md)
    * The loop never waits on the output: a slow disk or a full pipe stalls the writer thread
      only. Past ``ACCESS_LOG_MAX_PENDING_LINES`` queued lines, new ones are dropped and
      counted, and the thread logs a warning with the count: memory stays bounded.
    * The line is built on the loop thread (a dict and one ``orjson.dumps``, a few
      microseconds) rather than in the thread: the work is the same under the GIL, but done
      per request it is spread evenly, where a thread formatting a whole batch would hold the
      GIL for a millisecond at a time and show in the latency tail. No ``LogRecord`` is made:
      the standard ``logging`` path (record, ``QueueHandler`` copy, formatter) costs several
      times more per line.
    * The thread starts in ``GatewayServer.start``, in the worker after fork (the master never
      has a thread), and ``close()`` writes the last lines and joins it (bounded); a worker
      that exits at once (SIGQUIT) loses what is queued.
    * Off (the default), nothing of this exists: the hook is one ``is not None`` test.

Fields (JSON): ``ts``, ``level`` (info), ``logger`` (fastgw.access), ``msg`` (request),
``pid``, ``worker``, ``request_id``, ``client`` (the peer, or the address a trusted proxy
named), ``method``, ``path`` (never the query string: a ``query:<name>`` token source puts
the token there), ``endpoint`` (route name; null when no route matched), ``status`` (0 when the
client left before an answer), ``customer_id`` (null when unauthenticated), ``duration_ms``
(from the first byte of the request, ``time.monotonic``, to the µs), ``upstream`` (the
instance ``host:port`` of the last try; null when not proxied), ``upstream_ms`` (its try: sent
to response end), ``retries``, ``request_bytes`` (body) and ``aborted``. Client-controlled
text (path, request id) goes through the redactor when it looks like it could hold a secret.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Final

from fastgw.exchange import ABORTED
from fastgw.limits import (
    ACCESS_LOG_FLUSH_INTERVAL_S,
    ACCESS_LOG_MAX_PENDING_LINES,
    ACCESS_LOG_STOP_TIMEOUT_S,
)
from fastgw.obs.logging import json_line, text_line
from fastgw.obs.logging_redact import Redactor, redactor_for
from fastgw.obs.logging_sink import LogSink

if TYPE_CHECKING:
    from collections.abc import Sequence

    from fastgw.config import Config
    from fastgw.exchange import Exchange

__all__ = ["AccessLog"]

log = logging.getLogger("fastgw.access")

LOGGER: Final = "fastgw.access"
_clock = time.monotonic  # the clock of ex.sent_s (stages/forward.py) and of the loop's time()


class AccessLog:
    """See the module docstring. ``labels``: the instances' ``host:port``, by index."""

    __slots__ = (
        "_json",
        "_labels",
        "_pending",
        "_pid",
        "_redactor",
        "_reported",
        "_second",
        "_second_text",
        "_sink",
        "_stop",
        "_thread",
        "_worker",
        "dropped",
    )

    def __init__(
        self,
        sink: LogSink,
        *,
        labels: Sequence[str],
        json: bool = True,
        redactor: Redactor | None = None,
        worker: int | None = None,
    ) -> None:
        self._sink = sink
        self._labels = tuple(labels)
        self._json = json
        self._redactor = redactor or Redactor()
        self._worker = worker
        self._pid = os.getpid()
        self._pending: deque[bytes] = deque()
        self._second = -1  # the whole second _second_text spells (ts prefix cache)
        self._second_text = ""
        self.dropped = 0
        self._reported = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(
        cls, config: Config, labels: Sequence[str], worker: int | None = None
    ) -> AccessLog | None:
        """The access log ``config`` asks for (its own handle on the output), or None."""
        settings = config.gateway.observability.logging
        if not settings.access_log:
            return None
        return cls(
            LogSink(settings.output),
            labels=labels,
            json=settings.format == "json",
            redactor=redactor_for(config),
            worker=worker,
        )

    def start(self) -> None:
        """Start the writer thread (in the process that serves: after fork)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="fastgw-access-log", daemon=True
            )
            self._thread.start()

    # HOT PATH: one line built, one deque append; never a wait on the output.
    def __call__(self, ex: Exchange) -> None:
        pending = self._pending
        if len(pending) >= ACCESS_LOG_MAX_PENDING_LINES:
            self.dropped += 1
            return
        now_s = _clock()
        route = ex.route
        customer = ex.customer
        path = ex.path.decode("utf-8", "replace")
        request_id = ex.request_id.decode("latin-1")
        redactor = self._redactor
        if redactor.suspect(path):
            path = redactor.scrub(path)
        if redactor.suspect(request_id):
            request_id = redactor.scrub(request_id)
        upstream = None
        upstream_ms = None
        if ex.sent_s and ex.candidates:
            upstream = self._labels[ex.candidates[ex.attempt]]
            upstream_ms = int((now_s - ex.sent_s) * 1e6) / 1000
        fields = {
            "ts": self._timestamp(),
            "level": "info",
            "logger": LOGGER,
            "msg": "request",
            "pid": self._pid,
            "worker": self._worker,
            "request_id": request_id,
            "client": ex.client.decode("latin-1"),
            "method": ex.method.decode("latin-1"),
            "path": path,
            "endpoint": None if route is None else route.endpoint,
            "status": ex.status,
            "customer_id": None if customer is None else customer.customer_id.decode("latin-1"),
            "duration_ms": int((now_s - ex.started_s) * 1e6) / 1000,  # round() costs 0.5 µs
            "upstream": upstream,
            "upstream_ms": upstream_ms,
            "retries": ex.retries,
            "request_bytes": ex.body_bytes,
            "aborted": ex.state == ABORTED,
        }
        if self._json:
            pending.append(json_line(fields))
        else:
            pending.append(self._text(fields))

    def _timestamp(self) -> str:
        """RFC 3339 UTC with milliseconds; the part up to the second is made once a second."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int((now - second) * 1000):03d}Z"

    def _text(self, fields: dict[str, object]) -> bytes:
        extra = {k: v for k, v in fields.items() if k not in _TEXT_HEAD and v is not None}
        line = text_line(
            str(fields["ts"]),
            pid=self._pid,
            worker=self._worker,
            level="info",
            logger=LOGGER,
            msg=f"{fields['method']} {fields['path']} {fields['status']}",
            extra=extra,
        )
        return line.encode("utf-8", "replace") + b"\n"

    # -- the writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        stop = self._stop
        while True:
            stopping = stop.wait(ACCESS_LOG_FLUSH_INTERVAL_S)
            self.flush()
            if stopping:  # the last lines are out: the output is ours to close
                self._sink.close()
                return

    def flush(self) -> None:
        """Write everything queued (the writer thread; tests and ``close`` too)."""
        pending = self._pending
        lines: list[bytes] = []
        while pending:
            lines.append(pending.popleft())
        if lines:
            try:
                self._sink.write_lines(lines)
            except OSError as error:
                log.warning("access log: %d lines lost: %s", len(lines), error)
        dropped = self.dropped
        if dropped != self._reported:
            log.warning(
                "access log: %d lines dropped: the output (%s) is slower than the traffic",
                dropped - self._reported,
                self._sink.target,
            )
            self._reported = dropped

    def close(self) -> None:
        """Have the last lines written and the output closed: by the writer thread, waited for
        at most ``ACCESS_LOG_STOP_TIMEOUT_S`` (a thread stuck on a stalled output finishes on
        its own, later), or here when it never started. Idempotent."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(ACCESS_LOG_STOP_TIMEOUT_S)
        else:
            self.flush()
            self._sink.close()


# Fields the text layout shows in its head (``ts [pid wN] INFO fastgw.access: METHOD path
# status``) rather than as ``key=value``.
_TEXT_HEAD: Final = frozenset(
    {"ts", "level", "logger", "msg", "pid", "worker", "method", "path", "status"}
)
