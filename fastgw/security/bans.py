"""Automatic bans (``gateway.security.auto_ban``): a client address that earns ``threshold``
401s or 429s within ``window`` is refused (403 ``ip_blocked``) for ``ban``.

What it owns
    * ``BanBoard``: the generation's shared-memory board of ban events (a memfd the master
      makes, like the health table). Each worker slot owns a ring of events in its own
      section, so every cell has one writer and no lock exists; a change count per section
      tells readers what to re-read.
    * ``Bans``: one worker's view. It counts its own clients' failures, bans, publishes the ban
      on the board, and merges the other workers' events at its refresh (every 100 ms), so a
      ban reaches every worker of the gateway instance within that. A lift (``POST
      /admin/bans/lift?ip=...`` on the metrics port) is an event too: for each address the
      latest event wins.

Invariants
    * Counting is per worker (a client spread over N workers can earn up to N x threshold
      failures before its ban); the ban itself is instance-wide.
    * Memory is bounded: at most ``MAX_TRACKED_CLIENTS`` addresses counted per worker (the
      map is emptied when full, which forgives, never bans wrongly), ``threshold`` timestamps
      each, and ``RING`` events per worker slot on the board (an older event is overwritten;
      the ban it carried is still held in every view that merged it).
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
VERSION: Final = 1
RING: Final = 512
"""Ban events kept per worker slot on the board."""
MAX_ADDRESS_BYTES: Final = 48
MAX_TRACKED_CLIENTS: Final = 100_000

_HEADER: Final = 4  # magic, version, slots, ring
_SECTION_HEAD: Final = 2  # changes, events written
_EVENT: Final = 3 + MAX_ADDRESS_BYTES // 8  # at_us, until_us, length, address bytes


def _section_cells() -> int:
    return _SECTION_HEAD + RING * _EVENT


def create_ban_fd(slots: int) -> int:
    fd = os.memfd_create("fastgw-bans", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, (_HEADER + slots * _section_cells()) * 8)
        with mmap.mmap(fd, 0) as mm:
            cells = memoryview(mm).cast("q")
            cells[0], cells[1], cells[2], cells[3] = MAGIC, VERSION, slots, RING
            cells.release()
    except BaseException:
        os.close(fd)
        raise
    return fd


class BanBoard:
    __slots__ = ("_cells", "_mm", "_raw", "slots")

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

    def close(self) -> None:
        self._raw.release()
        self._cells.release()
        self._mm.close()

    def _section(self, slot: int) -> int:
        return _HEADER + slot * _section_cells()

    def publish(self, slot: int, address: bytes, at_us: int, until_us: int) -> None:
        """Write one event (a ban until ``until_us``, or a lift: ``until_us`` 0)."""
        cells = self._cells
        head = self._section(slot)
        written = int(cells[head + 1])
        at = head + _SECTION_HEAD + (written % RING) * _EVENT
        cells[at], cells[at + 1], cells[at + 2] = at_us, until_us, len(address)
        start = (at + 3) * 8
        self._raw[start : start + len(address)] = address
        cells[head + 1] = written + 1
        cells[head] += 1

    def changes(self) -> int:
        cells = self._cells
        return sum(int(cells[self._section(slot)]) for slot in range(self.slots))

    def events(self) -> list[tuple[int, int, bytes]]:
        """Every event on the board: ``(at_us, until_us, address)``."""
        cells, out = self._cells, []
        for slot in range(self.slots):
            head = self._section(slot)
            for n in range(min(int(cells[head + 1]), RING)):
                at = head + _SECTION_HEAD + n * _EVENT
                length = int(cells[at + 2])
                start = (at + 3) * 8
                out.append(
                    (int(cells[at]), int(cells[at + 1]), bytes(self._raw[start : start + length]))
                )
        return out

    def carry_over(self, source: BanBoard, now_us: int) -> None:
        """Before a new generation's workers start: the bans still running, into slot 0."""
        latest: dict[bytes, tuple[int, int]] = {}
        for at, until, address in source.events():
            if address not in latest or at > latest[address][0]:
                latest[address] = (at, until)
        for address, (at, until) in latest.items():
            if until > now_us:
                self.publish(0, address, at, until)


class Bans:
    """One worker's bans (see the module docstring). Times are monotonic microseconds."""

    __slots__ = ("_ban_us", "_board", "_changes_seen", "_failures", "_slot", "_threshold",
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
        self._changes_seen = -1
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
        """Merge the board's events when it changed (every worker's bans and lifts)."""
        board = self._board
        if board is None:
            return
        changes = board.changes()
        if changes == self._changes_seen:
            return
        self._changes_seen = changes
        latest: dict[bytes, tuple[int, int]] = {}
        for at, until, address in board.events():
            if address not in latest or at >= latest[address][0]:
                latest[address] = (at, until)
        self.banned = {a: until for a, (_, until) in latest.items() if until > now_us}

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
