"""The per-request trace decision (fastgw/obs/tracing.py), on a real plan's routes: which
requests are sampled, the trace headers their backend gets, and which chain they run."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from fastgw._speedups import scan_request_head
from fastgw.exchange import Exchange
from fastgw.limits import TRACEPARENT_PASS_MAX_BYTES, TRACESTATE_MAX_BYTES, TRACESTATE_MAX_MEMBERS
from fastgw.obs import tracing
from fastgw.obs.traceparent import TraceIds
from fastgw.obs.tracing import TimedStep
from fastgw.plan import Plan, RoutePlan
from tests.support.gateway import make_config

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_PARENT = "b7ad6b7169203331"
HEADERS = re.compile(
    rb"traceparent: 00-(?P<trace>[0-9a-f]{32})-(?P<parent>[0-9a-f]{16})-(?P<flags>[0-9a-f]{2})"
    rb"\r\n(?:tracestate: (?P<state>[^\r\n]*)\r\n)?\Z"
)


@pytest.fixture
def plan_for() -> Iterator[Any]:
    plans: list[Plan] = []

    def build(tracing: dict[str, Any], seed: int = 1, **gateway: Any) -> Plan:
        extra = {"gateway": {"observability": {"tracing": tracing}, **gateway}}
        config = make_config([9], extra)
        plan = Plan(config, [], workers=1)
        plan.tracing.ids = TraceIds(seed)
        plans.append(plan)
        return plan

    yield build
    for plan in plans:
        plan.limits.close()


def enabled(rate: float) -> dict[str, Any]:
    return {"enabled": True, "endpoint": "http://127.0.0.1:9/v1/traces", "sample_rate": rate}


def begin(
    plan: Plan, *fields: tuple[bytes, bytes], path: bytes = b"/echo/x", method: bytes = b"GET"
) -> Exchange:
    route = plan.router.match(method, path)
    assert route is not None
    ex = Exchange(None, 0.0)  # type: ignore[arg-type]
    ex.method = method
    ex.path = path
    flat = [part for field in fields for part in field]
    ex.head = scan_request_head([b"Host", b"gw", *flat], frozenset())
    ex.route = route
    assert route.begin_trace is not None
    route.begin_trace(ex)
    return ex


def sent(ex: Exchange) -> dict[str, str | None]:
    match = HEADERS.match(ex.trace_headers)
    assert match, ex.trace_headers
    return {k: v.decode() if v is not None else None for k, v in match.groupdict().items()}


def parent(flags: str = "01") -> tuple[bytes, bytes]:
    return (b"traceparent", f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-{flags}".encode())


def test_rate_zero_samples_nothing_but_every_request_gets_a_fresh_traceparent(plan_for):
    plan = plan_for(enabled(0.0))
    seen = set()
    for _ in range(2000):
        ex = begin(plan)
        assert ex.trace is None
        headers = sent(ex)
        assert headers["flags"] == "00" and headers["state"] is None
        assert int(headers["trace"], 16) and int(headers["parent"], 16)
        seen.add(headers["trace"])
    assert len(seen) == 2000


def test_rate_one_samples_everything_onto_the_traced_twin(plan_for):
    plan = plan_for(enabled(1.0))
    for _ in range(200):
        ex = begin(plan)
        assert ex.trace is not None
        headers = sent(ex)
        assert headers["flags"] == "01"
        assert int(headers["trace"], 16) == ex.trace.trace_id
        assert ex.trace.parent_id == 0  # a new trace: the gateway's span is the root
    route = ex.route
    assert isinstance(route, RoutePlan) and route.begin_trace is None  # the twin
    plain = plan.router.match(b"GET", b"/echo/x")
    assert plain is not None and len(route.steps) == len(plain.steps)


def test_private_route_twin_times_auth_and_rate_limit_only(plan_for):
    plan = plan_for(enabled(1.0))
    ex = begin(plan, path=b"/echo/private/x")
    assert ex.route is not None
    timed = [getattr(step, "__self__", None) for step in ex.route.steps]
    names = [owner.name for owner in timed if isinstance(owner, TimedStep)]
    assert names == ["auth", "ratelimit"]


def test_sampling_follows_the_trace_id_ratio_rule(plan_for):
    plan = plan_for(enabled(0.25), seed=3)
    bound = round(0.25 * 2**64)
    sampled = 0
    for _ in range(8000):
        ex = begin(plan)
        trace_id = int(sent(ex)["trace"], 16)
        assert (ex.trace is not None) == ((trace_id & (2**64 - 1)) < bound)
        sampled += ex.trace is not None
    assert 2000 - 5 * 39 < sampled < 2000 + 5 * 39  # binomial(8000, 0.25): sigma ~ 38.7


def test_a_sampled_parent_is_followed_even_at_rate_zero(plan_for):
    plan = plan_for(enabled(0.0))
    ex = begin(plan, parent("01"), (b"tracestate", b"rojo=1"))
    assert ex.trace is not None
    assert ex.trace.trace_id == int(CLIENT_TRACE, 16)
    assert ex.trace.parent_id == int(CLIENT_PARENT, 16)
    headers = sent(ex)
    assert headers["trace"] == CLIENT_TRACE and headers["parent"] != CLIENT_PARENT
    assert headers["flags"] == "01" and headers["state"] == "rojo=1"


def test_an_unsampled_parent_is_followed_even_at_rate_one(plan_for):
    plan = plan_for(enabled(1.0))
    ex = begin(plan, parent("00"), (b"tracestate", b"rojo=1"), (b"tracestate", b"congo=2"))
    assert ex.trace is None
    headers = sent(ex)
    assert headers["trace"] == CLIENT_TRACE and headers["parent"] != CLIENT_PARENT
    assert headers["flags"] == "00" and headers["state"] == "rojo=1,congo=2"


def test_unknown_flags_are_not_passed_on(plan_for):
    plan = plan_for(enabled(0.0))
    ex = begin(plan, (b"traceparent", f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-fe".encode()))
    assert ex.trace is None and sent(ex)["flags"] == "00"


def test_a_later_version_continues_as_version_00(plan_for):
    plan = plan_for(enabled(0.0))
    value = f"cc-{CLIENT_TRACE}-{CLIENT_PARENT}-00-future".encode()
    headers = sent(begin(plan, (b"traceparent", value)))
    assert headers["trace"] == CLIENT_TRACE and headers["flags"] == "00"


@pytest.mark.parametrize(
    "fields",
    [
        [(b"traceparent", f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01.".encode())],
        [(b"traceparent", f"00-{CLIENT_TRACE.upper()}-{CLIENT_PARENT}-01".encode())],
        [parent("01"), parent("01")],  # two traceparents: ambiguous
    ],
)
def test_an_invalid_traceparent_restarts_the_trace_and_drops_tracestate(plan_for, fields):
    plan = plan_for(enabled(0.0))
    headers = sent(begin(plan, *fields, (b"tracestate", b"rojo=1")))
    assert headers["trace"] != CLIENT_TRACE and headers["state"] is None


def test_tracing_off_passes_a_valid_client_trace_through_unchanged(plan_for):
    plan = plan_for({"enabled": False, "sample_rate": 1.0})
    value = f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"
    ex = begin(plan, (b"traceparent", b" " + value.encode()), (b"tracestate", b"rojo=1"))
    assert ex.trace is None
    assert ex.trace_headers == f"traceparent: {value}\r\ntracestate: rojo=1\r\n".encode()


def test_tracing_off_still_starts_a_trace_for_the_backend_never_sampled(plan_for):
    plan = plan_for({"enabled": False, "sample_rate": 1.0})
    for _ in range(100):
        ex = begin(plan)
        assert ex.trace is None and sent(ex)["flags"] == "00"


def test_routes_that_do_not_forward_are_not_traced(plan_for):
    plan = plan_for(enabled(1.0))
    for path in (b"/health", b"/ready", b"/health/detailed"):
        route = plan.router.match(b"GET", path)
        assert route is not None and route.begin_trace is None


# -- a client's sampled flag: honoured within a budget -----------------------------------------


class Clock:
    """The tracing module's monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_sampled_parents_are_recorded_at_most_at_the_workers_budget(plan_for, monkeypatch):
    monkeypatch.setattr(tracing, "TRACE_PARENT_SAMPLED_PER_S", 5.0)
    clock = Clock()
    monkeypatch.setattr(tracing, "_clock", clock)
    plan = plan_for(enabled(0.0))
    value = f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01"

    def recorded(count: int) -> list[Exchange]:
        exchanges = [begin(plan, parent("01"), (b"tracestate", b"rojo=1")) for _ in range(count)]
        return [ex for ex in exchanges if ex.trace is not None]

    assert len(recorded(50)) == 5  # the bucket holds one second's worth
    passed = begin(plan, parent("01"), (b"tracestate", b"rojo=1"))
    assert passed.trace is None  # past the budget: the client's trace passes through as it came
    assert passed.trace_headers == f"traceparent: {value}\r\ntracestate: rojo=1\r\n".encode()
    assert plan.tracing.parent_refused == 46
    clock.now_s += 0.5  # refilled at 5 a second: two more (and a half)
    assert len(recorded(10)) == 2
    clock.now_s += 60.0  # never more than the bucket holds
    assert len(recorded(50)) == 5
    # New traces are decided by sample_rate alone, budget or not.
    assert all(begin(plan).trace is None for _ in range(20))


def test_the_budget_does_not_touch_unsampled_or_ratio_sampled_requests(plan_for, monkeypatch):
    monkeypatch.setattr(tracing, "TRACE_PARENT_SAMPLED_PER_S", 1.0)
    plan = plan_for(enabled(1.0))
    assert all(begin(plan).trace is not None for _ in range(20))  # new traces: sample_rate
    assert all(begin(plan, parent("00")).trace is None for _ in range(20))
    assert plan.tracing.parent_refused == 0


# -- W3C: versions and tracestate bounds -------------------------------------------------------


@pytest.mark.parametrize("flags", ["00", "01"])
def test_a_re_parented_later_version_is_sent_as_version_00(plan_for, flags):
    plan = plan_for(enabled(0.0))
    value = f"cc-{CLIENT_TRACE}-{CLIENT_PARENT}-{flags}-future-fields".encode()
    ex = begin(plan, (b"traceparent", value))
    headers = sent(ex)  # the pattern requires version 00
    assert headers["trace"] == CLIENT_TRACE and headers["parent"] != CLIENT_PARENT
    assert headers["flags"] == flags and b"future" not in ex.trace_headers


def test_tracing_off_passes_a_later_version_on_as_it_came_within_the_bound(plan_for):
    plan = plan_for({"enabled": False})
    value = f"cc-{CLIENT_TRACE}-{CLIENT_PARENT}-01-future-fields"
    ex = begin(plan, (b"traceparent", value.encode()))
    assert ex.trace_headers == f"traceparent: {value}\r\n".encode()  # W3C: pass-through


def test_tracing_off_re_parents_a_traceparent_too_long_to_pass_on(plan_for):
    plan = plan_for({"enabled": False})
    value = f"cc-{CLIENT_TRACE}-{CLIENT_PARENT}-01-" + "f" * TRACEPARENT_PASS_MAX_BYTES
    ex = begin(plan, (b"traceparent", value.encode()), (b"tracestate", b"rojo=1"))
    headers = sent(ex)
    assert headers["trace"] == CLIENT_TRACE and headers["parent"] != CLIENT_PARENT
    assert headers["flags"] == "01" and headers["state"] == "rojo=1"
    assert len(ex.trace_headers) < 200


def members(count: int, size: int = 8) -> bytes:
    return b",".join(b"k%02d=%s" % (i, b"v" * (size - 4)) for i in range(count))


@pytest.mark.parametrize("tracing_config", [enabled(0.0), enabled(1.0), {"enabled": False}])
def test_an_oversized_tracestate_is_truncated_by_the_w3c_rule(plan_for, tracing_config):
    plan = plan_for(tracing_config)
    for flags in ("00", "01"):
        ex = begin(plan, parent(flags), (b"tracestate", members(40)))
        headers = sent(ex)
        assert headers["trace"] == CLIENT_TRACE and headers["parent"] != CLIENT_PARENT
        assert headers["state"] == members(32).decode()  # the first 32 entries, whole
    # Too long: entries over 128 bytes go first (from the end), then entries from the end.
    long = b"big=" + b"x" * 200
    state = b",".join([b"a=1", long, b"b=2", long.replace(b"big", b"bag"), b"c=" + b"y" * 120,
                       b"d=" + b"z" * 120])  # fmt: skip
    assert len(state) > TRACESTATE_MAX_BYTES
    ex = begin(plan, parent("00"), (b"tracestate", state))
    kept = [b"a=1", long, b"b=2", b"c=" + b"y" * 120, b"d=" + b"z" * 120]
    assert sent(ex)["state"] == b",".join(kept).decode()


@pytest.mark.parametrize("tracing_config", [enabled(0.0), {"enabled": False}])
def test_a_tracestate_within_the_bounds_is_forwarded_unchanged(plan_for, tracing_config):
    plan = plan_for(tracing_config)
    state = members(TRACESTATE_MAX_MEMBERS, size=15)  # 32 entries, 511 bytes
    assert len(state) <= TRACESTATE_MAX_BYTES
    assert sent(begin(plan, parent("00"), (b"tracestate", state)))["state"] == state.decode()


# -- CORS preflights -------------------------------------------------------------------------


CORS = {"security": {"cors": {"enabled": True, "allow_origins": ["https://app.example"]}}}
ORIGIN = (b"Origin", b"https://app.example")
ASKS = (b"Access-Control-Request-Method", b"POST")


@pytest.mark.parametrize("fields", [[], [parent("01")]])
def test_a_cors_preflight_is_never_sampled(plan_for, fields):
    plan = plan_for(enabled(1.0), **CORS)
    for path in (b"/echo/x", b"/echo/private/x"):
        assert begin(plan, *fields, ORIGIN, ASKS, path=path, method=b"OPTIONS").trace is None
        # Any other request on the same routes still is, OPTIONS without a preflight's fields too.
        assert begin(plan, *fields, ORIGIN, path=path, method=b"OPTIONS").trace is not None
        assert begin(plan, *fields, ORIGIN, ASKS, path=path).trace is not None
    assert plan.tracing.parent_refused == 0  # a preflight takes nothing from the budget


def test_without_cors_an_options_request_with_those_fields_is_forwarded_and_sampled(plan_for):
    plan = plan_for(enabled(1.0))
    assert begin(plan, ORIGIN, ASKS, method=b"OPTIONS").trace is not None
