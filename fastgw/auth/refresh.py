"""Where the key ring comes from, and how it stays current (one ``KeySource`` per worker).

A PEM file or an HMAC secret gives a ring at construction, once: there is nothing to refresh.
A ``jwks_file`` is read at construction, then re-read in the background when its
``(mtime_ns, size, inode)`` changed. A ``jwks_url`` is fetched by ``start()`` (bounded), then
every ``key_refresh_interval_s``; until the first success it is retried every
``min(interval, RETRY_INTERVAL_S)`` with an empty ring (every token fails: we have no key).

Invariants:

- **Readers always see a complete ring.** A new ring is built entirely off to the side (in the
  executor thread, with the fetch) and installed by one attribute assignment on the event loop
  thread. A rotation (old+new, then new only) therefore never shows a ring missing a key that
  the JWKS being served has: a token valid under the old or the new document never fails
  because of us.
- **A bad refresh never costs keys.** An unreachable URL, a non-200, an oversize or invalid
  document, or a JWKS with no usable key keeps the ring we have and logs one line (repeated
  only when the problem changes).
- **The hot path never waits for I/O.** ``unknown_kid`` only wakes the background task, at
  most once per interval: a flood of tokens naming random kids costs one fetch per interval,
  not one per token. (The flip side: such a flood spends that one fetch; a genuinely new key
  is then found by the next periodic refresh. Issuers publish keys before signing with them.)
- **Nothing is left pending.** One background task; ``stop()`` cancels it, ``aclose()``
  also waits for it.

Fetching uses ``urllib.request`` in the loop's default executor, with a timeout, a size cap,
and no redirect from https to anything else (a downgrade would let a network attacker serve
keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import logging
import math
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import IO, Final

from fastgw.auth.keyring import (
    EMPTY_RING,
    HS_ALGORITHMS,
    MAX_KEY_DOCUMENT_BYTES,
    KeyConfigError,
    KeyRing,
    ring_from_jwks,
    ring_from_pem,
    ring_from_secret,
)
from fastgw.config.gateway import JwtConfig

log = logging.getLogger("fastgw.auth.keys")

START_TIMEOUT_S: Final = 5.0
"""How long ``start()`` waits for the first JWKS fetch before serving with no key."""
FETCH_TIMEOUT_S: Final = 5.0
"""Socket timeout of one JWKS fetch (connect, and each read)."""
RETRY_INTERVAL_S: Final = 5.0
"""Longest wait between fetches while no JWKS fetch has succeeded yet."""

Stamp = tuple[int, int, int]


class KeySource:
    """The verification keys of one worker; ``ring`` is what the hot path reads."""

    __slots__ = (
        "_algorithms",
        "_clock",
        "_demand_at",
        "_file",
        "_interval_s",
        "_loaded",
        "_on_change",
        "_problem",
        "_stamp",
        "_task",
        "_url",
        "_wake",
        "_warnings",
        "ring",
    )

    def __init__(
        self,
        jwt: JwtConfig,
        on_change: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Build the ring of a PEM file, secret or JWKS file now; KeyConfigError if it cannot."""
        self.ring: KeyRing = EMPTY_RING
        self._algorithms: tuple[str, ...] = jwt.algorithms
        self._interval_s = jwt.key_refresh_interval_s
        self._on_change = on_change
        self._clock = clock
        self._demand_at = -math.inf
        self._file: str | None = None
        self._url: str | None = None
        self._stamp: Stamp | None = None
        self._loaded = True
        self._problem: str | None = None
        self._warnings: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        hs = [alg for alg in jwt.algorithms if alg in HS_ALGORITHMS]
        if hs:
            if len(hs) != len(jwt.algorithms):
                raise KeyConfigError(
                    "HS* algorithms cannot be mixed with public-key ones", "algorithm"
                )
            if not jwt.hs_secret:
                raise KeyConfigError(f"hs_secret is required for {hs[0]}")
            self.ring = ring_from_secret(jwt.hs_secret.encode(), jwt.algorithms)
        elif jwt.public_key_file is not None:
            path = jwt.public_key_file
            try:
                self.ring = ring_from_pem(read_key_file(path), jwt.algorithms, source=path)
            except KeyConfigError as error:
                raise _at(path, error) from None
        elif jwt.jwks_file is not None:
            self._file = path = jwt.jwks_file
            try:
                self._stamp = _stamp(path)
                ring, warnings = ring_from_jwks(read_key_file(path), jwt.algorithms)
            except (OSError, KeyConfigError) as error:
                raise _at(path, error) from None
            if not ring:
                raise KeyConfigError(f"{path}: no usable key: {'; '.join(warnings)}")
            self._install(ring, warnings, notify=False)
        elif jwt.jwks_url is not None:
            if urllib.parse.urlsplit(jwt.jwks_url).scheme not in ("http", "https"):
                raise KeyConfigError(f"{jwt.jwks_url}: expected an http(s) URL")
            self._url = jwt.jwks_url
            self._loaded = False

    @property
    def origin(self) -> str:
        """Where the keys come from, for logs."""
        return self._url or self._file or "configuration"

    async def start(self) -> None:
        """Load the first ring of a ``jwks_url`` (bounded) and start background refresh."""
        if self._task is not None or (self._url is None and self._file is None):
            return
        if self._url is not None:
            try:
                async with asyncio.timeout(START_TIMEOUT_S):
                    await self._refresh(force=True)
            except TimeoutError:
                self._report(f"no answer within {START_TIMEOUT_S:g}s")
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"fastgw key refresh ({self.origin})"
        )

    def stop(self) -> None:
        """Cancel background refresh; the ring stays as it is."""
        if self._task is not None:
            self._task.cancel()
        self._wake = None

    async def aclose(self) -> None:
        """``stop()``, then wait until the background task has finished."""
        task = self._task
        self.stop()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def unknown_kid(self, kid: str | None) -> None:
        """A token named a key we lack: refetch soon, at most once per refresh interval."""
        # HOT PATH (per token with an unknown kid): a comparison and at most one Event.set.
        wake = self._wake
        if wake is None or (kid is not None and kid in self.ring.kids):
            return
        now = self._clock()
        if now < self._demand_at:
            return
        self._demand_at = now + self._interval_s
        wake.set()

    # ---------------------------------------------------------------------- background

    async def _run(self) -> None:
        wake = self._wake
        assert wake is not None
        while True:
            delay = self._interval_s if self._loaded else min(self._interval_s, RETRY_INTERVAL_S)
            demanded = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    demanded = await wake.wait()
            wake.clear()
            await self._refresh(force=demanded)

    async def _refresh(self, *, force: bool) -> None:
        """One fetch or re-read; ``force``: re-read a file even if its stamp is unchanged."""
        loop = asyncio.get_running_loop()
        try:
            if self._url is not None:
                url = self._url
                ring, warnings = await loop.run_in_executor(
                    None, _fetch_ring, url, self._algorithms
                )
                stamp = None
            else:
                assert self._file is not None
                stamp = _stamp(self._file)
                if stamp == self._stamp and not force:
                    return
                ring, warnings = await loop.run_in_executor(
                    None, _read_ring, self._file, self._algorithms
                )
        except (OSError, KeyConfigError) as error:
            self._report(str(error) if isinstance(error, KeyConfigError) else _oserror(error))
            return
        if not ring:
            self._report(f"no usable key: {'; '.join(warnings)}")
            return
        self._stamp = stamp
        self._install(ring, warnings, notify=True)

    def _install(self, ring: KeyRing, warnings: list[str], *, notify: bool) -> None:
        if warnings != self._warnings:
            for warning in warnings:
                log.warning("%s: %s", self.origin, warning)
            self._warnings = warnings
        if self._problem is not None:
            log.info("%s: keys loaded again", self.origin)
            self._problem = None
        self._loaded = True
        if ring.fingerprint == self.ring.fingerprint:
            return
        self.ring = ring  # the one assignment readers can observe: old ring, or complete new one
        log.info("%s: verification keys %s", self.origin, ", ".join(_named(ring)))
        if notify and self._on_change is not None:
            try:
                self._on_change()
            except Exception:
                log.exception("%s: on_change callback failed", self.origin)

    def _report(self, problem: str) -> None:
        if problem == self._problem:
            return  # one line per distinct problem, not one per retry
        self._problem = problem
        if self._loaded:
            log.warning(
                "%s: %s; keeping the %d key(s) we have", self.origin, problem, len(self.ring)
            )
        else:
            retry = min(self._interval_s, RETRY_INTERVAL_S)
            log.error("%s: %s; no verification keys yet, retrying every %gs", self.origin,
                      problem, retry)  # fmt: skip


def read_key_file(path: str) -> bytes:
    """A key file's bytes (at most ``MAX_KEY_DOCUMENT_BYTES``), or KeyConfigError."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_KEY_DOCUMENT_BYTES + 1)
    except OSError as error:
        raise KeyConfigError(_oserror(error)) from None
    if len(data) > MAX_KEY_DOCUMENT_BYTES:
        raise KeyConfigError(f"larger than {MAX_KEY_DOCUMENT_BYTES} bytes")
    return data


def _at(path: str, error: OSError | KeyConfigError) -> KeyConfigError:
    """``error`` about the key file itself, prefixed by its path (algorithm errors name it)."""
    if isinstance(error, KeyConfigError) and error.setting == "algorithm":
        return error
    message = str(error) if isinstance(error, KeyConfigError) else _oserror(error)
    return KeyConfigError(f"{path}: {message}", "key")


def _oserror(error: OSError) -> str:
    return f"cannot read: {error.strerror or error}"


def _stamp(path: str) -> Stamp:
    info = os.stat(path)
    return (info.st_mtime_ns, info.st_size, info.st_ino)


def _named(ring: KeyRing) -> list[str]:
    return [f"{key.kid or '-'} ({key.alg})" for key in ring.keys]


def _read_ring(path: str, algorithms: Sequence[str]) -> tuple[KeyRing, list[str]]:
    """Executor side of a file refresh: read and parse, off the event loop."""
    return ring_from_jwks(read_key_file(path), algorithms)


def _fetch_ring(url: str, algorithms: Sequence[str]) -> tuple[KeyRing, list[str]]:
    """Executor side of a URL refresh: fetch and parse, off the event loop."""
    return ring_from_jwks(fetch_jwks(url), algorithms)


class _NoDowngradeRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s), and never from https to plain http."""

    def redirect_request(  # noqa: PLR0917 (urllib's signature)
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        old = urllib.parse.urlsplit(req.full_url).scheme
        new = urllib.parse.urlsplit(newurl).scheme
        if new != "https" and (old == "https" or new != "http"):
            return None  # urllib then raises HTTPError with the 3xx status
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER: Final = urllib.request.build_opener(_NoDowngradeRedirect())


def fetch_jwks(url: str) -> bytes:
    """GET a JWKS document: 200 and at most ``MAX_KEY_DOCUMENT_BYTES``, else KeyConfigError.

    Blocking; runs in an executor thread.
    """
    request = urllib.request.Request(
        url,
        headers={"Accept": "application/jwk-set+json, application/json", "User-Agent": "fastgw"},
    )
    try:
        with _OPENER.open(request, timeout=FETCH_TIMEOUT_S) as response:
            status: int = response.status
            body: bytes = response.read(MAX_KEY_DOCUMENT_BYTES + 1) if status == 200 else b""
    except urllib.error.HTTPError as error:
        error.close()  # it holds the response; an unclosed one warns at garbage collection
        raise KeyConfigError(f"HTTP {error.code}") from None
    except urllib.error.URLError as error:
        raise KeyConfigError(f"cannot fetch: {error.reason}") from None
    except (OSError, http.client.HTTPException, ValueError) as error:
        raise KeyConfigError(f"cannot fetch: {error or type(error).__name__}") from None
    if status != 200:
        raise KeyConfigError(f"HTTP {status}")
    if len(body) > MAX_KEY_DOCUMENT_BYTES:
        raise KeyConfigError(f"larger than {MAX_KEY_DOCUMENT_BYTES} bytes")
    return body
