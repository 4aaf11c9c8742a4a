"""``fastgw demo``: the gateway's main job on one machine, with nothing to set up.

Starts three mock metald instances (child processes on free loopback ports), makes an Ed25519
key pair and writes a memory-only config for them into a private temporary directory (dev
tokens on, JWTs verified with that key, no Redis), runs the real supervisor with its workers in
front of them, and prints ``curl`` lines to try (contract A1): a dev token, a signed JWT of each
tier, and an over-limit loop. Ctrl-C reaches every process of the terminal's group: the mocks
exit, the gateway drains (at most ``DEMO_DRAIN_TIMEOUT_S``), and anything still alive is
stopped on the way out; the temporary directory, private key included, goes with it.

Tiers and permissions are read back from the config file the supervisor loads, not assumed:
each tier of ``rate_limits.customer_tiers`` gets a token holding every permission that the
configured routes ask for, so the printed lines keep working when the defaults change.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml

from fastgw.config import Config, load_config
from fastgw.errors import BootError
from fastgw.keys import load_private_key, write_key_pair
from fastgw.listen import free_port
from fastgw.tokens import mint_token

MOCK_COUNT: Final = 3
MOCK_START_TIMEOUT_S: Final = 10.0
MOCK_STOP_TIMEOUT_S: Final = 3.0
DEMO_DRAIN_TIMEOUT_S: Final = 3.0
CUSTOMER: Final = "123"
# EdDSA: the shortest tokens (64-byte signatures) and the fastest key generation.
DEMO_ALGORITHM: Final = "EdDSA"
DEMO_TOKEN_TTL_S: Final = 24 * 3600.0
DEMO_CUSTOMER_PREFIX: Final = "acme-"
# The over-limit loop sends this many times the tier's burst: sequential curls refill only a
# few tokens meanwhile, so the second half of the loop is over the limit.
OVER_LIMIT_BURSTS: Final = 2


@dataclass(frozen=True, slots=True)
class DemoToken:
    """One signed JWT the demo prints: its tier, its customer and the compact token."""

    tier: str
    customer_id: str
    token: str


def _start_mock(name: str) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "fastgw", "mock-metald", "--port", "0", "--name", name],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    # Bounded: a mock that prints nothing within the limit is a boot failure.
    ready, _, _ = _select_readable(process.stdout.fileno(), MOCK_START_TIMEOUT_S)
    line = process.stdout.readline() if ready else ""
    if "listening on http://" not in line:
        process.kill()
        raise BootError(f"mock metald {name} did not start (said {line.strip()!r})")
    port = int(line.rsplit(":", 1)[1])
    return process, port


def _select_readable(fd: int, timeout_s: float) -> tuple[list[int], list[int], list[int]]:
    import select

    return select.select([fd], [], [], timeout_s)


def demo_config(
    gateway_port: int, backend_ports: list[int], public_key_file: str, admin_port: int = 0
) -> dict[str, object]:
    """The demo's config: the reference layout, memory limits, dev tokens and JWTs checked with
    ``public_key_file`` (EdDSA), default tiers and routes."""
    return {
        "gateway": {
            "server": {"host": "127.0.0.1", "port": gateway_port},
            "authentication": {
                "development": {"enabled": True},
                "jwt": {"public_key_file": public_key_file, "algorithm": DEMO_ALGORITHM},
            },
            "rate_limiting": {"backend": "memory"},
            "routing": {"backend_timeout": "10s", "retry_attempts": 2},
            "observability": {
                "metrics": {"enabled": True, "port": admin_port},
                # Someone reads this terminal: text lines, not JSON (on stderr, as always).
                "logging": {"format": "text"},
            },
        },
        "routing": {
            "strategy": "round_robin",
            "metald_instances": [
                {
                    "host": "127.0.0.1",
                    "port": port,
                    "weight": 100,
                    "customer_pools": [f"pool_{chr(ord('a') + i)}"],
                }
                for i, port in enumerate(backend_ports)
            ],
        },
    }


def mint_demo_tokens(config: Config, private_key_file: Path) -> list[DemoToken]:
    """A token per configured tier, for customer ``acme-<tier>``, valid ``DEMO_TOKEN_TTL_S``."""
    key = load_private_key(private_key_file)
    # Every permission any route needs (none for the default metald routes, today).
    permissions = sorted({name for route in config.routes for name in route.permissions})
    return [
        DemoToken(
            tier,
            f"{DEMO_CUSTOMER_PREFIX}{tier}",
            mint_token(
                key,
                customer_id=f"{DEMO_CUSTOMER_PREFIX}{tier}",
                tier=tier,
                permissions=permissions,
                ttl_s=DEMO_TOKEN_TTL_S,
                algorithm=DEMO_ALGORITHM,
            ),
        )
        for tier in config.rate_limits.customer_tiers
    ]


def over_limit_loop(config: Config) -> tuple[str, int]:
    """The tier the over-limit loop uses and how many requests it sends.

    The tier with the smallest burst (``free`` by default) is the quickest to run over.
    """
    tiers = config.rate_limits.customer_tiers
    tier = min(tiers, key=lambda name: tiers[name].effective_burst_size)
    return tier, OVER_LIMIT_BURSTS * tiers[tier].effective_burst_size


def curl_lines(
    base: str,
    tokens: Sequence[DemoToken],
    loop_tier: str,
    loop_requests: int,
    admin: str | None = None,
) -> list[str]:
    """The lines ``fastgw demo`` prints: comments (``#``) and commands, each pasteable alone."""
    vm = f"{base}/vmprovisioner.v1.VmService"
    json = "-H 'Content-Type: application/json'"

    def list_vms(token: str, curl: str = "curl -s") -> str:
        auth = shlex.quote(f"Authorization: Bearer {token}")
        return f"{curl} -X POST {vm}/ListVms -H {auth} {json} -d '{{}}'"

    dev_auth = f"-H 'Authorization: Bearer dev_customer_{CUSTOMER}'"
    lines = [
        f"curl -s {base}/health",
        f"curl -s {base}/health/detailed",
        *(
            [f"curl -s {admin}/admin/upstreams   # health, breakers, load per backend"]
            if admin
            else []
        ),
        f"# dev token: customer {CUSTOMER}, every permission, no limits",
        f"curl -s -X POST {vm}/CreateVm {dev_auth} {json} -d '{{\"config\":{{}}}}'",
        f"curl -s -X POST {vm}/ListVms {dev_auth} {json} -d '{{}}'",
        f"curl -si -X POST {vm}/ListVms {json} -d '{{}}'   # no token: 401",
    ]
    for token in tokens:
        lines += [f"# JWT, tier {token.tier}: customer {token.customer_id}", list_vms(token.token)]
    loop_token = next((t.token for t in tokens if t.tier == loop_tier), None)
    if loop_token is not None and loop_requests > 0:
        # -w prints each status code; sort | uniq -c sums them up: "N 200" then "M 429".
        request = list_vms(loop_token, "curl -s -o /dev/null -w '%{http_code}\\n'")
        lines += [
            f"# over the {loop_tier} tier's limit: {loop_requests} requests in a row",
            f"for i in $(seq {loop_requests}); do {request}; done | sort | uniq -c",
        ]
    return lines


def run_demo(port: int, workers: int) -> int:
    from fastgw.supervisor import run_serve

    mocks: list[subprocess.Popen[str]] = []
    try:
        ports = []
        for index in range(MOCK_COUNT):
            process, mock_port = _start_mock(f"metald-{index + 1}")
            mocks.append(process)
            ports.append(mock_port)
        gateway_port = port or free_port("127.0.0.1")
        admin_port = free_port("127.0.0.1")
        with tempfile.TemporaryDirectory(prefix="fastgw-demo-") as scratch:
            keys = write_key_pair(scratch, DEMO_ALGORITHM)
            config_path = Path(scratch) / "demo.yaml"
            config_path.write_text(
                yaml.safe_dump(demo_config(gateway_port, ports, str(keys.public_pem), admin_port))
            )
            # The file the supervisor will load (a ConfigError here is reported by the CLI).
            config = load_config(config_path)
            tokens = mint_demo_tokens(config, keys.private_pem)
            loop_tier, loop_requests = over_limit_loop(config)

            def announce(host: str, bound_port: int) -> None:
                print(
                    f"\nfastgw demo: {MOCK_COUNT} mock metald instances on ports "
                    + ", ".join(map(str, ports))
                    + f"; dev tokens on.\nJWTs: {DEMO_ALGORITHM}, valid 24h, verified with public"
                    f" key {keys.public_pem}. Try:\n"
                )
                base = f"http://{host}:{bound_port}"
                admin = f"http://{host}:{admin_port}"
                for line in curl_lines(base, tokens, loop_tier, loop_requests, admin):
                    print(f"  {line}")
                print("\nCtrl-C stops everything.", flush=True)

            return run_serve(str(config_path), workers, DEMO_DRAIN_TIMEOUT_S, on_ready=announce)
    finally:
        for process in mocks:
            if process.poll() is None:
                process.terminate()
        for process in mocks:
            try:
                process.wait(MOCK_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
