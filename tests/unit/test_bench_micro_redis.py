"""bench/micro_redis.py measures working clients.

The benchmark runs with tiny N against the real redis-server (STYLE 11); its reply check must
pass for every client (redis-py, coredis when importable, and ``fastgw.resp.RespClient``), and
must catch a reply handed to the wrong command. The client itself is tested in
test_resp_client.py.
"""

from __future__ import annotations

import importlib.util
import time

import pytest

from bench import micro_redis
from fastgw.resp import ReplyError
from tests.support.redis_server import RedisServer


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
    assert "| resp | callback | 16 | tcp |" in micro_redis.table(rows)


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
