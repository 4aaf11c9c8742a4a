"""A generation: the workers forked from one config, and what the master holds for them.

What it owns
    * ``listener``: the main port's reservation (bound, never listening: see ``listen.py``);
    * ``admin``: the metrics port's reservation, when metrics are enabled;
    * ``health_fd``: the generation's shared health table (``routing/health_table.py``), sized
      for its instance list and worker count.

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
from typing import TYPE_CHECKING

from fastgw.listen import reserve_port
from fastgw.routing.health_table import HealthTable, create_health_fd
from fastgw.security.bans import BanBoard, create_ban_fd

if TYPE_CHECKING:
    from fastgw.config import Config


def _instances(config: Config) -> list[tuple[str, int]]:
    return [(i.host.lower(), i.port) for i in config.routing.metald_instances]


def _admin_address(config: Config) -> tuple[str, int] | None:
    metrics = config.gateway.observability.metrics
    if not metrics.enabled:
        return None
    return (metrics.host or config.gateway.server.host, metrics.port)


class Generation:
    __slots__ = (
        "admin",
        "bans_fd",
        "config",
        "failures",
        "health_fd",
        "listener",
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
    ) -> None:
        self.number = number
        self.config = config
        self.listener = listener
        self.admin = admin
        self.size = size
        self.health_fd = health_fd
        self.bans_fd = bans_fd
        self.failures = [0] * size  # per slot: deaths since it was last stable (back-off)
        self.respawn_at: dict[int, float] = {}  # slot -> monotonic time of its next fork

    @classmethod
    def first(cls, config: Config, size: int) -> Generation:
        """Reserve the ports and make the health table; raises ``BootError``."""
        server = config.gateway.server
        listener = reserve_port(server.host, server.port)
        try:
            admin_at = _admin_address(config)
            admin = reserve_port(*admin_at) if admin_at is not None else None
        except BaseException:
            listener.close()
            raise
        fd = create_health_fd(len(config.routing.metald_instances), size)
        return cls(
            1, config, listener, size, admin=admin, health_fd=fd, bans_fd=create_ban_fd(size)
        )

    def successor(self, config: Config, size: int) -> Generation:
        """The generation a reload boots; raises ``BootError`` if a new port is taken."""
        server, was = config.gateway.server, self.config.gateway.server
        listener = self.listener
        if (server.host, server.port) != (was.host, was.port):
            listener = reserve_port(server.host, server.port)
        admin = self.admin
        admin_at = _admin_address(config)
        if admin_at != _admin_address(self.config) or admin_at is None:
            try:
                admin = reserve_port(*admin_at) if admin_at is not None else None
            except BaseException:
                if listener is not self.listener:
                    listener.close()
                raise
        try:
            fd = create_health_fd(len(config.routing.metald_instances), size)
        except BaseException:
            self._release_new(listener, admin)
            raise
        bans_fd = -1
        try:
            self._carry_over(fd, config)
            bans_fd = create_ban_fd(size)
            self._carry_bans(bans_fd)
        except BaseException:
            os.close(fd)
            if bans_fd >= 0:
                os.close(bans_fd)
            self._release_new(listener, admin)
            raise
        return Generation(
            self.number + 1, config, listener, size, admin=admin, health_fd=fd, bans_fd=bans_fd
        )

    def _carry_bans(self, fd: int) -> None:
        if self.bans_fd < 0:
            return
        source, target = BanBoard(self.bans_fd), BanBoard(fd)
        try:
            target.carry_over(source, time.monotonic_ns() // 1000)
        finally:
            source.close()
            target.close()

    def _release_new(self, listener: socket.socket, admin: socket.socket | None) -> None:
        """Close the reservations a failed ``successor`` made (not the ones it reused)."""
        if listener is not self.listener:
            listener.close()
        if admin is not None and admin is not self.admin:
            admin.close()

    def _carry_over(self, fd: int, config: Config) -> None:
        old_index = {address: i for i, address in enumerate(_instances(self.config))}
        mapping = [
            (old_index[address], new)
            for new, address in enumerate(_instances(config))
            if address in old_index
        ]
        if not mapping or self.health_fd < 0:
            return
        source, target = HealthTable(self.health_fd), HealthTable(fd)
        try:
            target.carry_over(source, mapping, int(time.monotonic() * 1_000_000))
        finally:
            source.close()
            target.close()

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
