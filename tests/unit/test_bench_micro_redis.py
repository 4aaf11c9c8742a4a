"""bench/micro_redis.py measures working clients, and the thin RESP prototype behaves.

The benchmark runs with tiny N against the real redis-server (STYLE 11); its reply check must
pass for every client, and must catch a reply handed to the wrong command. The thin protocol is
also fed replies whole and byte by byte through a recording transport, to pin down the write
coalescing and the in-order resolution it relies on.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import Coroutine
from typing import Any

import hiredis
import pytest
import uvloop

from bench import micro_redis
from bench.thin_resp import ReplyError, RespProtocol, ThinRedis
from tests.support.redis_server import RedisServer


def run_uvloop(coro: Coroutine[Any, Any, Any]) -> Any:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def test_every_client_measured_returns_the_right_replies(redis_clean: RedisServer) -> None:
    ends = micro_redis.Endpoints(redis_clean.unix_path, redis_clean.host, redis_clean.port)
    rows, notes = micro_redis.run(ends, calls=40, repeats=2, warmup_calls=20)

    has_coredis = importlib.util.find_spec("coredis") is not None
    expected = {
        f"{client}/{mode}/{n}/{transport}"
        for transport in ("unix", "tcp")
        for client, mode, n, _ in micro_redis.MODES
        if has_coredis or client != "coredis"
    }
    assert {row.name for row in rows} == expected
    assert any(note.startswith("coredis") for note in notes)
    for row in rows:  # every batch passed check_replies, else run() raised BenchError
        assert row.checked_calls == 20 + 2 * 40, row.name
        assert len(row.cpu_us) == len(row.wall_us) == 2
        assert all(cpu > 0 for cpu in row.cpu_us), row.name
    assert "| thin | callback | 16 | tcp |" in micro_redis.table(rows)


def test_reply_check_catches_misattributed_replies() -> None:
    commands = micro_redis.make_commands(20)
    now = int(time.time())
    # first call on each key: the reply is its increment (from 0)
    replies = [[int(increment), now] for _, increment in commands]
    micro_redis.check_replies(commands, replies, {})
    swapped = [replies[1], replies[0], *replies[2:]]
    with pytest.raises(micro_redis.BenchError, match="after 0"):
        micro_redis.check_replies(commands, swapped, {})
    with pytest.raises(micro_redis.BenchError, match="not now"):
        micro_redis.check_replies(commands[:1], [[1, now - 3600]], {})
    with pytest.raises(micro_redis.BenchError, match="not \\[count"):
        micro_redis.check_replies(commands[:1], [ReplyError("NOSCRIPT")], {})


def test_thin_client_error_reply_then_next_command(redis_clean: RedisServer) -> None:
    async def scenario() -> list[Any]:
        client = await ThinRedis.connect_unix(redis_clean.unix_path)
        try:
            with pytest.raises(ReplyError, match="NOSCRIPT"):
                await client.execute(b"EVALSHA", b"0" * 40, b"0")
            return await asyncio.gather(
                client.execute(b"SET", b"k", b"v"), client.execute(b"GET", b"k")
            )
        finally:
            await client.aclose()

    assert run_uvloop(scenario()) == [b"OK", b"v"]


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        pass


def test_thin_protocol_coalesces_and_resolves_in_order_for_any_split() -> None:
    replies_wire = b":1\r\n$3\r\nabc\r\n-ERR no\r\n*2\r\n:7\r\n:8\r\n"
    expected = [1, b"abc", "ERR no", [7, 8]]

    async def scenario(split: int) -> tuple[list[bytes], list[Any]]:
        protocol = RespProtocol(asyncio.get_running_loop())
        transport = RecordingTransport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        got: list[Any] = []
        for i in range(4):
            protocol.send((b"ECHO", b"%d" % i), got.append)
        await asyncio.sleep(0)  # one loop iteration: the flush
        protocol.data_received(replies_wire[:split])
        protocol.data_received(replies_wire[split:])
        return transport.writes, got

    for split in range(len(replies_wire) + 1):
        writes, got = run_uvloop(scenario(split))
        assert writes == [b"".join(hiredis.pack_command((b"ECHO", b"%d" % i)) for i in range(4))]
        assert [str(r) if isinstance(r, ReplyError) else r for r in got] == expected, split


def test_thin_protocol_fails_pending_commands_on_connection_lost() -> None:
    async def scenario() -> list[Any]:
        protocol = RespProtocol(asyncio.get_running_loop())
        protocol.connection_made(RecordingTransport())  # type: ignore[arg-type]
        got: list[Any] = []
        protocol.send((b"PING",), got.append)
        protocol.connection_lost(None)
        protocol.send((b"PING",), got.append)  # after the loss: failed at once
        return got

    got = run_uvloop(scenario())
    assert len(got) == 2
    assert all(isinstance(reply, ConnectionError) for reply in got)
