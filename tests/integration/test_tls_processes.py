"""TLS with real processes: ``fastgw serve --workers 2`` on HTTPS, certificate reload on SIGHUP
under load, a reload with a broken key refused, and the CLI's answers to an unusable pair.

The certificate a connection got is read from the handshake (``getpeercert(binary_form=True)``)
and compared with the DER of the files written, so the test sees exactly which generation's
context served it. Load runs in client threads (blocking stdlib ``ssl`` sockets) during the
swap: keep-alive clients and clients that open a new connection per request. As in
``test_process_model.py``, a request on a *reused* keep-alive connection that gets no byte
back is retried once on a new connection (RFC 9112 section 9.3.1); anything else is a failure.
"""

from __future__ import annotations

import errno
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
import trustme
import yaml

from fastgw.listen import free_port
from tests.integration.conftest import (
    IO_TIMEOUT_S,
    MockBackend,
    Proc,
    child_pids,
    subprocess_env,
    wait_until,
)
from tests.support.blocking_client import get_with_stale_retry, http_request

pytestmark = pytest.mark.timeout(90)

REPO_ROOT = Path(__file__).resolve().parents[2]
SWAP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Pair:
    name: str
    cert_pem: bytes
    key_pem: bytes

    @property
    def der(self) -> bytes:
        return ssl.PEM_cert_to_DER_cert(self.cert_pem.decode("ascii"))


def issue(ca: trustme.CA, name: str) -> Pair:
    leaf = ca.issue_cert("localhost", "127.0.0.1", common_name=name)
    return Pair(name, leaf.cert_chain_pems[0].bytes(), leaf.private_key_pem.bytes())


@dataclass
class Site:
    """The files the gateway reads, and a client context that trusts both CAs."""

    tmp: Path
    cas: list[trustme.CA]

    @property
    def cert_file(self) -> Path:
        return self.tmp / "gateway.crt"

    @property
    def key_file(self) -> Path:
        return self.tmp / "gateway.key"

    def install(self, pair: Pair) -> None:
        # Each file replaced at once (rename), as a deploy tool would: a reload never reads
        # half a file. The two renames are not one step, which is why the master loads the
        # pair before it forks: a mismatch between them is refused, not served.
        for path, data in ((self.cert_file, pair.cert_pem), (self.key_file, pair.key_pem)):
            staging = path.with_suffix(".tmp")
            staging.write_bytes(data)
            staging.replace(path)

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        for ca in self.cas:
            ca.configure_trust(context)
        return context


def config_yaml(port: int, backend_port: int, site: Site) -> str:
    return yaml.safe_dump(
        {
            "gateway": {
                "server": {
                    "host": "127.0.0.1",
                    "port": port,
                    "tls": {
                        "enabled": True,
                        "cert_file": str(site.cert_file),
                        "key_file": str(site.key_file),
                    },
                },
                "observability": {"metrics": {"port": 0}},
            },
            "routing": {"metald_instances": [{"host": "127.0.0.1", "port": backend_port}]},
            "routes": [{"endpoint": "Echo", "path_prefix": "/echo", "auth": "none"}],
        }
    )


# -- a blocking TLS client --------------------------------------------------------------------


def connect(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S)
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return context.wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise


def gets_cert(port: int, context: ssl.SSLContext, der: bytes) -> bool:
    return served_cert(port, context) == der


def served_cert(port: int, context: ssl.SSLContext) -> bytes:
    """The DER certificate a new connection gets (and that it serves a request)."""
    with connect(port, context) as sock:
        der = sock.getpeercert(binary_form=True)
        reply = http_request(sock, "GET", "/echo/which")
        assert reply.status == 200, reply.status
        assert reply.headers["strict-transport-security"].startswith("max-age=")
        assert der is not None
        return der


@dataclass
class Load:
    sent: int = 0
    ok: int = 0
    stale_retries: int = 0
    certs: Counter[bytes] = field(default_factory=Counter)  # per new connection
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def done(self, count: int) -> bool:
        with self.lock:
            return self.ok >= count


def load_loop(
    port: int, context: ssl.SSLContext, keep_alive: bool, stop: threading.Event, load: Load
) -> None:
    sock: ssl.SSLSocket | None = None

    def fresh() -> ssl.SSLSocket:
        new = connect(port, context)
        der = new.getpeercert(binary_form=True)
        with load.lock:
            load.certs[der or b""] += 1
        return new

    def stale() -> None:
        with load.lock:
            load.stale_retries += 1

    while not stop.is_set():
        reused = sock is not None
        try:
            if sock is None:
                sock = fresh()
            sock, reply = get_with_stale_retry(sock, reused, fresh, "/echo/load", stale)
            with load.lock:
                load.sent += 1
                if reply.status == 200:
                    load.ok += 1
                else:
                    load.failures.append(
                        f"{'reused' if reused else 'new'}: {reply.status} {reply.body[:100]!r}"
                    )
            if not keep_alive or not reply.keep_alive:
                sock.close()
                sock = None
        except Exception as error:
            with load.lock:
                load.sent += 1
                name = errno.errorcode.get(getattr(error, "errno", 0) or 0, "")
                load.failures.append(
                    f"{'reused' if reused else 'new'}: {type(error).__name__} {name} {error}"
                )
            if sock is not None:
                sock.close()
            sock = None
    if sock is not None:
        sock.close()


# -- the tests ------------------------------------------------------------------------------------


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path, [trustme.CA(), trustme.CA()])


def serve(site: Site, backend: MockBackend, workers: int = 2) -> tuple[Proc, int]:
    port = free_port()
    path = site.tmp / "gateway.yaml"
    path.write_text(config_yaml(port, backend.port, site))
    argv = [sys.executable, "-m", "fastgw", "serve", "-c", str(path), "--workers", str(workers),
            "--drain-timeout", "5s"]  # fmt: skip
    return Proc(argv, site.tmp), port


def generation(proc: Proc, workers: int = 2, exclude: frozenset[int] = frozenset()) -> set[int]:
    """Wait until the master has exactly ``workers`` children, none of them in ``exclude``."""

    def settled() -> set[int] | None:
        pids = child_pids(proc.pid)
        return pids if len(pids) == workers and not pids & exclude else None

    found: set[int] = wait_until(settled, SWAP_TIMEOUT_S, f"{workers} workers not in {exclude}")
    return found


def swap_under_load(
    proc: Proc, port: int, site: Site, pairs: list[Pair], keep_alive: tuple[bool, ...]
) -> Load:
    """Client threads send requests throughout while ``pairs[1:]`` are installed one after
    the other (``pairs[0]`` is serving), each with a SIGHUP; after each, wait until the old
    generation is gone and new connections get the new certificate."""
    context = site.client_context()
    load = Load()
    stop = threading.Event()
    clients = [
        threading.Thread(target=load_loop, args=(port, context, each, stop, load))
        for each in keep_alive
    ]
    for client in clients:
        client.start()
    try:
        wait_until(lambda: load.ok >= 50, SWAP_TIMEOUT_S, "load before the swap")
        for number, pair in enumerate(pairs[1:], start=1):
            old = generation(proc)
            site.install(pair)
            proc.popen.send_signal(signal.SIGHUP)
            proc.wait_stderr("reload complete", timeout_s=SWAP_TIMEOUT_S, count=number)
            generation(proc, exclude=frozenset(old))
            der = pair.der
            wait_until(partial(gets_cert, port, context, der), SWAP_TIMEOUT_S,
                       f"new connections to get {pair.name}")  # fmt: skip
            with load.lock:
                target = load.ok + 50
            wait_until(partial(load.done, target), SWAP_TIMEOUT_S, "load after the swap")
    finally:
        stop.set()
        for client in clients:
            client.join(IO_TIMEOUT_S)
    names = {pair.der: pair.name for pair in pairs}
    print(f"\nTLS reload under load: {load.sent} requests, {load.ok} ok, "
          f"{load.stale_retries} stale keep-alive retries, new connections per certificate "
          f"{ {names.get(der, '?'): n for der, n in load.certs.items()} }, "
          f"failures {load.failures[:5]}")  # fmt: skip
    return load


def test_sighup_swaps_the_certificate_under_load_then_refuses_a_broken_key(
    site: Site, mock_backend: MockBackend
) -> None:
    cert_a = issue(site.cas[0], "cert-a")
    cert_b = issue(site.cas[1], "cert-b")  # another CA: clients trusting only A's would notice
    site.install(cert_a)
    proc, port = serve(site, mock_backend)
    try:
        proc.wait_stdout("fastgw listening on")
        context = site.client_context()
        assert served_cert(port, context) == cert_a.der

        # Keep-alive clients: the swap itself must not fail one request (a request on a
        # reused connection the old worker closed while idle is retried, as clients do).
        load = swap_under_load(proc, port, site, [cert_a, cert_b], keep_alive=(True, True))
        assert load.failures == []
        assert load.ok == load.sent
        assert load.certs[cert_a.der] > 0 and load.certs[cert_b.der] > 0
        assert set(load.certs) == {cert_a.der, cert_b.der}
        serving = generation(proc)

        # A broken key (a certificate of its own, so only the key is wrong): refused in the
        # master, before any fork; the generation serving B goes on.
        site.key_file.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n")
        proc.popen.send_signal(signal.SIGHUP)
        stderr = proc.wait_stderr("reload rejected")
        assert "$.gateway.server.tls.key_file: no usable PEM private key" in stderr, stderr
        assert child_pids(proc.pid) == serving
        for _ in range(5):
            assert served_cert(port, context) == cert_b.der

        # A key that parses but belongs to A's certificate: a mismatch, refused the same way.
        site.key_file.write_bytes(cert_a.key_pem)
        proc.popen.send_signal(signal.SIGHUP)
        stderr = proc.wait_stderr("does not match the certificate")
        assert "reload rejected: $.gateway.server.tls.key_file: the private key in" in stderr
        assert child_pids(proc.pid) == serving
        assert served_cert(port, context) == cert_b.der
        assert "Traceback" not in stderr

        proc.popen.send_signal(signal.SIGTERM)
        assert proc.wait_exit() == 0
    finally:
        proc.kill()


def test_new_tls_connections_during_swaps_all_get_answers(
    site: Site, mock_backend: MockBackend
) -> None:
    pairs = [issue(site.cas[n % 2], f"cert-{n}") for n in range(4)]
    site.install(pairs[0])
    proc, port = serve(site, mock_backend)
    try:
        proc.wait_stdout("fastgw listening on")
        load = swap_under_load(proc, port, site, pairs, keep_alive=(False, False, True))
        assert load.failures == []
        assert load.ok == load.sent
    finally:
        proc.kill()


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastgw", *args],
        check=False, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("fault", ["missing", "mismatched"])
def test_check_config_and_serve_refuse_an_unusable_key(
    site: Site, mock_backend: MockBackend, fault: str
) -> None:
    site.install(issue(site.cas[0], "cert-a"))
    if fault == "missing":
        site.key_file.unlink()
        expected = f"$.gateway.server.tls.key_file: file not found: {site.key_file}"
    else:
        site.key_file.write_bytes(issue(site.cas[0], "other").key_pem)
        expected = (
            f"$.gateway.server.tls.key_file: the private key in {site.key_file} does not "
            f"match the certificate in {site.cert_file}"
        )
    path = site.tmp / "gateway.yaml"
    path.write_text(config_yaml(free_port(), mock_backend.port, site))
    checked = run_cli("check-config", "-c", str(path), cwd=site.tmp)
    assert checked.returncode == 2, checked
    assert checked.stderr.strip() == expected
    served = run_cli("serve", "-c", str(path), "--workers", "1", cwd=site.tmp)
    assert served.returncode == 2, served
    assert expected in served.stderr
    assert "Traceback" not in served.stderr
    assert "listening" not in served.stdout
