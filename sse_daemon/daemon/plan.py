"""What to add, keep, restart and remove to go from one configuration to another (pure).

Start-up is the plan from nothing (``plan(None, config)``: everything is
added, every port is new); a reload (SIGHUP) is the plan from the running
configuration. The builder (build.py) turns a plan's new pieces into running
ones and the daemon (service.py) applies it; this module only compares.

A connector whose definition is the same (type, stream and schema, every
option, and the content of the files and environment variables its options
name) is *kept* with its connections, subscribers and history; a changed one
is *restarted*, but for a sink or an ingest whose only change is the content
of its users, tokens or JWT key file (or tokens variable): it is kept and its
credentials are *renewed* (its guard takes them; a sink closes the streams
whose credentials no longer pass; edge/guard.py). Removed ones are stopped
and added ones started. Routes are compared the same way. A port (host, port) is *new*, *kept* (its paths are
pointed at the new resources), *rebound* (bound another way: TLS,
``server.endpoint``) or *removed*. Some changes take a restart of the daemon:
the ``admin:`` and ``bus:`` sections (a warning, the rest is applied) and a
sink served by worker processes (the reload is refused whole).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from sse_daemon.config.endpoints import port_description, tls_files_mark
from sse_daemon.config.model import Config, ConnectorDef, RouteDef, listen_address, served_by_workers
from sse_daemon.config.values import Url

__all__ = ["Plan", "PortKey", "plan", "keys", "connector_key", "renews_in_place", "port_layout", "port_endpoints"]

#: a port the daemon listens on: (host, port)
PortKey = tuple[str, int]


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
    """Everything that defines a connector; equal keys mean it may keep running as it is. The last item is
    the content of its credentials (users, tokens and JWT key files, a tokens variable): keys that differ
    only there may keep running with fresh credentials (:func:`renews_in_place`)."""
    environ = os.environ if environ is None else environ
    stream = config.streams.get(connector.stream)
    options = connector.options

    def content(credentials: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:  # the files' and variables' digests
        return (tuple(_file_digest(path) for path in options.files(credentials)),
                tuple(hashlib.sha256(environ.get(name, "").encode()).hexdigest() for name in options.environment(credentials)))

    return (connector.role, connector.type, connector.stream, str(stream.schema) if stream else None,
            _freeze(options.by_name()), connector.schema, content(False), content(True))


def renews_in_place(connector: ConnectorDef) -> bool:
    """Whether fresh credentials reach this connector without a restart: an ingest, or a sink served by this
    process (worker processes hold guards of their own: such a sink restarts, which a reload refuses)."""
    return connector.type == "http" or (connector.type == "sse-server" and not served_by_workers(connector))


def _route_key(route: RouteDef, config: Config) -> tuple:
    return (repr(route), str(config.streams[route.source].schema), str(config.streams[route.target].schema))


def keys(config: Config, environ: Mapping[str, str] | None = None) -> dict[str, tuple]:
    """Every connector's key, taken now: kept to compare with after the files change."""
    return {c.name: connector_key(c, config, environ) for c in config.connectors}


def port_layout(config: Config) -> dict[PortKey, list[tuple[str, ConnectorDef]]]:
    """The daemon's ports and, on each, the (path, connector) it serves: sinks first, then ingests,
    in the configuration's order. A sink served by worker processes binds its own port (workers/)."""
    layout: dict[PortKey, list[tuple[str, ConnectorDef]]] = {}
    for connector in (*config.sinks, *config.sources):
        address = listen_address(connector)
        if address is None or served_by_workers(connector):
            continue
        host, port, path = address
        layout.setdefault((host, port), []).append((path, connector))
    return layout


def port_endpoints(config: Config) -> dict[PortKey, str]:
    """How each port is bound (the endpoint string of its first connector, whether it offers HTTP/2, and the
    content of the TLS files it reads when bound, so that a certificate renewed in place binds it again; tls.py)."""
    return {key: port_description(key[0], key[1], entries[0][1].options) + tls_files_mark(entries[0][1].options)
            for key, entries in port_layout(config).items()}


@dataclass
class Plan:
    keep: list[str] = field(default_factory=list)
    #: kept connectors whose credentials changed (users, tokens, JWT key): renewed in place, not restarted
    renew: list[str] = field(default_factory=list)
    restart: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    add: list[str] = field(default_factory=list)
    routes_remove: list[int] = field(default_factory=list)  # indexes into the old config's routes
    routes_add: list[int] = field(default_factory=list)  # indexes into the new config's routes
    #: the new configuration's ports: (path, connector) on each
    layout: dict[PortKey, list[tuple[str, ConnectorDef]]] = field(default_factory=dict)
    ports_new: list[PortKey] = field(default_factory=list)  # bound before anything running is touched
    ports_keep: list[PortKey] = field(default_factory=list)  # still bound: its paths lead to the new resources
    ports_rebind: list[PortKey] = field(default_factory=list)  # bound another way: released, then bound again
    ports_remove: list[PortKey] = field(default_factory=list)
    #: changes that wait for the next restart; the rest is applied (logged as warnings)
    deferred: list[str] = field(default_factory=list)
    #: why the new configuration cannot be applied without a restart (nothing is changed)
    refusal: str | None = None
    #: every new connector's key as this plan compared it: what its running pieces are built from once applied
    #: (files read later are compared again at the next reload, not taken as seen)
    keys: dict[str, tuple] = field(default_factory=dict)

    @property
    def changes(self) -> bool:
        return bool(self.restart or self.remove or self.add or self.routes_remove or self.routes_add
                    or self.ports_rebind)  # a port's TLS files renewed, its connectors unchanged (an ssl: server.endpoint)

    @property
    def fresh(self) -> list[str]:
        """Connectors to build: the restarted and the added."""
        return [*self.restart, *self.add]

    @property
    def gone(self) -> list[str]:
        """Connectors whose running pieces stop: the restarted and the removed."""
        return [*self.restart, *self.remove]

    def summary(self) -> str:
        parts = [f"{what} {', '.join(names)}" for what, names in
                 (("kept", self.keep), ("credentials renewed for", self.renew), ("restarted", self.restart),
                  ("removed", self.remove), ("added", self.add)) if names]
        if self.routes_remove or self.routes_add:
            parts.append(f"routes -{len(self.routes_remove)} +{len(self.routes_add)}")
        if self.ports_rebind:
            parts.append(f"bound again: port {', '.join(str(port) for _, port in self.ports_rebind)}")
        return "; ".join(parts) or "nothing"


def plan(old: Config | None, new: Config, environ: Mapping[str, str] | None = None, old_keys: Mapping[str, tuple] | None = None,
         old_ports: Mapping[PortKey, str] | None = None) -> Plan:
    """What going from ``old`` (None: nothing runs yet) to ``new`` keeps, restarts, removes and adds.

    ``old_keys`` are the keys taken when ``old`` was loaded (files and variables
    may have changed since); without them they are taken now. ``old_ports`` are
    the ports actually bound, with their endpoint strings (a port whose rebinding
    failed is not); without them, those of ``old``.
    """
    result = Plan(layout=port_layout(new))
    before = {c.name: c for c in old.connectors} if old is not None else {}
    after = {c.name: c for c in new.connectors}
    old_keys = old_keys if old_keys is not None else keys(old, environ) if old is not None else {}
    for name, connector in after.items():
        old_key = old_keys.get(name)
        new_key = result.keys[name] = connector_key(connector, new, environ)
        if name not in before:
            result.add.append(name)
        elif old_key == new_key:
            result.keep.append(name)
        elif old_key is not None and old_key[:-1] == new_key[:-1] and renews_in_place(connector):
            result.keep.append(name)
            result.renew.append(name)
        else:
            result.restart.append(name)
    result.remove = [name for name in before if name not in after]
    old_routes = [_route_key(r, old) for r in old.routes] if old is not None else []
    new_routes = [_route_key(r, new) for r in new.routes]
    result.routes_remove = [i for i, key in enumerate(old_routes) if key not in new_routes]
    result.routes_add = [i for i, key in enumerate(new_routes) if key not in old_routes]
    _plan_ports(result, new, old_ports if old_ports is not None else port_endpoints(old) if old is not None else {})
    if old is not None:
        _restart_only(result, old, new)
    return result


def _plan_ports(result: Plan, new: Config, bound: Mapping[PortKey, str]) -> None:
    wanted = port_endpoints(new)
    for key, endpoint in wanted.items():
        if key not in bound:
            result.ports_new.append(key)
        elif bound[key] == endpoint:
            result.ports_keep.append(key)
        else:
            result.ports_rebind.append(key)
    result.ports_remove = [key for key in bound if key not in wanted]


def _restart_only(result: Plan, old: Config, new: Config) -> None:
    """What only a restart of the daemon changes."""
    if new.admin != old.admin:
        result.deferred.append("changes to the admin: section take effect at the next restart")
    if new.bus != old.bus:
        result.deferred.append("changes to the bus: section take effect at the next restart")
    if not result.changes:
        return
    pooled = sorted(name for name in {*result.restart, *result.add, *result.remove}
                    if any(c.name == name and served_by_workers(c) for c in (*old.connectors, *new.connectors)))
    if pooled:
        result.refusal = (f"{', '.join(pooled)} would change, and a sink served by worker processes (worker.count above 1) "
                          "is changed, added or removed only by a restart")


def history_notes(old: Config, new: Config, changes: Plan) -> list[str]:
    """What a reload does to the sinks' history files (``history.path``), one line per sink that has one.

    A kept sink keeps its file open; a restarted sink with the same file continues it (the old
    one stops writing when the new one starts); a file no sink names any more is left as it is."""
    def path(config: Config, name: str) -> str | None:
        connector = next((c for c in config.sinks if c.name == name), None)
        return connector.options.history_path if connector is not None and connector.type == "sse-server" else None

    notes: list[str] = []
    for name in changes.keep:
        if (kept := path(new, name)) is not None:
            notes.append(f"sink {name} is kept with its history file {kept}")
    for name in changes.restart:
        before, after = path(old, name), path(new, name)
        if before is not None and before == after:
            notes.append(f"sink {name} restarts with the same history file {after}: the file is kept and the new sink continues it")
        elif before is not None:
            where = f"in {after}" if after is not None else "in memory"
            notes.append(f"sink {name} now keeps its history {where}; its old history file {before} is left as it is")
        elif after is not None:
            notes.append(f"sink {name} now keeps its history in {after}, starting from what that file holds")
    for name in changes.remove:
        if (gone := path(old, name)) is not None:
            notes.append(f"sink {name} is removed; its history file {gone} is left as it is")
    return notes
