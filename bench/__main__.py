"""``python -m bench``: the benchmark suite's command line.

    python -m bench list
    python -m bench run --scenario passthrough[,idle-10k,...|all] [--duration 10s] [--runs 3]
                        [--connections 50] [--workers 1] [--peers nginx,haproxy]
                        [--generator wrk|openloop] [--rate 5000] [--target p99_ms=5]
                        [--targets FILE] [--profile] [--out DIR]
    python -m bench idle [--connections 10000]             (= run --scenario idle-10k)
    python -m bench sweep --scenario passthrough --target-p99 10ms [--start-rate 1000]
    python -m bench scale [--scenarios passthrough,full] [--workers-list 1,2,4,8]
    python -m bench compare A.json B.json [--threshold 2]

Expected failures (a tool missing, a service that does not start, a bad option) print one line
per problem and exit 2; Ctrl-C or SIGTERM stop every started process and exit 130.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from bench.procs import BenchError
from bench.scenarios import SCENARIOS, Scenario, resolve
from fastgw.cli import duration, positive_duration, positive_int


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _milliseconds(text: str) -> float:
    try:
        return _positive_float(text)  # a bare number is milliseconds
    except argparse.ArgumentTypeError:
        return positive_duration(text) * 1000.0


def _peers(text: str) -> tuple[str, ...]:
    from bench.peers import PEERS

    names = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in names if p not in PEERS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown peer(s) {', '.join(unknown)} (known: {', '.join(PEERS)}; none: '')")
    return names


def _scenarios(text: str) -> list[Scenario]:
    try:
        return resolve(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _one_scenario(text: str) -> Scenario:
    found = _scenarios(text)
    if len(found) != 1:
        raise argparse.ArgumentTypeError(f"expected one scenario, got {text!r}")
    return found[0]


def _workers_list(text: str) -> tuple[int, ...]:
    values = tuple(positive_int(v.strip()) for v in text.split(",") if v.strip())
    if not values:
        raise argparse.ArgumentTypeError("expected worker counts like 1,2,4,8")
    return values


def _target(text: str) -> Any:
    from bench.verdict import parse_cli

    try:
        return parse_cli(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _override(text: str) -> tuple[str, Any]:
    import yaml

    path, sep, value = text.partition("=")
    if not sep or not path or any(not part for part in path.split(".")):
        raise argparse.ArgumentTypeError(f"expected PATH=VALUE (a.b.c=value), got {text!r}")
    return path, yaml.safe_load(value)


def _common(parser: argparse.ArgumentParser, *, duration: str, connections: int) -> None:
    parser.add_argument("--duration", type=positive_duration,
                        default=positive_duration(duration),
                        metavar="DURATION", help=f"one measured run or step (default {duration})")
    parser.add_argument("--connections", type=positive_int, default=connections,
                        help=f"load-generator connections (default {connections})")
    parser.add_argument("--workers", type=positive_int, default=1,
                        help="fastgw workers = nginx worker_processes = haproxy nbthread")
    parser.add_argument("--peers", type=_peers, default=("nginx",),
                        help="comma-separated peers measured beside fastgw: nginx, haproxy "
                             "(default nginx; '' for none)")
    parser.add_argument("--path", default=None,
                        help="request path, the same for every target (default: the "
                             "scenario's, /echo/x)")
    parser.add_argument("--processes", type=positive_int, default=1,
                        help="open loop: generator processes (default 1)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default bench/out/<command>-<UTC time>)")
    parser.add_argument("--set", dest="overrides", type=_override, action="append",
                        default=[], metavar="PATH=VALUE",
                        help="set a key of fastgw's config for the run (YAML value; "
                             "repeatable), e.g. gateway.observability.metrics.enabled=false")


def _generator(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generator", choices=("wrk", "openloop"), default=None,
                        help="wrk (closed loop; the default when installed) or the built-in "
                             "open-loop generator at --rate")
    parser.add_argument("--rate", type=_positive_float, default=5000.0,
                        help="open loop: requests per second offered (default 5000)")
    parser.add_argument("--runs", type=positive_int, default=3,
                        help="measured runs per target, alternating between targets "
                             "(default 3)")
    parser.add_argument("--threads", type=positive_int, default=1, help="wrk threads")
    parser.add_argument("--warmup", type=duration, default=3.0,
                        metavar="DURATION",
                        help="unrecorded run per target first (default 3s; 0 for none)")


def _idle_args(parser: argparse.ArgumentParser, flag: str) -> None:
    parser.add_argument(flag, dest="idle_connections", type=positive_int, default=10000,
                        help="idle-10k: idle connections held (default 10000)")
    parser.add_argument("--concurrency", type=positive_int, default=200,
                        help="idle-10k: connections the client opens at once (default 200)")
    parser.add_argument("--probe-requests", type=positive_int, default=200,
                        help="idle-10k: sequential requests of the latency probe (default 200)")
    parser.add_argument("--load", type=duration, default=3.0, metavar="DURATION",
                        help="idle-10k: wrk -c10 run beside the idle connections (default 3s)")
    parser.add_argument("--hold", type=positive_duration, default=5.0, metavar="DURATION",
                        help="idle-10k: time the connections are held idle while fastgw's "
                             "CPU is read (default 5s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description="fastgw benchmarks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("list", help="list the scenarios and whether this build can run them")

    run = commands.add_parser("run", help="run scenarios against fastgw and its peers")
    run.add_argument("--scenario", type=_scenarios, required=True,
                     help=f"one or more of {', '.join(SCENARIOS)}, comma-separated, or all")
    _common(run, duration="10s", connections=50)
    _generator(run)
    run.add_argument("--target", dest="target_list", type=_target, action="append", default=[],
                     metavar="NAME=VALUE",
                     help="a stricter target for the verdict, e.g. p99_ms=5, rps=20000, "
                          "cpu_vs_nginx=1.3 (repeatable)")
    run.add_argument("--targets", dest="targets_file", type=Path, default=None,
                     help="stricter targets from a YAML file (docs/benchmarking.md)")
    run.add_argument("--profile", action="store_true",
                     help="after the runs, one extra fastgw run under py-spy (and perf)")
    _idle_args(run, "--idle-connections")

    idle = commands.add_parser("idle", help="the idle-10k scenario alone")
    idle.add_argument("--workers", type=positive_int, default=1)
    idle.add_argument("--path", default=None)
    idle.add_argument("--out", type=Path, default=None)
    _idle_args(idle, "--connections")

    sweep = commands.add_parser("sweep", help="the highest rate whose p99 stays under a target")
    sweep.add_argument("--scenario", type=_one_scenario, default=SCENARIOS["passthrough"])
    sweep.add_argument("--target-p99", type=_milliseconds, default=10.0, metavar="DURATION",
                       help="p99 to stay under: 10ms, 0.05s, or a number of ms (default 10ms)")
    sweep.add_argument("--start-rate", type=_positive_float, default=1000.0)
    sweep.add_argument("--max-rate", type=_positive_float, default=200000.0)
    sweep.add_argument("--resolution", type=_positive_float, default=0.05,
                       help="stop bisecting when the bracket is this narrow (default 0.05)")
    _common(sweep, duration="5s", connections=100)

    scale = commands.add_parser("scale", help="the scaling curve over worker counts")
    scale.add_argument("--scenarios", type=_scenarios, default=None,
                       help="default passthrough,full")
    scale.add_argument("--workers-list", type=_workers_list, default=(1, 2, 4, 8))
    _common(scale, duration="10s", connections=50)
    _generator(scale)

    compare = commands.add_parser("compare", help="what changed between two results.json")
    compare.add_argument("files", nargs=2, metavar="RESULTS.json")
    compare.add_argument("--out", default=None, help="also write the Markdown to this file")
    compare.add_argument("--threshold", default=None,
                         help="changes below this %% are never flagged (default 2)")
    return parser


def _out_dir(command: str, given: Path | None) -> Path:
    if given is not None:
        return given.resolve()  # configs written there name absolute paths
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path(__file__).resolve().parent / "out" / f"{command}-{stamp}"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _options(args: argparse.Namespace, command: str) -> Any:
    from bench.runner import Options
    from bench.verdict import Targets, load_targets

    targets = Targets()
    if getattr(args, "targets_file", None) is not None:
        try:
            targets = load_targets(args.targets_file)
        except ValueError as error:
            raise BenchError(str(error)) from None
    targets = targets.merged(getattr(args, "target_list", []))
    generator = getattr(args, "generator", None) or (
        "wrk" if shutil.which("wrk") else "openloop")
    # every tool this command will need, checked before anything starts
    if generator == "wrk" or getattr(args, "profile", False):
        from bench.wrk import wrk_binary

        wrk_binary()
    if generator == "openloop" or args.command == "sweep":
        from bench.openloop import require_hdr

        require_hdr()
    if getattr(args, "profile", False) and shutil.which("py-spy") is None:
        raise BenchError("--profile needs py-spy (pip install 'fastgw[bench]')")
    if args.command == "scale" and generator == "openloop":
        raise BenchError("scale needs wrk: the open-loop generator offers a fixed rate, so its "
                         "RPS would only echo --rate (apt-get install wrk)")
    return Options(
        duration_s=getattr(args, "duration", 10.0), runs=getattr(args, "runs", 1),
        connections=getattr(args, "connections", 50), threads=getattr(args, "threads", 1),
        warmup_s=getattr(args, "warmup", 0.0), path=args.path,
        workers=args.workers, peers=getattr(args, "peers", ()),
        out=_out_dir(args.command, args.out), profile=getattr(args, "profile", False),
        command=command, generator=generator, rate=getattr(args, "rate", 5000.0),
        processes=getattr(args, "processes", 1), targets=targets,
        overrides=tuple(getattr(args, "overrides", ())))


def _run(args: argparse.Namespace, opts: Any) -> dict[str, Any]:
    from bench import suite

    if args.command == "sweep":
        from bench.modes import run_sweep

        return run_sweep(args.scenario, opts, target_p99_ms=args.target_p99,
                         start_rate=args.start_rate, max_rate=args.max_rate,
                         resolution=args.resolution)
    if args.command == "scale":
        from bench.modes import run_scale

        scenarios = args.scenarios or [SCENARIOS["passthrough"], SCENARIOS["full"]]
        return run_scale(scenarios, opts, args.workers_list)
    idle = suite.IdleOptions(connections=args.idle_connections, concurrency=args.concurrency,
                             probe_requests=args.probe_requests, load_s=args.load,
                             hold_s=args.hold)
    scenarios = [SCENARIOS["idle-10k"]] if args.command == "idle" else args.scenario
    return suite.run_suite(scenarios, opts, idle)


def _list() -> None:
    for name, scenario in SCENARIOS.items():
        reason = scenario.skip_reason()
        state = "runs" if reason is None else f"skipped ({reason})"
        print(f"{name:13s} {scenario.description}\n{'':13s} {state}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "list":
        _list()
        return 0
    if args.command == "compare":
        from bench import compare

        extra = [*(["--out", args.out] if args.out else []),
                 *(["--threshold", args.threshold] if args.threshold else [])]
        return compare.main([*args.files, *extra])
    command = "python -m bench " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT too: a shell may
        signal.signal(signum, _interrupt)  # have started us with it ignored (cmd &)
    try:
        opts = _options(args, command)
        results = _run(args, opts)
    except BenchError as error:
        for line in str(error).splitlines():
            print(f"bench: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; every started process was stopped", file=sys.stderr)
        return 130
    failed = [name for name, e in results["scenarios"].items() if e["status"] == "failed"]
    plots = results.get("plots", {})
    print(f"\nwrote {opts.out}/results.json, report.md" +
          "".join(f", {name}" for name in plots.get("files", [])))
    if plots.get("error"):
        print(f"bench: {plots['error']}", file=sys.stderr)
    for name in failed:
        print(f"bench: {name} failed: {results['scenarios'][name]['reason'].splitlines()[0]}",
              file=sys.stderr)
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
