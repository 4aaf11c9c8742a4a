"""``python -m bench``: the benchmark suite's command line.

    python -m bench list
    python -m bench run --scenario passthrough [--duration 10s] [--runs 3] [--connections 50]
                        [--workers 1] [--peers nginx,haproxy] [--path /echo/x] [--out DIR]
                        [--profile]
    python -m bench run --scenario idle [--connections 10000] [--out DIR]
    python -m bench idle [--connections 10000] [--out DIR]      (the same as the line above)

Expected failures (a tool missing, a service that does not start) print one line per problem
and exit 2; Ctrl-C or SIGTERM stop every started process and exit 130.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Final

from bench.procs import BenchError
from fastgw.cli import positive_int

SCENARIOS: Final = {
    "passthrough": "fastgw vs nginx (and haproxy) as plain reverse proxies: RPS, latency, "
                   "CPU-µs per request, RSS",
    "idle": "RSS of fastgw holding N idle keep-alive connections; latency meanwhile",
}


def _duration(text: str) -> float:
    from fastgw.config.units import parse_duration

    try:
        value = parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration > 0, got {text!r}")
    return value


_positive = positive_int


def _peers(text: str) -> tuple[str, ...]:
    from bench.peers import PEERS

    names = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in names if p not in PEERS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown peer(s) {', '.join(unknown)} (known: {', '.join(PEERS)})")
    return names


def _add_idle_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=_positive, default=200,
                        help="idle: connections the client opens at once (default 200)")
    parser.add_argument("--probe-requests", type=_positive, default=200,
                        help="idle: sequential requests of the latency probe (default 200)")
    parser.add_argument("--load", type=_duration, default=3.0, metavar="DURATION",
                        help="idle: wrk -c10 run beside the idle connections (default 3s)")
    parser.add_argument("--hold", type=_duration, default=5.0, metavar="DURATION",
                        help="idle: time the connections are held idle while fastgw's CPU is "
                             "read (default 5s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description="fastgw benchmarks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("list", help="list the scenarios")

    run = commands.add_parser("run", help="run one scenario")
    run.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
    run.add_argument("--duration", type=_duration, default=10.0, metavar="DURATION",
                     help="passthrough: length of one wrk run (default 10s)")
    run.add_argument("--runs", type=_positive, default=3,
                     help="passthrough: runs per target, alternating (default 3)")
    run.add_argument("--connections", type=_positive, default=None,
                     help="wrk connections (passthrough, default 50) or idle connections "
                          "(idle, default 10000)")
    run.add_argument("--threads", type=_positive, default=1, help="wrk threads (default 1)")
    run.add_argument("--warmup", type=_duration, default=3.0, metavar="DURATION",
                     help="passthrough: unrecorded wrk run per target first (default 3s)")
    run.add_argument("--workers", type=_positive, default=1,
                     help="fastgw workers = nginx worker_processes = haproxy nbthread")
    run.add_argument("--peers", type=_peers, default=("nginx",),
                     help="passthrough: comma-separated peers: nginx, haproxy (default nginx)")
    run.add_argument("--path", default=None,
                     help="request path, identical for every target (default /echo/x; idle: "
                          "/echo/idle)")
    run.add_argument("--profile", action="store_true",
                     help="passthrough: one extra fastgw run under py-spy, summarized")
    run.add_argument("--out", type=Path, default=None, help="output directory "
                     "(default bench/out/<scenario>-<UTC time>)")
    _add_idle_args(run)

    idle = commands.add_parser("idle", help="the idle scenario (= run --scenario idle)")
    idle.add_argument("--connections", type=_positive, default=10000)
    idle.add_argument("--workers", type=_positive, default=1)
    idle.add_argument("--path", default=None)
    idle.add_argument("--out", type=Path, default=None)
    _add_idle_args(idle)
    return parser


def _out_dir(scenario: str, given: Path | None) -> Path:
    if given is not None:
        return given.resolve()  # configs written there name absolute paths
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path(__file__).resolve().parent / "out" / f"{scenario}-{stamp}"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    scenario = "idle" if args.command == "idle" else args.scenario
    out = _out_dir(scenario, args.out)
    if scenario == "passthrough":
        from bench import passthrough

        opts = passthrough.Options(
            duration_s=args.duration, runs=args.runs, connections=args.connections or 50,
            threads=args.threads, warmup_s=args.warmup, path=args.path or "/echo/x",
            workers=args.workers, peers=args.peers, out=out, profile=args.profile,
            command=command)
        results = passthrough.run(opts)
        print()
        print(passthrough.table(results))
    else:
        from bench import idle_conns

        iopts = idle_conns.Options(
            connections=args.connections or 10000, path=args.path or "/echo/idle",
            workers=args.workers, concurrency=args.concurrency,
            probe_requests=args.probe_requests, load_s=args.load, hold_s=args.hold, out=out,
            command=command)
        results = idle_conns.run(iopts)
        print()
        print(idle_conns.table(results))
    print(f"\nwrote {out / 'results.json'} and {out / 'report.md'}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "list":
        for name, what in SCENARIOS.items():
            print(f"{name:12s} {what}")
        return 0
    command = "python -m bench " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT too: a shell may
        signal.signal(signum, _interrupt)  # have started us with it ignored (cmd &)
    try:
        _run(args, command)
    except BenchError as error:
        for line in str(error).splitlines():
            print(f"bench: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; every started process was stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
