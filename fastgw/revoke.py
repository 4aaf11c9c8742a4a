"""``fastgw revoke``: add to, remove from and print the token revocation list in Redis.

The list and its Redis layout belong to ``fastgw.auth.revocation``; this module owns the command
line around it: what TIME means, which options go together, the text printed, and the exit
status (0 done; 1 Redis unreachable or failing, one line on stderr; 2 bad arguments or config).

TIME is unix seconds (``1767225600``, ``1767225600.5``), ``now``, or a duration from now
(``24h``, ``90m``, ``1h30m``); a bare number is always unix seconds, never a duration.

A jti entry lasts until the token's ``exp`` (plus the largest leeway), then the gateways drop
it and the next write prunes it: kept any shorter, the token would be accepted again. So a jti
is never revoked on a guessed exp: ``--jti ID --until TIME`` gives it, or ``--token JWT`` (the
token itself, ``-`` for stdin) carries it. The token's payload is read WITHOUT checking its
signature: jti and exp only identify the token to refuse, they grant nothing, and a forged
token naming someone else's jti can only make the gateways refuse that token.

Redis settings come from the config file's ``gateway.rate_limiting.redis``, whatever the rate
limiting backend, because that is where gateways using the file look for the list.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, NamedTuple

from fastgw.cli import duration
from fastgw.errors import FastgwError

if TYPE_CHECKING:
    from fastgw.config import Config
    from fastgw.redis_connect import SyncClient

_EPOCH: Final = re.compile(r"\d+(?:\.\d+)?")
_LATEST_EXP: Final = 253402300799  # 9999-12-31T23:59:59Z, fastgw.auth.revocation's bound
_MAX_NUMERIC_DATE: Final = 2**53  # the gateways refuse a larger exp (fastgw.auth.claims)
MAX_TOKEN_CHARS: Final = 65536


class RevokeUsageError(FastgwError):
    """Options that do not go together (argparse cannot say it); the CLI exits 2."""


class TimeArg(NamedTuple):
    """A TIME option as given: absolute unix seconds, or seconds from now."""

    seconds: float
    relative: bool

    def resolve(self, now: float) -> float:
        return now + self.seconds if self.relative else self.seconds


def time_argument(text: str) -> TimeArg:
    """argparse type for TIME (see the module docstring)."""
    if text == "now":
        return TimeArg(0.0, relative=True)
    if _EPOCH.fullmatch(text):
        return TimeArg(float(text), relative=False)
    try:
        return TimeArg(duration(text), relative=True)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected unix seconds, 'now' or a duration from now like 24h, got {text!r}"
        ) from None


def jti_argument(text: str) -> str:
    """argparse type for --jti."""
    from fastgw.auth.revocation import check_jti

    try:
        return check_jti(text)
    except FastgwError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--jti: ")) from None


class TokenArg(NamedTuple):
    """What ``--token`` identifies: its jti, and its exp (None: the token has no exp claim)."""

    jti: str
    exp: int | None


def token_argument(text: str, read_stdin: Callable[[], bytes] | None = None) -> TokenArg:
    """argparse type for --token: a compact JWT, or ``-`` to read one from stdin.

    Only the payload is decoded and its signature is NOT checked (see the module docstring).
    Errors never echo the token: it is a bearer credential.
    """
    if text == "-":
        raw = (read_stdin or sys.stdin.buffer.read)()
        source = "the token read from stdin"
    else:
        raw = text.encode("utf-8", "replace")
        source = "the token"
    return _token_claims(raw.strip(), source)


def _token_claims(token: bytes, source: str) -> TokenArg:
    from fastgw.auth.errors import TokenError
    from fastgw.auth.jws import b64url_decode, json_object
    from fastgw.auth.revocation import check_jti

    if not token:
        raise argparse.ArgumentTypeError(f"{source} is empty")
    if len(token) > MAX_TOKEN_CHARS:
        raise argparse.ArgumentTypeError(f"{source} is over {MAX_TOKEN_CHARS} characters")
    segments = token.split(b".")
    if len(segments) != 3 or not all(segments):
        raise argparse.ArgumentTypeError(
            f"{source} is not a JWT (three non-empty base64url segments joined by '.')"
        )
    try:
        claims = json_object(b64url_decode(segments[1]), "payload")
    except TokenError as error:
        raise argparse.ArgumentTypeError(f"{source} is not a JWT: {error.reason}") from None
    jti = claims.get("jti")
    if jti is None:
        raise argparse.ArgumentTypeError(
            f"{source} has no jti claim, so it cannot be revoked alone: "
            "revoke its customer (--customer ID) instead"
        )
    if not isinstance(jti, str):
        raise argparse.ArgumentTypeError(
            f"{source} has a jti claim that is not a string (gateways refuse such a token)"
        )
    try:
        check_jti(jti)
    except FastgwError as error:
        reason = str(error).removeprefix("--jti: ")
        raise argparse.ArgumentTypeError(
            f"{source}: its jti {reason}: revoke its customer (--customer ID) instead"
        ) from None
    exp = claims.get("exp")
    if exp is not None and (type(exp) is not int or not 0 <= exp < _MAX_NUMERIC_DATE):
        raise argparse.ArgumentTypeError(
            f"{source} has an exp claim that is not an integer date (gateways refuse such a token)"
        )
    # Beyond 9999 the token never expires in practice: it is revoked as long as the list goes.
    return TokenArg(jti, None if exp is None else min(exp, _LATEST_EXP))


def customer_argument(text: str) -> str:
    """argparse type for --customer."""
    from fastgw.auth.revocation import check_customer_id

    try:
        return check_customer_id(text)
    except FastgwError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--customer: ")) from None


def _check_combination(args: argparse.Namespace) -> None:
    """Rules across options, checked before the config is read or Redis is reached."""
    from fastgw.auth.revocation import JTI_KEEP_AFTER_EXP_S

    token: TokenArg | None = args.token
    if args.jti is None and token is None and args.customer is None and not args.list:
        raise RevokeUsageError("revoke: one of --jti, --token, --customer or --list is required")
    if token is not None and (args.customer is not None or args.list):
        raise RevokeUsageError("revoke: --token goes with neither --customer nor --list")
    if args.list and (args.forget or args.until is not None or args.before is not None):
        raise RevokeUsageError("revoke: --list takes no --forget, --until or --before")
    if args.until is not None and args.jti is None and token is None:
        raise RevokeUsageError("revoke: --until (the token's exp) goes with --jti or --token")
    if args.before is not None and args.customer is None:
        raise RevokeUsageError("revoke: --before goes with --customer")
    if args.forget and (args.until is not None or args.before is not None):
        raise RevokeUsageError("revoke: --forget takes no --until or --before")
    if token is not None and args.jti is not None and args.jti != token.jti:
        raise RevokeUsageError(
            f"revoke: --jti {args.jti!r} is not the token's jti ({token.jti!r}); "
            "give one of them, or the matching pair"
        )
    if args.forget:
        return
    if args.jti is not None and token is None and args.until is None:
        raise RevokeUsageError(
            "revoke: --jti needs the token's exp: give --until TIME, or --token JWT to read it "
            "from the token (kept any shorter, the token would be accepted again)"
        )
    if token is not None and token.exp is None and args.until is None:
        raise RevokeUsageError(
            "revoke: the token has no exp claim (it never expires): pass --until TIME, how "
            "long to keep it revoked"
        )
    if token is not None and token.exp is not None:
        if args.until is not None:
            raise RevokeUsageError(
                f"revoke: the token carries its exp ({_when(token.exp)}): drop --until"
            )
        if token.exp + JTI_KEEP_AFTER_EXP_S < time.time():
            raise RevokeUsageError(
                f"revoke: the token expired at {_when(token.exp)}: no gateway accepts it, "
                "nothing to revoke"
            )


def _when(epoch: float) -> str:
    """``2026-01-01T00:00:00Z (1767225600)``: readable and exact."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    return f"{stamp} ({epoch:.0f})" if epoch == math.floor(epoch) else f"{stamp} ({epoch:.3f})"


def run_revoke(args: argparse.Namespace) -> int:
    """The ``revoke`` command; ``args`` as parsed by ``fastgw.cli.build_parser``."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisClusterException, RedisError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from fastgw.config import load_config
    from fastgw.redis_connect import BACKGROUND_TIMEOUT_FLOOR_S, describe, sync_client

    _check_combination(args)
    config = load_config(args.config)
    redis_config = config.gateway.rate_limiting.redis
    if not config.gateway.authentication.revocation.enabled:
        print(
            f"fastgw: warning: {args.config}: gateway.authentication.revocation.enabled is "
            "false: gateways using this config won't honour the revocation list",
            file=sys.stderr,
        )
    where = describe(redis_config)
    try:
        client = sync_client(
            redis_config, min_timeout_s=BACKGROUND_TIMEOUT_FLOOR_S, max_connections=1
        )
        try:
            return _act(args, config, client)
        finally:
            client.close()
    except (RedisConnectionError, RedisTimeoutError, RedisClusterException, OSError) as error:
        print(
            f"fastgw: revoke: cannot reach Redis at {where}: {_first_line(error)}", file=sys.stderr
        )
        return 1
    except RedisError as error:
        print(f"fastgw: revoke: Redis at {where} failed: {_first_line(error)}", file=sys.stderr)
        return 1


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _act(args: argparse.Namespace, config: Config, client: SyncClient) -> int:
    from fastgw.auth.revocation import (
        forget_customer,
        forget_jti,
        list_revocations,
        revoke_customer,
        revoke_jti,
    )

    now = time.time()
    if args.list:
        _print_list(*list_revocations(client), now)
        return 0
    honoured = (
        "gateways with revocation enabled honour it within "
        f"{config.gateway.authentication.revocation.poll_interval_s:g}s"
    )
    token: TokenArg | None = args.token
    jti: str | None = token.jti if token is not None else args.jti
    if jti is not None:
        if args.forget:
            found = forget_jti(client, jti, now)
            print(f"jti {jti!r} {'removed from' if found else 'was not in'} the list")
            return 0
        if token is not None and token.exp is not None:
            exp = token.exp
            source = "the token's exp, "
        else:
            until_arg: TimeArg = args.until  # _check_combination: given when there is no exp
            exp = math.ceil(until_arg.resolve(now))
            if exp < now and not until_arg.relative:
                raise RevokeUsageError(
                    f"revoke: --until {until_arg.seconds:.15g} is in the past (a bare number is "
                    "unix seconds; a duration from now needs a unit, like 24h)"
                )
            source = ""
        revoke_jti(client, jti, exp, now)
        print(f"revoked jti {jti!r} until {source}{_when(exp)}; {honoured}")
        return 0
    if args.forget:
        found = forget_customer(client, args.customer, now)
        print(f"customer {args.customer!r} {'removed from' if found else 'was not in'} the list")
        return 0
    before_arg = time_argument("now") if args.before is None else args.before
    not_before = before_arg.resolve(now)
    revoke_customer(client, args.customer, not_before, now)
    print(
        f"revoked every token of customer {args.customer!r} issued before "
        f"{_when(not_before)}; {honoured}"
    )
    return 0


def _print_list(jtis: dict[str, int], customers: dict[str, float], now: float) -> None:
    print(f"revoked tokens (jti, until its exp): {len(jtis)}")
    for jti in sorted(jtis):
        exp = jtis[jti]
        note = "  (expired)" if exp < now else ""
        print(f"  {jti if jti.isprintable() else repr(jti)}  until {_when(exp)}{note}")
    print(f"revoked customers (every token issued before): {len(customers)}")
    for customer in sorted(customers):
        print(f"  {customer}  before {_when(customers[customer])}")
