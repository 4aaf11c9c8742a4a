"""Revocation across instances: two ``fastgw serve`` gateways (two workers each) share one real
redis-server; ``fastgw revoke`` run once is honoured by every worker of both within a second,
for tokens each worker had already verified and cached.

Each gateway gets several keep-alive connections, opened and used once before the revocation,
so the token sits in the cache of whichever worker accepted each connection; after the
command, every one of those connections must answer 401 within the bound.
"""

from __future__ import annotations

import http.client
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from fastgw.keys import PrivateKey, load_private_key, write_key_pair
from fastgw.listen import free_port
from fastgw.tokens import mint_token
from tests.integration.conftest import (
    IO_TIMEOUT_S,
    REPO_ROOT,
    MockBackend,
    Proc,
    subprocess_env,
    wait_until,
)
from tests.support.redis_server import RedisServer

CONNECTIONS_PER_GATEWAY = 6
HONOURED_WITHIN_S = 1.0  # the bound; the poll interval below is half of it


def _config(port: int, backend: int, public_pem: Path, redis_address: str) -> str:
    return (
        "gateway:\n"
        f"  server: {{host: 127.0.0.1, port: {port}}}\n"
        "  authentication:\n"
        f"    jwt: {{public_key_file: {public_pem}, algorithm: EdDSA}}\n"
        "    revocation: {enabled: true, poll_interval: 500ms}\n"
        f"  rate_limiting: {{redis: {{address: '{redis_address}'}}}}\n"
        "  observability: {metrics: {port: 0}}\n"
        "routing:\n"
        f"  metald_instances: [{{host: 127.0.0.1, port: {backend}}}]\n"
        "routes: [{endpoint: Echo, path_prefix: /echo}]\n"
        "rate_limits:\n"
        "  customer_tiers: {free: {requests_per_second: 1000000, burst_size: 1000000}}\n"
    )


class Instance:
    def __init__(self, tmp: Path, name: str, config: str, port: int) -> None:
        self.port = port
        self.config_path = tmp / f"{name}.yaml"
        self.config_path.write_text(config)
        self.proc = Proc(
            [sys.executable, "-m", "fastgw", "serve", "-c", str(self.config_path),
             "--workers", "2"],
            tmp,
        )
        self.proc.wait_stdout("fastgw listening on")

    def connections(self, token: str) -> list[http.client.HTTPConnection]:
        """Keep-alive connections that each carried one accepted request with ``token``."""
        opened = []
        for _ in range(CONNECTIONS_PER_GATEWAY):
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=IO_TIMEOUT_S)
            assert status(conn, token) == 200
            opened.append(conn)
        return opened


def status(conn: http.client.HTTPConnection, token: str) -> int:
    conn.request("GET", "/echo/me", headers={"Authorization": f"Bearer {token}"})
    reply = conn.getresponse()
    reply.read()
    return reply.status


@pytest.fixture
def instances(
    tmp_path: Path, mock_backend: MockBackend, redis_clean: RedisServer
) -> Iterator[tuple[list[Instance], PrivateKey]]:
    keys = write_key_pair(tmp_path / "keys", "EdDSA")
    started: list[Instance] = []
    try:
        for name in ("east", "west"):
            port = free_port()
            config = _config(port, mock_backend.port, keys.public_pem, redis_clean.unix_address)
            started.append(Instance(tmp_path, name, config, port))
        yield started, load_private_key(keys.private_pem)
    finally:
        for instance in started:
            instance.proc.kill()


def revoke(config: Path, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fastgw", "revoke", "-c", str(config), *args],
        cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def assert_all_refused_within(conns: list[http.client.HTTPConnection], token: str) -> float:
    """Poll every connection until each answers 401; the seconds it took for the last."""
    started = time.monotonic()
    pending = list(conns)

    def all_refused() -> bool:
        pending[:] = [conn for conn in pending if status(conn, token) != 401]
        return not pending

    wait_until(all_refused, HONOURED_WITHIN_S, "every worker of both gateways to refuse")
    return time.monotonic() - started


def test_a_revoked_jti_is_refused_by_every_worker_of_every_instance(
    instances: tuple[list[Instance], PrivateKey],
) -> None:
    gateways, key = instances
    revoked = mint_token(key, customer_id="acme", ttl_s=3600.0)
    kept = mint_token(key, customer_id="acme", ttl_s=3600.0)  # another jti, same customer
    jti = jwt.decode(revoked, options={"verify_signature": False})["jti"]
    conns = [conn for gateway in gateways for conn in gateway.connections(revoked)]
    try:
        revoke(gateways[0].config_path, "--jti", jti, "--until", "1h")
        assert_all_refused_within(conns, revoked)
        for conn in conns:  # the same connections still serve the customer's other token
            assert status(conn, kept) == 200
    finally:
        for conn in conns:
            conn.close()


def test_a_revoked_customer_loses_every_token_issued_before(
    instances: tuple[list[Instance], PrivateKey],
) -> None:
    gateways, key = instances
    now = time.time()
    old = mint_token(key, customer_id="mallory", ttl_s=3600.0, now=now - 10)
    other = mint_token(key, customer_id="alice", ttl_s=3600.0, now=now - 10)
    fresh = mint_token(key, customer_id="mallory", ttl_s=3600.0, now=now)
    conns = [conn for gateway in gateways for conn in gateway.connections(old)]
    try:
        # Tokens issued before the cut are revoked; the one issued after it is not.
        revoke(gateways[1].config_path, "--customer", "mallory", "--before", str(int(now) - 5))
        assert_all_refused_within(conns, old)
        assert all(status(conn, other) == 200 for conn in conns)
        assert all(status(conn, fresh) == 200 for conn in conns)
    finally:
        for conn in conns:
            conn.close()
