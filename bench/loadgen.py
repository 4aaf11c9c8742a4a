"""The one result type of the load generators (wrk, closed loop; :mod:`bench.openloop`, open loop).

Both fill the same fields so that a report, a verdict or a sweep never has to know which
generator ran. The optional fields exist only for the open-loop generator: what it was asked
to offer (``offered_rps``), what it actually wrote (``sent``) and what was still waiting for a
connection when the schedule ended (``unsent``; those are in the latency histogram too, see
:mod:`bench.openloop`), how far behind its schedule it was then (``behind_s``), the status
codes it saw, its shape (``processes``, the ``connections`` it really held), and how busy its
connections were (``hold_ms``, ``busy_share``: what :func:`bench.sweep.judge` needs to tell a
generator out of connections or CPU from a target out of capacity). wrk leaves them ``None``.

Error kinds are wrk's for both: ``connect``, ``read``, ``write``, ``timeout`` (socket errors)
and ``status`` (responses with status >= 400; those are also counted in ``requests``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

ERROR_KINDS: Final = ("connect", "read", "write", "timeout", "status")
LATENCY_KEYS: Final = ("mean", "stdev", "max", "p50", "p75", "p90", "p95", "p99", "p999")


@dataclass(frozen=True)
class LoadResult:
    duration_s: float
    requests: int  # complete responses, whatever their status
    bytes: int  # bytes read
    errors: dict[str, int]  # connect, read, write, timeout (socket errors); status (>= 400)
    latency_ms: dict[str, float]  # mean, stdev, max, p50 ... p999
    cpu_s: float  # the generator's own user + system CPU
    output: str  # the generator's human-readable summary
    offered_rps: float | None = None  # open loop: the configured rate
    sent: int | None = None  # open loop: requests written to a socket
    status_codes: dict[int, int] | None = None  # open loop: responses per status code
    generator: str = "wrk"
    behind_s: float | None = None  # open loop: schedule left unsent at the end, in seconds
    unsent: int | None = None  # open loop: requests still waiting for a connection at the end
    processes: int | None = None  # open loop: worker processes
    connections: int | None = None  # open loop: connections held, all processes together
    # open loop: mean time a request held its connection (from taking it, connecting first if
    # need be, to the response or the failure), in ms; and the connections' busy time over
    # connections x duration (1.0: every connection busy all the time)
    hold_ms: float | None = None
    busy_share: float | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def error_total(self) -> int:
        return sum(self.errors.values())

    @property
    def error_share(self) -> float | None:
        return error_share(self.error_total, self.requests, self.errors)

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "generator": self.generator, "duration_s": round(self.duration_s, 3),
            "requests": self.requests, "bytes": self.bytes, "rps": round(self.rps, 1),
            "errors": self.errors, "error_total": self.error_total,
            "latency_ms": {k: round(v, 3) for k, v in self.latency_ms.items()},
            # "wrk_cpu_s" predates the open-loop generator; reports written before it read it.
            "wrk_cpu_s": round(self.cpu_s, 3), "loadgen_cpu_s": round(self.cpu_s, 3)}
        if self.offered_rps is not None:
            out["offered_rps"] = round(self.offered_rps, 1)
        if self.sent is not None:
            out["sent"] = self.sent
        if self.status_codes is not None:
            out["status_codes"] = {str(k): v for k, v in sorted(self.status_codes.items())}
        if self.unsent is not None:
            out["unsent"] = self.unsent
        if self.behind_s is not None:
            out["behind_s"] = round(self.behind_s, 3)
        for key in ("processes", "connections"):
            if (value := getattr(self, key)) is not None:
                out[key] = value
        if self.hold_ms is not None:
            out["hold_ms"] = round(self.hold_ms, 3)
        if self.busy_share is not None:
            out["busy_share"] = round(self.busy_share, 3)
        return out


def error_share(errors: int, requests: int, errors_by_kind: dict[str, int]) -> float | None:
    """Failed requests / attempted ones. ``requests`` counts every complete response, error
    statuses included; socket errors (connect, read, write, timeout) come on top."""
    attempted = requests + sum(n for kind, n in errors_by_kind.items() if kind != "status")
    return round(errors / attempted, 6) if attempted else None
