"""Exceptions that cross module boundaries.

Wire errors (bad framing, limits) never use exceptions on the hot path: they map to pre-encoded
replies in ``replies.py``. These exceptions are for start-up and the command line, where a
failure must become one readable line per problem and a non-zero exit, never a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class FastgwError(Exception):
    """Base class: an expected failure the CLI reports as text, without a traceback."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One configuration problem: where (``$.a.b[1].c``) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ConfigError(FastgwError):
    """A configuration that cannot be used; carries every problem found, not only the first."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class BootError(FastgwError):
    """A worker could not start (port in use, unreadable file): the supervisor halts, no respawn."""
