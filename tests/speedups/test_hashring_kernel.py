"""Behaviour of the consistent-hash ring, on both builds: hash, layout, spread, minimal movement."""

from __future__ import annotations

from collections import Counter

import pytest

from fastgw._speedups import Build

MASK64 = (1 << 64) - 1
KEYS = [b"customer-%d" % i for i in range(10_000)]


def reference_fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) % (1 << 64)
    return h


def reference_fmix64(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) % (1 << 64)
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) % (1 << 64)
    return k ^ (k >> 33)


def test_reference_fnv1a_matches_published_vectors() -> None:
    # http://www.isthe.com/chongo/src/fnv/test_fnv.c, FNV-1a 64
    assert reference_fnv1a64(b"") == 0xCBF29CE484222325
    assert reference_fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert reference_fnv1a64(b"foobar") == 0x85944171F73967E8


@pytest.mark.parametrize(
    "data", [b"", b"a", b"foobar", b"customer-42", bytes(range(256)), b"\xff" * 1000]
)
def test_hash64_is_fnv1a_then_fmix64(speedups: Build, data: bytes) -> None:
    result = speedups.hashring.hash64(data)
    assert type(result) is int
    assert 0 <= result <= MASK64
    assert result == reference_fmix64(reference_fnv1a64(data))


def test_hash64_known_values(speedups: Build) -> None:
    # pinned: every worker and every gateway instance must route a customer the same way
    assert speedups.hashring.hash64(b"") == 17280346270528514342
    assert speedups.hashring.hash64(b"abc") == 3741276987793851837


def test_empty_rings(speedups: Build) -> None:
    for ring in (
        speedups.hashring.HashRing([], []),
        speedups.hashring.HashRing([b"a", b"b"], [0, 0]),
    ):
        assert len(ring) == 0
        assert ring.lookup(b"k") == -1
        assert ring.fallback_order(b"k") == []
        assert ring.fallback_order(b"k", 3) == []


def test_points_per_weight(speedups: Build) -> None:
    ring = speedups.hashring.HashRing([b"a", b"b", b"c"], [1, 3, 0], points_per_weight=5)
    assert len(ring) == 20
    assert len(speedups.hashring.HashRing([b"a"], [2])) == 8  # default: 4 per weight


def test_point_placement_follows_the_spec(speedups: Build) -> None:
    """A node's points sit at hash64(key + b"#" + str(i)); a key maps to the next point."""
    hash64 = speedups.hashring.hash64
    keys, weights = [b"n0", b"n1", b"n2"], [2, 1, 3]
    ring = speedups.hashring.HashRing(keys, weights, points_per_weight=3)
    points = sorted(
        (hash64(key + b"#" + str(i).encode()), node)
        for node, (key, weight) in enumerate(zip(keys, weights, strict=True))
        for i in range(weight * 3)
    )
    for key in KEYS[:500]:
        h = hash64(key)
        owner = next((node for point, node in points if point >= h), points[0][1])
        assert ring.lookup(key) == owner


def test_ties_go_to_the_lower_node_index(speedups: Build) -> None:
    # same key twice: every point of node 1 ties with one of node 0
    ring = speedups.hashring.HashRing([b"same", b"same", b"other"], [1, 1, 1])
    owners = {ring.lookup(key) for key in KEYS[:2000]}
    assert owners == {0, 2}


@pytest.mark.parametrize(
    ("node_keys", "weights", "points_per_weight", "message"),
    [
        ([b"a"], [1, 1], 4, "node_keys and weights differ in length"),
        ([b"a"], [-1], 4, "weights must be >= 0"),
        ([b"a"], [1], 0, "points_per_weight must be >= 1"),
        ([b"a"], [1 << 19], 4, "more than 1048576 ring points"),
    ],
)
def test_invalid_rings(
    speedups: Build,
    node_keys: list[bytes],
    weights: list[int],
    points_per_weight: int,
    message: str,
) -> None:
    with pytest.raises(ValueError, match=message):
        speedups.hashring.HashRing(node_keys, weights, points_per_weight)


def test_fallback_order(speedups: Build) -> None:
    ring = speedups.hashring.HashRing([b"a", b"b", b"c", b"d", b"e"], [1, 2, 0, 1, 1], 8)
    for key in KEYS[:300]:
        order = ring.fallback_order(key)
        assert order[0] == ring.lookup(key)
        assert sorted(order) == [0, 1, 3, 4]  # distinct, every node with points, not c
        assert ring.fallback_order(key, 2) == order[:2]
        assert ring.fallback_order(key, 1) == order[:1]
        assert ring.fallback_order(key, 99) == order
    with pytest.raises(ValueError, match="limit must be >= 0"):
        ring.fallback_order(b"k", -1)


def test_fallback_order_walks_the_ring(speedups: Build) -> None:
    """The order is that of the first appearance of each node after the key's point."""
    hash64 = speedups.hashring.hash64
    keys = [b"a", b"b", b"c"]
    ring = speedups.hashring.HashRing(keys, [1, 1, 1], points_per_weight=4)
    points = sorted(
        (hash64(key + b"#" + str(i).encode()), node)
        for node, key in enumerate(keys)
        for i in range(4)
    )
    for key in KEYS[:200]:
        h = hash64(key)
        start = next((i for i, (point, _) in enumerate(points) if point >= h), 0)
        expected: list[int] = []
        for point_index in range(len(points)):
            node = points[(start + point_index) % len(points)][1]
            if node not in expected:
                expected.append(node)
        assert ring.fallback_order(key) == expected


def owners_by_key(ring: object, node_keys: list[bytes]) -> list[bytes]:
    lookup = ring.lookup  # type: ignore[attr-defined]
    return [node_keys[lookup(key)] for key in KEYS]


NODES = [b"metald-%d:9000" % i for i in range(6)]


def test_removing_one_of_five_moves_only_its_keys(speedups: Build) -> None:
    HashRing = speedups.hashring.HashRing  # noqa: N806
    five = NODES[:5]
    four = [node for node in five if node != NODES[2]]
    before = owners_by_key(HashRing(five, [40] * 5), five)
    after = owners_by_key(HashRing(four, [40] * 4), four)
    moved = [i for i in range(len(KEYS)) if before[i] != after[i]]
    assert all(before[i] == NODES[2] for i in moved)  # only the removed node's keys move
    assert len(moved) == before.count(NODES[2])
    assert abs(len(moved) / len(KEYS) - 1 / 5) < 0.04


def test_weight_zero_is_the_same_as_removal(speedups: Build) -> None:
    HashRing = speedups.hashring.HashRing  # noqa: N806
    five = NODES[:5]
    four = [node for node in five if node != NODES[2]]
    removed = owners_by_key(HashRing(four, [40] * 4), four)
    zeroed = owners_by_key(HashRing(five, [40, 40, 0, 40, 40]), five)
    assert removed == zeroed


def test_adding_a_sixth_moves_only_keys_to_it(speedups: Build) -> None:
    HashRing = speedups.hashring.HashRing  # noqa: N806
    before = owners_by_key(HashRing(NODES[:5], [40] * 5), NODES[:5])
    after = owners_by_key(HashRing(NODES, [40] * 6), NODES)
    moved = [i for i in range(len(KEYS)) if before[i] != after[i]]
    assert all(after[i] == NODES[5] for i in moved)
    assert abs(len(moved) / len(KEYS) - 1 / 6) < 0.04


def test_weights_are_respected(speedups: Build) -> None:
    weights = [1, 2, 3, 4]
    ring = speedups.hashring.HashRing(NODES[:4], weights, points_per_weight=64)
    counts = Counter(ring.lookup(key) for key in KEYS)
    for node, weight in enumerate(weights):
        share = counts[node] / len(KEYS)
        expected = weight / sum(weights)
        assert abs(share - expected) / expected < 0.2, (node, share, expected)


def test_equal_weights_spread_evenly(speedups: Build) -> None:
    ring = speedups.hashring.HashRing(NODES[:5], [40] * 5)
    counts = Counter(ring.lookup(key) for key in KEYS)
    assert set(counts) == set(range(5))
    for count in counts.values():
        assert abs(count / len(KEYS) - 0.2) < 0.04
