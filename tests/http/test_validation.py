"""Request validation per route (``content_types``, ``json_schema``), end to end on sockets."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from fastgw.config import ConfigError, parse_config
from fastgw.plan import check_plan
from tests.support.client import RawClient, Response, assert_error, post
from tests.support.gateway import ECHO_ROUTES, Running, eventually, running, uvloop_test

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["config"],
    "properties": {
        "vmId": {"type": "string", "maxLength": 64},
        "config": {
            "type": "object",
            "required": ["cpu", "memory"],
            "properties": {
                "cpu": {
                    "type": "object",
                    "required": ["vcpuCount"],
                    "properties": {"vcpuCount": {"type": "integer", "minimum": 1}},
                },
                "memory": {"type": "object"},
                "storage": {"type": "array", "items": {"type": "object", "required": ["path"]}},
                "blob": {"type": "string"},
            },
        },
    },
}
JSON = {"Content-Type": "application/json"}
ROUTES = [
    {
        "endpoint": "Validated",
        "path_prefix": "/echo/validated",
        "methods": ["POST"],
        "auth": "none",
        "content_types": ["application/json"],
        "json_schema": SCHEMA,
    },
    {
        "endpoint": "Typed",
        "path_prefix": "/echo/typed",
        "auth": "none",
        "content_types": ["application/json", "Application/Merge-Patch+JSON"],
    },
    {
        "endpoint": "SecureValidated",
        "path_prefix": "/echo/secure-validated",
        "auth": "required",
        "json_schema": SCHEMA,
    },
    *ECHO_ROUTES,
]
EXTRA: dict[str, Any] = {"routes": ROUTES}


def vm(cpus: int = 2, **more: Any) -> bytes:
    config = {"cpu": {"vcpuCount": cpus}, "memory": {"sizeBytes": "1073741824"}, **more}
    return orjson.dumps({"vmId": "a", "config": config})


def echoed(response: Any) -> dict[str, Any]:
    assert response.status == 200, (response.status, response.body)
    data = orjson.loads(response.body)
    assert isinstance(data, dict)
    return data


def assert_forwarded_intact(response: Any, body: bytes) -> None:
    echo = echoed(response)
    assert echo["body_len"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


def message(response: Any) -> str:
    data = response.json()
    assert isinstance(data, dict)
    return str(data["error"]["message"])


def busy(gw: Running) -> int:
    """Backend connections of the gateway that carry a request now."""
    pool = gw.gateway.context.plan.pools[0]
    return pool.open_connections - pool.idle_count


def chunked(path: str, pieces: list[bytes], headers: bytes = b"") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n".encode()
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    return head + headers + b"\r\n" + body + b"0\r\n\r\n"



async def refused_for_cpus(response: Response, gw: Running, client: RawClient) -> None:
    """The 400 of a body whose vcpuCount breaks the schema, after one good request went on."""
    assert_error(response, 400, "bad_request")
    assert message(response).startswith("$.config.cpu.vcpuCount")
    assert gw.backends[0].stats()["requests"] == 1
    await client.close()


@uvloop_test
async def test_valid_body_is_forwarded_intact_and_invalid_is_400_naming_the_path() -> None:
    async with running(extra=EXTRA) as gw:
        client = await RawClient.connect(gw.port)
        body = vm()
        headers = {"Content-Type": "Application/JSON; charset=utf-8"}
        assert_forwarded_intact(
            await client.request(post("/echo/validated", body, headers=headers)), body
        )
        gw.backends[0].reset()
        bad = await client.request(post("/echo/validated", vm(cpus=0), headers=JSON))
        assert_error(bad, 400, "bad_request")
        assert message(bad) == "$.config.cpu.vcpuCount: 0 is less than the minimum of 1"
        assert bad.header("connection") is None  # the body was read: keep-alive
        missing = await client.request(post("/echo/validated", b'{"config": {}}', headers=JSON))
        assert_error(missing, 400, "bad_request")
        assert message(missing).startswith("$.config: ")
        assert "cpu" in message(missing)
        item = await client.request(
            post("/echo/validated", vm(storage=[{"path": "/a"}, {}]), headers=JSON)
        )
        assert message(item).startswith("$.config.storage[1]: ")
        not_json = await client.request(post("/echo/validated", b'{"config": ', headers=JSON))
        assert_error(not_json, 400, "bad_request")
        assert message(not_json).startswith("body is not JSON: ")
        # The client's value comes back shortened, without control characters.
        long = await client.request(
            post("/echo/validated", b'{"vmId": "' + b"\\n" * 500 + b'"}', headers=JSON)
        )
        assert_error(long, 400, "bad_request")
        assert len(message(long)) <= 200 and "\n" not in message(long)
        assert gw.backends[0].stats()["requests"] == 0  # nothing invalid was forwarded
        # keep-alive after the 400s: the same connection still serves a valid request
        assert_forwarded_intact(
            await client.request(post("/echo/validated", body, headers=JSON)), body
        )
        await client.close()


@uvloop_test
async def test_request_without_body_on_a_schema_route_is_400() -> None:
    async with running(extra=EXTRA) as gw:
        client = await RawClient.connect(gw.port)
        empty = await client.request(post("/echo/validated", b"", headers=JSON))
        assert_error(empty, 400, "bad_request")
        assert message(empty) == "body is not JSON: empty body"
        assert gw.backends[0].stats()["requests"] == 0
        await client.close()


@uvloop_test
async def test_body_arriving_in_pieces_is_validated_when_complete() -> None:
    async with running(extra=EXTRA) as gw:
        body = vm(blob="x" * 5000)
        client = await RawClient.connect(gw.port)
        await client.send(
            b"POST /echo/validated HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        for at in range(0, len(body), 1000):
            await client.send(body[at : at + 1000])
            await asyncio.sleep(0.01)
            if at + 1000 < len(body):
                assert busy(gw) == 0  # held: nothing reaches a backend before the body ends
        assert_forwarded_intact(await client.read_one(), body)
        # the same in pieces, invalid
        bad = vm(cpus=0, blob="x" * 3000)
        await client.send(
            b"POST /echo/validated HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(bad)
        )
        for at in range(0, len(bad), 1000):
            await client.send(bad[at : at + 1000])
            await asyncio.sleep(0.01)
        response = await client.read_one()
        await refused_for_cpus(response, gw, client)


@uvloop_test
async def test_pipelined_requests_are_validated_and_answered_in_order() -> None:
    async with running(extra=EXTRA) as gw:
        client = await RawClient.connect(gw.port)
        good = vm()
        await client.send(
            post("/echo/validated", vm(cpus=0), headers=JSON)
            + post("/echo/validated", good, headers=JSON)
            + post("/echo/validated", b"[", headers=JSON)
        )
        first, second, third = await client.read_responses(3)
        assert_error(first, 400, "bad_request")
        assert_forwarded_intact(second, good)
        assert_error(third, 400, "bad_request")
        assert gw.backends[0].stats()["requests"] == 1
        await client.close()


@uvloop_test
async def test_chunked_bodies_are_validated() -> None:
    async with running(extra=EXTRA) as gw:
        client = await RawClient.connect(gw.port)
        body = vm()
        pieces = [body[:10], body[10:30], body[30:]]
        ok = await client.request(
            chunked("/echo/validated", pieces, b"Content-Type: application/json\r\n")
        )
        assert_forwarded_intact(ok, body)
        bad = vm(cpus=0)
        await client.send(
            chunked("/echo/validated", [bad[:7]], b"Content-Type: application/json\r\n")[:-5]
        )
        await asyncio.sleep(0.02)
        await client.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(bad) - 7, bad[7:]))
        response = await client.read_one()
        await refused_for_cpus(response, gw, client)


@uvloop_test
async def test_large_body_is_read_whole_past_the_buffer_high_water() -> None:
    # 1 MiB: the body buffer pauses reading at 256 KiB on other routes; here it must not.
    async with running(extra=EXTRA) as gw:
        body = vm(blob="y" * (1024 * 1024))
        client = await RawClient.connect(gw.port)
        await client.send(
            b"POST /echo/validated HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        for at in range(0, len(body), 64 * 1024):
            await client.send(body[at : at + 64 * 1024])
        assert_forwarded_intact(await client.read_one(), body)
        chunked_body = vm(blob="z" * (600 * 1024))
        pieces = [chunked_body[i : i + 50_000] for i in range(0, len(chunked_body), 50_000)]
        response = await client.request(
            chunked("/echo/validated", pieces, b"Content-Type: application/json\r\n")
        )
        assert_forwarded_intact(response, chunked_body)
        await client.close()


@uvloop_test
async def test_body_over_max_body_size_is_413() -> None:
    extra = {**EXTRA, "gateway": {"server": {"limits": {"max_body_size": "4KB"}}}}
    async with running(extra=extra) as gw:
        body = vm(blob="x" * 5000)
        client = await RawClient.connect(gw.port)
        assert_error(
            await client.request(post("/echo/validated", body, headers=JSON)),
            413,
            "payload_too_large",
        )
        assert await client.closed_by_peer()
        # chunked: no declared length, the limit stops it while it is buffered
        client = await RawClient.connect(gw.port)
        await client.send(
            chunked("/echo/validated", [body[:3000]], b"Content-Type: application/json\r\n")[:-5]
        )
        await asyncio.sleep(0.02)
        await client.send(b"%x\r\n%s\r\n" % (len(body) - 3000, body[3000:]))
        assert_error(await client.read_one(), 413, "payload_too_large")
        assert await client.closed_by_peer()
        assert gw.backends[0].stats()["requests"] == 0


@uvloop_test
async def test_content_type_is_enforced_on_bodies() -> None:
    async with running(extra=EXTRA) as gw:
        client = await RawClient.connect(gw.port)
        body = b'{"a": 1}'
        for headers in (
            {"Content-Type": "application/merge-patch+json"},
            {"Content-Type": "APPLICATION/JSON ; charset=utf-8"},
        ):
            assert_forwarded_intact(
                await client.request(post("/echo/typed", body, headers=headers)), body
            )
        # without a body, no media type is asked for
        assert echoed(await client.request(b"GET /echo/typed HTTP/1.1\r\nHost: gw\r\n\r\n"))
        await client.close()
        gw.backends[0].reset()
        for headers in (
            {"Content-Type": "text/plain"},
            {"Content-Type": "application/json-seq"},
            {},
            {"Content-Type": "application/json", "content-type": "application/json"},
        ):
            client = await RawClient.connect(gw.port)
            response = await client.request(post("/echo/typed", body, headers=headers))
            assert_error(response, 415, "unsupported_media_type")
            assert "application/json" in message(response)
            await client.close()
        # on a schema route, before the body is read
        client = await RawClient.connect(gw.port)
        await client.send(
            b"POST /echo/validated HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n"
            b"Content-Type: text/plain\r\n\r\n{"
        )
        response = await client.read_one()
        assert_error(response, 415, "unsupported_media_type")
        assert response.header("connection") == b"close"  # the body was not read
        assert await client.closed_by_peer()
        assert gw.backends[0].stats()["requests"] == 0


@uvloop_test
async def test_route_without_validation_still_streams() -> None:
    async with running(extra=EXTRA) as gw:
        body = b"s" * (1024 * 1024)
        client = await RawClient.connect(gw.port)
        await client.send(
            b"POST /echo/plain HTTP/1.1\r\nHost: gw\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        await client.send(body[:100_000])
        # The backend has the request while the client is still sending the body.
        await eventually(lambda: busy(gw) == 1)
        await client.send(body[100_000:])
        assert_forwarded_intact(await client.read_one(), body)
        await client.close()


@uvloop_test
async def test_auth_comes_before_any_buffering() -> None:
    async with running(extra=EXTRA) as gw:
        client = await RawClient.connect(gw.port)
        await client.send(
            b"POST /echo/secure-validated HTTP/1.1\r\nHost: gw\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
        )
        response = await client.read_one()  # answered without the rest of the body
        assert_error(response, 401, "unauthorized")
        assert await client.closed_by_peer()
        client = await RawClient.connect(gw.port)
        token = {"Authorization": "Bearer dev_customer_7", **JSON}
        body = vm()
        assert_forwarded_intact(
            await client.request(post("/echo/secure-validated", body, headers=token)), body
        )
        bad = await client.request(post("/echo/secure-validated", vm(cpus=0), headers=token))
        assert_error(bad, 400, "bad_request")
        await client.close()


@uvloop_test
async def test_expect_100_continue_on_a_schema_route() -> None:
    async with running(extra=EXTRA) as gw:
        client = await RawClient.connect(gw.port)
        body = vm()
        await client.send(
            b"POST /echo/validated HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n"
            b"Content-Type: application/json\r\nExpect: 100-continue\r\n\r\n" % len(body)
        )
        interim = await client.read_one()
        assert interim.status == 100
        await client.send(body)
        assert_forwarded_intact(await client.read_one(), body)
        await client.close()


@uvloop_test
async def test_client_leaving_while_the_body_is_buffered_leaks_nothing() -> None:
    async with running(extra=EXTRA) as gw:
        ctx = gw.gateway.context
        client = await RawClient.connect(gw.port)
        await client.send(
            b"POST /echo/validated HTTP/1.1\r\nHost: gw\r\nContent-Length: 400000\r\n"
            b"Content-Type: application/json\r\n\r\n" + b"{" + b" " * 300_000
        )
        await eventually(lambda: any(not c.is_idle() for c in ctx.connections))
        await client.close()
        await eventually(lambda: not ctx.connections)
        assert busy(gw) == 0
        assert gw.backends[0].stats()["requests"] == 0
        again = await RawClient.connect(gw.port)
        body = vm()
        assert_forwarded_intact(
            await again.request(post("/echo/validated", body, headers=JSON)), body
        )
        await again.close()
        await eventually(lambda: not ctx.connections)


def route_problems(route: dict[str, Any], base_dir: Path | None = None) -> list[str]:
    data = {
        "routing": {"metald_instances": [{"host": "127.0.0.1", "port": 9}]},
        "routes": [{"endpoint": "V", "path": "/v", **route}],
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(data, base_dir=base_dir or Path.cwd(), env={})
    return [str(p) for p in caught.value.problems]


def test_bad_schema_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    assert route_problems({"json_schema": {"type": "nope"}}) == [
        '$.routes[0].json_schema: invalid JSON Schema at $.type: "nope" is not valid under any '
        "of the schemas listed in the 'anyOf' keyword"
    ]
    [remote] = route_problems({"json_schema": {"$ref": "http://example.invalid/s.json"}})
    assert remote.startswith("$.routes[0].json_schema: ") and "not fetched" in remote
    assert route_problems({"json_schema": ["a"]}) == [
        "$.routes[0].json_schema: expected mapping or file path, got a list"
    ]
    [missing] = route_problems({"json_schema": "schemas/none.json"}, tmp_path)
    assert missing.startswith("$.routes[0].json_schema: cannot read ")
    (tmp_path / "bad.yaml").write_text("type: [string, 7]\n")
    [bad_file] = route_problems({"json_schema": "bad.yaml"}, tmp_path)
    assert bad_file.startswith("$.routes[0].json_schema: invalid JSON Schema")
    assert route_problems({"content_types": ["json"]}) == [
        "$.routes[0].content_types[0]: expected a media type like application/json (no "
        'parameters), got "json"'
    ]
    assert route_problems({"content_types": ["a/b", "A/B"]}) == [
        "$.routes[0].content_types[1]: same media type as $.routes[0].content_types[0] (case "
        "is ignored)"
    ]


def test_schema_file_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "vm.yaml").write_text("type: object\nrequired: [config]\n")
    (tmp_path / "vm.json").write_bytes(orjson.dumps(SCHEMA))
    for name in ("vm.yaml", "vm.json"):
        data = {
            "routing": {"metald_instances": [{"host": "127.0.0.1", "port": 9}]},
            "routes": [{"endpoint": "V", "path": "/v", "auth": "none", "json_schema": name}],
        }
        config = parse_config(data, base_dir=tmp_path, env={})
        assert config.routes[0].json_schema == str(tmp_path / name)
        check_plan(config)  # the plan compiles it
