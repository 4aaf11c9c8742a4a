"""Durations and sizes: the two unit-bearing scalar syntaxes of the config file.

This module owns how a config value with a unit becomes a number, and back (for docs and error
messages). The model stores plain numbers whose unit is in the field name: durations are
``float`` seconds (``*_s``), sizes are ``int`` bytes (``*_bytes``).

Durations: a YAML number is seconds (``30``, ``0.5``); a string is one or more ``<number><unit>``
parts with units ``ms``, ``s``, ``m``, ``h``, ``d`` (``"100ms"``, ``"1.5s"``, ``"1h30m"``); a
string of just a number is seconds too, so that ``${TIMEOUT}`` can hold ``"30"``.

Sizes: a YAML integer is bytes; a string is ``<number>[unit]`` with units ``B``, ``K``/``KB``/
``KiB``, ``M``/``MB``/``MiB``, ``G``/``GB``/``GiB``, case-insensitive. KB, MB and GB are
1024-based, as in nginx (``client_max_body_size 1m`` is 1,048,576 bytes): an operator who
writes ``"1MB"`` means the familiar megabyte of buffer sizes, and accepting ``KiB`` as the
same unit removes any doubt. The result must be a whole number of bytes (``"1.5KB"`` is fine,
``"1.1KB"`` is not).

Both parsers reject booleans and non-finite numbers and raise ``ValueError`` with a short reason;
bounds (``>= 0``, ranges) are the loader's business, not this module's.
"""

from __future__ import annotations

import math
import re
from typing import Final

DURATION_UNITS_S: Final[dict[str, float]] = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}

SIZE_UNITS_BYTES: Final[dict[str, int]] = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
}

_NUMBER: Final = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_PART: Final = re.compile(rf"({_NUMBER})(ms|s|m|h|d)")
_DURATION_FULL: Final = re.compile(rf"(?:{_NUMBER}(?:ms|s|m|h|d))+")
_PLAIN_NUMBER: Final = re.compile(_NUMBER)
_SIZE_FULL: Final = re.compile(rf"({_NUMBER})\s*([a-z]*)")

DURATION_HINT: Final = 'e.g. "30s", "100ms", "5m" or a number of seconds'
SIZE_HINT: Final = 'e.g. "64KiB", "1MB" or a number of bytes'


def _finite(number: int | float) -> float:
    try:
        result = float(number)
    except OverflowError:
        raise ValueError("number too large") from None
    if not math.isfinite(result):
        raise ValueError("number must be finite")
    return result


def parse_duration(value: object) -> float:
    """Seconds for a duration value (YAML number or string); ``ValueError`` if malformed."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a duration")
    if isinstance(value, int | float):
        return _finite(value)
    if not isinstance(value, str):
        raise ValueError("not a duration")
    text = value.strip()
    if _PLAIN_NUMBER.fullmatch(text):
        return _finite(float(text))
    if not _DURATION_FULL.fullmatch(text):
        raise ValueError("not a duration")
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        total += float(match.group(1)) * DURATION_UNITS_S[match.group(2)]
    return _finite(total)


def parse_size(value: object) -> int:
    """Bytes for a size value (YAML integer or string); ``ValueError`` if malformed."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a size")
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        raise ValueError("not a size")
    match = _SIZE_FULL.fullmatch(value.strip().lower())
    if match is None or match.group(2) not in SIZE_UNITS_BYTES:
        raise ValueError("not a size")
    number: str = match.group(1)
    unit = SIZE_UNITS_BYTES[match.group(2)]
    whole, _, fraction = number.partition(".")
    fraction = fraction.rstrip("0")
    # Exact arithmetic (no float): "1.5KB" is 1536 bytes, "1.1KB" is not whole.
    scale: int = 10 ** len(fraction)
    numerator = (int(whole or "0") * scale + int(fraction or "0")) * unit
    if numerator % scale:
        raise ValueError("not a whole number of bytes")
    return numerator // scale


def format_duration(seconds: float) -> str:
    """The shortest exact unit spelling of ``seconds`` (``"30s"``, ``"100ms"``, ``"365d"``)."""
    if seconds == 0:
        return "0s"
    for unit in ("d", "h", "m", "s", "ms"):
        count = seconds / DURATION_UNITS_S[unit]
        if count >= 1 and abs(count - round(count)) < 1e-9:
            return f"{round(count)}{unit}"
    return f"{seconds:g}s"


def format_size(size_bytes: int) -> str:
    """The largest exact binary unit spelling of ``size_bytes`` (``"64KiB"``, ``"10MiB"``)."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size_bytes and size_bytes % factor == 0:
            return f"{size_bytes // factor}{unit}"
    return f"{size_bytes}B"
