"""Gateway CPU per Redis command on the rate-limit hot path, client by client.

What it measures: the CPU time *this* process spends per ``EVALSHA`` of a small Lua script
shaped like a rate-limit check (``TIME``, ``INCRBY``, ``PEXPIRE``; keys ``{c:<n>}:x`` over 300
customers), i.e. ``time.process_time()`` around a batch of ``--calls`` commands divided by the
calls. The redis-server runs in its own process, so its work is not counted; the figure is the
client's encode, syscalls, parse and scheduling cost, which is what a gateway worker pays. The
kernel's part of it (``getrusage`` system time) and the wall time per command are reported beside
it (wall is latency-bound at one in flight, throughput-bound at 16).

Reading it: at one in flight the loop goes idle between commands, so every command also pays an
epoll sleep and wake-up, which on a VM costs more when the client and redis-server sit on
different vCPUs; that part swings from run to run (see the sys column and the minimum). The
16-in-flight rows are the hot-path figure for a loaded gateway, whose loop is never idle.

Clients (all on uvloop), each over the unix socket and over TCP 127.0.0.1:

- ``redis-py``: ``redis.asyncio.Redis`` (hiredis parser when installed), one awaited command at
  a time (``c1``), 16 coroutines in flight (``c16``, a connection each from the pool), and
  pipelines of 16 (``pipe16``, ``transaction=False``);
- ``coredis``: one at a time and 16 coroutines in flight; skipped, with a note, when it is not
  importable (it is not a project dependency: ``pip install coredis`` to include it);
- ``resp``: ``fastgw.resp.RespClient`` (the gateway's hot-path client: RESP over
  ``hiredis.Reader``, writes coalesced per loop iteration, one deadline timer per connection,
  bounded queues), ``pool_size=1``: ``await client.execute(...)`` per command (``await``,
  ``gather``) and the callback API ``client.send(args, callback)`` with no coroutine or future
  per command (``callback``). Its deadline is ``RESP_TIMEOUT_S``, so the timer runs as in
  production, without a noisy-VM stall of the benchmark turning into a failed batch.

Every batch's replies are checked before its numbers count: for each key, the ``INCRBY``
results must form one chain from the value read before the batch (each reply minus its
increment is the previous value), and ``TIME`` must be now; so a client that mixed up replies
fails instead of looking fast. Configurations are interleaved (round-robin, rotated per repeat)
because the machine is a noisy 2-core VM; the table gives the median and the minimum of the
repeats.

Run: ``python -m bench.micro_redis [--calls N] [--repeats R] [--json FILE]`` (starts its own
redis-server from PATH; ``--unix PATH --tcp HOST:PORT`` uses a running one). Tested with tiny
N by ``tests/unit/test_bench_micro_redis.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis
import redis.asyncio
import uvloop

from fastgw.listen import free_port
from fastgw.resp import RespClient

SCRIPT = (
    "local t = redis.call('TIME'); local v = redis.call('INCRBY', KEYS[1], ARGV[1]); "
    "redis.call('PEXPIRE', KEYS[1], 60000); return {v, tonumber(t[1])}"
)
CUSTOMERS = 300
INCREMENTS = 7  # increments 1..7: a reply given to the wrong command breaks the chain check
IN_FLIGHT = 16
WARMUP_CALLS = 256
CLOCK_SKEW_S = 300
START_TIMEOUT_S = 10.0
RESP_TIMEOUT_S = 0.5
EVALSHA, ONE = b"EVALSHA", b"1"
KEYS = [b"{c:%d}:x" % n for n in range(CUSTOMERS)]

Commands = list[tuple[bytes, bytes]]  # (key, increment) per call
Runner = Callable[[Any, bytes, Commands, list[Any]], Awaitable[None]]


class BenchError(RuntimeError):
    """A client returned a wrong reply: its numbers would measure broken code."""


def make_commands(calls: int) -> Commands:
    return [(KEYS[i % CUSTOMERS], b"%d" % (1 + i % INCREMENTS)) for i in range(calls)]


def check_replies(commands: Commands, replies: Sequence[Any], before: dict[bytes, int]) -> None:
    """Raise ``BenchError`` unless ``replies[i]`` is the script's answer to ``commands[i]``."""
    if len(replies) != len(commands):
        raise BenchError(f"{len(replies)} replies for {len(commands)} commands")
    now = time.time()
    chains: dict[bytes, list[tuple[int, int]]] = {}
    for i, ((key, increment), reply) in enumerate(zip(commands, replies, strict=True)):
        if not (isinstance(reply, list) and len(reply) == 2 and all(type(x) is int for x in reply)):
            raise BenchError(f"reply {i} is {reply!r}, not [count, unix time]")
        if abs(reply[1] - now) > CLOCK_SKEW_S:
            raise BenchError(f"reply {i}: TIME {reply[1]} is not now ({now:.0f})")
        chains.setdefault(key, []).append((reply[0], int(increment)))
    for key, chain in chains.items():
        previous = before.get(key, 0)
        for value, increment in sorted(chain):
            if value - increment != previous:
                raise BenchError(f"{key!r}: reply {value} to INCRBY {increment} after {previous}")
            previous = value


# -- runners: one batch of commands through one client, replies into ``out`` -----------------


async def redispy_c1(r: Any, sha: bytes, commands: Commands, out: list[Any]) -> None:
    evalsha = r.evalsha
    for key, increment in commands:
        out.append(await evalsha(sha, 1, key, increment))


async def coredis_c1(r: Any, sha: bytes, commands: Commands, out: list[Any]) -> None:
    evalsha = r.evalsha
    for key, increment in commands:
        out.append(await evalsha(sha, [key], [increment]))


async def resp_c1(t: RespClient, sha: bytes, commands: Commands, out: list[Any]) -> None:
    execute = t.execute
    for key, increment in commands:
        out.append(await execute(EVALSHA, sha, ONE, key, increment))


def concurrent(call: Callable[[Any, bytes, bytes, bytes], Awaitable[Any]]) -> Runner:
    """IN_FLIGHT coroutines take the next command as soon as they are free (asyncio.gather)."""

    async def run(client: Any, sha: bytes, commands: Commands, out: list[Any]) -> None:
        out.extend([None] * len(commands))
        indexes = iter(range(len(commands)))

        async def worker() -> None:
            for i in indexes:
                key, increment = commands[i]
                out[i] = await call(client, sha, key, increment)

        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))

    return run


redispy_c16 = concurrent(lambda r, sha, key, inc: r.evalsha(sha, 1, key, inc))
coredis_c16 = concurrent(lambda r, sha, key, inc: r.evalsha(sha, [key], [inc]))
resp_c16 = concurrent(lambda t, sha, key, inc: t.execute(EVALSHA, sha, ONE, key, inc))


async def redispy_pipe16(r: Any, sha: bytes, commands: Commands, out: list[Any]) -> None:
    for start in range(0, len(commands), IN_FLIGHT):
        pipe = r.pipeline(transaction=False)
        for key, increment in commands[start : start + IN_FLIGHT]:
            pipe.evalsha(sha, 1, key, increment)
        out.extend(await pipe.execute())


class _Window:
    """Keeps ``window`` commands in flight with callbacks only: the reply callback sends the
    next command. Replies arrive in send order on one connection, so one bound method serves
    every command (no closure, future or coroutine per command)."""

    def __init__(self, t: RespClient, sha: bytes, commands: Commands, out: list[Any]) -> None:
        self.send, self.sha, self.commands, self.out = t.send, sha, commands, out
        self.sent = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def send_next(self) -> None:
        key, increment = self.commands[self.sent]
        self.sent += 1
        self.send((EVALSHA, self.sha, ONE, key, increment), self.on_reply)

    def on_reply(self, reply: Any) -> None:
        self.out.append(reply)
        if self.sent < len(self.commands):
            self.send_next()
        elif len(self.out) == len(self.commands):
            self.done.set_result(None)


def resp_callbacks(window: int) -> Runner:
    async def run(t: RespClient, sha: bytes, commands: Commands, out: list[Any]) -> None:
        driver = _Window(t, sha, commands, out)
        for _ in range(min(window, len(commands))):
            driver.send_next()
        if commands:
            await driver.done

    return run


# (client, mode, in flight, runner); the client's connections are made once per transport.
MODES: tuple[tuple[str, str, int, Runner], ...] = (
    ("redis-py", "await", 1, redispy_c1),
    ("redis-py", "gather", IN_FLIGHT, redispy_c16),
    ("redis-py", "pipeline", IN_FLIGHT, redispy_pipe16),
    ("coredis", "await", 1, coredis_c1),
    ("coredis", "gather", IN_FLIGHT, coredis_c16),
    ("resp", "await", 1, resp_c1),
    ("resp", "gather", IN_FLIGHT, resp_c16),
    ("resp", "callback", 1, resp_callbacks(1)),
    ("resp", "callback", IN_FLIGHT, resp_callbacks(IN_FLIGHT)),
)


@dataclass
class Row:
    client: str
    mode: str
    in_flight: int
    transport: str
    cpu_us: list[float] = field(default_factory=list)
    wall_us: list[float] = field(default_factory=list)
    sys_us: list[float] = field(default_factory=list)  # the kernel's part of cpu_us
    checked_calls: int = 0

    @property
    def name(self) -> str:
        return f"{self.client}/{self.mode}/{self.in_flight}/{self.transport}"


@dataclass
class Endpoints:
    unix_path: str
    host: str
    port: int


async def _open_clients(
    ends: Endpoints, stack: contextlib.AsyncExitStack, notes: list[str]
) -> dict[tuple[str, str], Any]:
    clients: dict[tuple[str, str], Any] = {}
    for transport in ("unix", "tcp"):
        where: dict[str, Any] = (
            {"unix_socket_path": ends.unix_path}
            if transport == "unix"
            else {"host": ends.host, "port": ends.port}
        )
        r = redis.asyncio.Redis(**where, max_connections=4 * IN_FLIGHT)
        stack.push_async_callback(r.aclose)
        clients["redis-py", transport] = r
        address = f"unix://{ends.unix_path}" if transport == "unix" else f"{ends.host}:{ends.port}"
        hot = RespClient.from_address(address, timeout_s=RESP_TIMEOUT_S)
        stack.push_async_callback(hot.aclose)
        if not await hot.start(wait_s=START_TIMEOUT_S):
            raise BenchError(f"fastgw.resp could not connect to {address}")
        clients["resp", transport] = hot
    try:
        import coredis
    except ImportError:
        notes.append("coredis skipped: not importable (pip install coredis to include it)")
        return clients
    notes.append(f"coredis {coredis.__version__}")
    for transport in ("unix", "tcp"):
        where = (
            {"unix_socket_path": ends.unix_path, "host": None, "port": None}
            if transport == "unix"
            else {"host": ends.host, "port": ends.port}
        )
        clients["coredis", transport] = await stack.enter_async_context(coredis.Redis(**where))
    return clients


async def _batch(
    row: Row,
    runner: Runner,
    client: Any,
    sha: bytes,
    commands: Commands,
    *,
    checker: Any,
    record: bool,
) -> None:
    before_values = await checker.mget(KEYS)
    before = {k: int(v) for k, v in zip(KEYS, before_values, strict=True) if v is not None}
    out: list[Any] = []
    gc.collect()
    sys0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    wall0, cpu0 = time.perf_counter(), time.process_time()
    await runner(client, sha, commands, out)
    cpu1, wall1 = time.process_time(), time.perf_counter()
    sys1 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    try:
        check_replies(commands, out, before)
    except BenchError as exc:
        raise BenchError(f"{row.name}: {exc}") from None
    row.checked_calls += len(commands)
    if record:
        row.cpu_us.append((cpu1 - cpu0) * 1e6 / len(commands))
        row.wall_us.append((wall1 - wall0) * 1e6 / len(commands))
        row.sys_us.append((sys1 - sys0) * 1e6 / len(commands))


async def run_async(
    ends: Endpoints, calls: int, repeats: int, warmup_calls: int = WARMUP_CALLS
) -> tuple[list[Row], list[str]]:
    notes: list[str] = []
    async with contextlib.AsyncExitStack() as stack:
        clients = await _open_clients(ends, stack, notes)
        checker = clients["redis-py", "unix"]
        sha = (await checker.script_load(SCRIPT)).encode()
        plan = [
            (Row(client, mode, n, transport), runner, clients[client, transport])
            for transport in ("unix", "tcp")
            for client, mode, n, runner in MODES
            if (client, transport) in clients
        ]
        warmup, commands = make_commands(warmup_calls), make_commands(calls)
        for row, runner, client in plan:
            await _batch(row, runner, client, sha, warmup, checker=checker, record=False)
        for repeat in range(repeats):
            shift = repeat % len(plan)
            for row, runner, client in plan[shift:] + plan[:shift]:
                await _batch(row, runner, client, sha, commands, checker=checker, record=True)
    return [row for row, _, _ in plan], notes


def run(
    ends: Endpoints, calls: int, repeats: int, warmup_calls: int = WARMUP_CALLS
) -> tuple[list[Row], list[str]]:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run_async(ends, calls, repeats, warmup_calls))


@contextlib.contextmanager
def own_redis_server() -> Any:
    """A throwaway redis-server (unix socket + TCP 127.0.0.1), no persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not on PATH (apt-get install -y redis-server)")
    directory = Path(tempfile.mkdtemp(prefix="fastgw-mredis-"))
    ends = Endpoints(str(directory / "redis.sock"), "127.0.0.1", free_port())
    argv = [binary, "--port", str(ends.port), "--bind", ends.host, "--dir", str(directory),
            "--unixsocket", ends.unix_path, "--save", "", "--appendonly", "no"]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with redis.Redis(unix_socket_path=ends.unix_path) as probe:
                    if probe.ping():
                        break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    sys.exit("redis-server did not start")
                time.sleep(0.02)
        yield ends
    finally:
        process.terminate()
        process.wait(START_TIMEOUT_S)
        shutil.rmtree(directory, ignore_errors=True)


def versions() -> dict[str, str]:
    from importlib.metadata import version

    server = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    return {
        "python": platform.python_version(),
        "cpus": str(os.cpu_count()),
        "redis-py": redis.__version__,
        "hiredis": version("hiredis"),
        "uvloop": uvloop.__version__,
        "redis-server": next((w[2:] for w in server if w.startswith("v=")), "?"),
        "redis-py parser": "hiredis" if redis.utils.HIREDIS_AVAILABLE else "python",
    }


def table(rows: Sequence[Row]) -> str:
    lines = [
        "| client | mode | in flight | transport | CPU µs/cmd median | CPU min | "
        "of it sys | wall µs/cmd median | wall min |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if not row.cpu_us:
            continue
        lines.append(
            f"| {row.client} | {row.mode} | {row.in_flight} | {row.transport} "
            f"| {statistics.median(row.cpu_us):.1f} | {min(row.cpu_us):.1f} "
            f"| {statistics.median(row.sys_us):.1f} "
            f"| {statistics.median(row.wall_us):.1f} | {min(row.wall_us):.1f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=4000, help="commands per batch")
    parser.add_argument("--repeats", type=int, default=7, help="batches per configuration")
    parser.add_argument("--json", type=Path, help="also write rows and settings here")
    parser.add_argument("--unix", help="use this running server's unix socket ...")
    parser.add_argument("--tcp", help="... and this HOST:PORT (both, or neither)")
    args = parser.parse_args(argv)
    if bool(args.unix) != bool(args.tcp):
        parser.error("--unix and --tcp go together")
    with contextlib.ExitStack() as stack:
        if args.unix:
            host, _, port = args.tcp.rpartition(":")
            ends = Endpoints(args.unix, host, int(port))
        else:
            ends = stack.enter_context(own_redis_server())
        rows, notes = run(ends, args.calls, args.repeats)
    meta = versions()
    print(
        f"EVALSHA rate-limit stand-in, {args.calls} calls x {args.repeats} repeats "
        f"(interleaved), gateway-process CPU; " + ", ".join(f"{k} {v}" for k, v in meta.items())
    )
    for note in notes:
        print(f"note: {note}")
    print()
    print(table(rows))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "settings": {
                        "calls": args.calls,
                        "repeats": args.repeats,
                        "in_flight": IN_FLIGHT,
                        "customers": CUSTOMERS,
                        "script": SCRIPT,
                    },
                    "versions": meta,
                    "notes": notes,
                    "rows": [asdict(row) | {"name": row.name} for row in rows],
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
