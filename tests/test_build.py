"""The builder (daemon/build.py) and the daemon applying plans with it, on a memory reactor:
start-up is the plan from nothing, a reload the plan from the running configuration."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock

from sse_daemon.bus.memory import MemoryBus
from sse_daemon.config.validate import validate
from sse_daemon.config.yamlfile import load_yaml
from sse_daemon.connectors.ingest import PUBLISH_SLICE
from sse_daemon.daemon.build import Builder
from sse_daemon.daemon.plan import plan
from sse_daemon.daemon.service import DaemonService
from sse_daemon.edge.listener import SINK_ONLY_BODY_LIMIT, ListenerService, PortRoute, RouteTable
from sse_daemon.edge.passwords import PasswordPool
from sse_daemon.policy.connections import PortPolicy
from sse_daemon.workers.pool import SinkWorkers

pytestmark = pytest.mark.reactor_free


def config(sinks: str, sources: str = "", routes: str = "", extra: str = ""):
    text = 'streams:\n  S: "n int"\n  T: "n int"\n' + extra
    if sources:
        text += "sources:\n" + sources
    text += "sinks:\n" + sinks
    if routes:
        text += "routes:\n" + routes
    return validate(load_yaml(text))


def sink(name: str, port: int = 8001, path: str | None = None, extra: str = "") -> str:
    return (f"  {name}: {{type: sse-server, stream: S, server.host: 127.0.0.1, server.port: {port}, "
            f"server.path: {path or name.lower()}, drain.window: 0{extra}}}\n")


INGEST = '  In: {type: http, stream: S, receiver.url: "http://127.0.0.1:8001/in", max.body.size: 5000}\n'
UPSTREAM = "  Up: {type: sse, stream: T, receiver.url: 'http://127.0.0.1:9/up'}\n"
ROUTE = "  - {from: S, to: T}\n"


def test_start_up_applies_the_plan_from_nothing_in_start_order() -> None:
    reactor = MemoryReactorClock()
    service = DaemonService(config(sink("A") + sink("B", 8002) + "  Log: {type: log, stream: S}\n", INGEST + UPSTREAM, ROUTE,
                                   extra="admin: {host: 127.0.0.1, port: 0}\n"), reactor)
    children = [child.name for child in service]
    assert children[1:] == ["route:S -> T", "sink:A", "sink:B", "sink:Log", "listener:127.0.0.1:8001", "listener:127.0.0.1:8002",
                            "source:Up", "stats", "admin"], "routes and sinks subscribe before ports bind and sources feed"
    assert list(service.built) == ["A", "B", "Log", "In", "Up"]
    assert list(service.sources) == ["In", "Up"] and list(service.source_buses) == ["In", "Up"]
    port = service.listeners[("127.0.0.1", 8001)]
    assert list(port.router.routes) == ["/a", "/in"] and port.resource("/in") is service.built["In"].resource
    assert port.labels == ["sink 'A' at /a", "source 'In' at /in"] and port.max_body_size == 5000
    assert service.listeners[("127.0.0.1", 8002)].max_body_size is None
    assert service.sinks["A"].sink.lag_observer is not None, "a sink's lag goes to the admin's histogram from the start"
    service.privilegedStartService()
    assert sorted(server[0] for server in reactor.tcpServers) == [0, 8001, 8002], "the admin's port, then the two"
    assert service.endpoints() == {("127.0.0.1", 8001): "tcp:8001:interface=127.0.0.1:backlog=1024",
                                   ("127.0.0.1", 8002): "tcp:8002:interface=127.0.0.1:backlog=1024"}


def test_a_reload_is_the_plan_from_the_running_configuration() -> None:
    reactor = MemoryReactorClock()
    old = config(sink("A") + sink("B") + sink("Gone", 8002), INGEST)
    service = DaemonService(old, reactor)
    service.privilegedStartService()
    service.startService()
    kept_port = service.listeners[("127.0.0.1", 8001)]
    kept_sink, kept_ingest, old_b = service.sinks["A"], service.built["In"].resource, service.sinks["B"]

    new = config(sink("A") + sink("B", path="b2") + sink("C", 8003), INGEST)
    changes = plan(service.config, new, old_ports=service.endpoints())
    staged = service.stage(new, changes)
    assert set(staged.connectors) == {"B", "C"} and list(staged.listeners) == [("127.0.0.1", 8003)]
    assert service.listeners.keys() == {("127.0.0.1", 8001), ("127.0.0.1", 8002)}, "staging touches nothing running"
    error, released = staged.bind()
    assert error is None and released == []
    done = Deferred.fromCoroutine(service.replace(staged))
    reactor.advance(1)  # B drains its (no) subscribers over its drain.window
    assert done.called

    assert service.listeners[("127.0.0.1", 8001)] is kept_port, "a kept port stays bound"
    assert list(kept_port.router.routes) == ["/a", "/b2", "/in"]
    assert kept_port.resource("/a") is service.built["A"].resource and service.sinks["A"] is kept_sink
    assert kept_port.resource("/in") is kept_ingest
    assert kept_port.resource("/b2") is service.built["B"].resource and service.sinks["B"] is not old_b
    assert kept_port.labels == ["sink 'A' at /a", "sink 'B' at /b2", "source 'In' at /in"]
    assert set(service.listeners) == {("127.0.0.1", 8001), ("127.0.0.1", 8003)}
    assert service.listeners[("127.0.0.1", 8003)].running and service.listeners[("127.0.0.1", 8003)].parent is service
    assert old_b not in list(service) and not old_b.running and service.getServiceNamed("sink:B") is service.sinks["B"]
    assert "Gone" not in service.sinks and "Gone" not in service.built
    assert service.config is new
    assert [child.name for child in service][-3:] == ["sink:B", "sink:C", "listener:127.0.0.1:8003"]


def test_pieces_get_their_collaborators_at_construction() -> None:
    reactor = MemoryReactorClock()
    seen: list[str] = []

    def lag(name: str):
        seen.append(name)
        return lambda seconds: None

    builder = Builder(MemoryBus(), reactor, reactor, PasswordPool(reactor), lag=lag)
    new = config(sink("A") + sink("Pooled", 8002, extra=", worker.count: 2"), INGEST)
    schema = new.streams["S"].schema
    a = builder.connector(new.sinks[0], schema)
    assert a.drain == a.service.drain and a.service.sink.lag_observer is not None and a.service.sink.forward is None
    pooled = builder.connector(new.sinks[1], schema)
    assert isinstance(pooled.service, SinkWorkers) and pooled.drain == pooled.service.drain and pooled.resource is None
    assert pooled.service.feed.forward == pooled.service._forward and pooled.service.feed.lag_observer is None
    assert seen == ["A", "Pooled"], "a pooled sink's series is shown, though not measured across processes"
    ingest = builder.connector(new.sources[0], schema)
    assert ingest.drain is None and ingest.service is None and ingest.source.slice_size == PUBLISH_SLICE
    assert ingest.source.bus is ingest.bus


def test_a_worker_process_serves_its_sink_with_the_same_route_table() -> None:
    reactor = MemoryReactorClock()
    builder = Builder(MemoryBus(), reactor, reactor, PasswordPool(reactor))
    loaded = config(sink("A", extra=", server.head.timeout: 3"))
    connector = loaded.sinks[0]
    state = builder.sink(connector, loaded.streams["S"].schema)
    table = builder.route_table([(connector.options.server_path, connector)], lambda c: builder.guarded_sink(c, state))
    site = table.site(reactor)
    assert list(site.resource.routes) == ["/a"] and site.max_body_size == SINK_ONLY_BODY_LIMIT
    assert site.policy.head_timeout == 3


def test_a_listener_is_retargeted_bound_or_not() -> None:
    reactor = MemoryReactorClock()
    listener = ListenerService(reactor, "127.0.0.1", 8001, endpoint="tcp:8001")
    first, second = object(), object()
    listener.serve(RouteTable((PortRoute("/a", first, "sink A"),)))
    listener.privilegedStartService()
    assert listener.site is not None and listener.site.max_body_size == SINK_ONLY_BODY_LIMIT
    policy = PortPolicy(head_timeout=1.0)
    listener.retarget(RouteTable((PortRoute("/b", second, "source B", 100), PortRoute("/a", first, "sink A")), policy))
    assert listener.router.routes == {"/b": second, "/a": first} and listener.labels == ["source B at /b", "sink A at /a"]
    assert (listener.max_body_size, listener.site.max_body_size) == (100, 100)
    assert listener.policy is policy and listener.site.policy is policy, "open connections get the new deadlines too"
    listener.retarget(RouteTable((), policy))
    assert listener.router.routes == {} and listener.site.max_body_size == SINK_ONLY_BODY_LIMIT
