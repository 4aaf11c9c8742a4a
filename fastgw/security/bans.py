"""Automatic bans (``gateway.security.auto_ban``): a client address that earns ``threshold``
401s or 429s within ``window`` is refused (403 ``ip_blocked``) for ``ban``.

What it owns
    * ``BanBoard``: the generation's shared-memory board of ban events (a memfd the master
      makes, like the health table). It has one section per worker slot plus one *shared*
      section (the last) for bans that came from elsewhere: other gateway instances through
      Redis (``fastgw.security.ban_sync``, written by worker slot 0) and the previous
      generation (written by the master at a reload, before the workers start). Each section
      is a ring of events with one writer, so no lock exists; a count of events written per
      section tells readers what is new.
    * ``Bans``: one worker's view. It counts its own clients' failures, bans, publishes the ban
      in its section, and at its refresh (every 100 ms) applies the events the sections gained
      since it last read them (its own too: the bans of the worker it replaced), so a ban
      reaches every worker of the gateway instance within that. A lift (``POST
      /admin/bans/lift?ip=...`` on the metrics port) is an event too (``until`` 0); events
      are applied in the order of their times.

Invariants
    * Counting is per worker (a client spread over N workers can earn up to N x threshold
      failures before its ban); the ban itself is instance-wide.
    * Memory is bounded: at most ``MAX_TRACKED_CLIENTS`` addresses counted per worker (the
      map is emptied when full, which forgives, never bans wrongly), ``threshold`` timestamps
      each, and ``RING`` events per section. A view that falls more than ``RING`` events
      behind one section between two refreshes (``RING`` bans in 100 ms from one worker)
      misses the oldest of them; what it applied stays applied until it expires.
    * An address longer than ``MAX_ADDRESS_BYTES`` (never a real IP) is not counted.
"""

from __future__ import annotations

import mmap
import os
import time
from collections import deque
from typing import Final
from urllib.parse import parse_qs

import orjson

from fastgw.security.ipset import format_address, parse_address

MAGIC: Final = 0x6667_6261  # "fgba"
VERSION: Final = 2
RING: Final = 512
"""Ban events kept per section of the board."""
MAX_ADDRESS_BYTES: Final = 48
MAX_TRACKED_CLIENTS: Final = 100_000

_HEADER: Final = 4  # magic, version, slots, ring
_SECTION_HEAD: Final = 2  # events written (by the owner), events pushed to Redis (by slot 0)
_EVENT: Final = 3 + MAX_ADDRESS_BYTES // 8  # at_us, until_us, length, address bytes

Event = tuple[int, int, bytes]
"""``(at_us, until_us, address)``: a ban until ``until_us``, or a lift when it is 0."""


def _section_cells() -> int:
    return _SECTION_HEAD + RING * _EVENT


def create_ban_fd(slots: int) -> int:
    """A board for ``slots`` workers (plus the shared section)."""
    fd = os.memfd_create("fastgw-bans", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, (_HEADER + (slots + 1) * _section_cells()) * 8)
        with mmap.mmap(fd, 0) as mm:
            cells = memoryview(mm).cast("q")
            cells[0], cells[1], cells[2], cells[3] = MAGIC, VERSION, slots, RING
            cells.release()
    except BaseException:
        os.close(fd)
        raise
    return fd


class BanBoard:
    """``slots`` worker sections, then the shared one (index ``shared``)."""

    __slots__ = ("_cells", "_mm", "_raw", "shared", "slots")

    def __init__(self, fd: int) -> None:
        self._mm = mmap.mmap(fd, 0)
        cells = memoryview(self._mm).cast("q")
        if cells[0] != MAGIC or cells[1] != VERSION or cells[3] != RING:
            cells.release()
            self._mm.close()
            raise ValueError("not a fastgw ban board (or another layout version)")
        self._cells = cells
        self._raw = memoryview(self._mm)
        self.slots = int(cells[2])
        self.shared = self.slots

    def close(self) -> None:
        self._raw.release()
        self._cells.release()
        self._mm.close()

    @property
    def sections(self) -> int:
        return self.slots + 1

    def _head(self, section: int) -> int:
        return _HEADER + section * _section_cells()

    def publish(self, section: int, address: bytes, at_us: int, until_us: int) -> None:
        """Write one event (a ban until ``until_us``, or a lift: ``until_us`` 0). Only the
        section's owner calls this."""
        cells = self._cells
        head = self._head(section)
        written = int(cells[head])
        at = head + _SECTION_HEAD + (written % RING) * _EVENT
        cells[at], cells[at + 1], cells[at + 2] = at_us, until_us, len(address)
        start = (at + 3) * 8
        self._raw[start : start + len(address)] = address
        cells[head] = written + 1  # last: a reader never sees the count before the event

    def written(self, section: int) -> int:
        """Events ever written to ``section`` (a reader's cursor counts the same way)."""
        return int(self._cells[self._head(section)])

    def pushed(self, section: int) -> int:
        """How far the Redis sync has pushed ``section``'s events: kept on the board so that a
        respawned slot 0 goes on from there instead of pushing old events again."""
        return int(self._cells[self._head(section) + 1])

    def set_pushed(self, section: int, cursor: int) -> None:
        self._cells[self._head(section) + 1] = cursor

    def read(self, section: int, cursor: int) -> tuple[int, list[Event]]:
        """The events ``section`` gained since ``cursor`` (at most the last ``RING``), and the
        new cursor."""
        cells = self._cells
        head = self._head(section)
        written = int(cells[head])
        out = []
        for n in range(max(cursor, written - RING), written):
            at = head + _SECTION_HEAD + (n % RING) * _EVENT
            length = int(cells[at + 2])
            start = (at + 3) * 8
            address = bytes(self._raw[start : start + length])
            out.append((int(cells[at]), int(cells[at + 1]), address))
        return written, out

    def events(self) -> list[Event]:
        """Every event the board still holds, of every section."""
        return [event for s in range(self.sections) for event in self.read(s, 0)[1]]

    def carry_over(self, source: BanBoard, now_us: int) -> None:
        """Before a new generation's workers start: the bans still running, into the shared
        section (they were already shared with other instances, if sharing is on)."""
        for address, until in running_bans(source.events(), now_us).items():
            self.publish(self.shared, address, now_us, until)


def running_bans(events: list[Event], now_us: int) -> dict[bytes, int]:
    """address -> until for the bans in force once ``events`` are applied in time order."""
    banned: dict[bytes, int] = {}
    for _, until, address in sorted(events, key=lambda event: event[0]):
        if until > now_us:
            banned[address] = until
        else:
            banned.pop(address, None)
    return banned


class Bans:
    """One worker's bans (see the module docstring). Times are monotonic microseconds."""

    __slots__ = ("_ban_us", "_board", "_cursors", "_failures", "_slot", "_threshold",
                 "_window_us", "banned", "count")  # fmt: skip

    def __init__(
        self, board: BanBoard | None, slot: int, threshold: int, window_s: float, ban_s: float
    ) -> None:
        self._board = board
        self._slot = slot
        self._threshold = threshold
        self._window_us = int(window_s * 1_000_000)
        self._ban_us = int(ban_s * 1_000_000)
        self._failures: dict[bytes, deque[int]] = {}
        # Where this view has read each section to.
        self._cursors = [0] * (board.sections if board is not None else 0)
        self.banned: dict[bytes, int] = {}  # address -> until_us
        self.count = 0  # bans this worker decided

    # HOT PATH (one dict lookup; empty dict when nobody is banned)
    def is_banned(self, address: bytes, now_us: int) -> bool:
        until = self.banned.get(address)
        if until is None:
            return False
        if until > now_us:
            return True
        del self.banned[address]
        return False

    def failure(self, address: bytes, now_us: int) -> None:
        """A 401 or 429 for ``address``: count it; ban at the threshold."""
        if len(address) > MAX_ADDRESS_BYTES or address in self.banned:
            return
        seen = self._failures.get(address)
        if seen is None:
            if len(self._failures) >= MAX_TRACKED_CLIENTS:
                self._failures.clear()
            seen = self._failures[address] = deque(maxlen=self._threshold)
        seen.append(now_us)
        if len(seen) == self._threshold and now_us - seen[0] <= self._window_us:
            del self._failures[address]
            self.ban(address, now_us, now_us + self._ban_us)

    def ban(self, address: bytes, now_us: int, until_us: int) -> None:
        self.banned[address] = until_us
        self.count += 1
        if self._board is not None:
            self._board.publish(self._slot, address, now_us, until_us)

    def lift(self, address: bytes, now_us: int) -> bool:
        """Lift a ban (an operator's action); True when one was in force here."""
        was = self.banned.pop(address, 0) > now_us
        self._failures.pop(address, None)
        if self._board is not None:
            self._board.publish(self._slot, address, now_us, 0)
        return was

    def refresh(self, now_us: int) -> None:
        """Apply the events the other sections gained since the last refresh, in time order."""
        board = self._board
        if board is None:
            return
        new: list[Event] = []
        # Its own section too: a respawned worker finds its predecessor's bans there (applying
        # its own events again changes nothing: they are in time order with the rest).
        for section in range(board.sections):
            if board.written(section) != self._cursors[section]:
                self._cursors[section], events = board.read(section, self._cursors[section])
                new += events
        if not new:
            return
        banned = self.banned
        for _, until, address in sorted(new, key=lambda event: event[0]):
            if until > now_us:
                banned[address] = until
            else:
                banned.pop(address, None)
                self._failures.pop(address, None)

    def listing(self, now_us: int) -> list[dict[str, object]]:
        return [
            {
                "ip": address.decode("ascii", "replace"),
                "remaining_s": round((until - now_us) / 1e6, 1),
            }
            for address, until in sorted(self.banned.items())
            if until > now_us
        ]


class BansReport:
    """``GET /admin/bans`` and ``POST /admin/bans/lift?ip=<address>`` on the metrics port."""

    __slots__ = ("_bans",)

    def __init__(self, bans: Bans) -> None:
        self._bans = bans

    def __call__(self) -> tuple[int, bytes, bytes]:
        now_us = time.monotonic_ns() // 1000
        return 200, b"application/json", orjson.dumps({"bans": self._bans.listing(now_us)})

    def lift(self, query: bytes) -> tuple[int, bytes, bytes]:
        address = parse_qs(query.decode("latin-1")).get("ip", [""])[0]
        if parse_address(address) is None:
            body = {"error": {"code": "bad_request", "message": "ip=<address> is required"}}
            return 400, b"application/json", orjson.dumps(body)
        canonical = format_address(*parse_address(address))  # type: ignore[misc]
        lifted = self._bans.lift(canonical, time.monotonic_ns() // 1000)
        return 200, b"application/json", orjson.dumps({"ip": canonical.decode(), "lifted": lifted})
