"""Default routes: the metald VmService API, used when a config file has no ``routes`` key.

This module owns the one built-in route table. metald speaks ConnectRPC JSON, so every method is
``POST /vmprovisioner.v1.VmService/<Method>`` (ARCHITECTURE A6); the endpoint names are the ones
the reference's ``rate_limits.endpoints`` block uses (``CreateVM``, ``BootVM``, ``ListVMs``), so
that block is valid without writing routes. ``routes: []`` in a file means no routes at all.
"""

from __future__ import annotations

from typing import Final

from fastgw.config.model import RouteConfig

METALD_SERVICE_PATH: Final = "/vmprovisioner.v1.VmService/"

METALD_METHODS: Final[tuple[tuple[str, str], ...]] = (
    # (ConnectRPC method, endpoint name)
    ("CreateVm", "CreateVM"),
    ("DeleteVm", "DeleteVM"),
    ("BootVm", "BootVM"),
    ("ShutdownVm", "ShutdownVM"),
    ("PauseVm", "PauseVM"),
    ("ResumeVm", "ResumeVM"),
    ("RebootVm", "RebootVM"),
    ("GetVmInfo", "GetVMInfo"),
    ("ListVms", "ListVMs"),
)

DEFAULT_METALD_ROUTES: Final[tuple[RouteConfig, ...]] = tuple(
    RouteConfig(endpoint=endpoint, methods=("POST",), path=METALD_SERVICE_PATH + method)
    for method, endpoint in METALD_METHODS
)
