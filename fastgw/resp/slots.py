"""Redis Cluster key slots and the slot map: pure values in, values out (no sockets).

What it owns
    ``crc16`` (table-driven CRC16/XMODEM, the spec's reference function, kept readable as the
    twin the fast path is tested against), ``key_slot`` (the hot-path one, on
    ``binascii.crc_hqx``, which is the same CRC in C), and ``parse_slots`` (a ``CLUSTER SLOTS``
    reply to ranges of slots and their nodes).

Invariants
    * ``key_slot(key) == crc16(hash_part(key)) % 16384`` for every ``key``; the hash part is
      what lies between the first ``{`` and the first ``}`` after it when that is not empty,
      else the whole key (Redis Cluster spec, "Hash tags").
    * ``parse_slots`` checks the reply's shape and raises ``ValueError`` on anything else, so a
      bad answer fails one refresh instead of corrupting the map.
"""

from __future__ import annotations

from binascii import crc_hqx
from dataclasses import dataclass
from typing import Final

__all__ = ["SLOTS", "SlotRange", "crc16", "hash_part", "key_slot", "parse_slots"]

SLOTS: Final = 16384
POLYNOMIAL: Final = 0x1021  # CRC16/XMODEM (CCITT), initial value 0, no reflection


def _table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ POLYNOMIAL) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


CRC16_TABLE: Final = _table()


def crc16(data: bytes) -> int:
    """CRC16/XMODEM of ``data``, one table lookup per byte (``crc16(b"123456789") == 0x31C3``)."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ CRC16_TABLE[(crc >> 8) ^ byte]
    return crc


def hash_part(key: bytes) -> bytes:
    """The part of ``key`` that is hashed: its ``{hash tag}`` if it has a non-empty one."""
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def key_slot(key: bytes) -> int:
    """The Cluster slot of ``key`` (what ``CLUSTER KEYSLOT`` answers)."""
    # HOT PATH: two finds and a C CRC; no loop in Python.
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return crc_hqx(key, 0) & (SLOTS - 1)


@dataclass(frozen=True, slots=True)
class SlotRange:
    """Slots ``first..last`` (inclusive) served by ``master``; ``replicas`` may take over."""

    first: int
    last: int
    master: tuple[str, int]
    replicas: tuple[tuple[str, int], ...]


def _node(entry: object, default_host: str) -> tuple[str, int]:
    if not isinstance(entry, list) or len(entry) < 2:
        raise ValueError(f"CLUSTER SLOTS: bad node entry {entry!r:.80}")
    host, port = entry[0], entry[1]
    if not isinstance(host, bytes) or type(port) is not int or not 0 < port < 65536:
        raise ValueError(f"CLUSTER SLOTS: bad node entry {entry!r:.80}")
    text = host.decode("ascii", "replace")
    # An empty or "?" host means "the address you reached me at" (cluster-preferred-endpoint).
    return (default_host if text in ("", "?") else text), port


def parse_slots(reply: object, default_host: str) -> list[SlotRange]:
    """The ranges of a ``CLUSTER SLOTS`` reply (RESP2, bytes) read from ``default_host``."""
    if not isinstance(reply, list):
        raise ValueError(f"CLUSTER SLOTS: expected an array, got {reply!r:.80}")
    ranges = []
    for item in reply:
        if not isinstance(item, list) or len(item) < 3:
            raise ValueError(f"CLUSTER SLOTS: bad range {item!r:.80}")
        first, last = item[0], item[1]
        if type(first) is not int or type(last) is not int or not 0 <= first <= last < SLOTS:
            raise ValueError(f"CLUSTER SLOTS: bad slot range {first!r}..{last!r}")
        nodes = [_node(entry, default_host) for entry in item[2:]]
        ranges.append(SlotRange(first, last, nodes[0], tuple(nodes[1:])))
    return ranges
