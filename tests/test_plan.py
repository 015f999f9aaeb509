"""The plan (daemon/plan.py): what start-up and a reload add, keep, restart and remove; pure, no reactor."""

from __future__ import annotations

import pytest

from sse_daemon.config.validate import validate
from sse_daemon.config.yamlfile import load_yaml
from sse_daemon.daemon.plan import plan, port_endpoints, port_layout

pytestmark = pytest.mark.reactor_free

STREAMS = 'streams:\n  S: "n int"\n  T: "n int"\n'


def config(sinks: str, sources: str = "", routes: str = "", extra: str = ""):
    text = STREAMS + extra
    if sources:
        text += "sources:\n" + sources
    text += "sinks:\n" + sinks
    if routes:
        text += "routes:\n" + routes
    return validate(load_yaml(text))


def sink(name: str, port: int = 8001, path: str | None = None, **options: object) -> str:
    extra = "".join(f", {k.replace('_', '.')}: {v}" for k, v in options.items())
    return (f"  {name}: {{type: sse-server, stream: S, server.host: 127.0.0.1, server.port: {port}, "
            f"server.path: {path or name.lower()}{extra}}}\n")


INGEST = '  In: {type: http, stream: S, receiver.url: "http://127.0.0.1:8001/in"}\n'
LOG = "  Log: {type: log, stream: S}\n"
ROUTE = "  - {from: S, to: T}\n"


def test_start_up_is_the_plan_from_nothing() -> None:
    new = config(sink("A") + sink("B", 8002) + LOG, INGEST, ROUTE)
    result = plan(None, new)
    assert result.add == ["In", "A", "B", "Log"] and result.fresh == result.add
    assert result.keep == result.restart == result.remove == result.gone == []
    assert result.routes_add == [0] and result.routes_remove == []
    assert result.ports_new == [("127.0.0.1", 8001), ("127.0.0.1", 8002)]
    assert result.ports_keep == result.ports_rebind == result.ports_remove == []
    assert result.deferred == [] and result.refusal is None
    assert result.changes and result.summary() == "added In, A, B, Log; routes -0 +1"


def test_a_port_serves_its_sinks_first_then_its_ingests() -> None:
    layout = port_layout(config(sink("A") + sink("B", 8002) + sink("C"), INGEST))
    assert [(path, c.name) for path, c in layout[("127.0.0.1", 8001)]] == [("/a", "A"), ("/c", "C"), ("/in", "In")]
    assert [(path, c.name) for path, c in layout[("127.0.0.1", 8002)]] == [("/b", "B")]


def test_the_same_configuration_changes_nothing_and_keeps_every_port() -> None:
    old = config(sink("A") + sink("B", 8002), INGEST, ROUTE)
    result = plan(old, config(sink("A") + sink("B", 8002), INGEST, ROUTE))
    assert not result.changes and result.summary() == "kept In, A, B"
    assert result.ports_keep == [("127.0.0.1", 8001), ("127.0.0.1", 8002)] and result.ports_new == []


def test_a_sink_that_moves_port_is_restarted_its_old_port_released_and_the_new_one_bound() -> None:
    old = config(sink("A") + sink("B", 8002))
    result = plan(old, config(sink("A") + sink("B", 8003)))
    assert result.keep == ["A"] and result.restart == ["B"] and result.gone == ["B"]
    assert result.ports_keep == [("127.0.0.1", 8001)]
    assert result.ports_new == [("127.0.0.1", 8003)] and result.ports_remove == [("127.0.0.1", 8002)]


def test_a_port_bound_another_way_is_rebound() -> None:
    old = config(sink("A"))
    new = config(sink("A", server_endpoint='"tcp:8001:interface=127.0.0.1"'))
    assert port_endpoints(new)[("127.0.0.1", 8001)] == "tcp:8001:interface=127.0.0.1"
    result = plan(old, new)
    assert result.restart == ["A"] and result.ports_rebind == [("127.0.0.1", 8001)] and result.ports_keep == []


def test_the_ports_actually_bound_are_what_the_new_ones_are_compared_with() -> None:
    old = config(sink("A") + sink("B", 8002))
    # the port of B could not be bound again by an earlier reload: it is new now, though nothing changed
    bound = {key: endpoint for key, endpoint in port_endpoints(old).items() if key[1] == 8001}
    result = plan(old, old, old_ports=bound)
    assert not result.changes and result.ports_new == [("127.0.0.1", 8002)] and result.ports_keep == [("127.0.0.1", 8001)]


def test_routes_are_removed_and_added_by_definition() -> None:
    old = config(sink("A"), routes=ROUTE)
    result = plan(old, config(sink("A"), routes="  - {from: S, to: T, where: n > 1}\n"))
    assert result.keep == ["A"] and result.routes_remove == [0] and result.routes_add == [0]
    assert result.summary() == "kept A; routes -1 +1"


def test_a_change_to_a_sink_served_by_workers_refuses_the_reload() -> None:
    old = config(sink("A") + sink("Pooled", 8002, worker_count=2))
    assert port_layout(old).keys() == {("127.0.0.1", 8001)}, "a pooled sink binds its own port"
    result = plan(old, config(sink("A") + sink("Pooled", 8002, worker_count=3)))
    assert result.restart == ["Pooled"]
    assert result.refusal == ("Pooled would change, and a sink served by worker processes (worker.count above 1) "
                              "is changed, added or removed only by a restart")
    assert plan(old, config(sink("A", retry_max=0) + sink("Pooled", 8002, worker_count=2))).refusal is None
    assert plan(old, config(sink("A"))).refusal is not None, "removing one takes a restart too"


def test_the_admin_and_bus_sections_wait_for_a_restart() -> None:
    old = config(sink("A"))
    admin = config(sink("A"), extra="admin: {host: 127.0.0.1, port: 0}\n")
    result = plan(old, admin)
    assert result.deferred == ["changes to the admin: section take effect at the next restart"]
    assert not result.changes and result.refusal is None
    bus = config(sink("A"), extra="bus: {type: redis, url: 'redis://127.0.0.1:1'}\n")
    assert plan(old, bus).deferred == ["changes to the bus: section take effect at the next restart"]
    assert plan(None, admin).deferred == [], "nothing is deferred at start-up"
