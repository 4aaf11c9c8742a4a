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
    value = duration(text)
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


def duration(text: str) -> float:
    """argparse type: a duration >= 0 in seconds (``0``, ``500ms``; shared with the bench)."""
    from fastgw.config.units import parse_duration

    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    from fastgw.revoke import customer_argument, jti_argument, time_argument, token_argument

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
        type=duration,
        default=None,
        metavar="DURATION",
        help="time in-flight requests get on SIGTERM/reload (default 30s)",
    )

    check = commands.add_parser("check-config", help="validate a config file (exit 0 or 2)")
    check.add_argument("-c", "--config", required=True, metavar="FILE")

    keygen = commands.add_parser("keygen", help="write a signing key pair (PEM) and a JWKS file")
    keygen.add_argument("--alg", required=True, choices=("RS256", "ES256", "EdDSA"))
    keygen.add_argument("--out", required=True, metavar="DIR")
    keygen.add_argument("--kid", default=None, help="key id (default: RFC 7638 thumbprint)")
    keygen.add_argument("--bits", type=int, default=None, help="RSA key size (default 2048)")

    token = commands.add_parser("token", help="print a signed JWT for one customer")
    token.add_argument("--key", required=True, metavar="PRIVATE.pem")
    token.add_argument("--customer", required=True, metavar="ID")
    token.add_argument("--tier", default=None, help="rate-limit tier (default: free)")
    token.add_argument("--permissions", default=None, metavar="a,b")
    token.add_argument("--pool", default=None)
    token.add_argument("--ttl", default=None, metavar="DURATION", help="lifetime (default 1h)")
    token.add_argument("--kid", default=None, help="key id (default: RFC 7638 thumbprint)")
    token.add_argument("--alg", default=None, help="signature algorithm (default: from the key)")
    token.add_argument("--issuer", default=None, help="'iss' claim")
    token.add_argument("--audience", default=None, help="'aud' claim")

    revoke = commands.add_parser(
        "revoke", help="revoke a token (jti) or a customer's tokens in Redis; list; forget"
    )
    revoke.add_argument("-c", "--config", required=True, metavar="FILE")
    # One of --jti, --token, --customer, --list is required; --token may go with a matching
    # --jti, so that rule and the rest are checked in fastgw.revoke (exit 2 all the same).
    what = revoke.add_mutually_exclusive_group()
    what.add_argument(
        "--jti", type=jti_argument, metavar="ID", help="revoke one token by its jti (see --until)"
    )
    what.add_argument(
        "--customer", type=customer_argument, metavar="ID", help="revoke a customer's tokens"
    )
    what.add_argument("--list", action="store_true", help="print both lists")
    revoke.add_argument(
        "--token",
        type=token_argument,
        metavar="JWT",
        help="revoke this token (- reads it from stdin, keeping it out of ps and shell "
        "history) until its exp: its jti and exp are read WITHOUT checking the signature, "
        "only to identify the token",
    )
    revoke.add_argument(
        "--until",
        type=time_argument,
        metavar="TIME",
        help="the token's exp, unix seconds or a duration from now: required with --jti "
        "unless --token is given, and with a --token that has no exp",
    )
    revoke.add_argument(
        "--before",
        type=time_argument,
        metavar="TIME",
        help="with --customer: revoke tokens issued before TIME, unix seconds or a duration "
        "from now (default now)",
    )
    revoke.add_argument(
        "--forget", action="store_true", help="remove the --jti or --customer entry instead"
    )

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
    if args.command == "keygen":
        return _keygen(args)
    if args.command == "token":
        return _token(args)
    if args.command == "revoke":
        from fastgw.revoke import run_revoke

        return run_revoke(args)
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


def _keygen(args: argparse.Namespace) -> int:
    from fastgw.keys import write_key_pair

    files = write_key_pair(args.out, args.alg, kid=args.kid, bits=args.bits)
    print(f"private key: {files.private_pem} (mode 0600, keep it secret)")
    print(f"public key:  {files.public_pem}")
    print(f"jwks:        {files.jwks_json}")
    print(f"kid:         {files.kid}")
    print(
        f"config: gateway.authentication.jwt.public_key_file: {files.public_pem}"
        f"  gateway.authentication.jwt.algorithm: {files.algorithm}"
    )
    return 0


def _token(args: argparse.Namespace) -> int:
    """Only the token goes to stdout, so that ``TOKEN=$(fastgw token ...)`` just works."""
    from fastgw.config.units import DURATION_HINT, parse_duration
    from fastgw.keys import load_private_key
    from fastgw.tokens import (
        DEFAULT_TIER,
        DEFAULT_TTL,
        TokenError,
        check_customer_id,
        mint_token,
        parse_permissions,
    )

    problems: list[str] = []  # report every bad option at once, one line each
    ttl_text = DEFAULT_TTL if args.ttl is None else args.ttl
    ttl_s = 0.0
    try:
        ttl_s = parse_duration(ttl_text)
        if ttl_s <= 0:
            problems.append(f"--ttl: expected a duration > 0, got {ttl_text!r}")
    except ValueError as error:
        problems.append(f"--ttl: {error}: {ttl_text!r} ({DURATION_HINT})")
    try:
        check_customer_id(args.customer)
    except TokenError as error:
        problems.append(str(error))
    try:
        key = load_private_key(args.key)
    except FastgwError as error:
        problems.append(str(error))
    if problems:
        raise TokenError("\n".join(problems))
    token = mint_token(
        key,
        customer_id=args.customer,
        tier=DEFAULT_TIER if args.tier is None else args.tier,
        permissions=parse_permissions(args.permissions),
        pool=args.pool,
        ttl_s=ttl_s,
        kid=args.kid,
        algorithm=args.alg,
        issuer=args.issuer,
        audience=args.audience,
    )
    print(token)
    return 0
