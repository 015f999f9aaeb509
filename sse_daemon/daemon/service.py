"""Builds the daemon from a validated Config: the bus, listeners, sinks, sources and routes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sse_daemon.bus.interfaces import IBus, ISharedBus, ISubscription
from sse_daemon.bus.memory import MemoryBus
from sse_daemon.ops.admin import AdminService
from sse_daemon.config.model import Config, ConnectorDef, RouteDef, listen_address, served_by_workers
from sse_daemon.bus.connector import ConnectorBus
from sse_daemon.ops.figures import StatsLogService
from sse_daemon.daemon.drain import shutdown  # SIGTERM: stop accepting, drain sinks in stages, then the rest
from sse_daemon.edge.guard import ingest_guard, sink_guard  # limits and access control in front of sinks and ingests
from sse_daemon.connectors.ingest import PUBLISH_SLICE, IngestResource
from sse_daemon.edge.tls import client_policy, listen_description
from sse_daemon.policy.connections import DescriptorBudget, Stopping, port_policy
from sse_daemon.edge.listener import BindError, ListenerService, descriptor_budget
from sse_daemon.connectors.logsink import LogSinkService
from sse_daemon.mapping.mappers import make_mapper
from sse_daemon.policy.limits import should_log
from sse_daemon.edge.passwords import PasswordPool
from sse_daemon.events.schema import Event
from sse_daemon.events.validate import InvalidValue, check_values
from sse_daemon.connectors.sink import SseSink, SseSinkResource, SseSinkService
from sse_daemon.events.schema import Schema


@dataclass(eq=False)
class BuiltConnector:
    """The running pieces of one connector (built once here, for start and for reload)."""

    service: IService | None = None  # started with the daemon: sinks, SSE sources
    resource: Any = None  # served on its listener, guarded: sse-server sinks, ingests
    source: Any = None  # what DaemonService.sources holds: an ingest resource or an SSE source
    bus: ConnectorBus | None = None  # a source's view of the bus (notes when it last published)


def build_connector(connector: ConnectorDef, schema: Schema, bus: IBus, clock: IReactorTime, reactor: Any,
                    passwords: PasswordPool, stopping: Stopping | None = None) -> BuiltConnector:
    mapper = make_mapper(connector.options.mapping, schema)
    if connector.type == "log":
        return BuiltConnector(service=LogSinkService(connector, mapper, bus))
    if connector.type == "sse-server":
        sink = SseSink(connector, mapper, clock, turns=reactor)
        if served_by_workers(connector):
            from sse_daemon.workers.pool import SinkWorkers

            return BuiltConnector(service=SinkWorkers(sink, schema, bus, reactor))
        return BuiltConnector(
            service=SseSinkService(sink, bus, connector.stream, clock),
            resource=sink_guard(connector, SseSinkResource(sink), sink, clock, passwords),
        )
    source_bus = ConnectorBus(bus, clock)
    if connector.type == "http":
        # a shared bus takes a body in one transaction (all or nothing); the in-process one in slices between turns
        ingest = IngestResource(connector, mapper, source_bus, clock, turns=reactor, slice_size=0 if bus.provides_ids else PUBLISH_SLICE)
        return BuiltConnector(resource=ingest_guard(connector, ingest, ingest.rejected, clock, passwords), source=ingest, bus=source_bus)
    from sse_daemon.client.http import http_client  # the SSE client pulls in treq
    from sse_daemon.connectors.source import SseSourceService

    http = http_client(reactor, client_policy(connector.options.tls_ca_file))

    def make_source(source_bus: IBus) -> SseSourceService:
        return SseSourceService(connector, mapper, source_bus, reactor, http, stopping=stopping)

    if ISharedBus.providedBy(bus):  # a shared bus: one instance at a time reads the upstream
        from sse_daemon.bus.lease import leased_source

        leased = leased_source(make_source, source_bus, bus, connector.name, bus.lease_ttl, clock)
        return BuiltConnector(service=leased, source=leased, bus=source_bus)
    service = make_source(source_bus)
    return BuiltConnector(service=service, source=service, bus=source_bus)


class RouteService(Service):
    """Sends the events of one stream that pass the route's ``where`` into
    another, keeping the target's attributes (the ``select`` ones, checked at load)."""

    log = Logger()

    def __init__(self, route: RouteDef, names: tuple[str, ...], bus: IBus) -> None:
        self.route = route
        self.names = names
        self.bus = bus
        self.events = 0  # forwarded
        self.filtered = 0  # held back by the route's where (false or null)
        self.rejected: Counter[str] = Counter()  # dropped, by reason: values no sink could write (none expected)
        self._subscription: ISubscription | None = None
        self.setName(f"route:{route.source}->{route.target}")

    def startService(self) -> None:
        super().startService()
        self._subscription = self.bus.subscribe(self.route.source, self.forward)

    def stopService(self) -> None:
        super().stopService()
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None

    def forward(self, event: Event) -> None:
        if self.route.where is not None and not self.route.where.matches(event.values):
            self.filtered += 1
            return
        values = {name: event.values[name] for name in self.names}
        try:  # what enters a stream is checked, whoever puts it there (validate.py); a route only narrows events
            check_values(values)
        except InvalidValue as e:
            self.rejected[e.reason] += 1
            if should_log(sum(self.rejected.values())):
                self.log.warn("route {route} dropped an event no sink could write: {error} ({reason})",
                              route=self.name, error=str(e), reason=e.reason)
            return
        self.events += 1
        self.bus.publish(self.route.target, [Event(values, event.id, event.type, event.ingress)])


def _make_bus(config: Config, reactor: Any) -> IBus:
    """The bus the ``bus:`` section asks for; the memory bus needs (and imports) no Redis client."""
    bus = getattr(config, "bus", None)  # no ``bus:`` section: the embedded bus
    if bus is not None and bus.type == "redis":
        from sse_daemon.bus.redis import RedisBus

        return RedisBus(bus, reactor)
    return MemoryBus()


class DaemonService(MultiService):
    """The whole daemon. Children start in order: routes and sinks subscribe
    to the bus, listeners bind, then sources start feeding events."""

    log = Logger()

    def __init__(
        self, config: Config, reactor: Any, bus: IBus | None = None, clock: IReactorTime | None = None,
        stats_interval: float = 60.0, descriptors: DescriptorBudget | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        #: timers and timestamps; tests pass a task.Clock while sockets stay real
        self.clock = clock if clock is not None else reactor
        #: the threads that check passwords (auth.type basic) off the reactor; the first
        #: child, so it is stopped last, once no request can wait for it any more
        self.passwords = PasswordPool(reactor)
        self.passwords.setServiceParent(self)
        self.bus = bus if bus is not None else _make_bus(config, reactor)
        #: set once shutdown begins (drain.py); every port answers 503 from then on and a reload is ignored
        self.stopping = Stopping()
        #: the process's file descriptors, shared by every port (connections.py)
        self.descriptors = descriptors if descriptors is not None else descriptor_budget(reactor)
        if isinstance(self.bus, Service):  # a shared bus connects on start, before sinks subscribe
            self.bus.setServiceParent(self)
        self.listeners: dict[tuple[str, int], ListenerService] = {}
        self.sinks: dict[str, Any] = {}
        self.sources: dict[str, Any] = {}
        self.routes: list[RouteService] = []
        #: each source's view of the bus, which notes when it last published
        self.source_buses: dict[str, ConnectorBus] = {}
        self.started_at: float | None = None
        schemas = {name: stream.schema for name, stream in config.streams.items()}

        for route in config.routes:
            route_service = RouteService(route, schemas[route.target].names, self.bus)
            route_service.setServiceParent(self)
            self.routes.append(route_service)
        built = {c.name: build_connector(c, schemas[c.stream], self.bus, self.clock, reactor, self.passwords, self.stopping) for c in config.connectors}
        for connector in config.sinks:
            self._add(connector, built[connector.name])
        for connector in config.sources:
            if connector.type == "http":
                self._add(connector, built[connector.name])
        for listener in self.listeners.values():
            listener.setServiceParent(self)
        for connector in config.sources:
            if connector.type == "sse":
                self._add(connector, built[connector.name])
        StatsLogService(self, stats_interval, self.clock).setServiceParent(self)
        self.admin: AdminService | None = None
        if config.admin is not None:
            self.admin = AdminService(self, config.admin)
            self.admin.setServiceParent(self)

    def startService(self) -> None:
        self.started_at = self.clock.seconds()
        super().startService()

    def stopService(self) -> Deferred:
        """Stop accepting, close subscribers in stages, then stop the rest (drain.py)."""
        sinks = [service for service in self.sinks.values() if hasattr(service, "drain")]  # SSE sinks, and their workers
        return shutdown(self.listeners.values(), sinks, super().stopService, self.reactor, self.stopping)

    def _listener(self, connector: ConnectorDef) -> tuple[ListenerService, str]:
        host, port, path = listen_address(connector)
        key = (host, port)
        if key not in self.listeners:
            self.listeners[key] = ListenerService(self.reactor, host, port, port_policy(connector.options),
                                                  self.descriptors, self.stopping)
            self.listeners[key].endpoint = listen_description(host, port, connector.options)  # TLS, server.endpoint
        return self.listeners[key], path

    def _add(self, connector: ConnectorDef, built: BuiltConnector) -> None:
        if built.resource is not None:
            listener, path = self._listener(connector)
            limit = connector.options.max_body_size if connector.type == "http" else None
            listener.add(path, built.resource, connector.label, limit)
        if built.service is not None:
            built.service.setServiceParent(self)
        if connector.role == "sink":
            self.sinks[connector.name] = built.service
        else:
            self.sources[connector.name] = built.source
            self.source_buses[connector.name] = built.bus

    #: set by twistd's makeService: a port that cannot be bound ends the process
    exit_on_bind_error = False

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except BindError as e:
            if not self.exit_on_bind_error:
                raise
            self.log.critical("{message}; exiting", message=str(e))
            raise SystemExit(1) from None

    def port_of(self, connector_name: str) -> int:
        """The port a sink or ingest source is reachable on (useful with port 0)."""
        connector = next(c for c in self.config.connectors if c.name == connector_name)
        pool = self.sinks.get(connector_name)
        if hasattr(pool, "bound_port"):  # a sink with worker processes binds its own port
            return pool.bound_port
        host, port, _ = listen_address(connector)
        return self.listeners[(host, port)].bound_port


def build_service(
    config: Config, reactor: Any = None, bus: IBus | None = None, clock: IReactorTime | None = None,
    stats_interval: float = 60.0,
) -> DaemonService:
    if reactor is None:
        from twisted.internet import reactor  # type: ignore[no-redef]
    return DaemonService(config, reactor, bus, clock, stats_interval)
