"""KeySource against a real JWKS server on loopback and real files: first load, rotation,
unknown kids, outages and bad documents. Waits are on conditions with a deadline."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ParamSpec

import jwt
import pytest
import uvloop
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from fastgw.auth import fetch, refresh
from fastgw.auth.keyring import MAX_KEY_DOCUMENT_BYTES, KeyConfigError, KeyRing
from fastgw.auth.refresh import KeySource, fetch_jwks
from fastgw.config.gateway import JwtConfig
from tests.support.jwks_server import JwksServer

P = ParamSpec("P")
LOGGER = "fastgw.auth.keys"
INTERVAL_S = 0.2

KEYS = {kid: ec.generate_private_key(ec.SECP256R1()) for kid in ("a", "b", "c")}


def on_loop(fn: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an async test on a fresh uvloop loop (the workers' loop)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        uvloop.run(fn(*args, **kwargs))

    return wrapper


def jwk(kid: str, **members: object) -> dict[str, object]:
    raw = ECAlgorithm.to_jwk(KEYS[kid].public_key(), as_dict=True)
    return {**raw, "kid": kid, "alg": "ES256", "use": "sig", **members}


def jwks(*kids: str) -> bytes:
    return json.dumps({"keys": [jwk(kid) for kid in kids]}).encode()


def config(**jwt_settings: Any) -> JwtConfig:
    settings: dict[str, Any] = {"algorithms": ("ES256",), "key_refresh_interval_s": INTERVAL_S}
    return JwtConfig(**{**settings, **jwt_settings})


def accepts(ring: KeyRing, kid: str) -> bool:
    """Whether a token that key ``kid`` signed verifies with ``ring``, as the verifier does it."""
    token = jwt.encode({"sub": "c1"}, KEYS[kid], algorithm="ES256", headers={"kid": kid})
    head, payload, signature = token.split(".")
    key = ring.find(kid)
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    return key is not None and key.alg == "ES256" and key.verify(f"{head}.{payload}".encode(), raw)


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.005)


async def quiet(seconds: float) -> None:
    """Let time pass to show that something does NOT happen (never used to wait for readiness)."""
    await asyncio.sleep(seconds)


def problems(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


def no_tasks_left() -> bool:
    return asyncio.all_tasks() == {asyncio.current_task()}


# ------------------------------------------------------------------------------ jwks_url


@on_loop
async def test_initial_fetch() -> None:
    with JwksServer(jwks("a", "b")) as server:
        changes: list[frozenset[str]] = []
        source = KeySource(config(jwks_url=server.url), on_change=lambda: changes.append(kids()))

        def kids() -> frozenset[str]:
            return source.ring.kids

        assert len(source.ring) == 0  # nothing touches the network before start()
        await source.start()
        assert source.ring.kids == {"a", "b"}
        assert accepts(source.ring, "a") and accepts(source.ring, "b")
        assert not accepts(source.ring, "c")
        assert server.requests == 1 and changes == [{"a", "b"}]
        await source.aclose()
        assert no_tasks_left()


@on_loop
async def test_rotation_is_picked_up_and_never_shows_a_partial_ring() -> None:
    with JwksServer(jwks("a")) as server:
        changed = asyncio.Event()
        source = KeySource(config(jwks_url=server.url), on_change=changed.set)
        await source.start()
        changed.clear()
        seen: list[frozenset[str]] = []
        broken: list[str] = []
        done = False

        async def reader() -> None:  # what the hot path sees, as often as the loop lets it
            while not done:
                ring = source.ring
                if not seen or seen[-1] != ring.kids:
                    seen.append(ring.kids)
                broken.extend(kid for kid in ring.kids if not accepts(ring, kid))
                await asyncio.sleep(0)

        sampler = asyncio.create_task(reader())
        server.document = jwks("a", "b")  # the issuer publishes the new key first ...
        await asyncio.wait_for(changed.wait(), 5)
        changed.clear()
        assert source.ring.kids == {"a", "b"}
        server.document = jwks("b")  # ... and retires the old one later
        await asyncio.wait_for(changed.wait(), 5)
        assert source.ring.kids == {"b"}
        done = True
        await sampler
        assert seen == [{"a"}, {"a", "b"}, {"b"}]  # each a complete JWKS, in order
        assert broken == []
        await source.aclose()


@on_loop
async def test_unknown_kid_refetches_once_per_interval() -> None:
    now = [1000.0]
    with JwksServer(jwks("a")) as server:
        source = KeySource(
            config(jwks_url=server.url, key_refresh_interval_s=60.0), clock=lambda: now[0]
        )
        source.unknown_kid("b")  # before start(): nothing to wake, nothing happens
        await source.start()
        assert server.requests == 1
        server.document = jwks("a", "b")
        for _ in range(100):
            source.unknown_kid("b")
        await until(lambda: "b" in source.ring.kids)
        assert server.requests == 2
        for _ in range(100):
            source.unknown_kid("c")
            source.unknown_kid(None)
        now[0] += 59.9
        source.unknown_kid("c")
        await quiet(0.3)
        assert server.requests == 2  # still inside the interval of the last demand
        now[0] += 0.2
        source.unknown_kid("a")  # a kid we have is not unknown
        await quiet(0.1)
        assert server.requests == 2
        for _ in range(100):
            source.unknown_kid("c")
        await until(lambda: server.requests == 3)
        await quiet(0.2)
        assert server.requests == 3
        await source.aclose()


@on_loop
async def test_a_kid_a_demand_refetch_did_not_find_never_demands_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(refresh, "MAX_ABSENT_KIDS", 2)
    now = [1000.0]
    with JwksServer(jwks("a")) as server:
        changes: list[frozenset[str]] = []
        source = KeySource(
            config(jwks_url=server.url, key_refresh_interval_s=60.0),
            on_change=lambda: changes.append(source.ring.kids),
            clock=lambda: now[0],
        )
        await source.start()

        async def demand(kid: str, document: bytes) -> None:
            """``kid`` demands a refetch that serves ``document`` (a new ring: on_change)."""
            now[0] += 61.0  # past the once-per-interval bound
            server.document, asked, seen = document, server.requests, len(changes)
            source.unknown_kid(kid)
            await until(lambda: len(changes) == seen + 1)  # refetched, and settled
            assert server.requests == asked + 1

        async def no_demand(kid: str) -> None:
            now[0] += 61.0
            asked = server.requests
            for _ in range(100):
                source.unknown_kid(kid)
            await quiet(0.1)
            assert server.requests == asked

        await demand("zzz", jwks("a", "c"))  # a bogus kid spends one demand refetch ...
        await no_demand("zzz")  # ... and only one, ever
        await demand("b", jwks("a", "b"))  # so a genuinely new kid still gets its refetch
        assert accepts(source.ring, "b")
        await no_demand("zzz")  # remembered across refetches: the issuer still lacks it
        await demand("k1", jwks("a"))
        await demand("k2", jwks("a", "c"))  # remembered now: zzz was dropped (bound: 2) ...
        await demand("zzz", jwks("a"))  # ... so it demands again, and k1 is dropped ...
        await no_demand("k2")
        await demand("k1", jwks("a", "c"))  # ... and k1 again
        server.status = 500  # a failed refetch learns nothing: the kid may ask again
        now[0] += 61.0
        source.unknown_kid("q")
        await until(lambda: len(problems(caplog)) == 1)
        server.status = 200
        await demand("q", jwks("a"))
        await source.aclose()


@on_loop
async def test_server_down_at_start_then_recovers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    with JwksServer(jwks("a"), listening=False) as server:
        changed = asyncio.Event()
        source = KeySource(config(jwks_url=server.url), on_change=changed.set)
        loop = asyncio.get_running_loop()
        began = loop.time()
        await source.start()
        assert loop.time() - began < refresh.START_TIMEOUT_S
        assert len(source.ring) == 0 and source.ring.find(None) is None
        await quiet(3 * INTERVAL_S)  # several retries fail meanwhile ...
        errors = problems(caplog, logging.ERROR)
        assert len(errors) == 1, errors  # ... and are logged once
        assert "no verification keys yet, retrying every 0.2s" in errors[0]
        server.listen()
        await asyncio.wait_for(changed.wait(), 5)
        assert source.ring.kids == {"a"} and accepts(source.ring, "a")
        assert any("keys loaded again" in line for line in problems(caplog, logging.INFO))
        await source.aclose()


@on_loop
async def test_slow_first_fetch_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(refresh, "START_TIMEOUT_S", 0.2)
    with JwksServer(jwks("a")) as server:
        server.delay_s = 0.6
        source = KeySource(config(jwks_url=server.url))
        loop = asyncio.get_running_loop()
        began = loop.time()
        await source.start()
        assert loop.time() - began < 0.5 and len(source.ring) == 0
        server.delay_s = 0.0
        await until(lambda: len(source.ring) == 1)
        await source.aclose()


BAD_DOCUMENTS = [
    (b"not json", "invalid JSON"),
    (b'{"keys": {}}', '"keys" list'),
    (b'{"keys": []}', "no usable key"),
    (json.dumps({"keys": [jwk("c", use="enc")]}).encode(), "use is 'enc'"),
    (b" " * (MAX_KEY_DOCUMENT_BYTES + 1), "larger than"),
]


@on_loop
async def test_bad_documents_keep_the_old_ring(caplog: pytest.LogCaptureFixture) -> None:
    with JwksServer(jwks("a")) as server:
        changes: list[int] = []
        source = KeySource(config(jwks_url=server.url), on_change=lambda: changes.append(1))
        await source.start()
        for document, _ in BAD_DOCUMENTS:
            server.document = document
            asked = server.requests
            await until(lambda asked=asked: server.requests >= asked + 2)  # type: ignore[misc]
            assert source.ring.kids == {"a"}
        server.document = jwks("a")
        server.status = 500
        asked = server.requests
        await until(lambda: server.requests >= asked + 2)
        assert source.ring.kids == {"a"} and len(changes) == 1
        server.status = 200
        server.document = jwks("b")
        await until(lambda: source.ring.kids == {"b"})
        assert len(changes) == 2
        await source.aclose()
    lines = problems(caplog)
    expected = [needle for _, needle in BAD_DOCUMENTS] + ["HTTP 500"]
    assert len(lines) == len(expected), lines  # one line per problem, not one per retry
    for line, needle in zip(lines, expected, strict=True):
        assert needle in line and "keeping the 1 key(s) we have" in line


@on_loop
async def test_on_change_failure_is_logged_and_refresh_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def explode() -> None:
        raise RuntimeError("boom")

    with JwksServer(jwks("a")) as server:
        source = KeySource(config(jwks_url=server.url), on_change=explode)
        await source.start()
        server.document = jwks("b")
        await until(lambda: source.ring.kids == {"b"})
        assert any("on_change callback failed" in r.getMessage() for r in caplog.records)
        await source.aclose()


def test_fetch_jwks_errors() -> None:
    with JwksServer(jwks("a")) as server:
        assert json.loads(fetch_jwks(server.url))["keys"][0]["kid"] == "a"
        server.status = 404
        with pytest.raises(KeyConfigError, match=r"^HTTP 404$"):
            fetch_jwks(server.url)
        server.status = 204
        with pytest.raises(KeyConfigError, match=r"^HTTP 204$"):
            fetch_jwks(server.url)
    with JwksServer(listening=False) as down, pytest.raises(KeyConfigError, match="cannot fetch"):
        fetch_jwks(down.url)


def short_deadline(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """One fetch deadline for both sides: the key source's wait and the fetch itself."""
    monkeypatch.setattr(refresh, "FETCH_DEADLINE_S", seconds)
    monkeypatch.setattr(fetch, "FETCH_DEADLINE_S", seconds)


@pytest.mark.parametrize("drip_head", [True, False], ids=["head", "body"])
def test_fetch_jwks_has_one_deadline(monkeypatch: pytest.MonkeyPatch, drip_head: bool) -> None:
    short_deadline(monkeypatch, 0.3)
    with JwksServer(jwks("a")) as server:
        server.drip_s, server.drip_head = 0.02, drip_head  # every read gets a byte in time
        began = time.monotonic()
        with pytest.raises(KeyConfigError, match=r"^no complete answer within 0\.3s$"):
            fetch_jwks(server.url)  # the thread itself gives up: nothing left blocked in recv
        assert 0.3 <= time.monotonic() - began < 1.0
        server.drip_s = 0.001  # slow, but done well inside the deadline: read in pieces
        assert json.loads(fetch_jwks(server.url, time.monotonic() + 5.0))["keys"][0]["kid"] == "a"


@on_loop
async def test_dripping_jwks_host_is_cut_off_and_the_ring_kept(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    short_deadline(monkeypatch, 0.3)
    with JwksServer(jwks("a")) as server:
        source = KeySource(config(jwks_url=server.url))
        await source.start()
        server.document, server.drip_s = jwks("b"), 0.02  # all of it would take seconds
        loop = asyncio.get_running_loop()
        began, asked = loop.time(), server.requests
        await until(lambda: len(problems(caplog)) == 1)
        assert loop.time() - began < INTERVAL_S + 0.3 + 0.5  # the wait + one deadline + slack
        await until(lambda: server.requests >= asked + 3)  # two more cut-off fetches ...
        lines = problems(caplog)
        assert len(lines) == 1, lines  # ... and still one line
        assert "no complete answer within 0.3s; keeping the 1 key(s) we have" in lines[0]
        assert source.ring.kids == {"a"}
        server.drip_s = 0.0
        await until(lambda: source.ring.kids == {"b"})
        await source.aclose()


def test_jwks_url_must_be_http() -> None:
    with pytest.raises(KeyConfigError, match="expected an http"):
        KeySource(config(jwks_url="file:///etc/passwd"))


# ----------------------------------------------------------------------------- jwks_file


def write(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically, as a deploy tool would."""
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


@on_loop
async def test_jwks_file_change_is_picked_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "jwks.json"
    write(path, jwks("a"))
    changes: list[frozenset[str]] = []
    source = KeySource(
        config(jwks_file=str(path)), on_change=lambda: changes.append(source.ring.kids)
    )
    assert source.ring.kids == {"a"}  # loaded at construction
    await source.start()
    write(path, jwks("a", "b"))
    await until(lambda: source.ring.kids == {"a", "b"})
    write(path, b"{ half written")
    await until(lambda: len(problems(caplog)) == 1)
    assert "invalid JSON" in problems(caplog)[0] and source.ring.kids == {"a", "b"}
    path.unlink()
    await until(lambda: len(problems(caplog)) == 2)
    assert "cannot read" in problems(caplog)[1] and source.ring.kids == {"a", "b"}
    path.write_bytes(jwks("b"))  # a new file (new inode), written in place
    await until(lambda: source.ring.kids == {"b"})
    assert changes == [{"a", "b"}, {"b"}]
    await source.aclose()
    assert no_tasks_left()


@on_loop
async def test_jwks_file_is_stat_polled_not_reread_every_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert refresh.FILE_POLL_S == 1.0  # the contract; shortened below to keep the test fast
    monkeypatch.setattr(refresh, "FILE_POLL_S", 0.02)
    path = tmp_path / "jwks.json"
    write(path, jwks("a", "b"))
    source = KeySource(config(jwks_file=str(path), key_refresh_interval_s=60.0))
    reads: list[str] = []
    read_key_file = refresh.read_key_file

    def counted(file: str) -> bytes:
        reads.append(file)
        return read_key_file(file)

    monkeypatch.setattr(refresh, "read_key_file", counted)
    await source.start()
    await quiet(0.2)  # some ten polls of an unchanged file ...
    assert reads == []  # ... are stats only
    write(path, jwks("a"))  # key b withdrawn: it must stop verifying now, not in a minute
    await until(lambda: source.ring.kids == {"a"}, timeout_s=2.0)
    assert not accepts(source.ring, "b") and len(reads) == 1
    write(path, b"{ broken")
    await until(lambda: len(problems(caplog)) == 1, timeout_s=2.0)
    await quiet(0.2)
    assert len(reads) == 2 and source.ring.kids == {"a"}  # a bad document is read once
    write(path, jwks("c"))
    await until(lambda: source.ring.kids == {"c"}, timeout_s=2.0)
    assert len(reads) == 3
    await source.aclose()
    assert no_tasks_left()


@on_loop
async def test_unknown_kid_rereads_a_file_even_if_it_looks_unchanged(tmp_path: Path) -> None:
    now = [0.0]
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks("a"))
    before = path.stat()
    source = KeySource(
        config(jwks_file=str(path), key_refresh_interval_s=60.0), clock=lambda: now[0]
    )
    await source.start()
    with path.open("r+b") as file:  # same inode, same size, same mtime: the stamp cannot tell
        file.write(jwks("b"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert len(jwks("b")) == before.st_size
    source.unknown_kid("b")
    await until(lambda: source.ring.kids == {"b"})
    await source.aclose()


def test_jwks_file_problems_at_construction(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    with pytest.raises(KeyConfigError, match=f"^{re.escape(str(path))}: cannot read: No such file"):
        KeySource(config(jwks_file=str(path)))
    path.write_bytes(b"[]")
    with pytest.raises(
        KeyConfigError, match=f"^{re.escape(str(path))}: not a JWKS: expected an object"
    ):
        KeySource(config(jwks_file=str(path)))
    path.write_bytes(jwks("a"))
    with pytest.raises(KeyConfigError) as caught:
        KeySource(config(jwks_file=str(path), algorithms=("ES384",)))
    assert str(caught.value) == (
        f"{path}: no usable key: keys[0] (kid 'a'): alg ES256 is not among the configured "
        "algorithms (ES384); skipped"
    )


# ------------------------------------------------------------------------- static sources


@on_loop
async def test_pem_file_is_loaded_once_with_no_background_work(tmp_path: Path) -> None:
    path = tmp_path / "public.pem"
    path.write_bytes(
        KEYS["a"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    source = KeySource(config(public_key_file=str(path)))
    await source.start()
    assert no_tasks_left()
    assert accepts(source.ring, "a") and source.ring.find("any kid") is not None
    source.unknown_kid("zzz")
    source.stop()
    await source.aclose()


def test_pem_file_problems_at_construction(tmp_path: Path) -> None:
    path = tmp_path / "public.pem"
    path.write_bytes(b"junk")
    with pytest.raises(KeyConfigError, match=f"^{re.escape(str(path))}: not a PEM public key"):
        KeySource(config(public_key_file=str(path)))
    path.write_bytes(
        KEYS["a"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(
        KeyConfigError, match=f"^the EC P-256 key in {re.escape(str(path))} fits none"
    ) as caught:
        KeySource(config(public_key_file=str(path), algorithms=("RS256",)))
    assert caught.value.setting == "algorithm"


def test_hs_secret() -> None:
    source = KeySource(config(algorithms=("HS256",), hs_secret="s" * 32))
    key = source.ring.find(None)
    assert key is not None and key.alg == "HS256"
    with pytest.raises(KeyConfigError, match="hs_secret is required"):
        KeySource(config(algorithms=("HS256",)))
    with pytest.raises(KeyConfigError, match="cannot be mixed"):
        KeySource(config(algorithms=("HS256", "ES256"), hs_secret="s" * 32))


@on_loop
async def test_stop_cancels_the_background_task() -> None:
    with JwksServer(jwks("a")) as server:
        source = KeySource(config(jwks_url=server.url))
        await source.start()
        assert not no_tasks_left()
        source.stop()
        await until(no_tasks_left)
        asked = server.requests
        await quiet(2 * INTERVAL_S)
        assert server.requests == asked  # no refresh after stop()
        source.unknown_kid("zzz")  # harmless after stop()
        await source.aclose()


@on_loop
async def test_aclose_waits_for_the_fetch_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    short_deadline(monkeypatch, 0.5)
    running: list[int] = []  # executor threads inside a fetch right now
    lock = threading.Lock()
    fetch_ring = refresh._fetch_ring

    def counted(*args: Any) -> Any:
        with lock:
            running.append(1)
        try:
            return fetch_ring(*args)
        finally:
            with lock:
                running.pop()

    monkeypatch.setattr(refresh, "_fetch_ring", counted)
    with JwksServer(jwks("a")) as server:
        source = KeySource(config(jwks_url=server.url))
        await source.start()
        server.drip_s = 0.02
        asked = server.requests
        await until(lambda: server.requests > asked)  # a fetch is stuck in the drip now
        assert running == [1]
        loop = asyncio.get_running_loop()
        began = loop.time()
        source.stop()
        await source.aclose()
        assert loop.time() - began < 0.5 + 0.5  # bounded by the fetch deadline
        assert running == []  # no executor job left for Runner.close to wait on
        assert no_tasks_left()
        assert source.ring.kids == {"a"}
