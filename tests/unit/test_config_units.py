"""Durations and sizes: every accepted spelling, every refused one, and the round trip."""

from __future__ import annotations

import pytest

from fastgw.config.units import format_duration, format_size, parse_duration, parse_size

KIB, MIB, GIB = 1024, 1024**2, 1024**3


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("100ms", 0.1),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("1h30m", 5400.0),
        ("1m30s500ms", 90.5),
        ("0s", 0.0),
        ("30", 30.0),
        ("0.25", 0.25),
        (" 30s ", 30.0),
        (30, 30.0),
        (0, 0.0),
        (2.5, 2.5),
        (-1, -1.0),  # bounds are the loader's business
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    ["", "s", "30 s", "30sec", "30S", "-1s", "1e3s", "1h 30m", "abc", "30s1", True, False,
     None, [], {}, float("inf"), float("nan"), 10**400],
)  # fmt: skip
def test_parse_duration_refuses(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1MB", MIB),
        ("1MiB", MIB),
        ("1mb", MIB),
        ("1M", MIB),
        ("512KB", 512 * KIB),
        ("16KiB", 16 * KIB),
        ("16k", 16 * KIB),
        ("2GB", 2 * GIB),
        ("1.5KB", 1536),
        ("0.5MiB", MIB // 2),
        ("100B", 100),
        ("100", 100),
        ("1 KiB", KIB),
        (4096, 4096),
        (0, 0),
    ],
)
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text",
    ["", "MB", "1TB", "1.1KB", "0.3B", "-1KB", "1e3", "ten", "1 M B", True, 1.5, None, [1]],
)
def test_parse_size_refuses(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0, "0s"), (0.05, "50ms"), (0.1, "100ms"), (30.0, "30s"), (120.0, "2m"), (3600.0, "1h"),
     (31536000.0, "365d"), (1.5, "1500ms"), (0.0001, "0.0001s")],
)  # fmt: skip
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0B"), (100, "100B"), (KIB, "1KiB"), (64 * KIB, "64KiB"), (10 * MIB, "10MiB"),
     (GIB, "1GiB"), (1536, "1536B")],
)  # fmt: skip
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text
    assert parse_size(text) == size
