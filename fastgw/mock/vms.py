"""The mock metald's sans-I/O core: the vmprovisioner.v1 VM state machine, plus the behaviour
switches, stats and ``/__mock/*`` controls of one instance.

What it owns: every VM of every customer and the rules for moving a VM between states
(:class:`VmStore`), and what all connections of one instance share (:class:`Instance`). It takes
decoded JSON objects and returns JSON-ready values, or raises :class:`ConnectError`; it never
sees a socket, so ``metald.py`` (the I/O shell) stays small and this file is testable by plain
calls.

Wire format (metald's ``vmprovisioner.v1`` served through ConnectRPC with the JSON codec):

- field names are lowerCamelCase on output (``vmId``, ``totalCount``); on input both the
  lowerCamel JSON name and the proto name (``vm_id``) are accepted, as protojson does;
- unknown request fields are ignored (connect-go's JSON codec discards them);
- enum values use the proto spelling ``VM_STATE_CREATED``, ``VM_STATE_RUNNING``,
  ``VM_STATE_PAUSED``, ``VM_STATE_SHUTDOWN`` (``VM_STATE_UNSPECIFIED`` is never a VM's state);
  a ``stateFilter`` may also give the enum numbers 1..4;
- int64 fields (``memorySizeBytes``, timestamps) are JSON strings, int32 fields are numbers.

Methods (all but CreateVm and ListVms take ``{"vmId"}``)::

    CreateVm {config, vmId?}                      -> {vmId: "ud-<16 hex>", state: VM_STATE_CREATED}
    BootVm | ShutdownVm | PauseVm | ResumeVm | RebootVm   -> {success: true, state}
    DeleteVm                                      -> {success: true}
    GetVmInfo                                     -> {vmId, config, state}
    ListVms {stateFilter?, pageSize?, pageToken?} -> {vms: [VmInfo], totalCount, nextPageToken?}
    VmInfo = {vmId, state, vcpuCount, memorySizeBytes, createdTimestamp, modifiedTimestamp,
              metadata, customerId}                  (pageSize: at most and by default 100)

State machine (the whole of it is :data:`TRANSITIONS`; anything not listed there is an illegal
transition and answers ``failed_precondition``)::

    CREATED --BootVm--> RUNNING --PauseVm--> PAUSED --ResumeVm--> RUNNING
    RUNNING --ShutdownVm--> SHUTDOWN --BootVm--> RUNNING        RUNNING --RebootVm--> RUNNING

``DeleteVm`` works from every state (the mock does not model metald's ``force`` flag).

Tenancy: VMs are filed per customer. A customer naming another customer's VM id gets exactly
the same ``not_found`` as for an id that never existed, so ids leak nothing across tenants.

Bound: at most ``max_vms`` VMs in all; creating one more evicts the oldest VM (of any customer)
instead of failing, because a CreateVm benchmark must be able to run for minutes without errors.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from http import HTTPStatus
from itertools import islice
from typing import Any, Final

import orjson

#: Connect error code -> HTTP status (connectrpc.com/docs/protocol, "Error Codes").
CONNECT_HTTP_STATUS: Final[dict[str, int]] = {
    "canceled": 499,
    "unknown": 500,
    "invalid_argument": 400,
    "deadline_exceeded": 504,
    "not_found": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "resource_exhausted": 429,
    "failed_precondition": 400,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 404,
    "internal": 500,
    "unavailable": 503,
    "data_loss": 500,
    "unauthenticated": 401,
}

#: HTTP status -> the Connect code an injected failure reports (Connect's HTTP-to-code rules).
_CODE_FOR_STATUS: Final[dict[int, str]] = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    408: "deadline_exceeded",
    409: "aborted",
    429: "resource_exhausted",
    499: "canceled",
    500: "internal",
    502: "unavailable",
    503: "unavailable",
    504: "deadline_exceeded",
}


def code_for_status(status: int) -> str:
    """The Connect code for an HTTP status (``unknown`` when Connect has no closer match)."""
    return _CODE_FOR_STATUS.get(status, "unknown")


class ConnectError(Exception):
    """A Connect error: answered as ``{"code","message"}`` with the code's HTTP status."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return CONNECT_HTTP_STATUS[self.code]


CREATED: Final = "VM_STATE_CREATED"
RUNNING: Final = "VM_STATE_RUNNING"
PAUSED: Final = "VM_STATE_PAUSED"
SHUTDOWN: Final = "VM_STATE_SHUTDOWN"
#: Proto enum numbers, for ``stateFilter`` given as numbers.
STATE_NUMBERS: Final[dict[int, str]] = {1: CREATED, 2: RUNNING, 3: PAUSED, 4: SHUTDOWN}

#: (method, current state) -> next state. Rule: every legal transition lives here and only here.
TRANSITIONS: Final[dict[tuple[str, str], str]] = {
    ("BootVm", CREATED): RUNNING,
    ("BootVm", SHUTDOWN): RUNNING,
    ("PauseVm", RUNNING): PAUSED,
    ("ResumeVm", PAUSED): RUNNING,
    ("ShutdownVm", RUNNING): SHUTDOWN,
    ("RebootVm", RUNNING): RUNNING,
}
#: method -> the states it may start from (for the failed_precondition message).
_LEGAL_FROM: Final[dict[str, tuple[str, ...]]] = {}
for (_method, _from), _to in TRANSITIONS.items():
    _LEGAL_FROM[_method] = (*_LEGAL_FROM.get(_method, ()), _from)

METHODS: Final = (
    "CreateVm", "DeleteVm", "BootVm", "ShutdownVm", "PauseVm", "ResumeVm", "RebootVm",
    "GetVmInfo", "ListVms",
)
MAX_VMS: Final = 200_000
#: metald caps ``pageSize`` at 100; 0 or absent means the maximum.
MAX_PAGE_SIZE: Final = 100

Request = dict[str, Any]
Response = dict[str, Any]


class Vm:
    __slots__ = ("config", "created_ns", "customer_id", "modified_ns", "state", "vm_id")

    def __init__(self, vm_id: str, customer_id: str, config: dict[str, Any]) -> None:
        self.vm_id = vm_id
        self.customer_id = customer_id
        self.config = config
        self.state: str = CREATED
        self.created_ns = self.modified_ns = time.time_ns()

    def summary(self) -> Response:
        """``VmInfo`` as ListVms returns it."""
        cpu = _field(self.config, "cpu", "cpu")
        memory = _field(self.config, "memory", "memory")
        vcpus = _field(cpu, "vcpuCount", "vcpu_count") if isinstance(cpu, dict) else None
        mem = _field(memory, "sizeBytes", "size_bytes") if isinstance(memory, dict) else None
        metadata = _field(self.config, "metadata", "metadata")
        return {
            "vmId": self.vm_id,
            "state": self.state,
            "vcpuCount": vcpus if isinstance(vcpus, int) else 0,
            "memorySizeBytes": str(mem) if isinstance(mem, int | str) else "0",
            "createdTimestamp": str(self.created_ns // 1_000_000_000),
            "modifiedTimestamp": str(self.modified_ns // 1_000_000_000),
            "metadata": metadata if isinstance(metadata, dict) else {},
            "customerId": self.customer_id,
        }


def _field(obj: Request, json_name: str, proto_name: str) -> Any:
    value = obj.get(json_name)
    return obj.get(proto_name) if value is None else value


class VmStore:
    """Every customer's VMs, and the vmprovisioner.v1 methods over them."""

    __slots__ = ("_all", "_by_customer", "_handlers", "evicted", "max_vms")

    def __init__(self, max_vms: int = MAX_VMS) -> None:
        self.max_vms = max_vms
        self.evicted = 0
        self._all: OrderedDict[str, Vm] = OrderedDict()  # oldest first, for eviction
        self._by_customer: dict[str, dict[str, Vm]] = {}
        handlers: dict[str, Callable[[str, Request], Response]] = {
            "CreateVm": self._create,
            "DeleteVm": self._delete,
            "GetVmInfo": self._info,
            "ListVms": self._list,
        }
        for method in ("BootVm", "ShutdownVm", "PauseVm", "ResumeVm", "RebootVm"):
            handlers[method] = self._transition_handler(method)
        self._handlers = handlers

    def __len__(self) -> int:
        return len(self._all)

    def has_method(self, method: str) -> bool:
        return method in self._handlers

    def clear(self) -> None:
        self._all.clear()
        self._by_customer.clear()
        self.evicted = 0

    def call(self, method: str, customer_id: str, request: Request) -> Response:
        """Run one RPC for ``customer_id``; raises :class:`ConnectError` for every failure."""
        handler = self._handlers.get(method)
        if handler is None:
            raise ConnectError("unimplemented", f"vmprovisioner.v1.VmService/{method} is not "
                               "implemented")
        return handler(customer_id, request)

    # -- methods --------------------------------------------------------------------------

    def _create(self, customer_id: str, request: Request) -> Response:
        config = request.get("config")
        if not isinstance(config, dict):
            raise ConnectError("invalid_argument", "vm config is required")
        vm_id = _field(request, "vmId", "vm_id")
        if vm_id:
            if not isinstance(vm_id, str):
                raise ConnectError("invalid_argument", "vm_id must be a string")
            if vm_id in self._all:
                raise ConnectError("already_exists", f"vm {vm_id} already exists")
        else:
            vm_id = "ud-" + os.urandom(8).hex()
            while vm_id in self._all:  # pragma: no cover - 2**-64 per pair
                vm_id = "ud-" + os.urandom(8).hex()
        while len(self._all) >= self.max_vms:
            _, old = self._all.popitem(last=False)
            del self._by_customer[old.customer_id][old.vm_id]
            self.evicted += 1
        vm = Vm(vm_id, customer_id, config)
        self._all[vm_id] = vm
        self._by_customer.setdefault(customer_id, {})[vm_id] = vm
        return {"vmId": vm_id, "state": CREATED}

    def _delete(self, customer_id: str, request: Request) -> Response:
        vm = self._find(customer_id, request)
        del self._all[vm.vm_id]
        del self._by_customer[customer_id][vm.vm_id]
        return {"success": True}

    def _info(self, customer_id: str, request: Request) -> Response:
        vm = self._find(customer_id, request)
        return {"vmId": vm.vm_id, "config": vm.config, "state": vm.state}

    def _list(self, customer_id: str, request: Request) -> Response:
        vms = self._by_customer.get(customer_id, {})
        if not request and len(vms) <= MAX_PAGE_SIZE:  # HOT PATH: the benchmark's ListVms
            return {"vms": [vm.summary() for vm in vms.values()], "totalCount": len(vms)}
        wanted = _state_filter(_field(request, "stateFilter", "state_filter"))
        page_size = _field(request, "pageSize", "page_size") or MAX_PAGE_SIZE
        if not isinstance(page_size, int) or page_size < 0:
            raise ConnectError("invalid_argument", "page_size must be a non-negative integer")
        page_size = min(page_size, MAX_PAGE_SIZE)
        token = _field(request, "pageToken", "page_token") or "0"
        if not isinstance(token, str) or not token.isdigit():
            raise ConnectError("invalid_argument", f"invalid page_token {token!r}")
        offset = int(token)
        matching = [vm for vm in vms.values() if vm.state in wanted] if wanted else vms.values()
        total = len(matching)
        page = [vm.summary() for vm in islice(matching, offset, offset + page_size)]
        response: Response = {"vms": page, "totalCount": total}
        if offset + page_size < total:
            response["nextPageToken"] = str(offset + page_size)
        return response

    def _transition_handler(self, method: str) -> Callable[[str, Request], Response]:
        def transition(customer_id: str, request: Request) -> Response:
            vm = self._find(customer_id, request)
            new_state = TRANSITIONS.get((method, vm.state))
            if new_state is None:
                allowed = " or ".join(_LEGAL_FROM[method])
                raise ConnectError("failed_precondition",
                                   f"vm {vm.vm_id} is {vm.state}; {method} needs {allowed}")
            vm.state = new_state
            vm.modified_ns = time.time_ns()
            return {"success": True, "state": new_state}

        return transition

    def _find(self, customer_id: str, request: Request) -> Vm:
        vm_id = _field(request, "vmId", "vm_id")
        if not vm_id or not isinstance(vm_id, str):
            raise ConnectError("invalid_argument", "vm_id is required")
        vm = self._by_customer.get(customer_id, {}).get(vm_id)
        if vm is None:
            raise ConnectError("not_found", f"vm {vm_id} not found")
        return vm


def _state_filter(value: Any) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list):
        raise ConnectError("invalid_argument", "state_filter must be a list")
    states: set[str] = set()
    for item in value:
        state = STATE_NUMBERS.get(item) if isinstance(item, int) else item
        if state not in STATE_NUMBERS.values():
            raise ConnectError("invalid_argument", f"unknown vm state {item!r}")
        states.add(str(state))
    return frozenset(states)


# -- the rest of one mock instance's state: behaviour switches, stats, /__mock controls ---------

#: Reason phrases for status lines; anything else says "Unknown".
_REASONS: Final[dict[int, str]] = {s.value: s.phrase for s in HTTPStatus} | {
    499: "Client Closed Request"}
#: Paths beyond this many distinct ones are counted under "<other>" in ``by_path``.
MAX_STATS_PATHS: Final = 10_000


@dataclass(slots=True)
class Behaviour:
    """The run-time switches, set by ``POST /__mock/behaviour`` or directly by in-process tests.

    They act on every route but ``/health`` and ``/__mock/*``. ``delay_ms`` delays each answer
    (the request itself takes effect at once); ``fail_rate`` (0..1) is the share of requests
    answered ``fail_status`` with a Connect error; ``health_status`` is what ``/health``
    answers; ``close_after_response`` adds ``Connection: close`` and closes after each answer;
    ``drop_connection`` closes the connection on each request without answering.
    """

    delay_ms: float = 0.0
    fail_rate: float = 0.0
    fail_status: int = 503
    health_status: int = 200
    close_after_response: bool = False
    drop_connection: bool = False

    def update(self, changes: dict[str, Any]) -> None:
        """Apply the keys given, all or none; raises ``ConnectError`` naming every bad key."""
        problems: list[str] = []
        checked: dict[str, Any] = {}
        for key, value in changes.items():
            ok = _CHECKS.get(key)
            if ok is None:
                problems.append(f"unknown key {key!r} (known: {', '.join(_CHECKS)})")
            elif not ok(value):
                problems.append(f"{key}: bad value {value!r}")
            else:
                checked[key] = value
        if problems:
            raise ConnectError("invalid_argument", "; ".join(problems))
        for key, value in checked.items():
            setattr(self, key, value)


def _number(low: float, high: float) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int | float) and not isinstance(v, bool) and low <= v <= high


def _status(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 200 <= v <= 599


_CHECKS: Final[dict[str, Callable[[Any], bool]]] = {
    "delay_ms": _number(0, 3_600_000),
    "fail_rate": _number(0.0, 1.0),
    "fail_status": _status,
    "health_status": _status,
    "close_after_response": lambda v: isinstance(v, bool),
    "drop_connection": lambda v: isinstance(v, bool),
}


class Instance:
    """Everything one mock metald instance shares across its connections."""

    __slots__ = (
        "_initial",
        "_status_lines",
        "behaviour",
        "by_path",
        "health_checks",
        "health_ok",
        "last_body_len",
        "last_headers",
        "name",
        "protocols",
        "requests",
        "vms",
    )

    def __init__(self, name: str, behaviour: Behaviour) -> None:
        self.name = name
        self.behaviour = behaviour
        self._initial = replace(behaviour)
        self.vms = VmStore()
        self.protocols: set[Any] = set()
        self._status_lines: dict[int, bytes] = {}
        self.requests = 0
        self.health_checks = 0
        self.by_path: dict[bytes, int] = {}
        self.last_headers: list[tuple[bytes, bytes]] = []
        self.last_body_len = 0
        body = b'{"status":"ok"}'
        self.health_ok = (self.status_line(200) + b"Content-Type: application/json\r\n"
                          + b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    def status_line(self, status: int) -> bytes:
        """``HTTP/1.1 <status> <reason>`` plus the instance header, encoded once per status."""
        line = self._status_lines.get(status)
        if line is None:
            reason = _REASONS.get(status, "Unknown")
            line = (f"HTTP/1.1 {status} {reason}\r\nX-Metald-Instance: {self.name}\r\n"
                    .encode("latin-1"))
            self._status_lines[status] = line
        return line

    def count(self, path: bytes, headers: list[tuple[bytes, bytes]], body_len: int) -> None:
        # HOT PATH: a few stores; headers are kept as the parser gave them, decoded on read.
        self.requests += 1
        by_path = self.by_path
        n = by_path.get(path)
        if n is not None:
            by_path[path] = n + 1
        elif len(by_path) < MAX_STATS_PATHS:
            by_path[path] = 1
        else:
            by_path[b"<other>"] = by_path.get(b"<other>", 0) + 1
        self.last_headers = headers
        self.last_body_len = body_len

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "requests": self.requests,
            "health_checks": self.health_checks,
            "by_path": {p.decode("latin-1"): n for p, n in self.by_path.items()},
            "last_headers": [[n.decode("latin-1"), v.decode("latin-1")]
                             for n, v in self.last_headers],
            "last_body_len": self.last_body_len,
            "connections": len(self.protocols),
            "vms": len(self.vms),
            "vms_evicted": self.vms.evicted,
        }

    def reset(self, behaviour_too: bool = False) -> None:
        """Forget VMs and stats; with ``behaviour_too`` also restore the start-up behaviour."""
        self.vms.clear()
        self.requests = 0
        self.health_checks = 0
        self.by_path.clear()
        self.last_headers = []
        self.last_body_len = 0
        if behaviour_too:
            self.behaviour.update(asdict(self._initial))

    def control(self, method: bytes, path: bytes, request: Any) -> bytes:
        """``/__mock/*``: returns the JSON body, or raises ``ConnectError``."""
        if path == b"/__mock/stats" and method in (b"GET", b"HEAD"):
            return orjson.dumps(self.stats())
        if path == b"/__mock/behaviour" and method in (b"GET", b"HEAD", b"POST"):
            if method == b"POST":
                if not isinstance(request, dict):
                    raise ConnectError("invalid_argument", "behaviour must be a JSON object")
                self.behaviour.update(request)
            return orjson.dumps(asdict(self.behaviour))
        if path == b"/__mock/reset" and method == b"POST":
            self.reset(isinstance(request, dict) and request.get("behaviour") is True)
            return b'{"status":"reset"}'
        raise ConnectError("not_found", f"no control {method.decode('latin-1')} "
                           f"{path.decode('latin-1')} (GET stats, GET|POST behaviour, POST reset)")
