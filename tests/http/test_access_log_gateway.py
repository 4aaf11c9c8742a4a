"""The access log and error lines through a real in-process gateway: one line per request with
the right fields, upstream failures logged once (throttled) with context, and no token ever
written, whatever the source, the token's state or the level."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest

from fastgw.listen import free_port
from fastgw.obs import logging_errors
from fastgw.obs.logging import configure_logging, unconfigure_logging
from fastgw.obs.logging_errors import ThrottledLog
from tests.support.client import RawClient, Response, get
from tests.support.gateway import make_config, running, uvloop_test

SECRET = "access-log-test-secret-access-log-test!!"


def logging_extra(path: Path, **settings: Any) -> dict[str, Any]:
    return {
        "gateway": {
            "authentication": {"jwt": {"algorithm": "HS256", "hs_secret": SECRET}},
            "observability": {
                "logging": {"access_log": True, "output": str(path), **settings},
            },
        },
    }


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def access_lines(path: Path) -> list[dict[str, Any]]:
    return [line for line in lines(path) if line["logger"] == "fastgw.access"]


def error_request_id(response: Response) -> str:
    body = response.json()
    assert isinstance(body, dict)
    return str(body["error"]["request_id"])


@uvloop_test
async def test_one_line_per_request_with_its_fields(tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    async with running(extra=logging_extra(log_path)) as gw:
        client = await RawClient.connect(gw.port)
        dev = {"Authorization": "Bearer dev_customer_123"}
        answers = [
            await client.request(
                get("/echo/a?access_token=in-the-query", headers={"X-Request-ID": "req-1"})
            ),
            await client.request(get("/echo/private/x", headers=dev)),
            await client.request(get("/echo/private/x")),
            await client.request(get("/nowhere")),
            await client.request(get("/health")),
        ]
        await client.close()
        backend = f"127.0.0.1:{gw.backends[0].port}"
    assert [a.status for a in answers] == [200, 200, 401, 404, 200]
    echo, private, unauthorized, no_route, health = access_lines(log_path)
    assert echo["request_id"] == "req-1"  # the client's, kept
    assert unauthorized["request_id"] == error_request_id(answers[2])
    assert no_route["request_id"] == error_request_id(answers[3])
    assert echo["path"] == "/echo/a"  # the query string (a token source) is never logged
    assert echo["method"] == "GET" and echo["client"] == "127.0.0.1"
    assert echo["endpoint"] == "Echo" and echo["status"] == 200 and echo["customer_id"] is None
    assert echo["upstream"] == backend and 0 < echo["upstream_ms"] <= echo["duration_ms"]
    assert echo["retries"] == 0 and echo["aborted"] is False and echo["worker"] == 0
    assert private["customer_id"] == "123" and private["endpoint"] == "Private"
    assert unauthorized["status"] == 401 and unauthorized["customer_id"] is None
    assert unauthorized["upstream"] is None and unauthorized["upstream_ms"] is None
    assert no_route["status"] == 404 and no_route["endpoint"] is None
    assert health["endpoint"] == "health"
    assert b"in-the-query" not in log_path.read_bytes()


@uvloop_test
async def test_text_layout_and_off_by_default(tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    async with running(extra=logging_extra(log_path, format="text")) as gw:
        client = await RawClient.connect(gw.port)
        await client.request(get("/echo/t"))
        await client.close()
    (line,) = log_path.read_text().splitlines()
    assert " INFO fastgw.access: GET /echo/t 200 " in line and "endpoint=Echo" in line
    quiet = tmp_path / "quiet.log"
    extra = logging_extra(quiet)
    extra["gateway"]["observability"]["logging"]["access_log"] = False
    async with running(extra=extra) as gw:
        assert gw.gateway.context.access_log is None
        client = await RawClient.connect(gw.port)
        await client.request(get("/echo/t"))
        await client.close()
    assert not quiet.exists()  # off: the output is not even opened


@uvloop_test
async def test_an_upstream_failure_is_logged_once_with_context(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    throttle = ThrottledLog(logging.getLogger("fastgw.upstream"), 60.0)
    monkeypatch.setattr(logging_errors, "_upstream_errors", throttle)
    dead = free_port()
    extra = logging_extra(tmp_path / "access.log")
    # No retry (one try per request) and no breaker (every request reaches the dead port).
    extra["gateway"]["routing"] = {"retry_attempts": 0, "circuit_breaker": {"enabled": False}}
    with caplog.at_level(logging.WARNING, logger="fastgw.upstream"):
        async with running(backends=0, dead_ports=[dead], extra=extra) as gw:
            client = await RawClient.connect(gw.port)
            answers = [await client.request(get(f"/echo/{i}")) for i in range(3)]
            await client.close()
    assert [a.status for a in answers] == [502, 502, 502]
    (line,) = [r for r in caplog.records if r.name == "fastgw.upstream"]
    assert line.getMessage() == f"upstream 127.0.0.1:{dead} failed: 502 bad_gateway"
    assert line.request_id == error_request_id(answers[0]).encode()  # type: ignore[attr-defined]
    assert line.upstream == f"127.0.0.1:{dead}"  # type: ignore[attr-defined]
    assert line.endpoint == "Echo" and line.code == "bad_gateway"  # type: ignore[attr-defined]
    assert throttle.suppressed == 2  # the next line will say so


# -- no token is ever written --------------------------------------------------------------


def hs256(claims: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def tokens() -> dict[str, str]:
    now = int(time.time())
    return {
        "valid": hs256({"customer_id": "acme", "exp": now + 600}),
        "expired": hs256({"customer_id": "acme", "exp": now - 600}),
        "bad_signature": hs256({"customer_id": "acme", "exp": now + 600}, "x" * 40),
        "no_customer": hs256({"exp": now + 600}),
        "dev": "dev_customer_4242",
        "dev_bad_id": "dev_customer_no!pe",
        "garbage": "g4rbage~token+value/zz",
    }


@pytest.fixture
def debug_logging_to(tmp_path: Path) -> Iterator[Path]:
    """This process's logging configured as a worker's would be, at debug, into a file."""
    path = tmp_path / "gateway.log"
    root = logging.getLogger()
    level = root.level
    configure_logging(make_config([1], logging_extra(path, level="debug")), worker=0)
    yield path
    unconfigure_logging()
    root.setLevel(level)


@uvloop_test
async def test_tokens_never_reach_the_log(debug_logging_to: Path) -> None:
    path = debug_logging_to
    extra = logging_extra(path, level="debug")
    extra["gateway"]["authentication"]["token_sources"] = [
        "header", "query:access_token", "cookie:session",
    ]  # fmt: skip
    secrets = tokens()
    statuses: dict[str, list[int]] = {}
    sent = 1  # the last request below
    async with running(extra=extra) as gw:
        client = await RawClient.connect(gw.port)
        for name, token in secrets.items():
            # Where a client puts a token: the sources, and (for token-shaped strings: JWTs and
            # dev tokens) the path and X-Request-ID, where only the redaction can catch it; an
            # opaque string in a path is just a path.
            places = ("header", "query", "cookie") if name == "garbage" else (
                "header", "query", "cookie", "path"
            )
            for how in places:
                if how == "header":
                    data = get("/echo/private/x", headers={"Authorization": f"Bearer {token}"})
                elif how == "query":
                    data = get(f"/echo/private/x?access_token={token}")
                elif how == "cookie":
                    data = get("/echo/private/x", headers={"Cookie": f"session={token}"})
                else:  # a client that puts it where it does not belong
                    data = get(f"/echo/{token}", headers={"X-Request-ID": token[:100]})
                reply = await client.request(data)
                sent += 1
                statuses.setdefault(name, []).append(reply.status)
                if reply.status == 400:  # framing refused: the connection is closed
                    await client.close()
                    client = await RawClient.connect(gw.port)
        raw = await client.request(get("/echo/private/x", headers={"Authorization": "garbage!!"}))
        await client.close()
    for name, seen in statuses.items():  # each source was read: accepted, or refused
        expected = 200 if name in ("valid", "dev") else 401
        assert seen[:3] == [expected] * 3, (name, seen)
    assert raw.status == 401
    written = path.read_text()
    assert written.count('"logger":"fastgw.access"') == sent
    for name, token in secrets.items():
        assert token not in written, name
        for piece in token.split("."):
            if len(piece) >= 8:
                assert piece not in written, (name, piece)
    assert "garbage!!" not in written
