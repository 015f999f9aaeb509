"""SIGHUP: re-read the configuration and change only what changed.

1. The files are loaded and validated as at start; an invalid configuration is
   rejected whole, its errors are logged and the running one goes on.
2. :func:`plan` compares the two configurations connector by connector: a
   connector whose definition is the same (type, stream and schema, every
   option, and the content of the files and environment variables its options
   name) is *kept* with its connections, subscribers and history; a changed one
   is restarted; removed ones are stopped and added ones started. Routes are
   compared the same way.
3. Everything new is built off to the side, and new ports are bound before
   anything running is touched: a port that cannot be bound rejects the reload
   whole too.
4. The switch happens in one reactor turn: paths on kept ports are pointed at
   their new resources, old services stop, new services start. An old SSE
   sink closes its subscribers in stages over its ``drain.window``, as on
   shutdown, so they reconnect (to the new sink) spread out, not at once.

The new pieces are built the way ``service.DaemonService`` builds them at start
(``_build`` mirrors its ``_add_sink``/``_add_ingest`` and source loop); keep
the two in step.
"""

from __future__ import annotations

import hashlib
import os
import signal
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.logger import Logger

from sse_daemon.config.errors import ConfigError
from sse_daemon.config.load import load_files
from sse_daemon.config.model import Config, ConnectorDef, RouteDef, listen_address, served_by_workers
from sse_daemon.config.values import Url
from sse_daemon.policy.connections import Stopping, port_policy
from sse_daemon.edge.listener import SINK_ONLY_BODY_LIMIT, BindError, ListenerService

__all__ = ["Plan", "plan", "keys", "connector_key", "Reloader", "ReloadOnSighup"]

log = Logger()

def _freeze(value: Any) -> Any:
    if isinstance(value, Url):  # its repr masks credentials; a changed password is still a change
        return ("url", value.text)
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return repr(value)


def _file_digest(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return "unreadable"


def connector_key(connector: ConnectorDef, config: Config, environ: Mapping[str, str] | None = None) -> tuple:
    """Everything that defines a connector; equal keys mean it may keep running as it is."""
    environ = os.environ if environ is None else environ
    stream = config.streams.get(connector.stream)
    files = tuple(_file_digest(path) for path in connector.options.files())  # whose content is part of the definition
    env = tuple(hashlib.sha256(environ.get(name, "").encode()).hexdigest() for name in connector.options.environment())
    return (connector.role, connector.type, connector.stream, str(stream.schema) if stream else None,
            _freeze(connector.options.by_name()), connector.schema, files, env)


def _route_key(route: RouteDef, config: Config) -> tuple:
    return (repr(route), str(config.streams[route.source].schema), str(config.streams[route.target].schema))


@dataclass
class Plan:
    keep: list[str] = field(default_factory=list)
    restart: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    add: list[str] = field(default_factory=list)
    routes_remove: list[int] = field(default_factory=list)  # indexes into the old config's routes
    routes_add: list[int] = field(default_factory=list)  # indexes into the new config's routes

    @property
    def changes(self) -> bool:
        return bool(self.restart or self.remove or self.add or self.routes_remove or self.routes_add)

    def summary(self) -> str:
        parts = [f"{what} {', '.join(names)}" for what, names in
                 (("kept", self.keep), ("restarted", self.restart), ("removed", self.remove), ("added", self.add)) if names]
        if self.routes_remove or self.routes_add:
            parts.append(f"routes -{len(self.routes_remove)} +{len(self.routes_add)}")
        return "; ".join(parts) or "nothing"


def keys(config: Config, environ: Mapping[str, str] | None = None) -> dict[str, tuple]:
    """Every connector's key, taken now: kept to compare with after the files change."""
    return {c.name: connector_key(c, config, environ) for c in config.connectors}


def plan(old: Config, new: Config, environ: Mapping[str, str] | None = None, old_keys: Mapping[str, tuple] | None = None) -> Plan:
    """What a reload from ``old`` to ``new`` keeps, restarts, removes and adds.

    ``old_keys`` are the keys taken when ``old`` was loaded (files and variables
    may have changed since); without them they are taken now.
    """
    result = Plan()
    before = {c.name: c for c in old.connectors}
    after = {c.name: c for c in new.connectors}
    old_keys = keys(old, environ) if old_keys is None else old_keys
    for name, connector in after.items():
        if name not in before:
            result.add.append(name)
        elif old_keys.get(name) == connector_key(connector, new, environ):
            result.keep.append(name)
        else:
            result.restart.append(name)
    result.remove = [name for name in before if name not in after]
    old_routes = [_route_key(r, old) for r in old.routes]
    new_routes = [_route_key(r, new) for r in new.routes]
    result.routes_remove = [i for i, key in enumerate(old_routes) if key not in new_routes]
    result.routes_add = [i for i, key in enumerate(new_routes) if key not in old_routes]
    return result


@dataclass
class _Staged:
    """New pieces, built but not yet live."""

    services: dict[str, Any] = field(default_factory=dict)  # connector name -> service (sinks, SSE sources)
    resources: dict[str, Any] = field(default_factory=dict)  # connector name -> guarded resource (sinks, ingests)
    sources: dict[str, Any] = field(default_factory=dict)  # connector name -> what daemon.sources holds
    buses: dict[str, Any] = field(default_factory=dict)  # connector name -> ConnectorBus of a source
    listeners: dict[tuple[str, int], ListenerService] = field(default_factory=dict)  # new ports
    rebind: dict[tuple[str, int], ListenerService] = field(default_factory=dict)  # same port, bound another way
    layout: dict[tuple[str, int], list[tuple[str, ConnectorDef]]] = field(default_factory=dict)  # port -> (path, connector)


class Reloader:
    """Applies a new configuration to a running DaemonService; one reload at a time."""

    def __init__(self, daemon: Any, paths: Iterable[str], load: Callable[[list[str]], Config] = load_files,
                 stopping: Stopping | None = None) -> None:
        self.daemon = daemon
        self.paths = list(paths)
        self.load = load
        #: the daemon's shutdown state (drain.py sets it): once set, a reload is ignored
        self.stopping = daemon.stopping if stopping is None else stopping
        self.counters = {"reloads": 0, "rejected": 0}
        self.ignored = 0  # SIGHUPs that came during shutdown
        self.keys = keys(daemon.config)  # what the running connectors were built from
        self._running: Deferred | None = None
        self._again = False
        self._bind_error: BindError | None = None

    def reload(self) -> Deferred:
        """Reload now, or right after the reload in progress; fires with True if applied.

        Not once shutdown has begun: a port bound now would serve while the
        daemon drains (and outlive the drain's ``stopListening``).
        """
        if self.stopping:
            self._ignored()
            return succeed(False)
        if self._running is not None:
            self._again = True
            return self._running

        def done(result: Any) -> Any:
            self._running = None
            if self._again:
                self._again = False
                return self.reload()
            return result

        d = self._running = Deferred.fromCoroutine(self._reload())
        d.addErrback(lambda f: (log.failure("reloading the configuration failed", f), False)[1])
        d.addBoth(done)  # may run at once, when nothing had to wait
        return d

    def _ignored(self) -> None:
        self.ignored += 1
        log.warn("reload ignored: the daemon is shutting down ({count} ignored)", count=self.ignored)

    async def _reload(self) -> bool:
        daemon = self.daemon
        log.info("reloading the configuration from {files}", files=", ".join(self.paths))
        try:
            new = self.load(self.paths)
        except ConfigError as e:
            self.counters["rejected"] += 1
            for issue in e.issues:
                log.error("reload rejected: {issue}", issue=str(issue))
            log.error("the new configuration has {count} error(s); the running configuration is unchanged", count=len(e.issues))
            return False
        if new.admin != daemon.config.admin:
            log.warn("changes to the admin: section take effect at the next restart")
        if new.bus != daemon.config.bus:
            log.warn("changes to the bus: section take effect at the next restart")
        changes = plan(daemon.config, new, old_keys=self.keys)
        if not changes.changes:
            daemon.config = _with_admin(new, daemon.config)
            log.info("configuration reloaded: nothing changed")
            return True
        pooled = sorted(name for name in {*changes.restart, *changes.add, *changes.remove}
                        if any(c.name == name and served_by_workers(c) for c in (*daemon.config.connectors, *new.connectors)))
        if pooled:
            self.counters["rejected"] += 1
            log.error("reload rejected: {names} would change, and a sink served by worker processes (worker.count above 1) "
                      "is changed, added or removed only by a restart; the running configuration is unchanged",
                      names=", ".join(pooled))
            return False
        if self.stopping:  # shutdown began while the files were read
            self._ignored()
            return False
        staged = self._build(new, changes)
        released = self._bind(staged)
        if released or self._bind_error is not None:
            error, self._bind_error = self._bind_error, None
            await DeferredList(released, consumeErrors=True)
            self.counters["rejected"] += 1
            log.error("reload rejected: {message}; the running configuration is unchanged", message=str(error))
            return False
        new_keys = keys(new)
        await self._commit(new, changes, staged)
        self.keys = new_keys
        self.counters["reloads"] += 1
        log.info("configuration reloaded: {summary}", summary=changes.summary())
        return True

    # -- 1. build off to the side (with the constructor DaemonService uses)

    def _build(self, new: Config, changes: Plan) -> _Staged:
        from sse_daemon.daemon.service import build_connector
        from sse_daemon.edge.tls import listen_description

        daemon = self.daemon
        staged = _Staged()
        fresh = set(changes.restart) | set(changes.add)
        for connector in new.connectors:
            if connector.name not in fresh:
                continue
            built = build_connector(connector, new.streams[connector.stream].schema, daemon.bus, daemon.clock, daemon.reactor,
                                    daemon.passwords, daemon.stopping)
            for pieces, piece in ((staged.services, built.service), (staged.resources, built.resource),
                                  (staged.sources, built.source), (staged.buses, built.bus)):
                if piece is not None:
                    pieces[connector.name] = piece
        for connector in new.connectors:
            address = listen_address(connector)
            if address is None or served_by_workers(connector):
                continue
            host, port, path = address
            staged.layout.setdefault((host, port), []).append((path, connector))
        for key, entries in staged.layout.items():
            description = listen_description(key[0], key[1], entries[0][1].options)
            current = daemon.listeners.get(key)
            if current is not None and current.endpoint == description:
                continue
            listener = ListenerService(daemon.reactor, *key, port_policy(entries[0][1].options), daemon.descriptors, self.stopping)
            listener.endpoint = description
            for path, connector in entries:
                limit = connector.options.max_body_size if connector.type == "http" else None
                listener.add(path, staged.resources[connector.name] if connector.name in staged.resources
                             else daemon.listeners[key].router.routes[path], connector.label, limit)
            (staged.rebind if current is not None else staged.listeners)[key] = listener
        return staged

    # -- 2. bind new ports before touching anything

    def _bind(self, staged: _Staged) -> list[Deferred]:
        """Bind every new port; on a failure release those bound and return their Deferreds."""
        bound: list[ListenerService] = []
        try:
            for listener in staged.listeners.values():
                listener.privilegedStartService()
                bound.append(listener)
        except BindError as e:
            self._bind_error = e
            return [maybeDeferred(listener.stopService) for listener in bound]
        return []

    # -- 3. switch over in one turn, then wait for old services to stop

    async def _commit(self, new: Config, changes: Plan, staged: _Staged) -> None:
        from sse_daemon.daemon.service import RouteService

        daemon = self.daemon
        stopping: list[Deferred] = []
        gone = set(changes.restart) | set(changes.remove)
        # paths on kept ports now lead to the new resources (and removed paths to 404)
        for key, listener in list(daemon.listeners.items()):
            if key in staged.listeners or key in staged.rebind:
                continue
            if key not in staged.layout:
                stopping.append(maybeDeferred(daemon.removeService, listener))
                del daemon.listeners[key]
                continue
            routes, labels, limits = {}, [], []
            for path, connector in staged.layout[key]:
                routes[path] = staged.resources.get(connector.name) or listener.router.routes[path]
                labels.append(f"{connector.label} at {path}")
                if connector.type == "http":
                    limits.append(connector.options.max_body_size)
            listener.router.routes = routes
            listener.labels = labels
            listener.max_body_size = max(limits) if limits else None
            listener.policy = port_policy(staged.layout[key][0][1].options)  # deadlines and cap: the same for the whole port
            site = listener.site
            if site is not None:
                site.max_body_size = listener.max_body_size or SINK_ONLY_BODY_LIMIT
                site.policy = listener.policy
        # old services of changed and removed connectors stop; their subscribers are closed
        for name in gone:
            service = daemon.sinks.pop(name, None)
            source = daemon.sources.pop(name, None)
            daemon.source_buses.pop(name, None)
            for old in (service, source):
                if old is None or getattr(old, "parent", None) is not daemon:
                    continue
                if hasattr(old, "drain"):  # an SSE sink: close its subscribers in stages, as on shutdown
                    # it stays a child while it drains (a shutdown meanwhile still stops it), but its
                    # name goes to the new sink at once
                    daemon.namedServices.pop(old.name, None)
                    old.name = None
                    stopping.append(old.drain(daemon.reactor).addBoth(lambda _, old=old: daemon.removeService(old)))
                else:
                    stopping.append(maybeDeferred(daemon.removeService, old))
        # ports bound another way: the old one is released first, then the new one binds
        for key, listener in staged.rebind.items():
            old = daemon.listeners.pop(key)
            await DeferredList([maybeDeferred(daemon.removeService, old)])
            if self.stopping:  # shutdown began meanwhile: bind nothing more
                continue
            try:
                listener.privilegedStartService()
            except BindError as e:
                log.critical("reload: {message}; the connectors of this port are not served", message=str(e))
                continue
            staged.listeners[key] = listener
        for key, listener in staged.listeners.items():
            _adopt(daemon, listener)
            daemon.listeners[key] = listener
        # routes
        for index in changes.routes_remove:
            old_route = daemon.config.routes[index]
            for route_service in list(daemon.routes):
                if route_service.route == old_route:
                    daemon.routes.remove(route_service)
                    stopping.append(maybeDeferred(daemon.removeService, route_service))
        schemas = {name: stream.schema for name, stream in new.streams.items()}
        for index in changes.routes_add:
            route = new.routes[index]
            route_service = RouteService(route, schemas[route.target].names, daemon.bus)  # as DaemonService does
            route_service.setServiceParent(daemon)
            daemon.routes.append(route_service)
        # new services start: sinks subscribe to the bus, sources connect
        for name, service in staged.services.items():
            if name in staged.sources:
                continue
            service.setServiceParent(daemon)
            daemon.sinks[name] = service
        for name, source in staged.sources.items():
            if isinstance(source, Service):
                source.setServiceParent(daemon)
            daemon.sources[name] = source
        daemon.source_buses.update(staged.buses)
        daemon.config = _with_admin(new, daemon.config)
        # the admin service attaches to sinks and sources at start; let it see the new ones
        hook = getattr(getattr(daemon, "admin", None), "reloaded", None)
        if hook is not None:
            with log.failuresHandled("the admin service's reload hook failed"):
                hook(sorted(set(changes.restart) | set(changes.add)), sorted(gone))
        await DeferredList(stopping, consumeErrors=True)


def _with_admin(new: Config, old: Config) -> Config:
    """The new configuration, keeping the admin and bus sections that are actually running."""
    from dataclasses import replace

    return replace(new, admin=old.admin, bus=old.bus) if (new.admin, new.bus) != (old.admin, old.bus) else new


def _adopt(daemon: Any, listener: ListenerService) -> None:
    """Make an already bound listener a running child (addService would bind it again)."""
    if listener.name:
        daemon.namedServices[listener.name] = listener
    daemon.services.append(listener)
    listener.parent = daemon
    listener.startService()


class ReloadOnSighup(Service):
    """Installs a SIGHUP handler that reloads the daemon (restores the previous handler on stop,
    unless the daemon is shutting down)."""

    name = "reload-on-sighup"

    def __init__(self, reloader: Reloader, reactor: Any) -> None:
        self.reloader = reloader
        self.reactor = reactor
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._signalled)

    def _signalled(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.reloader.reload)

    def stopService(self) -> None:
        super().stopService()
        if self.reloader.stopping:  # the process is ending: a late SIGHUP is still logged and ignored,
            return  # not left to the default action (which would end twistd by that signal)
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None
