"""``fastgw demo`` as a user runs it: a real process tree, real curl-like requests, Ctrl-C."""

from __future__ import annotations

import itertools
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import jwt
import orjson
import pytest

from fastgw.config.defaults import DEFAULT_METALD_ROUTES
from fastgw.config.model import DEFAULT_TIERS

STARTUP_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
DAY_S = 24 * 3600
BEARER = re.compile(r"Authorization: Bearer ([A-Za-z0-9._~+/-]+=*)'")


def _read_until(process: subprocess.Popen[bytes], pattern: str, timeout_s: float) -> list[str]:
    # Unbuffered bytes: select() must not be fooled by lines waiting in a Python buffer.
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], deadline - time.monotonic())
        if not ready:
            break
        line = process.stdout.readline().decode()
        if not line:
            break
        lines.append(line)
        if re.search(pattern, line):
            return lines
    raise AssertionError(f"{pattern!r} not seen in {lines!r}")


def _post(url: str, token: str | None, body: bytes = b"{}") -> tuple[int, dict[str, object]]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(entry))
            found |= _descendants(int(entry))
    return found


def _check_printed_tokens(lines: list[str]) -> dict[str, str]:
    """The JWT lines: one per default tier, signed by the printed key, with the right claims;
    then the over-limit loop with the free tier's token. Checked while the demo runs, because
    the key lives in its temporary directory."""
    text = "".join(lines)
    key_path = re.search(r"verified with public key (/\S+\.pem)", text)
    assert key_path, text
    with open(key_path.group(1), "rb") as file:
        public_pem = file.read()
    commands = [line.strip() for line in lines if line.startswith("  ")]
    for command in commands:  # every printed line is valid shell, pasteable alone
        subprocess.run(["bash", "-n", "-c", command], check=True)
    tokens: dict[str, str] = {}
    for label, command in itertools.pairwise(commands):
        labelled = re.fullmatch(r"# JWT, tier (\S+): customer (\S+)", label)
        if labelled is None:
            continue
        tier, customer = labelled.groups()
        bearer = BEARER.search(command)
        assert command.startswith("curl ") and bearer, command
        token = bearer.group(1)
        assert jwt.get_unverified_header(token)["alg"] == "EdDSA"
        claims = jwt.decode(token, public_pem, algorithms=["EdDSA"])
        assert (claims["tier"], claims["customer_id"]) == (tier, customer)
        assert customer == f"acme-{tier}"
        assert claims["exp"] - claims["iat"] == DAY_S
        needed = {name for route in DEFAULT_METALD_ROUTES for name in route.permissions}
        assert needed <= set(claims["permissions"])
        tokens[tier] = token
    assert sorted(tokens) == sorted(DEFAULT_TIERS)
    loop = [c for c in commands if c.startswith("for i in $(seq ")]
    assert len(loop) == 1, commands
    assert f"$(seq {2 * DEFAULT_TIERS['free'].effective_burst_size})" in loop[0]
    assert BEARER.findall(loop[0]) == [tokens["free"]]
    assert "-w '%{http_code}\\n'" in loop[0] and loop[0].endswith("done | sort | uniq -c")
    assert any("Bearer dev_customer_123" in c for c in commands)
    return tokens


@pytest.mark.timeout(60)
def test_demo_serves_and_stops_on_ctrl_c() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "fastgw", "demo", "--port", "0", "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        bufsize=0,
        start_new_session=True,
    )
    try:
        lines = _read_until(process, r"Ctrl-C stops everything", STARTUP_TIMEOUT_S)
        base = re.search(r"fastgw listening on (http://\S+)", "".join(lines))
        assert base, lines
        url = base.group(1)
        tokens = _check_printed_tokens(lines)
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            assert orjson.loads(response.read())["status"] == "healthy"
        admin = re.search(r"curl -s (http://\S+/admin/upstreams)", "".join(lines))
        assert admin, lines
        with urllib.request.urlopen(admin.group(1), timeout=5) as response:
            upstreams = orjson.loads(response.read())
        assert [i["healthy"] for i in upstreams["instances"]] == [True] * 3
        assert [i["pools"] for i in upstreams["instances"]] == [["pool_a"], ["pool_b"], ["pool_c"]]
        vm = f"{url}/vmprovisioner.v1.VmService"
        status, created = _post(f"{vm}/CreateVm", "dev_customer_123", b'{"config": {}}')
        assert status == 200 and str(created["vmId"]).startswith("ud-")
        for tier, token in tokens.items():  # the gateway accepts each printed JWT
            status, listed = _post(f"{vm}/ListVms", token)
            assert status == 200 and listed["vms"] == [], (tier, listed)
        # The over-limit loop the demo prints: the free tier's burst, then 429s, the limit
        # shared by the demo's two workers (one table), not granted by each.
        free = DEFAULT_TIERS["free"]
        started = time.monotonic()
        loop = 2 * free.effective_burst_size
        codes = [_post(f"{vm}/ListVms", tokens["free"]) for _ in range(loop)]
        elapsed = time.monotonic() - started
        admitted = sum(1 for status, _ in codes if status == 200)
        limited = [body for status, body in codes if status == 429]
        assert admitted + len(limited) == len(codes)
        assert limited
        assert all(b["error"]["code"] == "rate_limited" for b in limited)  # type: ignore[index]
        # one call was made with this token above; the bucket refills during the loop
        assert admitted <= free.effective_burst_size + free.requests_per_second * elapsed + 1
        status, unauthorized = _post(f"{vm}/ListVms", None)
        assert status == 401
        assert unauthorized["error"]["code"] == "unauthorized"  # type: ignore[index]
        children = _descendants(process.pid)
        assert len(children) >= 5  # 3 mocks + 2 workers
        # Ctrl-C: the terminal signals the whole foreground process group.
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(STOP_TIMEOUT_S) in (0, 130)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in children):
            time.sleep(0.05)
        alive = [p for p in children if os.path.exists(f"/proc/{p}")]
        assert not alive, f"left running: {alive}"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        assert process.stdout is not None
        process.stdout.close()
