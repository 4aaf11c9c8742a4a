"""Scenario ``idle``: memory of fastgw holding many idle keep-alive client connections.

fastgw (``--workers`` workers, default 1) in front of one mock metald. A client process
(``python -m bench.idle_conns --client ...``, uvloop) opens N connections; each sends one
request, reads the whole response, then stays open and silent. With all N open the bench
reads the instance's memory (sum of VmRSS over master + workers, and Pss), checks that fastgw
still serves a normal request quickly (a latency probe and a short wrk run beside the idle
connections), asks the client to send one more request on every idle connection (were they
kept?), then closes them and reads memory once more.

Per-connection memory is ``(RSS with N open - RSS before) / N``: what one idle connection
costs the worker (its protocol object, parser, transport, kernel-side socket buffers are not in
RSS). The verdict (bench/verdict.py) holds the goals: under 150 MB with 10,000 open.

Client protocol (over signals and the client's log, so the client is an ordinary
:class:`bench.procs.Service`): it prints ``READY {json}`` once every connection is open (or
failed), answers SIGUSR1 with one request on each open connection and ``CHECKED {json}``, and
closes everything and exits on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import http.client
import json
import os
import signal
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench.peers import HOST, Target, python_env, start_backend, start_fastgw
from bench.procs import (
    BenchError,
    RssSampler,
    Service,
    Services,
    count_fds,
    cpu_delta,
    cpu_snapshot,
    die_with_parent,
    memory_of,
    raise_nofile,
    tree_pids,
)
from bench.report import machine_info, machine_md, md_table, now_iso, write_results
from bench.scenarios import idle_config
from bench.wrk import run_wrk, wrk_binary

FD_MARGIN: Final = 1024  # descriptors beyond the connections (listeners, upstream pool, files)
CONNECT_TIMEOUT_S: Final = 10.0
OPEN_TIMEOUT_S: Final = 300.0  # for the client to open all connections
CHECK_TIMEOUT_S: Final = 120.0
SETTLE_S: Final = 3.0  # after opening or closing, before memory is read


@dataclass(frozen=True)
class Options:
    connections: int = 10000
    path: str = "/echo/idle"
    workers: int = 1
    concurrency: int = 200  # connections the client opens at once
    probe_requests: int = 200
    load_s: float = 3.0  # wrk run beside the idle connections (0: none)
    hold_s: float = 5.0  # connections held idle while fastgw's CPU is read
    out: Path = Path("bench/out/idle")
    command: str = ""


# -- the client process ----------------------------------------------------------------------


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        elif name.strip().lower() == b"transfer-encoding":
            raise ValueError("chunked response: not supported by the idle client")
    if length:
        await reader.readexactly(length)
    return status


async def _client(host: str, port: int, count: int, path: str, concurrency: int) -> None:
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    statuses: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    gate = asyncio.Semaphore(concurrency)

    async def open_one() -> None:
        async with gate:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as error:
                failures[f"connect: {type(error).__name__}: {error}"[:120]] += 1
                return
            try:
                writer.write(request)
                status = await asyncio.wait_for(_read_response(reader), CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as error:
                failures[f"request: {type(error).__name__}"] += 1
                writer.close()
                return
            statuses[str(status)] += 1
            conns.append((reader, writer))

    async def ask_again(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        seen: Counter[str]) -> None:
        async with gate:
            try:
                writer.write(request)
                status = await asyncio.wait_for(_read_response(reader), CONNECT_TIMEOUT_S)
                seen[str(status)] += 1
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as error:
                seen[f"error: {type(error).__name__}"] += 1

    started = time.monotonic()
    await asyncio.gather(*(open_one() for _ in range(count)))
    print("READY " + json.dumps({
        "open": len(conns), "failed": sum(failures.values()), "statuses": dict(statuses),
        "failures": dict(failures.most_common(10)),
        "seconds": round(time.monotonic() - started, 2)}), flush=True)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    check = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, check.set)
    while not stop.is_set():
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(check.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        if check.is_set() and not stop.is_set():
            check.clear()
            seen: Counter[str] = Counter()
            started = time.monotonic()
            await asyncio.gather(*(ask_again(r, w, seen) for r, w in conns))
            print("CHECKED " + json.dumps({"results": dict(seen),
                                           "seconds": round(time.monotonic() - started, 2)}),
                  flush=True)
    for _, writer in conns:
        writer.close()
    print("CLOSED", flush=True)


def client_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.idle_conns")
    parser.add_argument("--client", action="store_true", required=True)
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--path", default="/")
    parser.add_argument("--concurrency", type=int, default=200)
    args = parser.parse_args(argv)
    die_with_parent()
    soft, _ = raise_nofile(args.connections + FD_MARGIN)
    if soft < args.connections + 64:
        print(f"RLIMIT_NOFILE is {soft}: too low for {args.connections} connections",
              file=sys.stderr)
        return 2
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_client(args.host, args.port, args.connections, args.path,
                           args.concurrency))
    return 0


# -- the scenario ----------------------------------------------------------------------------


def probe_latency(port: int, path: str, count: int) -> dict[str, Any]:
    """``count`` sequential GETs on one keep-alive connection, plus a few on new connections."""
    times: list[float] = []
    statuses: Counter[str] = Counter()
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        for _ in range(count):
            started = time.perf_counter()
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                statuses[str(response.status)] += 1
            except (OSError, http.client.HTTPException) as error:
                statuses[f"error: {type(error).__name__}"] += 1
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=5)
                continue
            times.append((time.perf_counter() - started) * 1000)
    finally:
        conn.close()
    fresh: list[float] = []
    for _ in range(20):
        started = time.perf_counter()
        one = http.client.HTTPConnection(HOST, port, timeout=5)
        try:
            one.request("GET", path)
            response = one.getresponse()
            response.read()
            statuses[str(response.status)] += 1
            fresh.append((time.perf_counter() - started) * 1000)
        except (OSError, http.client.HTTPException) as error:
            statuses[f"error: {type(error).__name__}"] += 1
        finally:
            one.close()

    def q(values: list[float], p: float) -> float | None:
        if not values:
            return None
        ordered = sorted(values)
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 3)

    return {"requests": count + len(fresh), "statuses": dict(statuses),
            "p50_ms": q(times, 0.5), "p99_ms": q(times, 0.99),
            "max_ms": round(max(times), 3) if times else None,
            "new_connection_median_ms": round(statistics.median(fresh), 3) if fresh else None}


def _wait_line(service: Service, prefix: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in service.log_path.read_text(errors="replace").splitlines():
            if line.startswith(prefix + " "):
                result: dict[str, Any] = json.loads(line[len(prefix) + 1:])
                return result
        if not service.alive():
            raise BenchError(f"{service.name} exited; log {service.log_path}:\n"
                             f"{service.log_tail()}")
        time.sleep(0.1)
    raise BenchError(f"{service.name}: no {prefix} line after {timeout_s:.0f}s; log "
                     f"{service.log_path}:\n{service.log_tail()}")


def run(opts: Options) -> dict[str, Any]:
    if opts.load_s > 0:
        wrk_binary()  # fail before anything starts
    opts.out.mkdir(parents=True, exist_ok=True)
    wanted = opts.connections * 2 + FD_MARGIN  # inherited by fastgw, the mock and the client
    soft, hard = raise_nofile(wanted)
    if soft < opts.connections + FD_MARGIN:
        raise BenchError(f"RLIMIT_NOFILE is {soft} (hard {hard}); {opts.connections} "
                         f"connections need {opts.connections + FD_MARGIN}: raise `ulimit -n`")
    machine = machine_info()
    started_at = now_iso()
    with Services() as services:
        backend = start_backend(services, opts.out)
        fastgw: Target = start_fastgw(services, opts.out, backend, workers=opts.workers,
                                      config=functools.partial(idle_config, max_connections=max(
                                          10000, opts.connections + FD_MARGIN)))
        pids = tree_pids(fastgw.service.pid)
        baseline = probe_latency(fastgw.port, opts.path, opts.probe_requests)
        time.sleep(1.0)
        before = memory_of(pids)
        client = Service(
            name="idle-client",
            argv=[sys.executable, "-m", "bench.idle_conns", "--client", "--port",
                  str(fastgw.port), "--connections", str(opts.connections), "--path", opts.path,
                  "--concurrency", str(opts.concurrency)],
            log_path=opts.out / "logs" / "idle-client.log", env=python_env(),
            preexec=False)  # the RSS sampler thread runs; the client calls die_with_parent
        with RssSampler({"fastgw": pids}, interval_s=0.25) as sampler:
            services.start(client)
            opened = _wait_line(client, "READY", OPEN_TIMEOUT_S)
            print(f"client: {opened['open']} connections open, {opened['failed']} failed "
                  f"({opened['seconds']} s)", flush=True)
            time.sleep(SETTLE_S)
            cpu_before = cpu_snapshot(pids)
            time.sleep(opts.hold_s)
            idle_cpu = cpu_delta(cpu_before, cpu_snapshot(pids))
            with_conns = memory_of(pids)
            fds = {str(pid): count_fds(pid) for pid in pids}
            probe = probe_latency(fastgw.port, opts.path, opts.probe_requests)
            load = None
            if opts.load_s > 0:
                load = run_wrk(fastgw.url(opts.path), duration_s=opts.load_s, connections=10,
                               script_dir=opts.out).as_json()
            os.kill(client.pid, signal.SIGUSR1)
            checked = _wait_line(client, "CHECKED", CHECK_TIMEOUT_S)
            client.stop()
            time.sleep(SETTLE_S)
            after = memory_of(pids)
        alive = fastgw.service.alive() and set(tree_pids(fastgw.service.pid)) == set(pids)
        problems = [line for line in fastgw.service.log_tail(200).splitlines()
                    if any(k in line for k in ("WARNING", "ERROR", "Traceback"))][:30]
        exit_codes = services.stop_all()
    n = max(1, int(opened["open"]))
    per_conn_kb = (with_conns.rss_kb - before.rss_kb) / n
    per_conn_pss_kb = (None if with_conns.pss_kb is None or before.pss_kb is None
                       else (with_conns.pss_kb - before.pss_kb) / n)
    result: dict[str, Any] = {
        "rss_mb": round(with_conns.rss_mb, 2),
        "rss_mb_before": round(before.rss_mb, 2),
        "rss_mb_after_close": round(after.rss_mb, 2),
        "peak_rss_mb": round(sampler.peak_kb["fastgw"] / 1024, 2),
        "pss_mb": None if with_conns.pss_kb is None else round(with_conns.pss_kb / 1024, 2),
        "per_connection_kb": round(per_conn_kb, 2),
        "per_connection_pss_kb": None if per_conn_pss_kb is None else round(per_conn_pss_kb, 2),
        "connections_requested": opts.connections,
        "connections_open": opened["open"],
        "connections_failed": opened["failed"],
        "open_seconds": opened["seconds"],
        "first_response_statuses": opened["statuses"],
        "open_failures": opened["failures"],
        "second_request_on_idle": checked,
        "open_fds": fds,
        "idle_cpu_pct": round(100 * idle_cpu.seconds / opts.hold_s, 2),
        "idle_cpu": idle_cpu.as_json(),
        "latency_before": baseline,
        "latency_with_idle": probe,
        "load_with_idle": load,
        "memory": {"before": before.as_json(), "with": with_conns.as_json(),
                   "after_close": after.as_json()},
        "same_processes_throughout": alive,
    }
    results: dict[str, Any] = {
        "schema": 1, "scenario": "idle", "started_at": started_at, "finished_at": now_iso(),
        "command": opts.command,
        "settings": {"connections": opts.connections, "path": opts.path,
                     "workers": opts.workers, "concurrency": opts.concurrency,
                     "hold_s": opts.hold_s,
                     "rlimit_nofile": soft},
        "machine": machine,
        "targets": {"fastgw": result},
        "log_problems": {"fastgw": problems},
        "exit_codes": exit_codes,
    }
    write_results(opts.out, results, markdown(results))
    return results


def table(results: dict[str, Any]) -> str:
    t = results["targets"]["fastgw"]
    load = t["load_with_idle"] or {}
    rows = [[
        "fastgw", f"{t['connections_open']}/{t['connections_requested']}",
        t["rss_mb_before"], t["rss_mb"], t["pss_mb"], t["per_connection_kb"],
        t["rss_mb_after_close"], t["latency_with_idle"]["p50_ms"],
        t["latency_with_idle"]["p99_ms"], load.get("rps"),
    ]]
    return "\n".join([
        md_table(["target", "open conns", "RSS before MB", "RSS with conns MB", "PSS with MB",
                  "KB per conn", "RSS after close MB", "probe p50 ms", "probe p99 ms",
                  "RPS beside idle (wrk -c10)"], rows),
        "",
        f"- Instance RSS with {t['connections_open']} idle connections: {t['rss_mb']:.1f} MB.",
        f"- Second request on every idle connection: {t['second_request_on_idle']['results']}.",
        f"- fastgw CPU while holding them idle for {results['settings']['hold_s']:g} s: "
        f"{t['idle_cpu_pct']:.1f} % of one core.",
    ])


def markdown(results: dict[str, Any]) -> str:
    s = results["settings"]
    parts = [
        f"# idle — {results['started_at']}", "", f"`{results['command']}`", "",
        f"{s['connections']} keep-alive connections, each one GET {s['path']} then idle; "
        f"fastgw with {s['workers']} worker(s); RSS = sum of VmRSS of master + workers.",
        "", machine_md(results["machine"]), "", table(results),
    ]
    problems = results["log_problems"]["fastgw"]
    if problems:
        parts += ["", "fastgw log:", "", *[f"- `{line}`" for line in problems[:10]]]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(client_main(sys.argv[1:]))
