"""The one place where definitions become running pieces.

:class:`Builder` turns a connector's definition into its sink, source or
ingest (with its mapper, guard and view of the bus), a route into its
service, and a port's connectors into its route table and listener. Every
piece gets its collaborators here, at construction. :meth:`Builder.stage`
builds what a :class:`~sse_daemon.daemon.plan.Plan` adds or restarts, off to
the side: the daemon's start-up stages the plan from nothing, a reload the
plan from the running configuration, and the daemon (service.py) puts the
staged pieces in place. A worker process (worker.py) builds its part,
one sink on a socket the daemon bound, with the same builder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from twisted.application.service import IService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import IResource

from sse_daemon.bus.connector import ConnectorBus
from sse_daemon.bus.interfaces import IBus, IDeliveringBus, ISharedBus
from sse_daemon.bus.memory import MemoryBus
from sse_daemon.config.credentials import AccessSecrets
from sse_daemon.config.model import Config, ConnectorDef, served_by_workers
from sse_daemon.connectors.ingest import PUBLISH_SLICE, IngestResource
from sse_daemon.connectors.logsink import LogSinkService
from sse_daemon.connectors.route import RouteService
from sse_daemon.connectors.history import History
from sse_daemon.connectors.sink import SseSink, SseSinkResource, SseSinkService, sink_for_bus
from sse_daemon.connectors.sink.durable import HistoryFiles, HistoryRefused, HistoryStore  # history.path: one store per file in the process
from sse_daemon.connectors.sink.hub import Hub, HubResource  # hub.path: several streams on one connection
from sse_daemon.daemon.plan import Plan, PortKey
from sse_daemon.edge.guard import Guard, ingest_guard, sink_guard  # limits and access control in front of sinks and ingests
from sse_daemon.edge.listener import BindError, ListenerService, PortRoute, RouteTable
from sse_daemon.edge.passwords import PasswordPool
from sse_daemon.edge.tls import client_policy, listen_description, offers_http2, tls_files_mark
from sse_daemon.events.schema import Schema
from sse_daemon.mapping.mappers import make_mapper
from sse_daemon.policy.connections import DescriptorBudget, Stopping, port_policy

__all__ = ["BuiltConnector", "Builder", "Staged", "make_bus"]

#: a sink's lag series, by sink name (the admin's histogram), or None where lag is not measured
LagObservers = Callable[[str], Callable[[float], None]]


@dataclass(eq=False)
class BuiltConnector:
    """The running pieces of one connector."""

    service: IService | None = None  # started with the daemon: sinks, SSE sources
    resource: IResource | None = None  # served on its listener, guarded: sse-server sinks, ingests
    source: Any = None  # what DaemonService.sources holds: an ingest resource or an SSE source
    bus: ConnectorBus | None = None  # a source's view of the bus (notes when it last published)
    #: an SSE sink's (or its workers'): closes its subscribers in stages (drain.window), on shutdown and reload
    drain: Callable[[Any], Deferred] | None = None
    #: the history file an SSE sink took (history.path): its service gives it back when it stops, a
    #: discarded stage (a reload rejected after building) when it never started
    history_store: HistoryStore | None = None
    #: an SSE sink served in this process, with its guard: what a hub of its port (hub.path) reads
    hub_member: tuple[SseSink, Guard] | None = None
    #: the guard in front of a sink served in this process or an ingest: a reload renews its credentials
    guard: Guard | None = None


def make_bus(config: Config, reactor: Any) -> IDeliveringBus:
    """The bus the ``bus:`` section asks for; the memory bus needs (and imports) no Redis client."""
    if config.bus is not None and config.bus.type == "redis":
        from sse_daemon.bus.redis import RedisBus

        return RedisBus(config.bus, reactor)
    return MemoryBus()


@dataclass(eq=False)
class Staged:
    """What a plan builds, not yet live: the daemon (service.py) puts it in place."""

    config: Config
    plan: Plan
    connectors: dict[str, BuiltConnector] = field(default_factory=dict)  # the plan's fresh ones: sinks, then sources
    routes: list[RouteService] = field(default_factory=list)  # the plan's added routes
    tables: dict[PortKey, RouteTable] = field(default_factory=dict)  # every port of the new configuration
    listeners: dict[PortKey, ListenerService] = field(default_factory=dict)  # new ports
    rebind: dict[PortKey, ListenerService] = field(default_factory=dict)  # same port, bound another way

    def bind(self) -> tuple[BindError | None, list[Deferred]]:
        """Bind every new port, before anything running is touched, and read the endpoints (TLS files) of
        the ports bound again, which bind only once the old ones are released. On a failure, the error and
        the release of those bound already (nothing of this stage may go live then)."""
        bound: list[ListenerService] = []
        try:
            for listener in self.rebind.values():
                listener.resolve()
            for listener in self.listeners.values():
                listener.privilegedStartService()
                bound.append(listener)
        except BindError as e:
            return e, [maybeDeferred(listener.stopService) for listener in bound]
        return None, []

    def discard(self) -> Deferred:
        """Give back what this stage took and never started (a reload rejected after building it):
        the history files of its sinks, so a file it opened is closed again."""
        return DeferredList([built.history_store.release() for built in self.connectors.values()
                             if built.history_store is not None], consumeErrors=True)


def shared_bus_bounds(bus: IBus, max_events: int) -> dict[str, Any]:
    """What a shared bus adds to an ingest's bounds: its backpressure, and no more events a body than a
    stream keeps (more would be trimmed before anyone read them)."""
    if not ISharedBus.providedBy(bus):
        return {}
    return {"behind": bus.behind, "max_events": min(max_events, bus.history_size)}


class Builder:
    """Builds connectors, routes and ports with the daemon's shared collaborators."""

    def __init__(self, bus: IDeliveringBus, clock: IReactorTime, reactor: Any, passwords: PasswordPool,
                 descriptors: DescriptorBudget | None = None, stopping: Stopping | None = None,
                 lag: LagObservers | None = None) -> None:
        self.bus = bus
        #: timers and timestamps (a test's Clock); ``reactor`` schedules turns, binds and spawns
        self.clock = clock
        self.reactor = reactor
        self.passwords = passwords
        self.descriptors = descriptors
        self.stopping = stopping if stopping is not None else Stopping()
        self.lag = lag
        #: the sinks' history files (history.path), one store per path: a sink restarted by a reload shares its predecessor's
        self.history_files = HistoryFiles(reactor)

    # -- connectors

    def sink(self, connector: ConnectorDef, schema: Schema, history: History | None = None,
             history_store: HistoryStore | None = None) -> SseSink:
        """An SSE sink's state (subscribers, history, ids: the bus's on a shared bus), its lag measured
        when there is an admin. ``history``: one given whole (a worker process's copy of the daemon's);
        ``history_store``: its history file (:meth:`history_store`)."""
        lag = self.lag(connector.name) if self.lag is not None else None
        return sink_for_bus(self.bus, connector.stream, connector, make_mapper(connector.options.mapping, schema), self.clock,
                            turns=self.reactor, lag_observer=lag, history=history, history_store=history_store,
                            schema=schema)

    def history_store(self, connector: ConnectorDef) -> HistoryStore | None:
        """The sink's history file (``history.path``): the one this process has open, one a reload opened
        off the reactor (:meth:`prepare`), or opened now (at start-up, before the reactor serves anyone).
        HistoryRefused: it is corrupt and ``history.on.corrupt`` is ``refuse``."""
        if connector.options.history_path is None:
            return None
        return self.history_files.acquire(connector.options, self.clock.seconds())

    def guarded_sink(self, connector: ConnectorDef, sink: SseSink, access: AccessSecrets | None = None) -> Guard:
        """A sink's resource behind its guard (CORS, limits, auth); ``access``: its secrets, read already."""
        return sink_guard(connector, SseSinkResource(sink), sink, self.clock, self.passwords, access)

    def connector(self, connector: ConnectorDef, schema: Schema) -> BuiltConnector:
        if connector.type == "log":
            return BuiltConnector(service=LogSinkService(connector, make_mapper(connector.options.mapping, schema), self.bus))
        if connector.type == "sse-server":
            return self._sse_sink(connector, schema)
        source_bus = ConnectorBus(self.bus, self.clock)
        if connector.type == "http":
            return self._ingest(connector, schema, source_bus)
        return self._sse_source(connector, schema, source_bus)

    def _sse_sink(self, connector: ConnectorDef, schema: Schema) -> BuiltConnector:
        if served_by_workers(connector):
            from sse_daemon.workers.pool import SinkWorkers

            if self.lag is not None:
                self.lag(connector.name)  # its series is shown (empty: lag is not measured across processes)
            store = self.history_store(connector)
            workers = SinkWorkers(connector, make_mapper(connector.options.mapping, schema), schema, self.bus, self.clock, self.reactor,
                                  history_store=store)
            return BuiltConnector(service=workers, drain=workers.drain, history_store=store)
        store = self.history_store(connector)
        sink = self.sink(connector, schema, history_store=store)
        service = SseSinkService(sink, self.bus, connector.stream, self.clock)
        guard = self.guarded_sink(connector, sink)
        return BuiltConnector(service=service, resource=guard, drain=service.drain, history_store=store,
                              hub_member=(sink, guard), guard=guard)

    def _ingest(self, connector: ConnectorDef, schema: Schema, source_bus: ConnectorBus) -> BuiltConnector:
        # a shared bus takes a body in one transaction (all or nothing); the in-process one in slices between turns
        ingest = IngestResource(connector, make_mapper(connector.options.mapping, schema), source_bus, self.clock, turns=self.reactor,
                                slice_size=0 if self.bus.provides_ids else PUBLISH_SLICE,
                                **shared_bus_bounds(self.bus, connector.options.max_events_per_request))
        guard = ingest_guard(connector, ingest, ingest, self.clock, self.passwords)
        return BuiltConnector(resource=guard, source=ingest, bus=source_bus, guard=guard)

    def _sse_source(self, connector: ConnectorDef, schema: Schema, source_bus: ConnectorBus) -> BuiltConnector:
        from sse_daemon.client.http import http_client  # the SSE client pulls in treq
        from sse_daemon.connectors.source import SseSourceService

        mapper = make_mapper(connector.options.mapping, schema)
        http = http_client(self.reactor, client_policy(connector.options.tls_ca_file),
                           sensitive_headers=[name for name, _ in connector.options.headers])

        behind = self.bus.behind if ISharedBus.providedBy(self.bus) else None  # a shared bus's fan-out lag holds its reading

        def source(bus: IBus) -> SseSourceService:
            return SseSourceService(connector, mapper, bus, self.reactor, http, stopping=self.stopping, behind=behind)

        if ISharedBus.providedBy(self.bus):  # a shared bus: one instance at a time reads the upstream
            from sse_daemon.bus.lease import leased_source

            leased = leased_source(source, source_bus, self.bus, connector.name, self.bus.lease_ttl, self.clock)
            return BuiltConnector(service=leased, source=leased, bus=source_bus)  # the lease shows the source's figures
        service = source(source_bus)
        return BuiltConnector(service=service, source=service, bus=source_bus)

    def route(self, config: Config, index: int) -> RouteService:
        route = config.routes[index]
        return RouteService(route, config.streams[route.target].schema.names, self.bus)

    # -- ports

    def route_table(self, entries: Iterable[tuple[str, ConnectorDef]], resource: Callable[[ConnectorDef], IResource],
                    hub_member: Callable[[ConnectorDef], tuple[SseSink, Guard] | None] | None = None) -> RouteTable:
        """A port's paths; the deadlines and cap are the same for the whole port (its first connector's).
        With ``hub_member``: a hub at each ``hub.path`` its sinks name, reading those sinks."""
        entries = list(entries)
        routes = tuple(PortRoute(path, resource(connector), connector.label,
                                 connector.options.max_body_size if connector.type == "http" else None)
                       for path, connector in entries)
        hubs: dict[str, dict[str, tuple[SseSink, Guard]]] = {}
        for _, connector in entries:
            if hub_member is None or connector.type != "sse-server" or connector.options.hub_path is None:
                continue
            member = hub_member(connector)
            if member is not None:
                hubs.setdefault(connector.options.hub_path, {})[connector.name] = member
        routes += tuple(PortRoute(path, HubResource(Hub(path, members, self.clock)), f"hub of {', '.join(members)}")
                        for path, members in hubs.items())
        return RouteTable(routes, port_policy(entries[0][1].options))

    def listener(self, key: PortKey, first: ConnectorDef, table: RouteTable) -> ListenerService:
        """A port, not bound yet, bound the way its first connector says (TLS, server.endpoint)."""
        host, port = key
        options = first.options
        listener = ListenerService(self.reactor, host, port, table.policy, self.descriptors, self.stopping,
                                   endpoint=listen_description(host, port, options),
                                   http2=offers_http2(options), files_mark=tls_files_mark(options))
        listener.serve(table)
        return listener

    # -- a plan

    def prepare(self, new: Config, plan: Plan) -> Deferred:
        """Open, on a thread, the history files that staging ``plan`` would otherwise open on the
        reactor (a reload: a quick_check of a large file takes a while). HistoryRefused as ``stage``."""
        fresh = set(plan.fresh)
        return self.history_files.prepare([sink.options for sink in new.sinks if sink.name in fresh
                                           and sink.type == "sse-server" and sink.options.history_path is not None],
                                          self.clock.seconds())

    def stage(self, new: Config, plan: Plan, running: Mapping[str, BuiltConnector]) -> Staged:
        """Build what ``plan`` adds and restarts; ``running`` are the connectors it keeps. A sink's
        history file refused half way (HistoryRefused) gives back the files taken so far."""
        staged = Staged(new, plan)
        fresh = set(plan.fresh)
        try:
            for connector in (*new.sinks, *new.sources):
                if connector.name in fresh:
                    staged.connectors[connector.name] = self.connector(connector, new.streams[connector.stream].schema)
        except HistoryRefused:
            staged.discard()  # nothing of it started: each release is done when it returns
            self.history_files.discard_prepared()
            raise

        def resource(connector: ConnectorDef) -> IResource:
            built = staged.connectors.get(connector.name) or running[connector.name]
            assert built.resource is not None, f"{connector.name} serves no path"
            return built.resource

        def hub_member(connector: ConnectorDef) -> tuple[SseSink, Guard] | None:
            return (staged.connectors.get(connector.name) or running[connector.name]).hub_member

        for key, entries in plan.layout.items():
            staged.tables[key] = self.route_table(entries, resource, hub_member)
        for key in plan.ports_new:
            staged.listeners[key] = self.listener(key, plan.layout[key][0][1], staged.tables[key])
        for key in plan.ports_rebind:
            staged.rebind[key] = self.listener(key, plan.layout[key][0][1], staged.tables[key])
        staged.routes = [self.route(new, index) for index in plan.routes_add]
        return staged
