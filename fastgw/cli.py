"""The ``fastgw`` command (contract A1). Every expected failure is one line per problem and a
non-zero exit; a traceback here is a bug."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fastgw.errors import FastgwError


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (shared with the bench command line)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def positive_duration(text: str) -> float:
    """argparse type: a duration > 0 in seconds (``10s``, ``500ms``; shared with the bench)."""
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration > 0, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0..65535, got {value}")
    return value


def _seconds(text: str) -> float:
    from fastgw.config.units import parse_duration

    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastgw", description="fastgw API gateway")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="gateway + 3 mock metald instances, no files needed")
    demo.add_argument("--port", type=_port, default=8080, help="gateway port (0 = any free)")
    demo.add_argument("--workers", type=positive_int, default=1)

    serve = commands.add_parser("serve", help="run the gateway: master + pre-forked workers")
    serve.add_argument("-c", "--config", required=True, metavar="FILE")
    serve.add_argument("--workers", type=positive_int, default=None)
    serve.add_argument(
        "--drain-timeout",
        type=_seconds,
        default=None,
        metavar="DURATION",
        help="time in-flight requests get on SIGTERM/reload (default 30s)",
    )

    check = commands.add_parser("check-config", help="validate a config file (exit 0 or 2)")
    check.add_argument("-c", "--config", required=True, metavar="FILE")

    mock = commands.add_parser("mock-metald", help="one mock metald backend instance")
    mock.add_argument("--port", type=_port, required=True)
    mock.add_argument("--name", default="metald")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--delay-ms", type=float, default=0.0)
    mock.add_argument("--fail-rate", type=float, default=0.0)
    mock.add_argument("--fail-status", type=int, default=503)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except FastgwError as error:
        for line in str(error).splitlines():
            print(f"fastgw: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "check-config":
        from fastgw.config.check import check_config_file

        problems = check_config_file(args.config)
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            return 2
        print(f"{args.config}: ok")
        return 0
    if args.command == "serve":
        from fastgw.limits import DRAIN_TIMEOUT_S
        from fastgw.supervisor import run_serve

        drain = DRAIN_TIMEOUT_S if args.drain_timeout is None else args.drain_timeout
        return run_serve(args.config, args.workers, drain)
    if args.command == "demo":
        from fastgw.demo import run_demo

        return run_demo(port=args.port, workers=args.workers)
    if args.command == "mock-metald":
        from fastgw.mock.metald import run_mock_metald

        run_mock_metald(
            port=args.port,
            name=args.name,
            host=args.host,
            delay_ms=args.delay_ms,
            fail_rate=args.fail_rate,
            fail_status=args.fail_status,
        )
        return 0
    raise AssertionError(f"unhandled command {args.command}")
