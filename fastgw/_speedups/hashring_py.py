"""Consistent-hash ring kernel: which backend instance owns a key, and who comes next.

What it owns
    The 64-bit hash used for routing (``hash64``) and the weighted ring built from it
    (``HashRing``): ``lookup`` for the owner of a key, ``fallback_order`` for the distinct
    instances to try, in ring order, when the owner is unhealthy.

Invariants
    * ``hash64`` is FNV-1a 64 followed by murmur3's fmix64 finalizer: FNV-1a alone mixes the last
      bytes of similar keys ("cust-1", "cust-2") poorly, fmix64 spreads them over the ring. The
      result is a Python int in [0, 2**64) and is the same on every machine and in every build,
      so every worker and every gateway instance routes a customer to the same backend.
    * Node ``i`` with weight ``w`` owns ``w * points_per_weight`` points, at
      ``hash64(node_key + b"#" + str(j).encode())`` for ``j`` in ``range(w * points_per_weight)``;
      weight 0 gives no points. Points are sorted by (hash, node index), so equal hashes are
      broken by node index and the ring does not depend on input order beyond the indexes.
    * A key belongs to the first point whose hash is >= ``hash64(key)``, wrapping past the end.
      Removing a node (or setting its weight to 0) moves only the keys it owned; adding one moves
      only keys to it: the minimal-movement property the tests check.
    * The ring is immutable: a new instance list builds a new ring (at plan time, never on the
      hot path), so lookups need no lock.

Why like this
    This file is the spec *and* the pure-Python fallback. Cython compiles the same source as
    ``hashring_c`` with ``hashring_c.pxd`` adding C types: the hash becomes a uint64 loop over
    the key's bytes, and the points live in ``array('Q')`` buffers that the C build reads through
    typed memoryviews, so ``lookup`` is a binary search over a C array of uint64.
"""

from __future__ import annotations

from array import array
from typing import Final

__all__ = ["MAX_RING_POINTS", "HashRing", "hash64"]

MAX_RING_POINTS: Final = 1 << 20  # 8 MiB of hashes: far above any sane weight x points_per_weight

_MASK64: Final = 0xFFFFFFFFFFFFFFFF
_FNV_OFFSET: Final = 0xCBF29CE484222325
_FNV_PRIME: Final = 0x100000001B3
_FMIX_C1: Final = 0xFF51AFD7ED558CCD
_FMIX_C2: Final = 0xC4CEB9FE1A85EC53


def hash64(data: bytes) -> int:
    """FNV-1a 64 of ``data``, then murmur3 fmix64; an int in [0, 2**64)."""
    # HOT PATH: one multiply per byte; in the C build the masks are no-ops on uint64.
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK64
    return _fmix64(h)


def _fmix64(k: int) -> int:
    """murmur3's 64-bit finalizer: every input bit affects every output bit."""
    k ^= k >> 33
    k = (k * _FMIX_C1) & _MASK64
    k ^= k >> 33
    k = (k * _FMIX_C2) & _MASK64
    k ^= k >> 33
    return k


class HashRing:
    """A weighted consistent-hash ring over nodes identified by their index in ``node_keys``."""

    def __init__(
        self, node_keys: list[bytes], weights: list[int], points_per_weight: int = 4
    ) -> None:
        if len(node_keys) != len(weights):
            raise ValueError("node_keys and weights differ in length")
        if points_per_weight < 1:
            raise ValueError("points_per_weight must be >= 1")
        if any(weight < 0 for weight in weights):
            raise ValueError("weights must be >= 0")
        if sum(weights) * points_per_weight > MAX_RING_POINTS:
            raise ValueError(f"more than {MAX_RING_POINTS} ring points")
        points: list[tuple[int, int]] = []
        for node, (key, weight) in enumerate(zip(node_keys, weights, strict=True)):
            for j in range(weight * points_per_weight):
                points.append((hash64(key + b"#" + str(j).encode()), node))
        points.sort()  # by hash, ties by node index
        self._points = array("Q", [point for point, _ in points])
        self._owners = array("i", [node for _, node in points])
        self._size = len(points)
        self._node_count = len(node_keys)
        self._nodes_with_points = len({node for _, node in points})

    def __len__(self) -> int:
        return self._size

    def lookup(self, key: bytes) -> int:
        """Index of the node owning ``key``; -1 when no node has points."""
        # HOT PATH: one hash, one binary search.
        if self._size == 0:
            return -1
        return self._owners[self._first_at_or_after(hash64(key))]

    def fallback_order(self, key: bytes, limit: int = 0) -> list[int]:
        """Distinct node indexes in ring order from ``key``'s point: the owner first.

        At most ``limit`` of them (0: every node that has points).
        """
        if limit < 0:
            raise ValueError("limit must be >= 0")
        order: list[int] = []
        size = self._size
        if size == 0:
            return order
        wanted = self._nodes_with_points
        if 0 < limit < wanted:
            wanted = limit
        seen = bytearray(self._node_count)
        owners = self._owners
        i = self._first_at_or_after(hash64(key))
        for _ in range(size):
            node = owners[i]
            if not seen[node]:
                seen[node] = 1
                order.append(node)
                if len(order) == wanted:
                    break
            i += 1
            if i == size:
                i = 0
        return order

    def _first_at_or_after(self, point: int) -> int:
        """Index of the first point >= ``point``, wrapping to 0 past the last (needs size > 0)."""
        points = self._points
        lo = 0
        hi = self._size
        while lo < hi:
            mid = (lo + hi) >> 1
            if points[mid] < point:
                lo = mid + 1
            else:
                hi = mid
        return 0 if lo == self._size else lo
