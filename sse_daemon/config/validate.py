"""Validation: a RawConfig in, a Config out, or every problem at once.

:func:`validate` parses each option with its table's parser, builds each
connector type's typed options (``OPTION_CLASSES``), and checks the whole:
schemas, mappings, routes, listeners sharing ports, access and TLS files, the
``admin:`` and ``bus:`` sections. It raises :class:`ConfigError` listing every
issue, each with file, line, connector and option, what was expected and what
was found.
"""

from __future__ import annotations

import os
import re

from typing import Any, Iterable, Literal, Mapping

from sse_daemon.config.credentials import AuthConfigError, load_access
from sse_daemon.config.endpoints import HTTP2_MARK, check_ca_file, check_server_tls, is_tls, port_description
from sse_daemon.config.errors import ConfigError, ConfigIssue, Location, unknown_message
from sse_daemon.config.expressions import Condition, ExpressionError, compile_condition
from sse_daemon.config.grammar import StatementSyntaxError
from sse_daemon.config.model import (
    MEMORY_BUS,
    AdminDef,
    BusDef,
    Config,
    ConnectorDef,
    RawConfig,
    RawConnector,
    RawRoute,
    RawSection,
    RawValue,
    RouteDef,
    StreamDef,
    listen_address,
    served_by_workers,
)
from sse_daemon.config.options import (
    ADMIN_AUTH_OPTIONS,
    ADMIN_OPTIONS,
    BUS_OPTIONS,
    COMMON_OPTIONS,
    CONNECTOR_TYPES,
    OPTION_CLASSES,
    PORT_LIMIT_OPTIONS,
    AccessOptions,
    AdminOptions,
    BusOptions,
    HttpSourceOptions,
    ListenOptions,
    Option,
    SseServerOptions,
    SseSourceOptions,
)
from sse_daemon.config.values import OptionError, found, normalise_path, parse_list
from sse_daemon.events.schema import Attribute, Schema, SchemaError, did_you_mean, parse_schema
from sse_daemon.mapping.mappers import MapperConfigError, make_mapper

__all__ = ["validate"]

def validate(raw: RawConfig) -> Config:
    """Check a RawConfig as a whole; raise ConfigError with every issue found."""
    issues = list(raw.issues)
    files = tuple(raw.files)

    # Streams declared on their own.
    schemas: dict[str, tuple[Schema, Location, str]] = {}  # name -> (schema, where, who declared it)
    for stream in raw.streams:
        schema = _schema(stream.schema, f"stream '{stream.name}'", issues)
        if schema is None:
            continue
        if stream.name in schemas:
            issues.append(ConfigIssue(stream.schema.location, f"stream '{stream.name}' is declared twice (first at {schemas[stream.name][1]})"))
            continue
        schemas[stream.name] = (schema, stream.schema.location, "streams:")

    connectors: list[ConnectorDef[Any]] = []
    seen_names: dict[str, Location] = {}
    for raw_connector in raw.connectors:
        if raw_connector.name in seen_names:
            issues.append(ConfigIssue(raw_connector.location, f"the name '{raw_connector.name}' is already used by a connector at {seen_names[raw_connector.name]}", f"{raw_connector.role} '{raw_connector.name}'"))
            continue
        seen_names[raw_connector.name] = raw_connector.location
        connector = _connector(raw_connector, schemas, issues)
        if connector is not None:
            connectors.append(connector)

    _infer_targets(raw.routes, schemas)
    streams = {name: StreamDef(name, schema, where) for name, (schema, where, _) in schemas.items()}
    first_raw: dict[str, RawConnector] = {}
    for raw_connector in raw.connectors:
        first_raw.setdefault(raw_connector.name, raw_connector)
    for connector in connectors:
        if connector.stream not in streams:
            issues.append(ConfigIssue(connector.location, f"stream '{connector.stream}' has no schema: add 'schema:' here or declare it under 'streams:'", connector.label))
        else:
            _check_mapping(connector, first_raw[connector.name], streams[connector.stream].schema, issues)

    routes = _routes(raw.routes, streams, issues)
    _check_listeners(connectors, issues)
    _check_hubs(connectors, first_raw, issues)
    _check_worker_sinks(connectors, first_raw, issues)
    _check_access(connectors, first_raw, issues)
    _check_tls(connectors, first_raw, issues)
    _check_port_limits(connectors, first_raw, issues)
    admin = _admin(raw.admin, connectors, issues)
    bus = _bus(raw.bus, connectors, raw.routes, issues)
    _check_history_files(connectors, first_raw, bus, issues)

    if issues:
        raise ConfigError(sorted(issues, key=lambda i: (i.location.file, i.location.line or 0)))
    if not connectors:
        raise ConfigError([ConfigIssue(Location(", ".join(files) or "<config>"), "no sources or sinks are defined")])
    return Config(
        files=files,
        streams=streams,
        sources=tuple(c for c in connectors if c.role == "source"),
        sinks=tuple(c for c in connectors if c.role == "sink"),
        routes=tuple(routes),
        admin=admin,
        bus=bus,
    )


def _schema(raw_value: RawValue, who: str, issues: list[ConfigIssue], option: str | None = None) -> Schema | None:
    try:
        return parse_schema(raw_value.value)
    except SchemaError as e:
        issues.append(ConfigIssue(raw_value.location, str(e), who, option))
        return None


def _connector(raw: RawConnector, schemas: dict[str, tuple[Schema, Location, str]], issues: list[ConfigIssue]) -> ConnectorDef[Any] | None:
    label = f"{raw.role} '{raw.name}'"
    type_value = raw.options.get("type")
    if type_value is None:
        types = sorted(t for (role, t) in CONNECTOR_TYPES if role == raw.role)
        issues.append(ConfigIssue(raw.location, f"'type' is required: one of {', '.join(types)}", label, "type"))
        return None
    type_name = str(type_value.value).strip().lower()
    specific = CONNECTOR_TYPES.get((raw.role, type_name))
    if specific is None:
        types = [t for (role, t) in CONNECTOR_TYPES if role == raw.role]
        other_role = "sink" if raw.role == "source" else "source"
        hint = f" ('{type_name}' is a {other_role} type)" if (other_role, type_name) in CONNECTOR_TYPES else ""
        issues.append(ConfigIssue(type_value.location, unknown_message(type_name, types, f"{raw.role} type") + hint, label, "type"))
        return None

    known = {o.name: o for o in COMMON_OPTIONS + specific}
    values: dict[str, Any] = {}
    ok = True
    for name, raw_value in raw.options.items():
        option = known.get(name) or _dynamic_option(name, known.values())
        if option is None:
            issues.append(ConfigIssue(raw_value.location, unknown_message(name, known, "option"), label, name))
            ok = False
            continue
        try:
            value = option.parse(raw_value.value)
        except OptionError as e:
            issues.append(ConfigIssue(raw_value.location, str(e), label, name))
            ok = False
            continue
        if option.dynamic:  # map.attributes.symbol -> values["map.attributes"]["symbol"]
            values.setdefault(option.prefix[:-1], {})[name[len(option.prefix):]] = value
        else:
            values[name] = value
    for option in known.values():
        if option.dynamic:
            values.setdefault(option.prefix[:-1], {})
            continue
        if option.name in values or option.name in raw.options:
            continue
        if option.required:
            issues.append(ConfigIssue(raw.location, f"'{option.name}' is required ({option.doc})", label, option.name))
            ok = False
        else:
            values[option.name] = option.default
    stream = values.get("stream") or raw.name
    if values.get("server.path", "") is None and type_name == "sse-server":
        values["server.path"] = normalise_path(raw.name)

    if "schema" in raw.options:
        schema = _schema(raw.options["schema"], label, issues, "schema")
        if schema is None:
            ok = False
        elif stream in schemas and schemas[stream][0] != schema:
            issues.append(ConfigIssue(raw.options["schema"].location, f"stream '{stream}' is already declared as ({schemas[stream][0]}) by {schemas[stream][2]} at {schemas[stream][1]}; found ({schema})", label, "schema"))
            ok = False
        elif stream not in schemas:
            schemas[stream] = (schema, raw.options["schema"].location, label)
    if not ok:
        return None
    options = OPTION_CLASSES[(raw.role, type_name)].build(values)
    return ConnectorDef(raw.role, raw.name, type_name, stream, options, raw.location, values.get("schema"))


def _dynamic_option(name: str, options: Iterable[Option]) -> Option | None:
    """The option family ``name`` belongs to (``map.attributes.x`` -> ``map.attributes.<attr>``)."""
    return next((o for o in options if o.dynamic and name.startswith(o.prefix) and len(name) > len(o.prefix)), None)


def _check_mapping(connector: ConnectorDef[Any], raw: RawConnector, schema: Schema, issues: list[ConfigIssue]) -> None:
    """The map.* options against the stream's schema (placeholders, attribute paths, text mapping)."""
    try:
        make_mapper(connector.options.mapping, schema, connector.role)
    except MapperConfigError as e:
        for option, message in e.problems:
            where = raw.options[option].location if option in raw.options else raw.location
            issues.append(ConfigIssue(where, message, connector.label, option))


def _routes(raw_routes: list[RawRoute], streams: Mapping[str, StreamDef], issues: list[ConfigIssue]) -> list[RouteDef]:
    routes: list[RouteDef] = []
    for raw in raw_routes:
        ends = {}
        for key in ("from", "to"):
            if key not in raw.fields:
                issues.append(ConfigIssue(raw.location, f"'{key}' is required: routes are written '- {{from: A, to: B}}'", "route"))
                continue
            name = str(raw.fields[key].value)
            if name not in streams:
                message = unknown_message(name, streams, "stream")
                if key == "to" and raw.infers_target:
                    message = f"stream '{name}' is not defined, and the query cannot define it: its input stream is unknown"
                issues.append(ConfigIssue(raw.fields[key].location, message, "route", key))
                continue
            ends[key] = name
        if len(ends) != 2:
            continue
        source, target = streams[ends["from"]], streams[ends["to"]]
        selected = _route_select(raw, source, issues)
        where = _route_where(raw, source, issues)
        if selected is False or where is False:
            continue
        select, renames = selected
        outputs = {output: name for name, output in renames}  # target attribute -> source attribute
        outputs.update((name, name) for name in select or () if name not in dict(renames))
        problems = []
        for attribute in target.schema.attributes:
            name = attribute.name if select is None else outputs.get(attribute.name, attribute.name)
            source_type = source.schema.type_of(name)
            renamed = f" (as '{attribute.name}')" if name != attribute.name else ""
            if source_type is None:
                problems.append(f"'{attribute.name}' is missing from {source.name}")
            elif select is not None and attribute.name not in outputs:
                problems.append(f"'{attribute.name}' is not selected")
            elif source_type is not attribute.type:
                problems.append(f"'{name}'{renamed} is {source_type.value} in {source.name} but {attribute.type.value} in {target.name}")
        for output in outputs:
            if target.schema.type_of(output) is None:
                problems.append(f"'{output}' is selected but {target.name} has no attribute '{output}'")
        if source.name == target.name:
            problems.append("a route from a stream to itself would loop forever")
        if problems:
            issues.append(ConfigIssue(raw.location, f"stream {target.name} ({target.schema}) cannot take events of {source.name} ({source.schema}): " + "; ".join(problems), "route"))
            continue
        route = RouteDef(source.name, target.name, raw.location, select, where, renames)
        twin = next((earlier for earlier in routes if earlier == route), None)
        if twin is not None:  # one route a stream's events would take twice (and a reload could not tell the two apart)
            issues.append(ConfigIssue(raw.location, f"the route {route} is already written at {twin.location}: its events would be routed twice", "route"))
            continue
        routes.append(route)
    cycle = _find_cycle(routes)
    if cycle:
        issues.append(ConfigIssue(cycle[0].location, "routes form a loop: " + " -> ".join([r.source for r in cycle] + [cycle[0].source]), "route"))
    return routes


#: one entry of a route's ``select``: an attribute, or ``b as c`` (kept under another name)
_SELECTED = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)(?:\s+[aA][sS]\s+([A-Za-z_][A-Za-z0-9_]*))?\s*")

Selection = tuple[tuple[str, ...] | None, tuple[tuple[str, str], ...]]


def _select_entries(field_value: RawValue | None) -> list[tuple[str, str | None]] | None | Literal[False]:
    """``select`` as (attribute, new name or None) pairs; None for every attribute (none or ``*``), False if unreadable."""
    if field_value is None:
        return None
    try:
        names = parse_list(field_value.value)
    except OptionError:
        names = ()
    if names == ("*",):
        return None
    matches = [_SELECTED.fullmatch(name) for name in names]
    if not names or None in matches:
        return False
    return [(m.group(1), m.group(2)) for m in matches if m is not None]


def _route_select(raw: RawRoute, source: StreamDef, issues: list[ConfigIssue]) -> Selection | Literal[False]:
    """The selected attribute names (None for all: no ``select`` or ``*``) and their renames; False after an issue."""
    field_value = raw.fields.get("select")
    entries = _select_entries(field_value)
    if entries is None or field_value is None:
        return None, ()
    if entries is False:
        issues.append(ConfigIssue(field_value.location, f"expected attribute names such as [a, b] or '*', found {found(field_value.value)}", "route", "select"))
        return False
    ok = True
    outputs: list[str] = []
    for index, (name, alias) in enumerate(entries):
        if source.schema.type_of(name) is None:
            issues.append(ConfigIssue(field_value.location, f"unknown attribute '{name}' of stream {source.name}{did_you_mean(name, source.schema.names)}", "route", "select"))
            ok = False
        elif name in [n for n, _ in entries[:index]] or (alias or name) in outputs:
            twice = name if name in [n for n, _ in entries[:index]] else alias or name
            issues.append(ConfigIssue(field_value.location, f"'{twice}' is selected twice", "route", "select"))
            ok = False
        outputs.append(alias or name)
    if not ok:
        return False
    return tuple(name for name, _ in entries), tuple((name, alias) for name, alias in entries if alias and alias != name)


def _infer_targets(routes: list[RawRoute], schemas: dict[str, tuple[Schema, Location, str]]) -> None:
    """Siddhi defines a query's output stream when no one else does: its schema is what the query
    selects (renamed, in order), typed as in its input stream. Queries feeding queries are followed."""
    pending = [r for r in routes if r.infers_target and "from" in r.fields and "to" in r.fields]
    progress = True
    while pending and progress:
        progress = False
        for route in list(pending):
            source, target = str(route.fields["from"].value), str(route.fields["to"].value)
            if target in schemas or source not in schemas:
                if target in schemas:
                    pending.remove(route)
                continue
            pending.remove(route)
            progress = True
            schema = schemas[source][0]
            entries = _select_entries(route.fields.get("select"))
            if entries is False:
                continue  # _routes says what is wrong with the select
            if entries is not None:
                types = [schema.type_of(name) for name, _ in entries]
                outputs = [alias or name for name, alias in entries]
                if None in types or len(set(outputs)) != len(outputs):
                    continue
                schema = Schema(tuple(Attribute(output, t) for output, t in zip(outputs, types) if t is not None))
            schemas[target] = (schema, route.fields["to"].location, f"the query at {route.location}")


def _route_where(raw: RawRoute, source: StreamDef, issues: list[ConfigIssue]) -> Condition | None | Literal[False]:
    """The checked, compiled condition; None when there is none, False after an issue."""
    field_value = raw.fields.get("where")
    if field_value is None:
        return None
    if not isinstance(field_value.value, str) or not field_value.value.strip():
        issues.append(ConfigIssue(field_value.location, f"expected a condition such as \"n > 3 and name is not null\", found {found(field_value.value)}", "route", "where"))
        return False
    try:
        return compile_condition(field_value.value, source.schema, source.name)
    except StatementSyntaxError as e:
        where = f"line {e.line}, column {e.column}" if "\n" in field_value.value.strip() else f"column {e.column}"
        message = f"{e.message} ({where} of the condition)\n{e.snippet()}"
    except ExpressionError as e:
        message = str(e)
    issues.append(ConfigIssue(field_value.location, message, "route", "where"))
    return False


def _find_cycle(routes: list[RouteDef]) -> list[RouteDef] | None:
    graph: dict[str, list[RouteDef]] = {}
    for route in routes:
        graph.setdefault(route.source, []).append(route)
    state: dict[str, int] = {}  # 1 = on the path, 2 = done

    def visit(node: str, path: list[RouteDef]) -> list[RouteDef] | None:
        state[node] = 1
        for route in graph.get(node, ()):
            if state.get(route.target) == 1:
                start = next(i for i, r in enumerate(path + [route]) if r.source == route.target)
                return (path + [route])[start:]
            if route.target not in state:
                found = visit(route.target, path + [route])
                if found:
                    return found
        state[node] = 2
        return None

    for node in list(graph):
        if node not in state:
            found = visit(node, [])
            if found:
                return found
    return None


def _admin(sections: list[RawSection], connectors: list[ConnectorDef[Any]], issues: list[ConfigIssue]) -> AdminDef | None:
    """The ``admin:`` section: given at most once, its own port, options checked like a connector's."""
    if not sections:
        return None
    first, *others = sections
    for other in others:
        issues.append(ConfigIssue(other.location, f"'admin' is already configured at {first.location}", "admin"))
    known = {o.name: o for o in ADMIN_OPTIONS}
    values: dict[str, Any] = {}
    ok = True
    for name, raw_value in first.options.items():
        option = known.get(name)
        if option is None:
            issues.append(ConfigIssue(raw_value.location, unknown_message(name, known, "option"), "admin", name))
            ok = False
            continue
        try:
            values[name] = option.parse(raw_value.value)
        except OptionError as e:
            issues.append(ConfigIssue(raw_value.location, str(e), "admin", name))
            ok = False
    for option in ADMIN_OPTIONS:
        if option.name not in values and option.name not in first.options:
            if option.required:
                issues.append(ConfigIssue(first.location, f"'{option.name}' is required ({option.doc})", "admin", option.name))
                ok = False
            else:
                values[option.name] = option.default
    if not ok:
        return None
    admin = AdminOptions.build(values)
    for kind in admin.auth_type:
        try:
            load_access(admin.access(kind))
        except AuthConfigError as e:
            raw = first.options.get(e.option)
            message = "auth.type bearer needs auth.tokens.file or auth.tokens.env (static tokens; JWTs are for sinks)" \
                if e.option == "auth.type" and kind == "bearer" else str(e)
            issues.append(ConfigIssue(raw.location if raw is not None else first.location, message, "admin", e.option))
            ok = False
    for name in ADMIN_AUTH_OPTIONS[1:]:
        if name in first.options and not admin.auth_type:
            issues.append(ConfigIssue(first.options[name].location, f"'{name}' has no effect without 'auth.type'", "admin", name))
            ok = False
    for name, message in check_server_tls(admin):  # TLS on the admin listener, checked as on a connector's port
        raw = first.options.get(name)
        issues.append(ConfigIssue(raw.location if raw is not None else first.location, message, "admin", name))
        ok = False
    if not ok:
        return None
    port = admin.port
    for connector in connectors:
        address = listen_address(connector)
        if port and address is not None and address[1] == port:
            where = first.options["port"].location
            issues.append(ConfigIssue(where, f"port {port} is already used by {connector.label} (at {connector.location}); the admin listener needs a port of its own", "admin", "port"))
            return None
    return AdminDef(admin, first.location)


def _bus(sections: list[RawSection], connectors: list[ConnectorDef[Any]], routes: list[RawRoute], issues: list[ConfigIssue]) -> BusDef:
    """The ``bus:`` section: given at most once; Redis options only with ``type: redis``.

    With a shared bus every instance runs every connector, so what would
    publish each event once per instance is refused here rather than
    duplicating events: routes. (SSE sources run on one instance at a time, under a lease.)
    """
    if not sections:
        return MEMORY_BUS
    first, *others = sections
    for other in others:
        issues.append(ConfigIssue(other.location, f"'bus' is already configured at {first.location}", "bus"))
    known = {o.name: o for o in BUS_OPTIONS}
    values: dict[str, Any] = {}
    for name, raw_value in first.options.items():
        option = known.get(name)
        if option is None:
            issues.append(ConfigIssue(raw_value.location, unknown_message(name, known, "option"), "bus", name))
            continue
        try:
            values[name] = option.parse(raw_value.value)
        except OptionError as e:
            issues.append(ConfigIssue(raw_value.location, str(e), "bus", name))
    bus_type = values.get("type", "memory")
    if bus_type == "memory":
        for name in first.options:
            if name != "type" and name in known:
                issues.append(ConfigIssue(first.options[name].location, f"'{name}' applies only with 'type: redis'", "bus", name))
    else:
        for route in routes:
            issues.append(ConfigIssue(route.location, "routes cannot run with 'bus: {type: redis}' yet: every instance would forward each event, once per instance", "routes"))
    for option in BUS_OPTIONS:
        values.setdefault(option.name, option.default)
    return BusDef(BusOptions.build(values), first.location)


def _check_tls(connectors: list[ConnectorDef[Any]], raws: Mapping[str, RawConnector], issues: list[ConfigIssue]) -> None:
    """TLS files readable and matching; https ingests have a certificate; a shared port is bound one way."""
    def issue(connector: ConnectorDef[Any], option: str, message: str) -> None:
        raw = raws[connector.name].options.get(option)
        issues.append(ConfigIssue(raw.location if raw is not None else connector.location, message, connector.label, option))

    bound: dict[tuple[str, int], tuple[str, ConnectorDef[Any]]] = {}
    for connector in connectors:
        options = connector.options
        if isinstance(options, SseSourceOptions):
            problem = check_ca_file(options.tls_ca_file)
            if problem:
                issue(connector, "tls.ca.file", problem)
            continue
        address = listen_address(connector)
        if address is None or not isinstance(options, ListenOptions):
            continue
        problems = check_server_tls(options)
        for option, message in problems:
            issue(connector, option, message)
        if isinstance(options, HttpSourceOptions) and not problems:
            https = options.receiver_url.scheme == "https"
            if https != is_tls(options):
                issue(connector, "receiver.url", "an https receiver.url needs server.tls.cert and server.tls.key (or an ssl: server.endpoint)"
                      if https else "this port is served over TLS: write receiver.url with https://")
        if problems:
            continue
        host, port, _ = address
        description = port_description(host, port, options)
        first = bound.setdefault((host, port), (description, connector))
        if first[0] == description:
            continue
        if first[0].removesuffix(HTTP2_MARK) == description.removesuffix(HTTP2_MARK):
            issue(connector, "server.http2",
                  f"port {port} {'offers' if first[0].endswith(HTTP2_MARK) else 'does not offer'} HTTP/2 for {first[1].label}: "
                  "connectors sharing a port must give the same server.http2")
        else:
            issue(connector, "server.endpoint" if options.server_endpoint else "server.tls.cert",
                  f"port {port} is already bound differently by {first[1].label}: connectors sharing a port must agree on TLS and server.endpoint")


def _check_port_limits(connectors: list[ConnectorDef[Any]], raws: Mapping[str, RawConnector], issues: list[ConfigIssue]) -> None:
    """A port has one set of deadlines and one per-address cap: connectors sharing it must agree, as on server.endpoint."""
    first: dict[tuple[str, int], ConnectorDef[Any]] = {}
    for connector in connectors:
        address = listen_address(connector)
        if address is None or served_by_workers(connector):
            continue  # a worker-served sink has its port to itself
        other = first.setdefault(address[:2], connector)
        mine, theirs = connector.options.by_name(), other.options.by_name()
        for option in PORT_LIMIT_OPTIONS:
            if mine[option.name] != theirs[option.name]:
                raw = raws[connector.name].options.get(option.name)
                issues.append(ConfigIssue(raw.location if raw is not None else connector.location,
                                          f"port {address[1]} has {option.name} {theirs[option.name]:g} from {other.label} "
                                          f"(at {other.location}), found {mine[option.name]:g}: connectors sharing a port must give the same",
                                          connector.label, option.name))


def _check_access(connectors: list[ConnectorDef[Any]], raws: Mapping[str, RawConnector], issues: list[ConfigIssue]) -> None:
    """The auth.* options of each sink and ingest as a whole: files readable, hashes not plain text, keys that suit."""
    for connector in connectors:
        options = connector.options
        if not isinstance(options, AccessOptions):
            continue
        if "*" in options.cors_origins and options.cors_credentials:
            raw = raws[connector.name].options.get("cors.credentials")
            issues.append(ConfigIssue(raw.location if raw else connector.location, "credentials cannot be allowed for any origin ('*'): list the origins", connector.label, "cors.credentials"))
        try:
            load_access(options)
        except AuthConfigError as e:
            raw = raws[connector.name].options.get(e.option)
            where = raw.location if raw is not None else connector.location
            issues.append(ConfigIssue(where, str(e), connector.label, e.option))


def _check_worker_sinks(connectors: list[ConnectorDef[Any]], raws: Mapping[str, RawConnector], issues: list[ConfigIssue]) -> None:
    """A sink served by worker processes binds its port alone, over plain TCP (workers.py)."""
    for connector in connectors:
        if not served_by_workers(connector):
            continue
        raw = raws[connector.name].options.get("worker.count")
        where = raw.location if raw is not None else connector.location
        options: SseServerOptions = connector.options
        if options.server_endpoint or options.server_tls_cert:
            issues.append(ConfigIssue(where, "worker.count above 1 serves plain TCP on server.host and server.port; "
                                      "terminate TLS in a proxy in front, or use worker.count 1", connector.label, "worker.count"))
        port = options.server_port
        sharing = [other for other in connectors if other is not connector and port
                   and (address := listen_address(other)) is not None and address[1] == port]
        if sharing:
            issues.append(ConfigIssue(where, f"worker.count above 1 needs port {port} to itself, and {sharing[0].label} "
                                      f"(at {sharing[0].location}) uses it too: give one of them another port", connector.label, "worker.count"))


def _check_history_files(connectors: list[ConnectorDef[Any]], raws: Mapping[str, RawConnector], bus: BusDef,
                         issues: list[ConfigIssue]) -> None:
    """``history.path``: a file of its own per sink, in a directory that exists and is writable; not on a
    shared bus (Redis keeps the history there) nor on a raw sink (it keeps none). Whether the file itself
    is a readable history is checked by ``--check`` and at start (connectors/sink/historyfile.py)."""
    owners: dict[str, ConnectorDef[Any]] = {}
    for connector in connectors:
        path = connector.options.history_path if connector.type == "sse-server" else None
        if path is None:
            continue
        raw = raws[connector.name].options.get("history.path")
        where = raw.location if raw is not None else connector.location

        def issue(message: str, where: Location = where, label: str = connector.label) -> None:
            issues.append(ConfigIssue(where, message, label, "history.path"))

        if bus.options.type == "redis":
            issue("history.path cannot be used with 'bus: {type: redis}': the shared bus keeps every sink's history in Redis, "
                  "the same on every instance; remove history.path (or the bus section)")
            continue
        if connector.options.sse_format == "raw":
            issue("history.path has no use with sse.format raw: a raw sink keeps no history (its clients cannot resume)")
            continue
        real = os.path.realpath(path)
        if real in owners:
            issue(f"the history file {path} is already used by {owners[real].label} (at {owners[real].location}): give each sink its own file")
            continue
        owners[real] = connector
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            issue(f"the directory of the history file {path} does not exist: create {directory} (systemd: StateDirectory=)")
        elif not os.access(directory, os.W_OK | os.X_OK):
            issue(f"the directory {directory} of the history file {path} is not writable by this user "
                  "(the file and its -wal and -shm files are kept there)")
        elif os.path.isdir(path):
            issue(f"history.path {path} is a directory: name a file in it")


def _check_listeners(connectors: list[ConnectorDef[Any]], issues: list[ConfigIssue]) -> None:
    """One port is one listener: its paths must differ and its host must agree."""
    by_port: dict[int, tuple[str, ConnectorDef[Any]]] = {}
    by_path: dict[tuple[int, str], ConnectorDef[Any]] = {}
    for connector in connectors:
        address = listen_address(connector)
        if address is None or served_by_workers(connector):
            continue  # a port of its own (_check_worker_sinks)
        host, port, path = address
        option = "server.port" if connector.type == "sse-server" else "receiver.url"
        first = by_port.get(port)
        if first is not None and first[0] != host:
            issues.append(ConfigIssue(connector.location, f"port {port} is already bound on {first[0]} by {first[1].label}; connectors sharing a port must use the same host, found {host}", connector.label, option))
            continue
        by_port.setdefault(port, (host, connector))
        other = by_path.get((port, path))
        if other is not None:
            issues.append(ConfigIssue(connector.location, f"port {port} path {path} is already served by {other.label} (at {other.location})", connector.label, option))
            continue
        by_path[(port, path)] = connector


def _check_hubs(connectors: list[ConnectorDef[Any]], raws: Mapping[str, RawConnector], issues: list[ConfigIssue]) -> None:
    """hub.path and subscriber.where (issue 16): a hub path is no connector's path on its port, a hub stream's
    name is one its requests and frames can carry, and neither option goes with a raw sink, nor with a sink
    served by worker processes."""
    paths = {(address[1], address[2]): connector for connector in connectors
             if (address := listen_address(connector)) is not None and not served_by_workers(connector)}
    for connector in connectors:
        options = connector.options
        if not isinstance(options, SseServerOptions):
            continue
        for name, wanted in (("hub.path", options.hub_path is not None), ("subscriber.where", options.subscriber_where)):
            raw = raws[connector.name].options.get(name)
            location = raw.location if raw is not None else connector.location
            if wanted and options.sse_format == "raw":
                issues.append(ConfigIssue(location, f"{name} needs sse.format sse: a raw sink writes bare payloads, without ids or event types", connector.label, name))
            elif wanted and name == "hub.path" and served_by_workers(connector):
                issues.append(ConfigIssue(location, "hub.path is not available with worker.count above 1: a hub reads sinks served by the daemon's own process", connector.label, name))
            elif wanted and served_by_workers(connector):  # a worker gets frames, not the values a filter tests: all passed
                issues.append(ConfigIssue(location, "subscriber.where is not available with worker.count above 1: a worker gets the encoded "
                                          "events, not the values a filter tests", connector.label, name))
        if options.hub_path is not None and (any(c in connector.name for c in ",\r\n\0") or connector.name != connector.name.strip()):
            # the name is the hub's stream parameter, its frames' event: and part of their id: (A:17,B:42)
            raw = raws[connector.name].options.get("hub.path")
            issues.append(ConfigIssue(raw.location if raw is not None else connector.location,
                                      f"the name {connector.name!r} cannot be a hub stream: a hub request lists streams split at "
                                      "commas and stripped of spaces, and writes the name in its frames' event: and id: lines; "
                                      "rename the sink (no comma, line break or NUL, no spaces around it)",
                                      connector.label, "hub.path"))
        if options.hub_path is not None:
            other = paths.get((options.server_port, options.hub_path))
            if other is not None:
                raw = raws[connector.name].options.get("hub.path")
                issues.append(ConfigIssue(raw.location if raw is not None else connector.location,
                                          f"port {options.server_port} path {options.hub_path} is already served by {other.label}; a hub needs a path of its own",
                                          connector.label, "hub.path"))
