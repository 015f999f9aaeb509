"""The Grafana dashboard (etc/grafana/sse-daemon.json) against a running daemon's real ``/metrics``.

Every metric name its queries use must be one the daemon exports, read from ``/metrics`` of a
daemon with a route and of one on a real redis-server (the ``sse_daemon_bus_*`` families), and every family
the daemon declares has a panel: the dashboard and the metrics cannot drift apart.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families

from sse_daemon.bus.interfaces import ISharedBus
from sse_daemon.ops.metrics import FAMILIES

from .conftest import wait_for
from .redis_server import redis_server  # noqa: F401  (the fixture)
from .test_admin import Http

DASHBOARD = Path(__file__).resolve().parent.parent / "etc" / "grafana" / "sse-daemon.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

#: PromQL words that are neither functions (those are followed by "(") nor metric names
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                      "group_left", "group_right", "inf", "nan"})

CONFIG = """\
streams:
  Orders: "item string, qty int"
  Copies: "item string, qty int"
sources:
  Shop: {type: http, stream: Orders, receiver.url: "http://127.0.0.1:0/shop"}
  Upstream: {type: sse, stream: Orders, receiver.url: "http://127.0.0.1:9/never"}
sinks:
  Out: {type: sse-server, stream: Orders, server.host: 127.0.0.1, server.port: 0, server.path: out}
  Audit: {type: log, stream: Orders}
admin:
  port: 0
"""
#: routes run on the memory bus only; the bus's own figures exist on Redis only
ROUTES = "routes:\n  - {from: Orders, to: Copies}\n"
REDIS = 'bus: {{type: redis, url: "{url}", key.prefix: "dashboard:"}}\n'


async def exported_names(service) -> set[str]:
    """The metric names a scrape of this daemon's /metrics holds, after one event published."""
    http = Http()
    if ISharedBus.providedBy(service.bus):
        await wait_for(lambda: service.bus.state == "up", what="the bus to connect to Redis")
    code, _, _ = await http.post(f"http://127.0.0.1:{service.port_of('Shop')}/shop", b'{"item":"tea","qty":1}')
    assert code == 200
    code, _, body = await http.get(f"http://127.0.0.1:{service.admin.port}/metrics")
    assert code == 200
    names: set[str] = set()
    for family in text_string_to_metric_families(body.decode()):
        names.update(sample.name for sample in family.samples)
        names.update({
            "counter": [family.name + "_total"],
            "histogram": [family.name + "_bucket", family.name + "_sum", family.name + "_count"],
        }.get(family.type, [family.name]))
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: what is left once strings, label matchers,
    ranges, label lists, numbers and durations, function calls and keywords are taken out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"(?<![\w:])\d+(?:\.\d+)?(?:e[+-]?\d+)?(?:ms|[smhdwy])*", "0", expr)  # numbers, durations
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[match.end():].lstrip().startswith("(") or match.group(0) in KEYWORDS:
            continue  # a function (or an aggregation), or an operator word
        names.add(match.group(0))
    return names


def test_metric_names_are_read_out_of_promql() -> None:
    assert metric_names('histogram_quantile(0.99, sum by (sink, le) (rate(a_bucket{sink=~"$sink"}[$__rate_interval])))') == {"a_bucket"}
    assert metric_names("time() - max by (instance) (b{x=\"y{z}\"}) / 1e9 + c offset 5m") == {"b", "c"}
    assert metric_names("d / on (instance) group_left e and bool f") == {"d", "e", "f"}


def queries(dashboard: dict) -> list[str]:
    """Every PromQL query: each panel target's expr and each template variable's."""
    found = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable["query"]["query"]
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert match, f"variable {variable['name']}: {query}"
        found.append(match.group(1))
    return found


def test_the_dashboard_is_in_grafanas_import_format_with_the_datasource_as_an_input() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["__inputs"] == [{"name": "DS_PROMETHEUS", "label": "Prometheus", "description": dashboard["__inputs"][0]["description"],
                                      "type": "datasource", "pluginId": "prometheus", "pluginName": "Prometheus"}]
    assert dashboard["id"] is None and dashboard["uid"] == "sse-daemon" and dashboard["title"] == "sse-daemon"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in dashboard["panels"]:
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"] and all(target["datasource"] == DATASOURCE for target in panel["targets"]), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            assert target["expr"].count("{") == target["expr"].count("}"), target["expr"]
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"] == DATASOURCE, variable["name"]
    requires = {(r["type"], r["id"]) for r in dashboard["__requires"]}
    assert {("panel", panel["type"]) for panel in dashboard["panels"] if panel["type"] != "row"} <= requires


@pytest_twisted.ensureDeferred
async def test_every_metric_the_dashboard_reads_is_exported_by_a_running_daemon(daemon, redis_server) -> None:  # noqa: F811
    on_memory = await exported_names(await daemon(CONFIG + ROUTES))
    on_redis = await exported_names(await daemon(CONFIG + REDIS.format(url=redis_server.url)))
    assert "sse_daemon_route_events_total" in on_memory and "sse_daemon_bus_up" in on_redis
    exported = on_memory | on_redis
    assert "sse_daemon_sink_lag_seconds_bucket" in exported

    dashboard = json.loads(DASHBOARD.read_text())
    used = set().union(*(metric_names(query) for query in queries(dashboard)))
    assert len(used) > 30
    assert used - exported == set(), "the dashboard reads metrics the daemon does not export"
    declared = {family.exposed_name + ("_bucket" if family.type == "histogram" else "") for family in FAMILIES}
    assert declared - used == set(), "every family of /metrics has a panel (add one to etc/grafana/sse-daemon.json)"
    assert {"process_open_fds", "process_max_fds", "process_resident_memory_bytes", "process_cpu_seconds_total"} <= used
