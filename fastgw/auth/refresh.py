"""Where the key ring comes from, and how it stays current (one ``KeySource`` per worker).

A PEM file or an HMAC secret gives a ring at construction, once: there is nothing to refresh.
A ``jwks_file`` is read at construction; the background task then stats it every
``min(interval, FILE_POLL_S)`` and re-reads it only when its ``(mtime_ns, size, inode)`` changed
(a withdrawn key stops verifying within about a second, not an interval; a stat is cheap). A
``jwks_url`` is fetched by ``start()`` (bounded), then every ``key_refresh_interval_s``; until
the first success it is retried every ``min(interval, RETRY_INTERVAL_S)`` with an empty ring
(every token fails: we have no key).

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
  not one per token.
- **Known limit of that bound.** A flood of unknown kids spends the one on-demand refetch of
  the interval (the contract is "at most one refetch per interval"), so a key that an issuer
  starts signing with before publishing it is found by the next periodic refresh at worst.
  What we do cheaply: a kid that a demand refetch looked for and did not find is remembered
  (at most ``MAX_ABSENT_KIDS``, oldest dropped first) and never demands a refetch again, so
  one bogus kid repeated cannot spend the on-demand refetch of every interval. Each
  successful refetch forgets the remembered kids that the new ring has (a ring hit comes
  first anyway); the others stay absent from what the issuer serves.
- **Every fetch has one deadline.** ``fetch_jwks`` gives up ``FETCH_DEADLINE_S`` after it
  began, however slowly the bytes trickle in (each socket wait is at most what is left), so its
  executor thread ends by itself; the loop side stops waiting at the same deadline.
- **Nothing is left pending.** One background task; ``stop()`` cancels it; ``aclose()`` also
  waits for it and for any executor job still running (a fetch ends by its deadline), so
  ``asyncio.Runner.close`` never waits on a stuck thread of ours.

Fetching uses ``urllib.request`` in the loop's default executor, with a per-operation timeout,
the overall deadline, a size cap, and no redirect from https to anything else (a downgrade would
let a network attacker serve keys). The deadline is enforced on the response's reads and on
connect; a TLS handshake is bounded per operation only (urllib gives no hook inside it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

from fastgw.auth.fetch import FETCH_DEADLINE_S, fetch_jwks, late_message
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

if TYPE_CHECKING:
    pass

log = logging.getLogger("fastgw.auth.keys")

START_TIMEOUT_S: Final = 5.0
"""How long ``start()`` waits for the first JWKS fetch before serving with no key."""
RETRY_INTERVAL_S: Final = 5.0
"""Longest wait between fetches while no JWKS fetch has succeeded yet."""
FILE_POLL_S: Final = 1.0
"""Longest wait between two stats of a ``jwks_file``."""
MAX_ABSENT_KIDS: Final = 256
"""Kids remembered as not found by a demand refetch (each one demands no refetch again)."""

Stamp = tuple[int, int, int]
_T = TypeVar("_T")


class KeySource:
    """The verification keys of one worker; ``ring`` is what the hot path reads."""

    __slots__ = (
        "_absent",
        "_algorithms",
        "_asked",
        "_clock",
        "_demand_at",
        "_file",
        "_interval_s",
        "_jobs",
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
        self._jobs: set[asyncio.Future[Any]] = set()  # executor jobs not finished yet
        self._asked: set[str | None] = set()  # kids that demanded the refetch under way
        self._absent: dict[str | None, None] = {}  # not found by a demand refetch; oldest first
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
        """``stop()``, then wait until the background task and its executor jobs have finished.

        Bounded: a fetch ends by its deadline (``FETCH_DEADLINE_S``), a file read is local.
        """
        task = self._task
        self.stop()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._jobs:  # a job whose waiter was cancelled still runs in its thread
            await asyncio.wait(set(self._jobs))

    def unknown_kid(self, kid: str | None) -> None:
        """A token named a key we lack: refetch soon, at most once per refresh interval."""
        # HOT PATH (per token with an unknown kid): lookups and at most one Event.set.
        wake = self._wake
        if wake is None or (kid is not None and kid in self.ring.kids) or kid in self._absent:
            return
        now = self._clock()
        if now < self._demand_at:
            return
        self._demand_at = now + self._interval_s
        self._asked.add(kid)  # at most one per interval; settled by the next fetch's outcome
        wake.set()

    # ---------------------------------------------------------------------- background

    async def _run(self) -> None:
        wake = self._wake
        assert wake is not None
        while True:
            if self._file is not None:
                delay = min(self._interval_s, FILE_POLL_S)  # a stat; re-read only on change
            elif self._loaded:
                delay = self._interval_s
            else:
                delay = min(self._interval_s, RETRY_INTERVAL_S)
            demanded = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    demanded = await wake.wait()
            wake.clear()
            await self._refresh(force=demanded)

    async def _refresh(self, *, force: bool) -> None:
        """One fetch or re-read; ``force``: re-read a file even if its stamp is unchanged."""
        try:
            if self._url is not None:
                deadline = time.monotonic() + FETCH_DEADLINE_S  # shared by thread and loop
                fetch = functools.partial(_fetch_ring, self._url, self._algorithms, deadline)
                ring, warnings = await self._off_loop(fetch, deadline - time.monotonic())
            else:
                assert self._file is not None
                stamp = _stamp(self._file)
                if stamp == self._stamp and not force:
                    return
                data = await self._off_loop(functools.partial(read_key_file, self._file))
                self._stamp = stamp  # read: a bad document is not read again until it changes
                parse = functools.partial(ring_from_jwks, data, self._algorithms)
                ring, warnings = await self._off_loop(parse)
        except (OSError, KeyConfigError) as error:
            self._asked.clear()  # nothing learned about them; they may demand again
            self._report(str(error) if isinstance(error, KeyConfigError) else _oserror(error))
            return
        self._settle_asked(ring)
        if not ring:
            self._report(f"no usable key: {'; '.join(warnings)}")
            return
        self._install(ring, warnings, notify=True)

    async def _off_loop(self, call: Callable[[], _T], wait_s: float | None = None) -> _T:
        """``call()`` in the default executor, waited for at most ``wait_s``.

        The job is shielded, and tracked until it finishes, because a cancelled or timed-out
        wait does not stop its thread: ``aclose()`` waits for what is still running.
        """
        job = asyncio.get_running_loop().run_in_executor(None, call)
        self._jobs.add(job)
        job.add_done_callback(self._on_job_done)
        try:
            async with asyncio.timeout(wait_s):
                return await asyncio.shield(job)
        except TimeoutError:
            # The loop's side of the deadline: the thread gives up at the same moment.
            raise KeyConfigError(late_message()) from None

    def _on_job_done(self, job: asyncio.Future[Any]) -> None:
        self._jobs.discard(job)
        if not job.cancelled():
            job.exception()  # retrieved: a job nobody awaits any more logs nothing at exit

    def _settle_asked(self, ring: KeyRing) -> None:
        """After a successful refetch: remember the demanding kids it did not find."""
        kids = ring.kids
        absent = self._absent
        for published in [kid for kid in absent if kid in kids]:
            del absent[published]  # a ring hit now, and may demand again once withdrawn
        for asked in self._asked:
            if asked is None or asked not in kids:
                absent.pop(asked, None)
                absent[asked] = None
                if len(absent) > MAX_ABSENT_KIDS:
                    del absent[next(iter(absent))]  # oldest first
        self._asked.clear()

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


def _fetch_ring(url: str, algorithms: Sequence[str], deadline: float) -> tuple[KeyRing, list[str]]:
    """Executor side of a URL refresh: fetch and parse, off the event loop."""
    return ring_from_jwks(fetch_jwks(url, deadline), algorithms)
