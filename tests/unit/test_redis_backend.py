"""The Redis backend's answers on the paths a running Redis does not show: no connection at all
(the client fails inside ``send``: decided at once, no pause), and replies it cannot read (the
failure policy decides; the exchange is answered exactly once)."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import pytest

from bench.micro_chain import CONFIG
from fastgw.auth.context import CustomerContext
from fastgw.config import parse_config
from fastgw.exchange import ABORTED, IN_CHAIN, PAUSED, Exchange
from fastgw.pipeline import CONTINUE, RESPOND
from fastgw.plan import Plan
from fastgw.ratelimit.redis_backend import _Call


class Conn:
    """Stands in for the client connection: counts the resumes it is asked for."""

    def __init__(self) -> None:
        self.resumed: list[Exchange] = []

    def run_exchange(self, ex: Exchange) -> None:
        self.resumed.append(ex)


def plan_for(on_failure: str, tmp_path: Path) -> Plan:
    config = copy.deepcopy(CONFIG)
    config["gateway"]["rate_limiting"] = {
        "backend": "redis",
        "redis": {"address": f"unix://{tmp_path}/nobody.sock"},  # nothing listens there
        "on_failure": on_failure,
    }
    return Plan(parse_config(config, base_dir=tmp_path, env={}), [], workers=1)


def exchange(conn: Conn) -> Exchange:
    ex = Exchange(conn, 0.0)  # type: ignore[arg-type]
    ex.customer = CustomerContext(b"acme", b"pro", frozenset())
    ex.state = IN_CHAIN
    return ex


@pytest.mark.parametrize(
    ("on_failure", "verdict", "headers"),
    [("local", CONTINUE, True), ("open", CONTINUE, False), ("closed", RESPOND, False)],
)
def test_without_a_connection_the_policy_decides_at_once(
    tmp_path: Path, on_failure: str, verdict: int, headers: bool
) -> None:
    async def run() -> None:
        plan = plan_for(on_failure, tmp_path)
        try:
            conn = Conn()
            ex = exchange(conn)
            assert plan.limits.stage("Account").on_request(ex) == verdict  # no PAUSE
            assert conn.resumed == []  # decided in the chain, nothing to resume
            assert bool(ex.response_headers) is headers
            if verdict == RESPOND:
                assert ex.reply is plan.replies.limits_unavailable
        finally:
            await plan.limits.aclose()

    asyncio.run(run())


@pytest.mark.parametrize(
    "reply",
    [[b"x"] * 8, [0] * 7, "OK", None, [0, 0, 0, 1, None, 0, 0, 0]],
    ids=["strings", "short", "status", "nil", "a-nil-inside"],
)
def test_an_unreadable_reply_falls_back_and_answers_once(tmp_path: Path, reply: Any) -> None:
    async def run() -> None:
        plan = plan_for("closed", tmp_path)
        try:
            redis = plan.limits.redis
            assert redis is not None
            conn = Conn()
            ex = exchange(conn)
            ex.state = PAUSED
            policy = plan.limits.policy
            assert ex.customer is not None
            customer = policy.customer_limits(ex.customer)
            call = _Call(redis, ex, customer, policy.route_limits("Account"))
            call.pending, call.resumes = 1, True
            call.on_customer(reply)
            assert conn.resumed == [ex]  # resumed exactly once ...
            assert ex.reply is plan.replies.limits_unavailable  # ... with the policy's answer
        finally:
            await plan.limits.aclose()

    asyncio.run(run())


def _paused_call(plan: Plan, conn: Conn) -> tuple[Exchange, _Call]:
    redis = plan.limits.redis
    assert redis is not None
    ex = exchange(conn)
    ex.state = PAUSED
    policy = plan.limits.policy
    assert ex.customer is not None
    call = _Call(redis, ex, policy.customer_limits(ex.customer), policy.route_limits("Account"))
    call.pending, call.resumes = 2, True  # a Cluster: customer.lua and global.lua
    return ex, call


REFUSED = [1, 1, 2000, 1, 20, 0, 2000, 1]  # customer.lua's reply: level 1 refuses, 2 s
ALLOWED = [0, 0, 0, 4, 100, 99, 10, 1]  # global.lua's reply: allowed


@pytest.mark.parametrize("on_failure", ["local", "open", "closed"])
def test_a_refusal_stands_when_the_other_script_fails(tmp_path: Path, on_failure: str) -> None:
    """Cluster: one script answered 429, the other timed out; the 429 is Redis's, it stands."""

    async def run() -> None:
        plan = plan_for(on_failure, tmp_path)
        try:
            conn = Conn()
            ex, call = _paused_call(plan, conn)
            call.on_customer(REFUSED)
            call.on_global(TimeoutError("no reply in time"))
            assert conn.resumed == [ex]
            assert ex.reply is plan.replies.rate_limited
            assert b"Retry-After: 2\r\n" in ex.response_headers
        finally:
            await plan.limits.aclose()

    asyncio.run(run())


def test_an_allowance_with_the_other_script_failing_goes_to_the_policy(tmp_path: Path) -> None:
    async def run() -> None:
        plan = plan_for("closed", tmp_path)
        try:
            conn = Conn()
            ex, call = _paused_call(plan, conn)
            call.on_global(ALLOWED)
            call.on_customer(ConnectionError("lost"))
            assert conn.resumed == [ex] and ex.reply is plan.replies.limits_unavailable
        finally:
            await plan.limits.aclose()

    asyncio.run(run())


def test_an_abandoned_request_is_neither_decided_nor_resumed(tmp_path: Path) -> None:
    async def run() -> None:
        plan = plan_for("local", tmp_path)
        try:
            conn = Conn()
            ex, call = _paused_call(plan, conn)
            ex.state = ABORTED  # the client left while Redis was answering
            call.on_customer(REFUSED)
            call.on_global(ALLOWED)
            assert conn.resumed == [] and ex.reply is None
            assert sum(plan.limits.limiter.counts.by_masks) == 0  # nothing counted or charged
        finally:
            await plan.limits.aclose()

    asyncio.run(run())


class BrokenConn(Conn):
    """A connection whose chain fails when resumed; its transport must be aborted."""

    def __init__(self) -> None:
        super().__init__()
        self.transport = AbortRecorder()

    def run_exchange(self, ex: Exchange) -> None:
        raise RuntimeError("a later stage failed")


class AbortRecorder:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


def test_a_failure_after_the_reply_closes_the_connection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def run() -> None:
        plan = plan_for("local", tmp_path)
        try:
            conn = BrokenConn()
            _, call = _paused_call(plan, conn)
            call.on_customer([0, 0, 0, 1, 20, 19, 50, 1])  # customer.lua: allowed
            call.on_global(ALLOWED)  # resume -> the chain raises
            assert conn.transport.aborted  # never left PAUSED without a deadline
        finally:
            await plan.limits.aclose()

    asyncio.run(run())
    assert "could not answer a request after Redis replied" in caplog.text
