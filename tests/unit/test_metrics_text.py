"""``fastgw.obs.metrics`` and ``metrics_text``: labels from the config, bounded whatever the
traffic, and the Prometheus text format as ``prometheus_client``'s own parser reads it.

Every A4 family is present with its type; histograms are cumulative, end in ``+Inf`` equal to
``_count``, and ``_sum`` is in seconds; statuses map to a fixed code set; a config's endpoints
and instances are the only label values; layouts translate by label.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from fastgw.config import parse_config
from fastgw.obs.metrics import (
    AUTH_RESULTS,
    BOUNDS_S,
    CODE_INDEX,
    CODES,
    HEALTH,
    SCALARS,
    UNROUTED,
    Layout,
)
from fastgw.obs.metrics_board import Totals
from fastgw.obs.metrics_text import CONTENT_TYPE, SHED_REASONS, render
from fastgw.ratelimit.decision import Level

A4_FAMILIES = {
    "fastgw_requests": "counter",
    "fastgw_request_duration_seconds": "histogram",
    "fastgw_auth": "counter",
    "fastgw_ratelimit": "counter",
    "fastgw_upstream_requests": "counter",
    "fastgw_upstream_duration_seconds": "histogram",
    "fastgw_upstream_healthy": "gauge",
    "fastgw_circuit_state": "gauge",
    "fastgw_retries": "counter",
    "fastgw_connections_active": "gauge",
    "fastgw_requests_inflight": "gauge",
    "fastgw_shed": "counter",
    "fastgw_redis_errors": "counter",
}

LAYOUT = Layout([UNROUTED, HEALTH, "Echo", "CreateVM"], ["10.0.0.1:80", "10.0.0.2:80"])


def parse(body: bytes) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


def samples(family: Any, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value for s in family.samples if s.name == name
    }


def test_every_a4_family_is_rendered_with_its_type_even_when_nothing_happened() -> None:
    totals = Totals([0] * LAYOUT.cells, 0, 0)
    body = render(LAYOUT, totals, [(1, 0), (0, 1)])
    assert CONTENT_TYPE.startswith(b"text/plain; version=0.0.4")
    families = parse(body)
    assert {name: f.type for name, f in families.items()} == A4_FAMILIES
    for family in families.values():
        assert family.documentation  # every family has HELP text
    assert samples(families["fastgw_requests"], "fastgw_requests_total") == {}  # no zero codes
    auth = samples(families["fastgw_auth"], "fastgw_auth_total")
    assert auth == {(("result", r),): 0 for r in AUTH_RESULTS}
    ratelimit = samples(families["fastgw_ratelimit"], "fastgw_ratelimit_total")
    assert len(ratelimit) == 8 and set(ratelimit.values()) == {0}
    shed = samples(families["fastgw_shed"], "fastgw_shed_total")
    assert shed == {(("reason", r),): 0 for r in SHED_REASONS}
    healthy = samples(families["fastgw_upstream_healthy"], "fastgw_upstream_healthy")
    assert healthy == {(("instance", "10.0.0.1:80"),): 1, (("instance", "10.0.0.2:80"),): 0}
    circuit = samples(families["fastgw_circuit_state"], "fastgw_circuit_state")
    assert circuit == {(("instance", "10.0.0.1:80"),): 0, (("instance", "10.0.0.2:80"),): 1}
    counts = samples(
        families["fastgw_request_duration_seconds"], "fastgw_request_duration_seconds_count"
    )
    assert set(counts) == {(("endpoint", e),) for e in LAYOUT.endpoints}


def test_counts_histograms_and_scalars_render_exactly() -> None:
    cells = [0] * LAYOUT.cells
    echo = LAYOUT.endpoints.index("Echo")
    cells[echo * len(CODES) + CODES.index("200")] = 7
    cells[echo * len(CODES) + CODES.index("429")] = 2
    buckets = len(BOUNDS_S) + 1
    at = LAYOUT.request_buckets_at + echo * buckets
    cells[at + 0], cells[at + 3], cells[at + buckets - 1] = 4, 4, 1  # 0.5 ms, 5 ms, > 30 s
    cells[LAYOUT.request_sums_at + echo] = 1_250_000_000  # ns
    upstream_row = LAYOUT.upstream_at + 1 * len(LAYOUT.upstream_codes)
    cells[upstream_row + LAYOUT.upstream_codes.index("timeout")] = 3
    cells[LAYOUT.auth_at + AUTH_RESULTS.index("cached")] = 11
    cells[LAYOUT.ratelimit_at + (Level.GLOBAL.bit << 4 | Level.GLOBAL.bit)] = 5
    cells[LAYOUT.ratelimit_at + (Level.GLOBAL.bit << 4)] = 6
    scalars = dict(zip(SCALARS, range(LAYOUT.scalars_at, LAYOUT.cells), strict=True))
    cells[scalars["retries"]], cells[scalars["redis_errors"]] = 2, 9
    cells[scalars["shed_tier"]], cells[scalars["shed_connections"]] = 1, 4
    families = parse(render(LAYOUT, Totals(cells, 12, 3), [(1, 0), (1, 2)]))

    requests = samples(families["fastgw_requests"], "fastgw_requests_total")
    assert requests == {
        (("code", "200"), ("endpoint", "Echo")): 7,
        (("code", "429"), ("endpoint", "Echo")): 2,
    }
    histogram = families["fastgw_request_duration_seconds"]
    echo_buckets = [
        (s.labels["le"], s.value)
        for s in histogram.samples
        if s.name.endswith("_bucket") and s.labels["endpoint"] == "Echo"
    ]
    assert [le for le, _ in echo_buckets] == [repr(b) for b in BOUNDS_S] + ["+Inf"]
    assert [v for _, v in echo_buckets] == [4, 4, 4, 8, *[8] * 11, 9]  # cumulative
    label = (("endpoint", "Echo"),)
    assert samples(histogram, "fastgw_request_duration_seconds_count")[label] == 9
    assert samples(histogram, "fastgw_request_duration_seconds_sum")[label] == 1.25
    upstream = samples(families["fastgw_upstream_requests"], "fastgw_upstream_requests_total")
    assert upstream == {(("code", "timeout"), ("instance", "10.0.0.2:80")): 3}
    assert samples(families["fastgw_auth"], "fastgw_auth_total")[(("result", "cached"),)] == 11
    ratelimit = samples(families["fastgw_ratelimit"], "fastgw_ratelimit_total")
    assert ratelimit[(("level", "global"), ("result", "limited"))] == 5
    assert ratelimit[(("level", "global"), ("result", "allowed"))] == 6
    assert ratelimit[(("level", "customer"), ("result", "allowed"))] == 0
    assert samples(families["fastgw_retries"], "fastgw_retries_total") == {(): 2}
    assert samples(families["fastgw_redis_errors"], "fastgw_redis_errors_total") == {(): 9}
    assert samples(families["fastgw_shed"], "fastgw_shed_total") == {
        (("reason", "concurrency"),): 0,
        (("reason", "tier"),): 1,
        (("reason", "connections"),): 4,
    }
    assert samples(families["fastgw_connections_active"], "fastgw_connections_active") == {
        (): 12
    }
    assert samples(families["fastgw_requests_inflight"], "fastgw_requests_inflight") == {(): 3}


def test_statuses_map_to_a_fixed_code_set() -> None:
    assert len(CODE_INDEX) == 1000 and len(CODES) < 80
    assert CODES[CODE_INDEX[0]] == "0"
    assert CODES[CODE_INDEX[200]] == "200" and CODES[CODE_INDEX[503]] == "503"
    assert CODES[CODE_INDEX[299]] == "2xx"  # not a standard status: its class
    assert CODES[CODE_INDEX[599]] == "5xx"
    assert CODES[CODE_INDEX[42]] == "other" and CODES[CODE_INDEX[999]] == "other"
    assert {CODES[i] for i in CODE_INDEX} <= set(CODES)


def test_label_values_come_from_the_config_only() -> None:
    config = parse_config(
        {
            "routing": {
                "metald_instances": [{"host": "m1", "port": 90}, {"host": "m2", "port": 91}]
            },
            "routes": [
                {"endpoint": "ListVMs", "path": "/a"},
                {"endpoint": "ListVMs", "path": "/b"},  # one endpoint, two routes: one label
                {"endpoint": "BootVM", "path_prefix": "/c"},
            ],
        },
        base_dir=Path.cwd(),
        env={},
    )
    layout = Layout.from_config(config)
    assert layout.endpoints == (UNROUTED, HEALTH, "ListVMs", "BootVM")
    assert layout.instances == ("m1:90", "m2:91")
    assert Layout.from_descriptor(layout.descriptor()).descriptor() == layout.descriptor()


def test_translation_follows_labels_and_drops_what_the_new_layout_lacks() -> None:
    old = Layout([UNROUTED, HEALTH, "A", "B"], ["x:1"])
    new = Layout([UNROUTED, HEALTH, "B", "C"], ["y:1", "x:1"])
    moves = new.translation(old)
    assert len(moves) == old.cells
    b_old, b_new = old.endpoints.index("B"), new.endpoints.index("B")
    code = CODES.index("201")
    assert moves[b_old * len(CODES) + code] == b_new * len(CODES) + code
    assert moves[old.endpoints.index("A") * len(CODES) + code] == -1
    assert moves[old.request_sums_at + b_old] == new.request_sums_at + b_new
    assert moves[old.upstream_sums_at] == new.upstream_sums_at + 1
    assert moves[old.auth_at] == new.auth_at
    assert moves[old.cells - 1] == new.cells - 1
    assert new.translation(new) == list(range(new.cells))
