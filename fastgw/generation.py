"""A generation: the workers forked from one config, and what the master holds for them.

What it owns
    * ``listener``: the main port's reservation (bound, never listening: see ``listen.py``);
    * ``admin``: the metrics port's reservation, when metrics are enabled;
    * ``health_fd``: the generation's shared health table (``routing/health_table.py``), sized
      for its instance list and worker count;
    * ``metrics_fd``: the generation's metrics board (``obs/metrics_board.py``) when metrics
      are on; made here, then owned by the supervisor's ``BoardKeeper`` (it outlives the
      generation's release: its totals are carried over once its workers have exited).

Invariants
    * A reload's generation reuses a reservation whose address did not change (the port stays
      held across the swap) and makes a new health table, into which the old one's active
      check verdicts and running breaker ejections are copied for the instances that stay, and
      a new ban board into which the bans still running are copied.
    * ``release(keep)`` frees what this generation holds and ``keep`` does not share; every
      generation is released exactly once (retired, failed, or at exit).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from fastgw.listen import admin_address, reserve_port
from fastgw.obs.metrics import Layout
from fastgw.obs.metrics_board import create_metrics_fd
from fastgw.routing.health_table import HealthTable, create_health_fd
from fastgw.security.bans import BanBoard, create_ban_fd

if TYPE_CHECKING:
    from fastgw.config import Config

M = TypeVar("M", HealthTable, BanBoard)  # a shared file carried over on reload


def _now_us() -> int:
    return time.monotonic_ns() // 1000


def _carry(
    open_file: Callable[[int], M], old_fd: int, new_fd: int, carry: Callable[[M, M], None]
) -> None:
    """Map the old generation's shared file and the new one's, ``carry(old, new)``, unmap."""
    old, new = open_file(old_fd), open_file(new_fd)
    try:
        carry(old, new)
    finally:
        old.close()
        new.close()


def _metrics_fd(config: Config, size: int) -> int:
    """A new metrics board for ``config`` and ``size`` workers; -1 when metrics are off."""
    if not config.gateway.observability.metrics.enabled:
        return -1
    return create_metrics_fd(Layout.from_config(config), size)


def _instances(config: Config) -> list[tuple[str, int]]:
    return [(i.host.lower(), i.port) for i in config.routing.metald_instances]


class Generation:
    __slots__ = (
        "admin",
        "bans_fd",
        "config",
        "failures",
        "health_fd",
        "listener",
        "metrics_fd",
        "number",
        "respawn_at",
        "size",
    )

    def __init__(
        self,
        number: int,
        config: Config,
        listener: socket.socket,
        size: int,
        *,
        admin: socket.socket | None = None,
        health_fd: int = -1,
        bans_fd: int = -1,
        metrics_fd: int = -1,
    ) -> None:
        self.number = number
        self.config = config
        self.listener = listener
        self.admin = admin
        self.size = size
        self.health_fd = health_fd
        self.bans_fd = bans_fd
        self.metrics_fd = metrics_fd
        self.failures = [0] * size  # per slot: deaths since it was last stable (back-off)
        self.respawn_at: dict[int, float] = {}  # slot -> monotonic time of its next fork

    @classmethod
    def first(cls, config: Config, size: int) -> Generation:
        """Reserve the ports and make the health table; raises ``BootError``."""
        server = config.gateway.server
        listener = reserve_port(server.host, server.port)
        try:
            admin_at = admin_address(config)
            admin = reserve_port(*admin_at) if admin_at is not None else None
        except BaseException:
            listener.close()
            raise
        fd = create_health_fd(len(config.routing.metald_instances), size)
        return cls(
            1, config, listener, size, admin=admin, health_fd=fd, bans_fd=create_ban_fd(size),
            metrics_fd=_metrics_fd(config, size),
        )  # fmt: skip

    def successor(self, config: Config, size: int) -> Generation:
        """The generation a reload boots; raises ``BootError`` if a new port is taken."""
        server, was = config.gateway.server, self.config.gateway.server
        listener = self.listener
        if (server.host, server.port) != (was.host, was.port):
            listener = reserve_port(server.host, server.port)
        admin = self.admin
        admin_at = admin_address(config)
        made: list[int] = []  # the new generation's files, closed if it cannot be made
        try:
            if admin_at != admin_address(self.config) or admin_at is None:
                admin = reserve_port(*admin_at) if admin_at is not None else None
            made.append(create_health_fd(len(config.routing.metald_instances), size))
            self._carry_checks(made[0], config)
            made.append(create_ban_fd(size))
            if self.bans_fd >= 0:
                _carry(
                    BanBoard, self.bans_fd, made[1], lambda old, new: new.carry_over(old, _now_us())
                )
            made.append(_metrics_fd(config, size))  # totals carried later (BoardKeeper.fold)
        except BaseException:
            for fd in made:
                if fd >= 0:
                    os.close(fd)
            self._release_new(listener, admin)
            raise
        return Generation(
            self.number + 1, config, listener, size, admin=admin, health_fd=made[0],
            bans_fd=made[1], metrics_fd=made[2],
        )  # fmt: skip

    def _release_new(self, listener: socket.socket, admin: socket.socket | None) -> None:
        """Close the reservations a failed ``successor`` made (not the ones it reused)."""
        if listener is not self.listener:
            listener.close()
        if admin is not None and admin is not self.admin:
            admin.close()

    def _carry_checks(self, fd: int, config: Config) -> None:
        old_index = {address: i for i, address in enumerate(_instances(self.config))}
        mapping = [
            (old_index[address], new)
            for new, address in enumerate(_instances(config))
            if address in old_index
        ]
        if mapping and self.health_fd >= 0:
            _carry(
                HealthTable,
                self.health_fd,
                fd,
                lambda old, new: new.carry_over(old, mapping, _now_us()),
            )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.listener.getsockname()[:2]
        return str(host), int(port)

    @property
    def admin_port(self) -> int:
        """The metrics port the workers bind (0: metrics are off)."""
        return 0 if self.admin is None else int(self.admin.getsockname()[1])

    def fds(self) -> set[int]:
        """The master's fds of this generation that a worker must not keep (the health table
        is inherited on purpose and is not among them)."""
        held = {self.listener.fileno()}
        if self.admin is not None:
            held.add(self.admin.fileno())
        return held

    def release(self, keep: Generation | None = None) -> None:
        if keep is None or self.listener is not keep.listener:
            self.listener.close()
        if self.admin is not None and (keep is None or self.admin is not keep.admin):
            self.admin.close()
        if self.health_fd >= 0:
            os.close(self.health_fd)
            self.health_fd = -1
        if self.bans_fd >= 0:
            os.close(self.bans_fd)
            self.bans_fd = -1
