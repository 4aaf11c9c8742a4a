"""``fastgw.resp.RespClient`` against real redis-servers (STYLE 11: Redis is never mocked).

Each test runs on a fresh uvloop whose exception handler records every call: a traceback that
escaped ``data_received``, ``connection_lost`` or a timer fails the test, and so does a command
still pending at the end (``in_flight``). Outages are real: the server is SIGSTOPped,
SIGKILLed and started again on the same socket or port; the garbage-speaking server is a real
listening socket. Waits are on the callbacks themselves or on a condition, always under a
deadline; timing bounds leave room for a noisy 2-core VM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import hiredis
import pytest
import uvloop

from fastgw.limits import REDIS_CONNECT_TIMEOUT_S, REDIS_MAX_PENDING_PER_CONNECTION
from fastgw.listen import free_port
from fastgw.resp import (
    HotRedis,
    RedisOverloaded,
    RedisTimeout,
    RedisUnavailable,
    ReplyError,
    RespClient,
)
from fastgw.resp.calls import Counters
from fastgw.resp.connection import RespConnection
from tests.support.callbacks import WAIT_S, Collect, checked_uvloop, wait_until
from tests.support.redis_server import RedisServer, start_redis

SLACK_S = 0.5  # scheduling slack allowed beyond a command's deadline on a busy 2-core VM


@contextlib.asynccontextmanager
async def client_for(address: str, **kw: Any) -> AsyncIterator[RespClient]:
    kw.setdefault("timeout_s", 2.0)
    client = RespClient.from_address(address, **kw)
    try:
        yield client
        assert client.in_flight == 0, "a command still pending after the test settled"
    finally:
        await client.aclose()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory whose unix socket paths stay under the 107-byte limit."""
    directory = Path(tempfile.mkdtemp(prefix="fgw-resp-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def own_redis(short_dir: Path) -> Iterator[RedisServer]:
    """A server of the test's own (it gets stopped, killed, restarted)."""
    server = start_redis(short_dir / "one")
    yield server
    with contextlib.suppress(ProcessLookupError):
        os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


def check_incr_chains(sent: list[tuple[bytes, int]], replies: list[Any], ordered: bool) -> None:
    """Every INCRBY reply belongs to its command: per key, each reply minus its increment is
    the previous value (in send order on one connection; as a sorted chain across several)."""
    assert len(replies) == len(sent)
    chains: dict[bytes, list[tuple[int, int]]] = {}
    for (key, increment), reply in zip(sent, replies, strict=True):
        assert type(reply) is int, reply
        chains.setdefault(key, []).append((reply, increment))
    for key, chain in chains.items():
        previous = 0
        for value, increment in chain if ordered else sorted(chain):
            assert value - increment == previous, (key, value, increment, previous)
            previous = value


def test_both_clients_satisfy_the_hot_redis_protocol() -> None:
    from fastgw.resp import RespCluster

    def accepts(client: HotRedis) -> HotRedis:
        return client

    accepts(RespClient.from_address("127.0.0.1:6379", timeout_s=0.05))
    accepts(RespCluster.from_address("127.0.0.1:6379", timeout_s=0.05))


# ---------------------------------------------------------------------------- replies


@pytest.mark.parametrize("pool_size", [1, 3])
@pytest.mark.parametrize("transport", ["unix", "tcp"])
@checked_uvloop
async def test_many_concurrent_sends_get_their_own_replies(
    redis_clean: RedisServer, transport: str, pool_size: int
) -> None:
    address = redis_clean.unix_address if transport == "unix" else redis_clean.address
    async with client_for(address, pool_size=pool_size) as client:
        assert await client.start(wait_s=WAIT_S)
        sent = [(b"{c:%d}:x" % (i % 37), 1 + i % 7) for i in range(3000)]
        replies: list[Any] = [None] * len(sent)
        collect = Collect()  # arrival order; ``replies`` is send order

        def on_reply(index: int, reply: object) -> None:
            replies[index] = reply
            collect(reply)

        for start in range(0, len(sent), 500):  # bursts of 500 in one loop iteration each
            for index in range(start, start + 500):
                key, increment = sent[index]
                client.send((b"INCRBY", key, b"%d" % increment), partial(on_reply, index))
            await asyncio.sleep(0)
        await collect.wait(len(sent))
        check_incr_chains(sent, replies, ordered=pool_size == 1)
        if pool_size == 1:
            assert collect.got == replies  # one connection: replies come in send order
        assert client.errors == 0
        ids = [await client.execute(b"CLIENT", b"ID") for _ in range(3 * pool_size)]
        assert len(set(ids)) == pool_size  # round-robin over every connection of the pool


@checked_uvloop
async def test_error_reply_is_delivered_and_the_next_command_works(
    redis_clean: RedisServer,
) -> None:
    async with client_for(redis_clean.unix_address) as client:
        assert await client.start()
        collect = Collect()
        client.send((b"EVALSHA", b"0" * 40, b"0"), collect)
        client.send((b"SET", b"k", b"v"), collect)
        client.send((b"GET", b"k"), collect)
        error, ok, value = await collect.wait(3)
        assert type(error) is ReplyError and str(error).startswith("NOSCRIPT")
        assert (ok, value) == (b"OK", b"v")
        with pytest.raises(ReplyError, match="WRONGTYPE"):
            await client.execute(b"LPUSH", b"k", b"x")
        assert client.errors == 2


@checked_uvloop
async def test_a_raising_callback_is_logged_and_later_replies_still_arrive(
    redis_clean: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(reply: object) -> None:
        raise RuntimeError("caller bug")

    async with client_for(redis_clean.unix_address) as client:
        assert await client.start()
        collect = Collect()
        client.send((b"PING",), collect)
        client.send((b"PING",), broken)
        client.send((b"ECHO", b"after"), collect)
        assert await collect.wait(2) == [b"PONG", b"after"]
    assert any("callback" in r.getMessage() and r.exc_info for r in caplog.records)


# ---------------------------------------------------------------------- AUTH and SELECT


@checked_uvloop
async def test_auth_is_sent_on_every_new_connection(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_redis(short_dir / "auth", password="s3cret pass")
    try:
        async with client_for(server.address, password="s3cret pass", pool_size=2) as client:
            assert await client.start()
            assert await client.execute(b"SET", b"a", b"1") == b"OK"
            assert len({await client.execute(b"CLIENT", b"ID") for _ in range(4)}) == 2
        for password in ("", "wrong"):
            async with client_for(server.unix_address, password=password) as client:
                assert not await client.start(wait_s=0.3)
                collect = Collect()
                client.send((b"PING",), collect)
                assert type(collect.got[0]) is RedisUnavailable  # at once, from send itself
        refused = [r for r in caplog.records if "handshake refused" in r.getMessage()]
        assert len(refused) == 2  # one line per client, not one per attempt
        assert "NOAUTH" in refused[0].getMessage() and "WRONGPASS" in refused[1].getMessage()
    finally:
        server.stop()


@checked_uvloop
async def test_select_db_is_sent_on_every_new_connection(redis_clean: RedisServer) -> None:
    async with client_for(redis_clean.unix_address, db=3, pool_size=2) as client:
        assert await client.start()
        for i in range(4):
            assert await client.execute(b"SET", b"in-db-3:%d" % i, b"x") == b"OK"
    with redis_clean.client() as raw:
        assert raw.keys() == []
        raw.select(3)
        assert sorted(raw.keys()) == [b"in-db-3:%d" % i for i in range(4)]


# -------------------------------------------------------------------- outages, recovery


@checked_uvloop
async def test_fail_fast_when_the_server_is_down(caplog: pytest.LogCaptureFixture) -> None:
    async with client_for(f"127.0.0.1:{free_port()}") as client:
        started = time.monotonic()
        assert not await client.start(wait_s=0.3)
        assert time.monotonic() - started < 0.3 + SLACK_S
        assert not client.connected
        collect = Collect()
        client.send((b"PING",), collect)
        assert len(collect.got) == 1 and type(collect.got[0]) is RedisUnavailable
        with pytest.raises(RedisUnavailable, match="not connected"):
            await client.execute(b"PING")
        assert client.errors == 2
    assert sum("cannot connect" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("transport", ["unix", "tcp"])
@checked_uvloop
async def test_reconnects_after_the_server_is_killed_and_started_again(
    short_dir: Path, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "fastgw.resp")
    socket_path = short_dir / "r.sock"
    server = start_redis(short_dir / "first", unix_path=socket_path)
    port = server.port
    address = f"unix://{socket_path}" if transport == "unix" else server.address
    try:
        async with client_for(address, pool_size=2) as client:
            assert await client.start()
            assert await client.execute(b"INCR", b"n") == 1
            os.kill(server.process.pid, signal.SIGSTOP)  # commands stay pending ...
            pending = Collect()
            for _ in range(10):
                client.send((b"INCR", b"n"), pending)
            await asyncio.sleep(0)  # ... once flushed
            server.kill()  # ... until the connections die with the server
            got = await pending.wait(10)
            assert all(type(r) is RedisUnavailable for r in got), got
            await wait_until(lambda: not client.connected, "the pool to see the loss")
            down = Collect()
            client.send((b"PING",), down)
            assert type(down.got[0]) is RedisUnavailable  # fail fast, no wait
            await wait_until(
                lambda: any("cannot connect" in r.getMessage() for r in caplog.records),
                "a failed reconnect attempt",
            )

            server = start_redis(short_dir / "second", unix_path=socket_path, port=port)
            await wait_until(lambda: client.connected, "the reconnect")
            assert await client.execute(b"INCR", b"n") == 1  # a new server, no persistence
            await wait_until(lambda: len(client._up) == 2, "both connections back")
    finally:
        server.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert any("connected again" in m for m in messages)
    assert sum("cannot connect" in m for m in messages) <= 1  # no line per attempt


@checked_uvloop
async def test_timeout_while_the_server_is_stopped_then_late_replies_are_dropped(
    own_redis: RedisServer,
) -> None:
    timeout_s = 0.2
    async with client_for(own_redis.unix_address, timeout_s=timeout_s) as client:
        assert await client.start()
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        stalled = Collect()
        sent_at = []
        for i in range(50):
            sent_at.append(time.monotonic())
            client.send((b"INCR", b"n"), stalled)
            if i % 10 == 9:
                await asyncio.sleep(0.01)  # five bursts: deadlines spread over 50 ms
        got = await stalled.wait(50)
        assert all(type(r) is RedisTimeout for r in got), got
        late = [at - sent - timeout_s for at, sent in zip(stalled.at, sent_at, strict=True)]
        assert min(late) > -0.01 and max(late) < SLACK_S, late  # not early, not much later
        assert client.connected and client.in_flight == 50  # placeholders wait for the replies

        os.kill(own_redis.process.pid, signal.SIGCONT)
        after = Collect()
        for _ in range(5):
            client.send((b"INCR", b"n"), after)
        # The 50 late replies (1..50) are read and dropped; the next commands get theirs.
        assert await after.wait(5) == [51, 52, 53, 54, 55]
        await wait_until(lambda: client.in_flight == 0, "the pending queue to drain")
        assert client.errors == 50


@checked_uvloop
async def test_deadlines_out_of_queue_order_still_fire_on_time(own_redis: RedisServer) -> None:
    """A Cluster redirect keeps its first deadline, earlier than commands queued before it; a
    handshake or slot-map read has a longer one than commands queued after it. Neither may
    delay another command's timeout."""
    async with client_for(own_redis.unix_address, timeout_s=0.3) as client:
        assert await client.start()
        loop = asyncio.get_running_loop()
        pid = own_redis.process.pid

        os.kill(pid, signal.SIGSTOP)  # 1: a longer deadline ahead of normal commands
        long, short = Collect(), Collect()
        started = time.monotonic()
        client.send_until((b"ECHO", b"long"), long, loop.time() + WAIT_S)
        client.send((b"PING",), short)  # deadline: now + 0.3
        assert type((await short.wait(1))[0]) is RedisTimeout
        assert 0.3 - 0.01 < time.monotonic() - started < 0.3 + SLACK_S
        assert long.got == []
        os.kill(pid, signal.SIGCONT)
        assert await long.wait(1) == [b"long"]
        await wait_until(lambda: client.in_flight == 0, "the queue to drain")

        os.kill(pid, signal.SIGSTOP)  # 2: a redirect's deadline, earlier than the queue's
        head, redirected, past = Collect(), Collect(), Collect()
        started = time.monotonic()
        client.send((b"ECHO", b"head"), head)  # deadline: now + 0.3
        client.send_until((b"PING",), redirected, loop.time() + 0.1)
        client.send_until((b"PING",), past, loop.time() - 0.001)
        assert type(past.got[0]) is RedisTimeout  # already late: refused at once
        assert type((await redirected.wait(1))[0]) is RedisTimeout
        assert time.monotonic() - started < 0.1 + SLACK_S
        assert head.got == []
        os.kill(pid, signal.SIGCONT)
        (reply,) = await head.wait(1)
        assert reply == b"head" or type(reply) is RedisTimeout  # a slow SIGCONT: either
        assert await client.execute(b"ECHO", b"x") == b"x"  # replies still in order


@checked_uvloop
async def test_a_silent_peer_is_closed_and_reconnected(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # timeout 50 ms: the dead-peer limit is max(1 s, 20 x 50 ms) = 1 s.
    async with client_for(own_redis.unix_address, timeout_s=0.05) as client:
        assert await client.start()
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        collect = Collect()
        client.send((b"PING",), collect)
        assert type((await collect.wait(1))[0]) is RedisTimeout
        started = time.monotonic()
        await wait_until(lambda: not client.connected, "the dead-peer close")
        assert 0.8 < time.monotonic() - started < 1.0 + 2 * SLACK_S
        assert client.in_flight == 0  # the placeholder went with the connection
        os.kill(own_redis.process.pid, signal.SIGCONT)
        await wait_until(lambda: client.connected, "the reconnect")
        assert await client.execute(b"ECHO", b"back") == b"back"
    assert any("nothing received for" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------ bounds


@checked_uvloop
async def test_pending_bound_refuses_with_overloaded(redis_clean: RedisServer) -> None:
    async with client_for(redis_clean.unix_address) as client:
        assert await client.start()
        collect = Collect()
        for _ in range(REDIS_MAX_PENDING_PER_CONNECTION):  # one loop iteration: none answered
            client.send((b"INCR", b"n"), collect)
        refused = Collect()
        client.send((b"INCR", b"n"), refused)
        assert type(refused.got[0]) is RedisOverloaded
        assert "10000 commands pending" in str(refused.got[0])
        replies = await collect.wait(REDIS_MAX_PENDING_PER_CONNECTION)
        assert replies == list(range(1, REDIS_MAX_PENDING_PER_CONNECTION + 1))
        assert client.errors == 1


@checked_uvloop
async def test_writing_paused_refuses_with_overloaded_until_it_resumes(
    own_redis: RedisServer,
) -> None:
    value = b"x" * (1024 * 1024)
    async with client_for(own_redis.unix_address, timeout_s=WAIT_S) as client:
        assert await client.start()
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        accepted, refused = Collect(), Collect()
        for i in range(64):  # the socket buffer fills, then the transport's (64 KiB mark)
            client.send((b"SET", b"big:%d" % i, value), accepted)
            await asyncio.sleep(0)  # the flush: one write
            client.send((b"PING",), refused)
            if refused.got:
                break
        assert type(refused.got[0]) is RedisOverloaded, refused.got
        assert "not draining" in str(refused.got[0])
        sent = i + 1
        assert sent < 16  # refused after a few MB, not buffered without bound
        os.kill(own_redis.process.pid, signal.SIGCONT)
        got = await accepted.wait(sent + len(refused.got) - 1)
        assert all(reply in (b"OK", b"PONG") for reply in got), got
        assert await client.execute(b"DBSIZE") == sent  # writing resumed


@checked_uvloop
async def test_aclose_fails_pending_commands_and_is_idempotent(redis_clean: RedisServer) -> None:
    client = RespClient.from_address(redis_clean.unix_address, timeout_s=WAIT_S, pool_size=2)
    assert await client.start()
    collect = Collect()
    for _ in range(4):  # blocks on the server side: the command stays pending
        client.send((b"BLPOP", b"nothing-here", b"5"), collect)
    await asyncio.sleep(0)
    assert client.in_flight == 4
    started = time.monotonic()
    await client.aclose()
    assert time.monotonic() - started < SLACK_S
    assert len(collect.got) == 4 and all(type(r) is RedisUnavailable for r in collect.got)
    assert client.in_flight == 0 and not client.connected
    await client.aclose()
    after = Collect()
    client.send((b"PING",), after)
    assert type(after.got[0]) is RedisUnavailable
    assert not await client.start(wait_s=0.1)  # closed for good: no reconnect


# ------------------------------------------------------------- a server that misbehaves


class FakeRedis:
    """A real TCP server that answers the handshake's PING, then ``answer`` to the next
    command; counts its connections. ``answer=None``: it never answers anything;
    ``hang_up=True``: it closes each connection as soon as it has accepted it."""

    def __init__(self, answer: bytes | None, *, hang_up: bool = False) -> None:
        self.answer = answer
        self.hang_up = hang_up
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.on_connection, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    async def on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.connections += 1
        packed_ping = hiredis.pack_command((b"PING",))
        try:
            if self.hang_up:
                return
            await reader.readexactly(len(packed_ping))
            if self.answer is not None:
                writer.write(b"+PONG\r\n")
                await reader.readuntil(b"\r\n")  # the start of the next command
                writer.write(self.answer)
                await writer.drain()
            await reader.read()  # until the client closes
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def aclose(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.mark.parametrize(
    "answer, logged",
    [
        (b"!junk\r\n", "protocol error"),  # not a RESP type byte
        (b"+OK\r\n+OK\r\n", "a reply with no command pending"),  # one reply too many
    ],
    ids=["junk", "extra-reply"],
)
@checked_uvloop
async def test_garbage_from_the_server_closes_that_connection_cleanly(
    answer: bytes, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "fastgw.resp")
    fake = FakeRedis(answer)
    address = await fake.start()
    try:
        async with client_for(address) as client:
            assert await client.start()
            collect = Collect()
            client.send((b"GET", b"k"), collect)
            (reply,) = await collect.wait(1)
            if logged == "protocol error":
                assert type(reply) is RedisUnavailable and logged in str(reply)
            else:
                assert reply == b"OK"  # the second +OK is the violation
            await wait_until(lambda: fake.connections >= 2, "the reconnect")
            await wait_until(lambda: client.connected, "the new connection's handshake")
    finally:
        await fake.aclose()
    assert any(logged in r.getMessage() for r in caplog.records)


# -------------------------------------------------- the protocol alone: splits, coalescing


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def abort(self) -> None:
        pass


def test_replies_resolve_in_order_however_they_are_split_and_writes_coalesce() -> None:
    wire = b":1\r\n$3\r\nabc\r\n-ERR no\r\n*2\r\n:7\r\n:8\r\n"
    expected = [1, b"abc", "ERR no", [7, 8]]

    async def scenario(pieces: list[bytes]) -> tuple[list[bytes], list[Any]]:
        connection = RespConnection(
            asyncio.get_running_loop(), name="test", timeout_s=5.0, counters=Counters()
        )
        transport = RecordingTransport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        got: list[Any] = []
        for i in range(4):
            connection.send((b"ECHO", b"%d" % i), got.append)
        await asyncio.sleep(0)  # one loop iteration: the flush
        for piece in pieces:
            connection.data_received(piece)
        assert connection.in_flight == 0
        connection.abort("done")
        return transport.writes, got

    bytewise = [wire[i : i + 1] for i in range(len(wire))]
    for pieces in [[wire[:split], wire[split:]] for split in range(len(wire) + 1)] + [bytewise]:
        writes, got = uvloop.run(scenario(pieces))
        assert writes == [b"".join(hiredis.pack_command((b"ECHO", b"%d" % i)) for i in range(4))]
        assert [str(r) if isinstance(r, ReplyError) else r for r in got] == expected, pieces


@checked_uvloop
async def test_a_handshake_never_answered_is_given_up_after_the_connect_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeRedis(None)  # accepts, reads the PING, never answers
    address = await fake.start()
    try:
        async with client_for(address) as client:
            started = time.time()  # the clock of LogRecord.created
            assert not await client.start(wait_s=REDIS_CONNECT_TIMEOUT_S + SLACK_S)
            (record,) = [r for r in caplog.records if "timed out" in r.getMessage()]
            elapsed = record.created - started
            assert REDIS_CONNECT_TIMEOUT_S - 0.05 < elapsed < REDIS_CONNECT_TIMEOUT_S + SLACK_S
            assert not client.connected
    finally:
        await fake.aclose()


@checked_uvloop
async def test_reconnects_back_off_exponentially() -> None:
    fake = FakeRedis(None, hang_up=True)  # every connection closed at once: every try fails
    address = await fake.start()
    try:
        async with client_for(address) as client:
            assert not await client.start(wait_s=0.0)
            await asyncio.sleep(1.0)  # a measurement window, not a wait for readiness
            # Pauses of 25-50, 50-100, 100-200, 200-400, 400-800 ms after the first try: at
            # most 6 tries in a second (4 at least on a slow machine); without back-off,
            # hundreds.
            assert 3 <= fake.connections <= 6, fake.connections
    finally:
        await fake.aclose()
