"""Tracing with real processes: ``fastgw serve --workers 2`` exporting to a local OTLP/HTTP
receiver (which decodes every payload). Each worker starts its own export thread after fork,
and a worker that stops (SIGTERM: drain) sends what it still holds before it exits, so every
traced request arrives even when the gateway stops well within the export schedule."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from fastgw.listen import free_port
from tests.integration.conftest import MockBackend, Proc, fetch
from tests.support.otlp_receiver import ThreadedOtlpReceiver

pytestmark = pytest.mark.timeout(90)

REQUESTS = 60
SETTLE_S = 10.0


def get(port: int, path: str) -> tuple[int, str]:
    """One request on a new connection: its status and the trace id its backend received."""
    status, body = fetch(port, path)
    headers = dict(json.loads(body)["headers"])
    return status, headers["traceparent"].split("-")[1]


def test_every_worker_exports_and_flushes_when_stopped(
    tmp_path: Path, mock_backend: MockBackend, wait_until: Callable[..., Any]
) -> None:
    port = free_port()
    with ThreadedOtlpReceiver() as receiver:
        config = {
            "gateway": {
                "server": {"host": "127.0.0.1", "port": port},
                "observability": {
                    "metrics": {"enabled": False},
                    "tracing": {"enabled": True, "endpoint": receiver.endpoint,
                                "sample_rate": 1.0},
                },
            },
            "routing": {"metald_instances": [{"host": "127.0.0.1", "port": mock_backend.port}]},
            "routes": [{"endpoint": "Echo", "path_prefix": "/echo", "auth": "none"}],
        }
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(config))
        gateway = Proc([sys.executable, "-m", "fastgw", "serve", "-c", str(path),
                        "--workers", "2", "--drain-timeout", "2s"], tmp_path)
        try:
            gateway.wait_stdout("fastgw listening on")
            with ThreadPoolExecutor(6) as pool:
                answers = list(pool.map(lambda i: get(port, f"/echo/{i}"), range(REQUESTS)))
            assert all(status == 200 for status, _ in answers)
            gateway.popen.send_signal(signal.SIGTERM)
            assert gateway.wait_exit() == 0
        finally:
            gateway.kill()
        wait_until(lambda: len(receiver.spans) >= 2 * REQUESTS, SETTLE_S, "every span")

    requests = [s for s in receiver.spans if s.name == "GET Echo"]
    upstreams = {s.parent_span_id: s for s in receiver.spans if s.name == "upstream"}
    assert len(requests) == REQUESTS and len(upstreams) == REQUESTS
    assert {s.trace_id for s in requests} == {trace_id for _, trace_id in answers}
    assert all(upstreams[s.span_id].trace_id == s.trace_id for s in requests)
    # Both workers served and exported, each as its own service instance.
    instances = {s.resource["service.instance.id"] for s in receiver.spans}
    assert len(instances) == 2
    assert {s.resource["service.name"] for s in receiver.spans} == {"fastgw"}
