"""The daemon: one service tree built from a validated Config by applying a plan.

Start-up applies the plan from nothing (plan.py) with the builder (build.py);
a reload (reload.py) applies the plan from the running configuration through
:meth:`DaemonService.stage` and :meth:`DaemonService.replace`. Only this class
changes its children, listeners and connector tables.
"""

from __future__ import annotations

from dataclasses import replace as with_fields
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sse_daemon.bus.connector import ConnectorBus
from sse_daemon.bus.interfaces import IDeliveringBus
from sse_daemon.config.model import Config, listen_address, served_by_workers
from sse_daemon.connectors.ingest import IngestResource
from sse_daemon.connectors.route import RouteService
from sse_daemon.daemon.build import BuiltConnector, Builder, Staged, make_bus
from sse_daemon.daemon.drain import shutdown  # SIGTERM: stop accepting, drain sinks in stages, then the rest
from sse_daemon.daemon.plan import Plan, PortKey, plan
from sse_daemon.edge.auth import AuthConfigError
from sse_daemon.edge.guard import build_access
from sse_daemon.edge.listener import BindError, ListenerService, descriptor_budget
from sse_daemon.edge.passwords import PasswordPool
from sse_daemon.ops.admin import AdminService
from sse_daemon.ops.figures import StatsLogService
from sse_daemon.ops.view import RunningDaemon
from sse_daemon.policy.connections import DescriptorBudget, Stopping

__all__ = ["DaemonService", "RouteService", "build_service"]


class DaemonService(MultiService):
    """The whole daemon. Children start in order: routes and sinks subscribe
    to the bus, listeners bind, then sources start feeding events. It is what the
    admin listener and the figures read (:class:`~sse_daemon.ops.view.RunningDaemon`)."""

    log = Logger()

    def __init__(
        self, config: Config, reactor: Any, bus: IDeliveringBus | None = None, clock: IReactorTime | None = None,
        stats_interval: float = 60.0, descriptors: DescriptorBudget | None = None, exit_on_bind_error: bool = False,
    ) -> None:
        super().__init__()
        self.config = config
        #: twistd's daemon (tap.py): a port that cannot be bound ends the process
        self.exit_on_bind_error = exit_on_bind_error
        self.reactor = reactor
        #: timers and timestamps; tests pass a task.Clock while sockets stay real
        self.clock = clock if clock is not None else reactor
        #: the threads that check passwords (auth.type basic) off the reactor; the first
        #: child, so it is stopped last, once no request can wait for it any more
        self.passwords = PasswordPool(reactor)
        self.passwords.setServiceParent(self)
        self.bus = bus if bus is not None else make_bus(config, reactor)
        #: set once shutdown begins (drain.py); every port answers 503 from then on and a reload is ignored
        self.stopping = Stopping()
        #: the process's file descriptors, shared by every port (connections.py)
        self.descriptors = descriptors if descriptors is not None else descriptor_budget(reactor)
        if isinstance(self.bus, Service):  # a shared bus connects on start, before sinks subscribe
            self.bus.setServiceParent(self)
        self.listeners: dict[PortKey, ListenerService] = {}
        self.sinks: dict[str, Any] = {}
        self.sources: dict[str, Any] = {}
        self.routes: list[RouteService] = []
        #: each source's view of the bus, which notes when it last published
        self.source_buses: dict[str, ConnectorBus] = {}
        #: every running connector's pieces
        self.built: dict[str, BuiltConnector] = {}
        self.started_at: float | None = None
        #: built before the connectors (each sink's lag goes to its histogram), started after them
        self.admin: AdminService | None = AdminService(self, config.admin) if config.admin is not None else None
        self.builder = Builder(self.bus, self.clock, reactor, self.passwords, self.descriptors, self.stopping,
                               lag=self.admin.lag_observer if self.admin is not None else None)
        self._install(self.stage(config, plan(None, config)))  # start-up: the plan from nothing
        StatsLogService(self, stats_interval, self.clock).setServiceParent(self)
        if self.admin is not None:
            self.admin.setServiceParent(self)

    def startService(self) -> None:
        self.started_at = self.clock.seconds()
        super().startService()

    def stopService(self) -> Deferred:
        """Stop accepting, close subscribers in stages, then stop the rest (drain.py)."""
        sinks = [service for name, service in self.sinks.items() if self.built[name].drain is not None]  # SSE sinks, and their workers
        ingests = [source for source in self.sources.values() if isinstance(source, IngestResource)]
        return shutdown(self.listeners.values(), sinks, super().stopService, self.reactor, self.stopping, ingests)

    # -- applying a plan (start-up: from nothing; a reload: from the running configuration)

    def endpoints(self) -> dict[PortKey, str]:
        """The ports bound now, and how: what a plan compares the new configuration's with."""
        return {key: listener.description for key, listener in self.listeners.items()}

    def prepare(self, new: Config, changes: Plan) -> Deferred:
        """What staging ``changes`` must read from disk, read off the reactor first (history files)."""
        return self.builder.prepare(new, changes)

    def discard(self, staged: Staged | None = None) -> Deferred:
        """Give back what a reload took before it was rejected: the history files :meth:`prepare` opened or
        ``staged`` took, and the lag series of the sinks it built (a rejected reload changes nothing, /metrics included)."""
        self.builder.history_files.discard_prepared()
        if self.admin is not None:
            self.admin.forget_gone_sinks()
        return staged.discard() if staged is not None else succeed(None)

    def stage(self, new: Config, changes: Plan) -> Staged:
        """Build what ``changes`` adds and restarts, off to the side; nothing running is touched."""
        return self.builder.stage(new, changes, self.built)

    def adopt_config(self, new: Config) -> None:
        """``new`` is the running configuration now, with the admin and bus sections actually running (a reload,
        whatever it changed: the admin's users and tokens files are read again, so a rotated secret needs no restart,
        and its live views follow the streams)."""
        old = self.config
        self.config = with_fields(new, admin=old.admin, bus=old.bus) if (new.admin, new.bus) != (old.admin, old.bus) else new
        if self.admin is not None:
            self.admin.follow_config()

    def renew_credentials(self, new: Config, names: list[str]) -> list[str]:
        """Kept sinks and ingests whose users, tokens or JWT key changed (a reload): their guards take the
        fresh credentials, and a sink ends the streams those no longer let in (its other subscribers stay).
        A file that cannot be read now leaves that connector's credentials as they were, and says so; those
        connectors are returned (the reload must not take their fresh files as applied)."""
        kept: list[str] = []
        for connector in new.connectors:
            built = self.built.get(connector.name)
            if connector.name not in names or built is None or built.guard is None:
                continue
            try:
                authenticator, passwords = build_access(connector.options, connector.stream, self.passwords, self.clock)
            except AuthConfigError as e:
                self.log.error("{connector} kept the credentials it had: {error}", connector=connector.label, error=str(e))
                kept.append(connector.name)
                continue
            self.log.info("{connector} takes fresh credentials", connector=connector.label)
            built.guard.renew(authenticator, passwords)
        return kept

    async def replace(self, staged: Staged) -> None:
        """Switch to ``staged``, whose new ports are bound already, in one reactor turn (a port
        bound another way waits for its old listener to let go); then wait for the old pieces to stop.

        Paths on kept ports lead to the new resources; the old services of changed and removed
        connectors stop (an SSE sink closes its subscribers in stages over its ``drain.window``,
        as on shutdown, so they reconnect to the new one spread out); new services start."""
        changes = staged.plan
        stopping = self._retire(staged)
        await self._rebind(staged)
        self._install(staged)
        self.adopt_config(staged.config)
        if self.admin is not None:  # it watches the sources a reload builds
            with self.log.failuresHandled("the admin service's reload hook failed"):
                self.admin.reloaded(sorted(changes.fresh), sorted(changes.gone))
        await DeferredList(stopping, consumeErrors=True)

    def _retire(self, staged: Staged) -> list[Deferred]:
        """Point kept ports at their new tables, release removed ports, stop gone connectors and routes."""
        changes = staged.plan
        stopping: list[Deferred] = []
        for key in changes.ports_keep:
            self.listeners[key].retarget(staged.tables[key])
        for key in changes.ports_remove:
            stopping.append(maybeDeferred(self.removeService, self.listeners.pop(key)))
        for name in changes.gone:
            built = self.built.pop(name)
            self.sinks.pop(name, None)
            self.sources.pop(name, None)
            self.source_buses.pop(name, None)
            old = built.service
            if old is None or old.parent is not self:
                continue
            if built.drain is not None:  # an SSE sink: close its subscribers in stages, as on shutdown
                # it stays a child while it drains (a shutdown meanwhile still stops it), but its
                # name goes to the new sink at once
                self.namedServices.pop(old.name, None)
                old.name = None
                stopping.append(built.drain(self.reactor).addBoth(self._drained, old))
            else:
                stopping.append(maybeDeferred(self.removeService, old))
        removed = [self.config.routes[index] for index in changes.routes_remove]
        for route_service in list(self.routes):
            if route_service.route in removed:
                self.routes.remove(route_service)
                stopping.append(maybeDeferred(self.removeService, route_service))
        return stopping

    def _drained(self, _: object, old: IService) -> Deferred | None:
        """A replaced sink closed its last subscribers: it leaves the tree."""
        return self.removeService(old)

    async def _rebind(self, staged: Staged) -> None:
        """Ports bound another way: the old listener is released first, then the new one binds."""
        for key, listener in staged.rebind.items():
            old = self.listeners.pop(key)
            await DeferredList([maybeDeferred(self.removeService, old)])
            if self.stopping:  # shutdown began meanwhile: bind nothing more
                continue
            try:
                listener.privilegedStartService()
            except BindError as e:
                self.log.critical("reload: {message}; the connectors of this port are not served", message=str(e))
                continue
            staged.listeners[key] = listener

    def _install(self, staged: Staged) -> None:
        """Make the staged pieces children, in start order: routes and sinks subscribe to the bus,
        listeners bind (or, bound already by a reload, serve), then sources start feeding events."""
        for route_service in staged.routes:
            route_service.setServiceParent(self)
            self.routes.append(route_service)
        for connector in staged.config.sinks:
            built = staged.connectors.get(connector.name)
            if built is not None:
                self.built[connector.name] = built
                self.sinks[connector.name] = built.service
                if built.service is not None:
                    built.service.setServiceParent(self)
        for key, listener in staged.listeners.items():
            if listener.listening is None:
                listener.setServiceParent(self)  # bound in privilegedStartService, with the rest
            else:
                self._adopt(listener)
            self.listeners[key] = listener
        for connector in staged.config.sources:
            built = staged.connectors.get(connector.name)
            if built is not None:
                self.built[connector.name] = built
                self.sources[connector.name] = built.source
                if built.bus is not None:
                    self.source_buses[connector.name] = built.bus
                if built.service is not None:
                    built.service.setServiceParent(self)

    def _adopt(self, listener: ListenerService) -> None:
        """Make an already bound listener a child (addService would bind it again)."""
        if listener.name:
            self.namedServices[listener.name] = listener
        self.services.append(listener)
        listener.parent = self
        listener.startService()

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
        if served_by_workers(connector):  # a sink with worker processes binds its own port
            return self.sinks[connector_name].bound_port
        address = listen_address(connector)
        assert address is not None, f"{connector_name} listens on no port"
        host, port, _ = address
        return self.listeners[(host, port)].bound_port


# It provides what the admin listener and the figures read of the daemon (ops/view.py): mypy checks it here.
_RUNNING_DAEMON: type[RunningDaemon] = DaemonService


def build_service(
    config: Config, reactor: Any = None, bus: IDeliveringBus | None = None, clock: IReactorTime | None = None,
    stats_interval: float = 60.0, exit_on_bind_error: bool = False,
) -> DaemonService:
    if reactor is None:
        from twisted.internet import reactor
    return DaemonService(config, reactor, bus, clock, stats_interval, exit_on_bind_error=exit_on_bind_error)
