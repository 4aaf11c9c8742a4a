"""``fastgw demo``: the gateway's main job on one machine, with nothing to set up.

Starts three mock metald instances (child processes on free loopback ports), writes a
memory-only config for them into a private temporary directory (dev tokens on, no Redis),
runs the real supervisor with its workers in front of them, and prints ``curl`` lines to try.
Ctrl-C reaches every process of the terminal's group: the mocks exit, the gateway drains
(at most ``DEMO_DRAIN_TIMEOUT_S``), and anything still alive is stopped on the way out.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

import yaml

from fastgw.errors import BootError
from fastgw.listen import free_port

MOCK_COUNT: Final = 3
MOCK_START_TIMEOUT_S: Final = 10.0
MOCK_STOP_TIMEOUT_S: Final = 3.0
DEMO_DRAIN_TIMEOUT_S: Final = 3.0
CUSTOMER: Final = "123"


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


def demo_config(gateway_port: int, backend_ports: list[int]) -> dict[str, object]:
    """The demo's config: the reference layout, memory limits, dev tokens, default routes."""
    return {
        "gateway": {
            "server": {"host": "127.0.0.1", "port": gateway_port},
            "authentication": {"development": {"enabled": True}},
            "rate_limiting": {"backend": "memory"},
            "routing": {"backend_timeout": "10s", "retry_attempts": 2},
            "observability": {"metrics": {"enabled": False}},
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


def curl_lines(base: str) -> list[str]:
    vm = f"{base}/vmprovisioner.v1.VmService"
    auth = f"-H 'Authorization: Bearer dev_customer_{CUSTOMER}'"
    json = "-H 'Content-Type: application/json'"
    return [
        f"curl -s {base}/health",
        f"curl -s {base}/health/detailed",
        f"curl -s -X POST {vm}/CreateVm {auth} {json} -d '{{\"config\":{{}}}}'",
        f"curl -s -X POST {vm}/ListVms {auth} {json} -d '{{}}'",
        f"curl -si -X POST {vm}/ListVms {json} -d '{{}}'   # no token: 401",
    ]


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
        with tempfile.TemporaryDirectory(prefix="fastgw-demo-") as scratch:
            config_path = Path(scratch) / "demo.yaml"
            config_path.write_text(yaml.safe_dump(demo_config(gateway_port, ports)))

            def announce(host: str, bound_port: int) -> None:
                print(
                    "\nfastgw demo: 3 mock metald instances on ports "
                    + ", ".join(map(str, ports))
                    + "; dev tokens on. Try:\n"
                )
                for line in curl_lines(f"http://{host}:{bound_port}"):
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
