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
from fastgw.exchange import IN_CHAIN, PAUSED, Exchange
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
