"""A bus that does not take events (a shared bus that is down) is counted and logged sampled
by the SSE source and by routes: never an unhandled error in a Deferred per message."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from zope.interface import implementer

from sse_daemon.bus.interfaces import IBus, ISubscription
from sse_daemon.config.validate import validate
from sse_daemon.config.yamlfile import load_yaml
from sse_daemon.connectors.route import RouteService
from sse_daemon.connectors.source import SseSourceService
from sse_daemon.events.schema import Event, parse_schema
from sse_daemon.mapping.mappers import make_mapper

from .conftest import deadline, wait_for
from .sse_servers import FakeServer
from .test_source import payload, source_def


class BusDown(Exception):
    pass


@implementer(ISubscription)
class _Nothing:
    def cancel(self) -> None:
        pass


@implementer(IBus)
class RefusingBus:
    """Every publish fails, as a shared bus's does while Redis is unreachable."""

    def __init__(self) -> None:
        self.published: list[Deferred] = []

    def publish(self, stream: str, events: Any) -> Deferred:
        published = fail(BusDown("the bus is down"))
        self.published.append(published)
        return published

    def subscribe(self, stream: str, subscriber: Any) -> ISubscription:
        return _Nothing()


def handled(published: Deferred) -> bool:
    """The failure was consumed by an errback (nothing left for the garbage collector to log)."""
    outcome: list[object] = []
    published.addBoth(outcome.append)
    return outcome == [None]


@pytest_twisted.ensureDeferred
async def test_an_sse_source_counts_events_the_bus_did_not_take() -> None:
    server = FakeServer()
    bus = RefusingBus()
    connector = source_def(server.url())
    source = SseSourceService(connector, make_mapper(connector.options.mapping, parse_schema("param1 string")),
                              bus, Clock(), server.http)
    source.startService()
    try:
        server.publish(payload("a"))
        server.publish(payload("b"))
        await wait_for(lambda: len(bus.published) == 2, what="two publishes")
        assert source.rejected["bus-unavailable"] == 2
        assert all(handled(d) for d in bus.published)
        assert source.running, "the stream goes on"
    finally:
        stopped = source.stopService()
        server.stub.flush()
        await deadline(stopped)
        await server.stop()


def test_a_route_counts_events_the_bus_did_not_take() -> None:
    config = validate(load_yaml(
        "streams:\n  A: {schema: 'a string, b int'}\n  B: {schema: 'a string'}\n"
        "routes:\n  - {from: A, to: B, select: 'a'}\n"
        "sinks:\n  L: {type: log, stream: B, schema: 'a string'}\n", "routes.yaml"))
    bus = RefusingBus()
    route = RouteService(config.routes[0], ("a",), bus)
    route.forward([Event({"a": "x", "b": 1})])
    assert route.events == 1 and route.rejected["bus-unavailable"] == 1
    assert handled(bus.published[0])
    route.forward([Event({"a": "y", "b": 2}), Event({"a": "z", "b": 3})])
    assert len(bus.published) == 2, "a publish's events are routed in one publish"
    assert route.events == 3 and route.rejected["bus-unavailable"] == 3, "each of its events counted"


@pytest_twisted.ensureDeferred
async def test_a_leased_sources_refused_publishes_are_counted_and_logged_sampled() -> None:
    """Under a lease the source publishes through a CursorBus: what the bus did not take is still
    the source's ``bus-unavailable``, and a burst of refused publishes is no burst of log lines."""
    from twisted.logger import capturedLogs

    from sse_daemon.bus.cursor import CursorBus

    from .test_contracts import FakeSharedBus

    server = FakeServer()
    refusing = RefusingBus()
    restarts: list[str] = []
    bus = CursorBus(refusing, FakeSharedBus(), "p:cursor", restarts.append)
    connector = source_def(server.url())
    source = SseSourceService(connector, make_mapper(connector.options.mapping, parse_schema("param1 string")),
                              bus, Clock(), server.http)
    source.startService()
    try:
        with capturedLogs() as logged:
            for n in range(30):
                server.publish(payload(f"e{n}"))
            await wait_for(lambda: len(refusing.published) == 30, what="thirty publishes")
        assert source.rejected["bus-unavailable"] == 30
        assert all(handled(d) for d in refusing.published)
        assert restarts and set(restarts) == {"a publish failed"}
        assert len([e for e in logged if e.get("log_level").name in ("warn", "error")]) <= 11, "sampled"
    finally:
        stopped = source.stopService()
        server.stub.flush()
        await deadline(stopped)
        await server.stop()
