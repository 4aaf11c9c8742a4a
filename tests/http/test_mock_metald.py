"""The mock metald over real loopback sockets, on both the asyncio and the uvloop event loop.

Each test gets a fresh :class:`MockMetald` on port 0, started in the test's own loop; the client
is a small hand-written HTTP/1.1 reader on ``asyncio.open_connection`` so that what is checked
is the bytes on the wire, not another library's reading of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from fastgw.errors import BootError
from fastgw.mock import MockMetald, VmStore, run_mock_metald
from fastgw.mock.metald import MAX_PIPELINED_RESPONSES
from fastgw.mock.vms import CONNECT_HTTP_STATUS, ConnectError

RPC = "/vmprovisioner.v1.VmService/"
TIMEOUT_S = 5.0


class Response:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """One keep-alive connection; requests may be pipelined with :meth:`send`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, raw: bytes) -> None:
        self.writer.write(raw)
        await self.writer.drain()

    async def request(self, method: str, path: str, body: bytes | None = None,
                      headers: Iterable[tuple[str, str]] = ()) -> Response:
        await self.send(raw_request(method, path, body, headers))
        return await self.read_response(head_only=method == "HEAD")

    async def rpc(self, method: str, payload: Any, customer: str | None = "c1") -> Response:
        headers = [("Content-Type", "application/json")]
        if customer is not None:
            headers.append(("X-Customer-ID", customer))
        return await self.request("POST", RPC + method, json.dumps(payload).encode(), headers)

    async def read_response(self, head_only: bool = False) -> Response:
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")[:-2]
        version, status, _reason = lines[0].split(" ", 2)
        assert version == "HTTP/1.1"
        headers = [(n, v.strip()) for n, _, v in (line.partition(":") for line in lines[1:])]
        response = Response(int(status), headers, b"")
        length = response.header("Content-Length")
        if head_only or response.status in (204, 304):
            return response
        if response.header("Transfer-Encoding") == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                if size == 0:
                    assert await self.reader.readuntil(b"\r\n") == b"\r\n"
                    break
                parts.append(await self.reader.readexactly(size))
                assert await self.reader.readexactly(2) == b"\r\n"
            response.body = b"".join(parts)
        elif length is not None:
            response.body = await self.reader.readexactly(int(length))
        else:
            response.body = await self.reader.read()
        return response

    async def at_eof(self) -> bool:
        return await self.reader.read(1) == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def raw_request(method: str, path: str, body: bytes | None = None,
                headers: Iterable[tuple[str, str]] = ()) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: mock"]
    lines += [f"{n}: {v}" for n, v in headers]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


Scenario = Callable[[MockMetald, Client], Awaitable[None]]


@pytest.fixture(params=["asyncio", "uvloop"])
def serve(request: pytest.FixtureRequest) -> Callable[[Scenario], None]:
    """Run a scenario against a fresh mock and one connected client, in a fresh loop."""
    loop_factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def run(scenario: Scenario) -> None:
        async def main() -> None:
            async with asyncio.timeout(TIMEOUT_S), MockMetald("m1") as mock:
                client = await Client.open(mock.port)
                try:
                    await scenario(mock, client)
                finally:
                    await client.close()

        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(main())

    return run


# -- health, routing basics ------------------------------------------------------------------


def test_health_get_head_and_instance_header(serve: Callable[[Scenario], None]) -> None:
    async def scenario(mock: MockMetald, client: Client) -> None:
        response = await client.request("GET", "/health")
        assert (response.status, response.json()) == (200, {"status": "ok"})
        assert response.header("X-Metald-Instance") == "m1"
        assert response.header("Content-Type") == "application/json"
        head = await client.request("HEAD", "/health")
        assert (head.status, head.body, head.header("Content-Length")) == (200, b"", "15")
        mock.behaviour.health_status = 503
        response = await client.request("GET", "/health")
        assert (response.status, response.json()) == (503, {"status": "unhealthy"})
        not_allowed = await client.request("POST", "/health", b"")
        assert (not_allowed.status, not_allowed.header("Allow")) == (405, "GET, HEAD")
        missing = await client.request("GET", "/nowhere")
        assert (missing.status, missing.json()["code"]) == (404, "not_found")
        assert missing.header("X-Metald-Instance") == "m1"

    serve(scenario)


# -- the VM API ------------------------------------------------------------------------------


def test_vm_lifecycle(serve: Callable[[Scenario], None]) -> None:
    async def scenario(mock: MockMetald, client: Client) -> None:
        created = await client.rpc("CreateVm", {"config": {"cpu": {"vcpuCount": 2}}})
        assert created.status == 200
        vm_id = created.json()["vmId"]
        assert len(vm_id) == 19 and vm_id.startswith("ud-") and int(vm_id[3:], 16) >= 0
        assert created.json() == {"vmId": vm_id, "state": "VM_STATE_CREATED"}

        async def call(method: str) -> Any:
            response = await client.rpc(method, {"vmId": vm_id})
            assert response.status == 200, response.body
            return response.json()

        steps = [("BootVm", "VM_STATE_RUNNING"), ("PauseVm", "VM_STATE_PAUSED"),
                 ("ResumeVm", "VM_STATE_RUNNING"), ("RebootVm", "VM_STATE_RUNNING"),
                 ("ShutdownVm", "VM_STATE_SHUTDOWN"), ("BootVm", "VM_STATE_RUNNING")]
        for method, state in steps:
            assert await call(method) == {"success": True, "state": state}
            info = await call("GetVmInfo")
            assert info == {"vmId": vm_id, "config": {"cpu": {"vcpuCount": 2}}, "state": state}
        # proto field names are accepted too, as protojson does
        snake = await client.rpc("PauseVm", {"vm_id": vm_id})
        assert snake.json()["state"] == "VM_STATE_PAUSED"
        assert await call("DeleteVm") == {"success": True}
        gone = await client.rpc("GetVmInfo", {"vmId": vm_id})
        assert (gone.status, gone.json()) == (
            404, {"code": "not_found", "message": f"vm {vm_id} not found"})

    serve(scenario)


@pytest.mark.parametrize(("path", "method"), [
    (["BootVm"], "BootVm"),            # RUNNING -> boot again
    ([], "PauseVm"),                   # CREATED -> pause
    ([], "ResumeVm"),                  # CREATED -> resume
    ([], "ShutdownVm"),                # CREATED -> shutdown
    ([], "RebootVm"),                  # CREATED -> reboot
    (["BootVm", "PauseVm"], "ShutdownVm"),
    (["BootVm", "ShutdownVm"], "PauseVm"),
])
def test_illegal_transitions_are_failed_precondition(
        serve: Callable[[Scenario], None], path: list[str], method: str) -> None:
    async def scenario(mock: MockMetald, client: Client) -> None:
        vm_id = (await client.rpc("CreateVm", {"config": {}})).json()["vmId"]
        for step in path:
            assert (await client.rpc(step, {"vmId": vm_id})).status == 200
        before = mock.vms.call("GetVmInfo", "c1", {"vmId": vm_id})["state"]
        response = await client.rpc(method, {"vmId": vm_id})
        assert (response.status, response.json()["code"]) == (400, "failed_precondition")
        assert method in response.json()["message"]
        assert mock.vms.call("GetVmInfo", "c1", {"vmId": vm_id})["state"] == before

    serve(scenario)


def test_tenants_see_only_their_own_vms(serve: Callable[[Scenario], None]) -> None:
    async def scenario(mock: MockMetald, client: Client) -> None:
        vm_a = (await client.rpc("CreateVm", {"config": {}}, customer="a")).json()["vmId"]
        vm_b = (await client.rpc("CreateVm", {"config": {}}, customer="b")).json()["vmId"]
        for method in ("GetVmInfo", "BootVm", "DeleteVm"):
            response = await client.rpc(method, {"vmId": vm_a}, customer="b")
            assert (response.status, response.json()) == (
                404, {"code": "not_found", "message": f"vm {vm_a} not found"})
        listed = (await client.rpc("ListVms", {}, customer="b")).json()
        assert [vm["vmId"] for vm in listed["vms"]] == [vm_b]
        assert listed["totalCount"] == 1 and listed["vms"][0]["customerId"] == "b"
        assert (await client.rpc("ListVms", {}, customer="nobody")).json() == {
            "vms": [], "totalCount": 0}
        info = await client.rpc("GetVmInfo", {"vmId": vm_a}, customer="a")
        assert info.json()["state"] == "VM_STATE_CREATED"  # b's attempts changed nothing

    serve(scenario)


def test_list_vms_filter_and_pages(serve: Callable[[Scenario], None]) -> None:
    async def scenario(mock: MockMetald, client: Client) -> None:
        ids = [(await client.rpc("CreateVm", {"config": {"memory": {"sizeBytes": 1 << 30}}}))
               .json()["vmId"] for _ in range(5)]
        for vm_id in ids[:3]:
            await client.rpc("BootVm", {"vmId": vm_id})
        running = (await client.rpc("ListVms", {"stateFilter": ["VM_STATE_RUNNING"]})).json()
        assert [vm["vmId"] for vm in running["vms"]] == ids[:3]
        assert running["totalCount"] == 3
        assert running["vms"][0]["memorySizeBytes"] == str(1 << 30)
        by_number = (await client.rpc("ListVms", {"state_filter": [1]})).json()
        assert [vm["vmId"] for vm in by_number["vms"]] == ids[3:]
        page = (await client.rpc("ListVms", {"pageSize": 2})).json()
        assert ([vm["vmId"] for vm in page["vms"]], page["totalCount"]) == (ids[:2], 5)
        page = (await client.rpc("ListVms", {"pageSize": 2, "pageToken": page["nextPageToken"]}))
        assert [vm["vmId"] for vm in page.json()["vms"]] == ids[2:4]
        bad = await client.rpc("ListVms", {"stateFilter": ["VM_STATE_NAPPING"]})
        assert (bad.status, bad.json()["code"]) == (400, "invalid_argument")

    serve(scenario)


def test_connect_error_mapping(serve: Callable[[Scenario], None]) -> None:
    async def scenario(mock: MockMetald, client: Client) -> None:
        async def expect(response: Response, status: int, code: str) -> None:
            assert (response.status, response.json()["code"]) == (status, code), response.body
            assert response.header("Content-Type") == "application/json"
            assert set(response.json()) == {"code", "message"}

        json_ct = [("Content-Type", "application/json"), ("X-Customer-ID", "c1")]
        await expect(await client.rpc("ListVms", {}, customer=None), 401, "unauthenticated")
        await expect(await client.rpc("ListVms", {}, customer=""), 401, "unauthenticated")
        await expect(await client.rpc("FlyVm", {}), 404, "unimplemented")
        await expect(await client.request("POST", RPC + "ListVms", b"{}", [
            ("Content-Type", "application/proto"), ("X-Customer-ID", "c1")]), 415, "unimplemented")
        await expect(await client.request("POST", RPC + "ListVms", b"{}"), 415, "unimplemented")
        await expect(await client.request("GET", RPC + "ListVms"), 405, "unimplemented")
        await expect(await client.request("POST", RPC + "ListVms", b"{nope", json_ct),
                     400, "invalid_argument")
        await expect(await client.request("POST", RPC + "ListVms", b"", json_ct),
                     400, "invalid_argument")
        await expect(await client.request("POST", RPC + "ListVms", b"[]", json_ct),
                     400, "invalid_argument")
        await expect(await client.rpc("BootVm", {}), 400, "invalid_argument")
        await expect(await client.rpc("CreateVm", {}), 400, "invalid_argument")
        await client.rpc("CreateVm", {"vmId": "ud-0000000000000001", "config": {}})
        await expect(await client.rpc("CreateVm", {"vmId": "ud-0000000000000001", "config": {}}),
                     409, "already_exists")
        charset = await client.request("POST", RPC + "ListVms", b"{}", [
            ("content-type", "application/json; charset=utf-8"), ("x-customer-id", "c1")])
        assert charset.status == 200

    serve(scenario)


def test_connect_status_table() -> None:
    assert CONNECT_HTTP_STATUS["invalid_argument"] == 400
    assert CONNECT_HTTP_STATUS["failed_precondition"] == 400
    assert CONNECT_HTTP_STATUS["unauthenticated"] == 401
    assert CONNECT_HTTP_STATUS["permission_denied"] == 403
    assert CONNECT_HTTP_STATUS["not_found"] == 404
    assert CONNECT_HTTP_STATUS["unimplemented"] == 404
    assert CONNECT_HTTP_STATUS["unavailable"] == 503
    assert CONNECT_HTTP_STATUS["internal"] == 500
    assert CONNECT_HTTP_STATUS["deadline_exceeded"] == 504
    assert ConnectError("resource_exhausted", "x").http_status == 429


def test_vm_store_evicts_the_oldest_vm_at_its_bound() -> None:
    store = VmStore(max_vms=2)
    first = store.call("CreateVm", "a", {"config": {}})["vmId"]
    second = store.call("CreateVm", "b", {"config": {}})["vmId"]
    third = store.call("CreateVm", "a", {"config": {}})["vmId"]
    assert (len(store), store.evicted) == (2, 1)
    with pytest.raises(ConnectError) as err:
        store.call("GetVmInfo", "a", {"vmId": first})
    assert err.value.code == "not_found"
    assert store.call("GetVmInfo", "b", {"vmId": second})["vmId"] == second
    assert [vm["vmId"] for vm in store.call("ListVms", "a", {})["vms"]] == [third]


# -- HTTP/1.1 framing ------------------------------------------------------------------------


def test_pipelined_requests_are_answered_in_order_even_when_delayed(
        serve: Callable[[Scenario], None]) -> None:
    async def scenario(mock: MockMetald, client: Client) -> None:
        mock.behaviour.delay_ms = 30  # /echo is delayed, /health is not: order must hold
        await client.send(raw_request("GET", "/echo/1") + raw_request("GET", "/health")
                          + raw_request("POST", "/echo/2", b"xy") + raw_request("GET", "/health"))
        first, second, third, fourth = [await client.read_response() for _ in range(4)]
        assert first.json()["path"] == "/echo/1"
        assert second.json() == {"status": "ok"}
        assert (third.json()["path"], third.json()["body_len"]) == ("/echo/2", 2)
        assert fourth.json() == {"status": "ok"}

    serve(scenario)


def test_more_pipelined_requests_than_the_queue_bound(serve: Callable[[Scenario], None]) -> None:
    async def scenario(mock: MockMetald, client: Client) -> None:
        mock.behaviour.delay_ms = 1
        count = MAX_PIPELINED_RESPONSES + 50
        await client.send(b"".join(raw_request("GET", f"/echo/{i}") for i in range(count)))
        for i in range(count):
            assert (await client.read_response()).json()["path"] == f"/echo/{i}"
        assert mock.stats()["requests"] == count

    serve(scenario)


def test_request_bodies_content_length_chunked_and_byte_by_byte(
        serve: Callable[[Scenario], None]) -> None:
    async def scenario(mock: MockMetald, client: Client) -> None:
        body = b'{"config": {"cpu": {"vcpuCount": 1}}}'
        raw = (f"POST {RPC}CreateVm HTTP/1.1\r\nHost: m\r\nContent-Type: application/json\r\n"
               "X-Customer-ID: c1\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
        raw += b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7])
                        for i in range(0, len(body), 7)) + b"0\r\n\r\n"
        await client.send(raw)
        assert (await client.read_response()).json()["state"] == "VM_STATE_CREATED"
        raw = raw_request("POST", RPC + "CreateVm", body,
                          [("Content-Type", "application/json"), ("X-Customer-ID", "c1")])
        for i in range(len(raw)):
            client.writer.write(raw[i:i + 1])
            await client.writer.drain()
        assert (await client.read_response()).json()["state"] == "VM_STATE_CREATED"
        assert len(mock.vms) == 2

    serve(scenario)


def test_connection_close_and_http10(serve: Callable[[Scenario], None]) -> None:
    async def scenario(mock: MockMetald, client: Client) -> None:
        response = await client.request("GET", "/health", headers=[("Connection", "close")])
        assert (response.status, response.header("Connection")) == (200, "close")
        assert await client.at_eof()
        for path, keep_alive in (("/echo/x", False), ("/echo/x", True), ("/health", False),
                                 ("/health", True)):
            other = await Client.open(mock.port)
            extra = "Connection: keep-alive\r\n" if keep_alive else ""
            await other.send(f"GET {path} HTTP/1.0\r\n{extra}\r\n".encode())
            response = await other.read_response()
            assert response.status == 200
            if keep_alive:
                assert response.header("Connection") == "keep-alive"
                assert (await other.request("GET", "/health")).status == 200
            else:
                assert response.header("Connection") == "close"
                assert await other.at_eof()
            await other.close()

    serve(scenario)


@pytest.mark.parametrize("bad", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: m\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: m\r\n folded\r\n\r\n",
    b"POST /echo/x HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
def test_malformed_request_gets_400_then_close(serve: Callable[[Scenario], None],
                                               bad: bytes) -> None:
    async def scenario(mock: MockMetald, client: Client) -> None:
        mock.behaviour.delay_ms = 20  # the 400 must still come after the delayed answer
        await client.send(raw_request("GET", "/echo/ok") + bad + raw_request("GET", "/health"))
        good = await client.read_response()
        assert (good.status, good.json()["path"]) == (200, "/echo/ok")
        response = await client.read_response()
        assert (response.status, response.header("Connection")) == (400, "close")
        assert response.json()["code"] == "invalid_argument"
        assert await client.at_eof()

    serve(scenario)


def test_nothing_is_answered_after_a_closing_request(serve: Callable[[Scenario], None]) -> None:
    async def scenario(mock: MockMetald, client: Client) -> None:
        await client.send(raw_request("GET", "/health", None, [("Connection", "close")])
                          + b"GARBAGE\r\n\r\n" + raw_request("GET", "/health"))
        assert (await client.read_response()).header("Connection") == "close"
        assert await client.at_eof()
        assert mock.stats()["health_checks"] == 1

    serve(scenario)


def test_expect_100_continue(serve: Callable[[Scenario], None]) -> None:
    async def scenario(mock: MockMetald, client: Client) -> None:
        await client.send(b"POST /echo/e HTTP/1.1\r\nHost: m\r\nExpect: 100-continue\r\n"
                          b"Content-Length: 3\r\n\r\n")
        assert await client.reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        await client.send(b"abc")
        assert (await client.read_response()).json()["body_len"] == 3

    serve(scenario)


def test_upgrade_is_answered_then_closed(serve: Callable[[Scenario], None]) -> None:
    async def scenario(mock: MockMetald, client: Client) -> None:
        await client.send(raw_request("GET", "/echo/ws", None, [
            ("Connection", "Upgrade"), ("Upgrade", "websocket")]) + b"\x00\x01binary")
        assert (await client.read_response()).json()["path"] == "/echo/ws"
        assert await client.at_eof()

    serve(scenario)


# -- behaviour switches ----------------------------------------------------------------------


def test_delay_switch(serve: Callable[[Scenario], None]) -> None:
    async def scenario(mock: MockMetald, client: Client) -> None:
        set_delay = await client.request("POST", "/__mock/behaviour", b'{"delay_ms": 150}')
        assert set_delay.json()["delay_ms"] == 150
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert (await client.rpc("CreateVm", {"config": {}})).status == 200
        assert loop.time() - started >= 0.145
        started = loop.time()
        assert (await client.request("GET", "/__mock/stats")).status == 200
        assert (await client.request("GET", "/health")).status == 200
        assert loop.time() - started < 0.145  # controls and health are never delayed

    serve(scenario)


def test_fail_switch(serve: Callable[[Scenario], None]) -> None:
    async def scenario(mock: MockMetald, client: Client) -> None:
        await client.request("POST", "/__mock/behaviour", b'{"fail_rate": 1, "fail_status": 503}')
        failed = await client.rpc("ListVms", {})
        assert (failed.status, failed.json()["code"]) == (503, "unavailable")
        assert failed.header("X-Metald-Instance") == "m1"
        assert (await client.request("GET", "/echo/x")).status == 503
        assert (await client.request("GET", "/health")).status == 200
        await client.request("POST", "/__mock/behaviour", b'{"fail_status": 500}')
        assert (await client.rpc("ListVms", {})).json()["code"] == "internal"
        await client.request("POST", "/__mock/behaviour", b'{"fail_rate": 0.0}')
        assert (await client.rpc("ListVms", {})).status == 200

    serve(scenario)


def test_behaviour_rejects_bad_values_all_or_nothing(serve: Callable[[Scenario], None]) -> None:
    async def scenario(mock: MockMetald, client: Client) -> None:
        response = await client.request(
            "POST", "/__mock/behaviour",
            b'{"delay_ms": 5, "fail_rate": 2, "fail_status": "x", "colour": 1}')
        assert (response.status, response.json()["code"]) == (400, "invalid_argument")
        for word in ("fail_rate", "fail_status", "colour"):
            assert word in response.json()["message"]
        assert mock.behaviour.delay_ms == 0
        current = (await client.request("GET", "/__mock/behaviour")).json()
        assert current == {"delay_ms": 0, "fail_rate": 0.0, "fail_status": 503,
                           "health_status": 200, "close_after_response": False,
                           "drop_connection": False}

    serve(scenario)


def test_close_after_response_and_drop_connection(serve: Callable[[Scenario], None]) -> None:
    async def scenario(mock: MockMetald, client: Client) -> None:
        await client.request("POST", "/__mock/behaviour", b'{"close_after_response": true}')
        response = await client.request("GET", "/echo/x")
        assert (response.status, response.header("Connection")) == (200, "close")
        assert await client.at_eof()
        mock.behaviour.update({"close_after_response": False, "drop_connection": True})
        other = await Client.open(mock.port)
        await other.send(raw_request("GET", "/echo/y"))
        assert await other.at_eof()
        await other.close()
        assert mock.stats()["by_path"]["/echo/y"] == 1  # it was received, then dropped

    serve(scenario)


# -- controls, echo, test routes -------------------------------------------------------------


def test_stats_and_reset(serve: Callable[[Scenario], None]) -> None:
    async def scenario(mock: MockMetald, client: Client) -> None:
        await client.rpc("CreateVm", {"config": {}})
        await client.request("GET", "/health")
        await client.request("PUT", "/echo/a?q=1", b"12345", [("X-Trace", "t1"), ("x-trace", "t2")])
        stats = (await client.request("GET", "/__mock/stats")).json()
        assert stats["name"] == "m1"
        assert stats["requests"] == 2  # health checks are counted apart
        assert stats["health_checks"] == 1
        assert stats["by_path"] == {RPC + "CreateVm": 1, "/echo/a": 1}
        assert stats["last_headers"] == [["Host", "mock"], ["X-Trace", "t1"], ["x-trace", "t2"],
                                         ["Content-Length", "5"]]
        assert stats["last_body_len"] == 5
        assert stats["connections"] == 1
        assert stats["vms"] == 1
        other = await Client.open(mock.port)
        assert (await other.request("GET", "/health")).status == 200
        assert mock.stats()["connections"] == 2
        await other.close()
        reset = await client.request("POST", "/__mock/reset")
        assert reset.json() == {"status": "reset"}
        stats = (await client.request("GET", "/__mock/stats")).json()
        assert (stats["requests"], stats["by_path"], stats["vms"]) == (0, {}, 0)
        assert (await client.request("GET", "/__mock/nope")).status == 404

    serve(scenario)


def test_reset_can_restore_behaviour(serve: Callable[[Scenario], None]) -> None:
    async def scenario(mock: MockMetald, client: Client) -> None:
        mock.behaviour.update({"fail_rate": 1.0, "health_status": 503})
        await client.request("POST", "/__mock/reset", b"{}")
        assert mock.behaviour.fail_rate == 1.0  # plain reset keeps the behaviour
        await client.request("POST", "/__mock/reset", b'{"behaviour": true}')
        assert (mock.behaviour.fail_rate, mock.behaviour.health_status) == (0.0, 200)

    serve(scenario)


def test_echo_reports_exactly_what_arrived(serve: Callable[[Scenario], None]) -> None:
    async def scenario(mock: MockMetald, client: Client) -> None:
        body = os.urandom(3000)
        headers = [("X-Customer-ID", "c9"), ("x-lower", "v"), ("X-Dup", "1"), ("X-Dup", "2")]
        response = await client.request("DELETE", "/echo/deep/path?a=1&b=%20", body, headers)
        echo = response.json()
        assert echo == {
            "method": "DELETE", "path": "/echo/deep/path", "query": "a=1&b=%20",
            "headers": [["Host", "mock"], *[list(h) for h in headers],
                        ["Content-Length", "3000"]],
            "body_len": 3000, "body_sha256": hashlib.sha256(body).hexdigest(),
        }
        head = await client.request("HEAD", "/echo/h")
        assert head.status == 200 and int(head.header("Content-Length") or 0) > 0
        assert (await client.request("GET", "/echo")).json()["path"] == "/echo"

    serve(scenario)


def test_stream_chunked(serve: Callable[[Scenario], None]) -> None:
    async def scenario(mock: MockMetald, client: Client) -> None:
        response = await client.request("GET", "/stream/3?chunk=5")
        assert response.header("Transfer-Encoding") == "chunked"
        assert response.header("Content-Length") is None
        assert response.body == b"000001111122222"
        head = await client.request("HEAD", "/stream/3?chunk=5")
        assert (head.status, head.body) == (200, b"")
        empty = await client.request("GET", "/stream/0")
        assert (empty.status, empty.body) == (200, b"")
        # with interval_ms the first chunk arrives well before the last one is made
        loop = asyncio.get_running_loop()
        await client.send(raw_request("GET", "/stream/4?chunk=2&interval_ms=40"))
        await client.reader.readuntil(b"\r\n\r\n")
        started = loop.time()
        assert await client.reader.readuntil(b"\r\n") == b"2\r\n"
        assert await client.reader.readexactly(4) == b"00\r\n"
        first_at = loop.time() - started
        rest = await client.reader.readuntil(b"0\r\n\r\n")
        assert rest == b"2\r\n11\r\n2\r\n22\r\n2\r\n33\r\n0\r\n\r\n"
        assert loop.time() - started >= 0.1 > first_at
        too_big = await client.request("GET", "/stream/100000?chunk=100000")
        assert too_big.status == 400
        assert (await client.request("GET", "/health")).status == 200  # still usable

    serve(scenario)


def test_close_delimited(serve: Callable[[Scenario], None]) -> None:
    async def scenario(mock: MockMetald, client: Client) -> None:
        response = await client.request("GET", "/close-delimited/1000")
        assert response.header("Content-Length") is None
        assert response.header("Transfer-Encoding") is None
        assert response.header("Connection") == "close"
        assert len(response.body) == 1000 and response.body.startswith(b"0123456789abc")
        assert await client.at_eof()
        big = await Client.open(mock.port)
        assert len((await big.request("GET", "/close-delimited/300000")).body) == 300000
        await big.close()

    serve(scenario)


def test_status_route(serve: Callable[[Scenario], None]) -> None:
    async def scenario(mock: MockMetald, client: Client) -> None:
        for code in (200, 201, 418, 500, 503):
            response = await client.request("POST", f"/status/{code}", b"x")
            assert (response.status, response.body) == (code, b"{}")
        for code in (204, 304):
            response = await client.request("GET", f"/status/{code}")
            assert (response.status, response.body) == (code, b"")
            assert response.header("Content-Length") is None
        assert (await client.request("GET", "/health")).status == 200  # framing still right
        assert (await client.request("GET", "/status/abc")).status == 400
        assert (await client.request("GET", "/status/99")).status == 400

    serve(scenario)


def test_stop_closes_open_connections() -> None:
    async def main() -> None:
        mock = MockMetald("m2")
        await mock.start()
        client = await Client.open(mock.port)
        assert (await client.request("GET", "/health")).header("X-Metald-Instance") == "m2"
        await mock.stop()
        async with asyncio.timeout(TIMEOUT_S):
            assert await client.at_eof()
        await client.close()
        assert mock.stats()["connections"] == 0
        with pytest.raises(OSError):
            await Client.open(mock.port)

    asyncio.run(main())


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_run_mock_metald_prints_serves_and_stops_on_signal(stop_signal: int) -> None:
    code = "from fastgw.mock import run_mock_metald; run_mock_metald(0, 'cli-1', delay_ms=0)"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        prefix = "mock-metald cli-1 listening on http://127.0.0.1:"
        assert line.startswith(prefix), (line, proc.stderr.read() if proc.stderr else "")
        port = int(line[len(prefix):])
        assert port > 0

        async def probe() -> Response:
            client = await Client.open(port)
            try:
                return await client.request("GET", "/health")
            finally:
                await client.close()

        response = asyncio.run(probe())
        assert (response.status, response.header("X-Metald-Instance")) == (200, "cli-1")
        started = time.monotonic()
        proc.send_signal(stop_signal)
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - started < 1.0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_run_mock_metald_reports_a_busy_port_or_bad_setting_in_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(BootError, match=f"cannot listen on 127.0.0.1:{port}"):
            run_mock_metald(port, "busy")
    with pytest.raises(BootError, match="fail_rate"):
        run_mock_metald(0, "bad", fail_rate=2.0)
