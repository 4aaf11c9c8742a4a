"""``fastgw revoke`` as an operator meets it: a subprocess against a real redis-server, exit
codes 0 / 1 (Redis unreachable) / 2 (bad arguments or config), one line per problem, no
tracebacks."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from cryptography.hazmat.primitives.asymmetric import ec

from fastgw.auth.revocation import CUSTOMER_KEY, JTI_KEY, VERSION_KEY
from fastgw.keys import b64url
from fastgw.listen import free_port
from fastgw.tokens import mint_token
from tests.support.redis_server import RedisServer


def fastgw(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastgw", *args],
        check=False, capture_output=True, text=True, timeout=60, input=stdin,
    )  # fmt: skip


def unsigned(claims: dict[str, object]) -> str:
    """A JWT with these claims and a signature no key made: ``--token`` never checks it."""
    header = b64url(json.dumps({"alg": "ES256", "typ": "JWT"}).encode())
    return f"{header}.{b64url(json.dumps(claims).encode())}.{b64url(b'not-a-signature')}"


def write_config(path: Path, address: str, *, enabled: bool = True) -> Path:
    path.write_text(
        "gateway:\n"
        f"  authentication: {{revocation: {{enabled: {str(enabled).lower()}}}}}\n"
        f"  rate_limiting: {{redis: {{address: '{address}'}}}}\n"
        "routing: {metald_instances: [{host: 127.0.0.1, port: 9001}]}\n"
    )
    return path


@pytest.fixture
def config(redis_clean: RedisServer, tmp_path: Path) -> Path:
    """A config pointing at the test server over TCP (the unit tests use its unix socket)."""
    return write_config(tmp_path / "gateway.yaml", redis_clean.address)


@pytest.fixture
def rc(redis_clean: RedisServer) -> Iterator[redis.Redis]:
    with redis_clean.client() as client:
        yield client


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def test_revoke_a_jti_until_a_duration_or_a_time(config: Path, rc: redis.Redis) -> None:
    before = time.time()
    out = ok(fastgw("revoke", "-c", str(config), "--jti", "tok-1", "--until", "2h"))
    assert "revoked jti 'tok-1' until" in out and "within 0.5s" in out
    exp = int(rc.hget(JTI_KEY, "tok-1") or 0)
    assert before + 7200 <= exp <= time.time() + 7201
    ok(fastgw("revoke", "-c", str(config), "--jti", "tok-2", "--until", "4102444800"))
    assert rc.hget(JTI_KEY, "tok-2") == b"4102444800"
    assert rc.get(VERSION_KEY) is not None


def test_revoke_a_token_keeps_it_until_its_real_exp(config: Path, rc: redis.Redis) -> None:
    # A real signed token, 3 days long: a guessed 24 h would let it back in on day two.
    key = ec.generate_private_key(ec.SECP256R1())
    token = mint_token(key, customer_id="acme", ttl_s=3 * 86400.0)
    claims = payload_of(token)
    jti, exp = str(claims["jti"]), int(str(claims["exp"]))
    assert exp >= time.time() + 3 * 86400 - 5
    out = ok(fastgw("revoke", "-c", str(config), "--token", token))
    assert f"revoked jti {jti!r} until the token's exp, " in out and f"({exp});" in out
    assert token not in out
    assert rc.hgetall(JTI_KEY) == {jti.encode(): str(exp).encode()}

    # From stdin (kept out of ps and shell history), with a matching --jti: the same entry.
    other = unsigned({"jti": "tok-stdin", "exp": 4102444800, "customer_id": "acme"})
    ok(fastgw("revoke", "-c", str(config), "--jti", "tok-stdin", "--token", "-", stdin=other))
    assert rc.hget(JTI_KEY, "tok-stdin") == b"4102444800"

    # A token without exp never expires: --until says how long to keep it.
    forever = unsigned({"jti": "tok-forever"})
    ok(fastgw("revoke", "-c", str(config), "--token", forever, "--until", "4102444801"))
    assert rc.hget(JTI_KEY, "tok-forever") == b"4102444801"

    # --forget takes the token's jti, whatever its exp.
    out = ok(fastgw("revoke", "-c", str(config), "--token", "-", "--forget", stdin=forever))
    assert "jti 'tok-forever' removed from the list" in out
    assert not rc.hexists(JTI_KEY, "tok-forever")


def payload_of(token: str) -> dict[str, object]:
    """The claims of a compact JWT, decoded here (the test's own reading, not the CLI's)."""
    segment = token.split(".")[1]
    claims: dict[str, object] = json.loads(base64.urlsafe_b64decode(segment + "==="))
    return claims


def test_a_jti_without_its_exp_is_refused_and_stores_nothing(config: Path, rc: redis.Redis) -> None:
    # The old default (now + 24h) let a longer-lived token become valid again: now exit 2.
    result = fastgw("revoke", "-c", str(config), "--jti", "tok-3")
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "--jti needs the token's exp: give --until TIME, or --token JWT" in lines[0]
    assert rc.exists(JTI_KEY, CUSTOMER_KEY, VERSION_KEY) == 0


def test_revoke_a_customer_before_now_or_a_time(config: Path, rc: redis.Redis) -> None:
    before = time.time()
    out = ok(fastgw("revoke", "-c", str(config), "--customer", "cust-7"))
    assert "revoked every token of customer 'cust-7' issued before" in out
    assert before <= float(rc.hget(CUSTOMER_KEY, "cust-7") or 0) <= time.time()
    ok(fastgw("revoke", "-c", str(config), "--customer", "cust-8", "--before", "1767225600.5"))
    assert float(rc.hget(CUSTOMER_KEY, "cust-8") or 0) == 1767225600.5


def test_list_and_forget(config: Path, rc: redis.Redis) -> None:
    out = ok(fastgw("revoke", "-c", str(config), "--list"))
    assert "revoked tokens (jti, until its exp): 0" in out
    assert "revoked customers (every token issued before): 0" in out
    ok(fastgw("revoke", "-c", str(config), "--jti", "tok-1", "--until", "4102444800"))
    ok(fastgw("revoke", "-c", str(config), "--customer", "cust-7", "--before", "1767225600"))
    out = ok(fastgw("revoke", "-c", str(config), "--list"))
    assert "  tok-1  until 2100-01-01T00:00:00Z (4102444800)" in out.splitlines()
    assert "  cust-7  before 2026-01-01T00:00:00Z (1767225600)" in out.splitlines()

    out = ok(fastgw("revoke", "-c", str(config), "--jti", "tok-1", "--forget"))
    assert "removed from the list" in out
    out = ok(fastgw("revoke", "-c", str(config), "--jti", "tok-1", "--forget"))
    assert "was not in the list" in out
    ok(fastgw("revoke", "-c", str(config), "--customer", "cust-7", "--forget"))
    assert rc.hlen(JTI_KEY) == 0 and rc.hlen(CUSTOMER_KEY) == 0
    out = ok(fastgw("revoke", "-c", str(config), "--list"))
    assert "tok-1" not in out and "cust-7" not in out


def test_works_over_a_unix_socket_and_warns_when_revocation_is_off(
    redis_clean: RedisServer, rc: redis.Redis, tmp_path: Path
) -> None:
    off = write_config(tmp_path / "off.yaml", redis_clean.unix_address, enabled=False)
    result = fastgw("revoke", "-c", str(off), "--jti", "tok-9", "--until", "1h")
    ok(result)
    assert "won't honour the revocation list" in result.stderr
    assert rc.hexists(JTI_KEY, "tok-9")


def test_unreachable_redis_is_exit_1_with_one_line(tmp_path: Path) -> None:
    dead = write_config(tmp_path / "dead.yaml", f"127.0.0.1:{free_port()}")
    token = unsigned({"jti": "tok-2", "exp": 4102444800})
    for args in (
        ("--jti", "tok-1", "--until", "1h"),
        ("--token", token),
        ("--list",),
        ("--customer", "c1", "--forget"),
    ):
        result = fastgw("revoke", "-c", str(dead), *args)
        assert result.returncode == 1, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("fastgw: revoke: cannot reach Redis at 127.0.0.1:"), lines
        assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--customer", "bad id"), "argument --customer: 'bad id' is not a valid customer id"),
        (("--jti", ""), "argument --jti:"),
        (("--jti", "t", "--until", "tomorrow"), "argument --until: expected unix seconds"),
        ((), "one of --jti, --token, --customer or --list is required"),
        (("--jti", "t", "--customer", "c"), "not allowed with argument"),
        (("--customer", "c", "--until", "1h"), "--until (the token's exp) goes with --jti or"),
        (("--jti", "t"), "--jti needs the token's exp: give --until TIME, or --token JWT"),
        (("--jti", "t", "--before", "1h"), "--before goes with --customer"),
        (("--list", "--forget"), "--list takes no --forget"),
        (("--jti", "t", "--forget", "--until", "1h"), "--forget takes no --until"),
        (("--jti", "t", "--until", "3600"), "--until 3600 is in the past"),
    ],
)
def test_bad_arguments_are_exit_2(
    config: Path, rc: redis.Redis, args: tuple[str, ...], needle: str
) -> None:
    refused_with_exit_2(fastgw("revoke", "-c", str(config), *args), needle, rc)


def refused_with_exit_2(
    result: subprocess.CompletedProcess[str], needle: str, rc: redis.Redis
) -> None:
    """One line saying ``needle``, exit 2, no traceback, and Redis left untouched."""
    assert result.returncode == 2, result
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    assert rc.exists(JTI_KEY, CUSTOMER_KEY, VERSION_KEY) == 0


def test_bad_config_is_exit_2_with_its_path(tmp_path: Path) -> None:
    result = fastgw("revoke", "-c", str(tmp_path / "missing.yaml"), "--list")
    assert result.returncode == 2 and "missing.yaml" in result.stderr
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(
        "gateway: {rate_limiting: {redis: {address: 'unix:///r.sock', cluster: true}}}\n"
        "routing: {metald_instances: [{host: 127.0.0.1, port: 9001}]}\n"
    )
    result = fastgw("revoke", "-c", str(cluster), "--list")
    assert result.returncode == 2
    assert "$.gateway.rate_limiting.redis.address: cluster: true needs" in result.stderr
    assert "Traceback" not in result.stderr


A_TOKEN = unsigned({"jti": "tok-1", "exp": 4102444800, "customer_id": "acme"})


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--token", A_TOKEN, "--jti", "tok-2"), "--jti 'tok-2' is not the token's jti ('tok-1')"),
        (("--token", A_TOKEN, "--customer", "acme"), "--token goes with neither --customer"),
        (("--token", A_TOKEN, "--list"), "--token goes with neither --customer nor --list"),
        (("--token", A_TOKEN, "--until", "1h"), "the token carries its exp (2100-01-01T00:00"),
        (
            ("--token", unsigned({"jti": "tok-1"})),
            "the token has no exp claim (it never expires): pass --until TIME",
        ),
        (
            ("--token", unsigned({"exp": 4102444800, "customer_id": "acme"})),
            "argument --token: the token has no jti claim, so it cannot be revoked alone: "
            "revoke its customer (--customer ID) instead",
        ),
        (
            ("--token", unsigned({"jti": 7, "exp": 4102444800})),
            "has a jti claim that is not a string",
        ),
        (
            ("--token", unsigned({"jti": "t", "exp": 4102444800.5})),
            "has an exp claim that is not an integer date",
        ),
        (("--token", unsigned({"jti": "t", "exp": 1767225600})), "the token expired at 2026-01"),
        (("--token", "eyJhbGciOiJFUzI1NiJ9.e30"), "the token is not a JWT (three non-empty"),
        (("--token", "eyJhbGciOiJFUzI1NiJ9.!!!.c2ln"), "the token is not a JWT: malformed"),
        (("--token", "eyJhbGciOiJFUzI1NiJ9.WzFd.c2ln"), "not a JWT: payload is not a JSON object"),
    ],
)
def test_bad_tokens_are_exit_2_and_never_echoed(
    config: Path, rc: redis.Redis, args: tuple[str, ...], needle: str
) -> None:
    result = fastgw("revoke", "-c", str(config), *args)
    refused_with_exit_2(result, needle, rc)
    assert args[1] not in result.stderr and args[1] not in result.stdout  # a bearer credential


@pytest.mark.parametrize(
    ("stdin", "needle"),
    [
        ("\xff\xfe not a jwt\n", "the token read from stdin is not a JWT (three"),
        ("", "the token read from stdin is empty"),
        (" \n", "the token read from stdin is empty"),
    ],
)
def test_a_bad_token_on_stdin_is_exit_2(
    config: Path, rc: redis.Redis, stdin: str, needle: str
) -> None:
    result = fastgw("revoke", "-c", str(config), "--token", "-", stdin=stdin)
    assert result.returncode == 2, result
    assert f"argument --token: {needle}" in result.stderr
    assert "Traceback" not in result.stderr
    assert rc.exists(JTI_KEY, CUSTOMER_KEY, VERSION_KEY) == 0
