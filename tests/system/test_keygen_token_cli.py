"""``fastgw keygen`` and ``fastgw token`` as a user runs them: real processes, real files."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import jwt
import pytest


def fastgw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastgw", *args],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def assert_one_line_failure(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("fastgw: "), lines
    for needle in needles:
        assert needle in lines[0], lines
    return lines[0]


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_keygen_then_token_verifies(tmp_path: Path, alg: str) -> None:
    out = tmp_path / "keys"
    made = fastgw("keygen", "--alg", alg, "--out", str(out))
    assert made.returncode == 0, made.stderr
    private, public, jwks = out / "private.pem", out / "public.pem", out / "jwks.json"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    kid = json.loads(jwks.read_text())["keys"][0]["kid"]
    for path in (private, public, jwks):
        assert str(path) in made.stdout
    assert f"kid:         {kid}\n" in made.stdout
    assert f"gateway.authentication.jwt.public_key_file: {public}" in made.stdout
    assert f"gateway.authentication.jwt.algorithm: {alg}" in made.stdout

    minted = fastgw(
        "token", "--key", str(private), "--customer", "c1", "--tier", "pro",
        "--permissions", "a,b", "--ttl", "10m",
    )  # fmt: skip
    assert minted.returncode == 0, minted.stderr
    assert minted.stderr == ""
    assert minted.stdout.count("\n") == 1  # the token and nothing else
    token = minted.stdout.strip()
    assert jwt.get_unverified_header(token)["kid"] == kid
    claims = jwt.decode(token, public.read_bytes(), algorithms=[alg])
    assert (claims["customer_id"], claims["tier"], claims["permissions"]) == (
        "c1",
        "pro",
        ["a", "b"],
    )
    assert claims["exp"] - claims["iat"] == 600


def test_second_keygen_refuses_and_keeps_the_old_key(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    assert fastgw("keygen", "--alg", "EdDSA", "--out", str(out)).returncode == 0
    before = {
        name: (out / name).read_bytes() for name in ("private.pem", "public.pem", "jwks.json")
    }
    again = fastgw("keygen", "--alg", "ES256", "--out", str(out))
    line = assert_one_line_failure(again)
    assert line == f"fastgw: {out / 'private.pem'} exists; not overwritten"
    after = {name: (out / name).read_bytes() for name in before}
    assert after == before


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("keys")
    assert fastgw("keygen", "--alg", "ES256", "--out", str(out)).returncode == 0
    return out


def test_bad_customer_id(key_dir: Path) -> None:
    result = fastgw("token", "--key", str(key_dir / "private.pem"), "--customer", "c 1")
    assert_one_line_failure(result, "--customer", "'c 1'")


def test_missing_key_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    result = fastgw("token", "--key", str(missing), "--customer", "c1")
    assert_one_line_failure(result, str(missing))


def test_public_key_given_as_key(key_dir: Path) -> None:
    public = key_dir / "public.pem"
    result = fastgw("token", "--key", str(public), "--customer", "c1")
    assert_one_line_failure(result, str(public), "public key")


@pytest.mark.parametrize("ttl", ["0", "0s", "-5m", "soon"])
def test_bad_ttl(key_dir: Path, ttl: str) -> None:
    result = fastgw(
        "token", "--key", str(key_dir / "private.pem"), "--customer", "c1", f"--ttl={ttl}"
    )
    assert_one_line_failure(result, "--ttl")


def test_incompatible_alg(key_dir: Path) -> None:
    result = fastgw("token", "--key", str(key_dir / "private.pem"), "--customer", "c1",
                    "--alg", "RS256")  # fmt: skip
    assert_one_line_failure(result, "--alg RS256", "EC P-256", "ES256")


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    result = fastgw("token", "--key", str(tmp_path / "nope.pem"), "--customer", "c/1",
                    "--ttl", "0")  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 3 and all(line.startswith("fastgw: ") for line in lines), lines
    assert "Traceback" not in result.stderr
