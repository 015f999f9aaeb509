"""Connector configuration: YAML files in, frozen, validated objects out.

Loading has two steps so that every front-end gets the same checks:

1. a front-end (``load_yaml`` here; the statement language later) turns text
   into a :class:`RawConfig`: names and option values exactly as written, each
   with the file and line it came from;
2. :func:`validate` checks everything at once and returns a :class:`Config`,
   or raises :class:`ConfigError` listing every problem, each with file, line,
   connector and option, what was expected and what was found.

Option names are the spec's own (``server.port``, ``receiver.url``, ...).
Values may be strings or numbers, as in the spec's ``server.port='8020'``.
The tables in :data:`CONNECTOR_TYPES` are the single source of truth for which
options exist, their defaults and their documentation (the README's option
tables are checked against them by a test).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlsplit

import yaml

from .schema import Schema, SchemaError, parse_schema

KIB = 1024
MIB = 1024 * 1024


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True, slots=True)
class Location:
    file: str
    line: int | None = None  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    location: Location
    message: str
    connector: str | None = None  # e.g. "sink 'PublishStream'"
    option: str | None = None

    def __str__(self) -> str:
        where = [str(self.location)]
        if self.connector:
            where.append(self.connector)
        if self.option:
            where.append(f"option '{self.option}'")
        return ": ".join(where) + ": " + self.message


class ConfigError(Exception):
    """Every problem found in the configuration, reported together."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues = list(issues)
        super().__init__(str(self))

    def __str__(self) -> str:
        count = len(self.issues)
        head = f"{count} configuration error{'s' if count != 1 else ''}:"
        return "\n".join([head] + [f"  {issue}" for issue in self.issues])


class OptionError(ValueError):
    """Raised by an option parser; the message says what was expected and found."""


def _found(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------- option kinds


def parse_int(value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool):
        raise OptionError(f"expected an integer, found {_found(value)}")
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        value = int(value)
    if not isinstance(value, int):
        raise OptionError(f"expected an integer, found {_found(value)}")
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        bounds = (
            f"from {minimum} to {maximum}" if maximum is not None else f"of at least {minimum}"
        )
        raise OptionError(f"expected an integer {bounds}, found {value}")
    return value


def parse_number(value: Any, minimum: float | None = None) -> float:
    if isinstance(value, bool):
        raise OptionError(f"expected a number, found {_found(value)}")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise OptionError(f"expected a number, found {_found(value)}") from None
    if not isinstance(value, (int, float)) or value != value:
        raise OptionError(f"expected a number, found {_found(value)}")
    if minimum is not None and value < minimum:
        raise OptionError(f"expected a number of at least {minimum:g}, found {value:g}")
    return float(value)


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise OptionError(f"expected true or false, found {_found(value)}")


def parse_string(value: Any) -> str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise OptionError(f"expected a string, found {_found(value)}")


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


def parse_headers(value: Any) -> tuple[tuple[str, str], ...]:
    """Headers in the spec's format ``'Name:value','Name2:value2'``.

    The unquoted form ``Name:value,Name2:value2`` and a YAML mapping are
    accepted too. Names must be HTTP tokens; values may not hold line breaks.
    """
    if isinstance(value, Mapping):
        items = [(str(k), "" if v is None else str(v)) for k, v in value.items()]
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return ()
        if text.startswith("'") and text.endswith("'") and len(text) >= 2:
            pieces = text[1:-1].split("','")
        else:
            pieces = text.split(",")
        items = []
        for piece in pieces:
            name, colon, header_value = piece.partition(":")
            if not colon:
                raise OptionError(
                    f"expected 'Name:value','Name2:value2', found an item without a colon: {_found(piece)}"
                )
            items.append((name, header_value))
    else:
        raise OptionError(f"expected 'Name:value','Name2:value2', found {_found(value)}")
    headers = []
    for name, header_value in items:
        name, header_value = name.strip(), header_value.strip()
        if not _TOKEN.match(name):
            raise OptionError(f"{_found(name)} is not a valid HTTP header name")
        if any(c in header_value for c in "\r\n\0"):
            raise OptionError(f"the value of header {name!r} contains a line break or NUL")
        headers.append((name, header_value))
    return tuple(headers)


@dataclass(frozen=True, slots=True)
class Url:
    """A parsed ``receiver.url``: where a source listens (http) or connects (sse)."""

    text: str
    scheme: str
    host: str
    port: int
    path: str  # with leading slash, without query

    def __str__(self) -> str:
        return self.text


def parse_url(value: Any) -> Url:
    if not isinstance(value, str) or not value.strip():
        raise OptionError(f"expected a URL such as 'http://localhost:8020/testsse', found {_found(value)}")
    text = value.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise OptionError(f"expected an http:// or https:// URL, found {_found(text)}")
    if not parts.hostname:
        raise OptionError(f"expected a URL with a host, found {_found(text)}")
    try:
        port = parts.port
    except ValueError:
        raise OptionError(f"expected a port from 0 to 65535 in the URL, found {_found(text)}") from None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return Url(text, parts.scheme, parts.hostname, port, normalise_path(parts.path or "/"))


def normalise_path(path: str) -> str:
    """Leading slash optional, trailing slash ignored: ``testsse`` -> ``/testsse``."""
    stripped = path.strip().strip("/")
    return "/" + stripped


def parse_path(value: Any) -> str:
    text = parse_string(value)
    if any(c in text for c in "?#\r\n \t"):
        raise OptionError(f"expected a URL path such as 'testsse' or '/events/a', found {_found(text)}")
    return normalise_path(text)


def parse_choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = parse_string(value).strip().lower()
        if text not in choices:
            raise OptionError(f"expected one of {', '.join(choices)}, found {_found(value)}")
        return text

    return parse


def parse_list(value: Any) -> tuple[str, ...]:
    """A YAML list, or a comma-separated string (the statement form)."""
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise OptionError(f"expected a list of strings, found {_found(value)}")


# --------------------------------------------------------------------------- option tables


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    type_name: str  # as shown in the README table: INT, STRING, BOOL, ...
    doc: str
    parse: Callable[[Any], Any]
    default: Any = None
    required: bool = False
    default_doc: str | None = None  # when the default is computed (e.g. from the name)


def _worker_count(value: Any) -> int:
    count = parse_int(value, minimum=1)
    if count > 1:
        raise OptionError(
            f"expected 1, found {count}: worker.count above 1 is not supported yet; one reactor thread "
            "serves every subscriber of a sink (see the README, 'worker.count')"
        )
    return count


def _port(value: Any) -> int:
    return parse_int(value, 0, 65535)


COMMON_OPTIONS = (
    Option("type", "STRING", "Connector type.", parse_string, required=True),
    Option(
        "stream", "STRING", "The stream this connector reads from (sink) or writes to (source).",
        parse_string, default_doc="the connector's name",
    ),
    Option(
        "schema", "STRING", "The stream's attributes, as in the spec: `param1 string, n int`. "
        "Needed here unless the stream is declared under `streams:` or by another connector.",
        parse_string,
    ),
)

MAP_TYPE = Option("map.type", "STRING", "How events are mapped to and from the wire.", parse_choice("json"), "json")
FAIL_ON_MISSING = Option(
    "map.fail.on.missing.attribute", "BOOL",
    "Reject a message that lacks a schema attribute; `false` makes the attribute null instead.",
    parse_bool, True,
)
HEADERS = Option(
    "headers", "STRING",
    "Extra HTTP headers, `'Name:value','Name2:value2'` (the unquoted form and a YAML mapping work too).",
    parse_headers, (),
)

SSE_SERVER_OPTIONS = (
    Option("server.port", "INT", "Port that subscribers connect to. Sinks and ingest sources on one port share it; 0 picks a free port.", _port, required=True),
    Option("server.path", "STRING", "Path that subscribers connect to; the leading slash is optional.", parse_path, default_doc="`/<sink name>`"),
    Option("server.host", "STRING", "Address to listen on (`0.0.0.0` all IPv4, `::` all IPv6, `127.0.0.1` local only).", parse_string, "0.0.0.0"),
    Option("worker.count", "INT", "Accepted for compatibility with the spec; must be 1 (see 'worker.count').", _worker_count, 1),
    HEADERS,
    MAP_TYPE,
    Option("heartbeat.interval", "FLOAT", "Seconds between heartbeat comments that keep proxies and idle connections open; 0 turns them off.", lambda v: parse_number(v, 0), 15.0),
    Option("history.size", "INT", "Events kept for subscribers that resume with `Last-Event-ID`; 0 keeps none.", lambda v: parse_int(v, 0), 1000),
    Option("subscriber.queue.size", "INT", "Events queued for a subscriber that cannot keep up; past this it is disconnected (it may resume from history).", lambda v: parse_int(v, 1), 1000),
    Option("subscriber.queue.bytes", "INT", "Bytes queued for a subscriber that cannot keep up; past this it is disconnected.", lambda v: parse_int(v, 1), 4 * MIB),
)

HTTP_SOURCE_OPTIONS = (
    Option("receiver.url", "STRING", "Where to listen for POSTed events: its host and port are bound (the port may be shared with sinks), its path is the endpoint.", parse_url, required=True),
    MAP_TYPE,
    FAIL_ON_MISSING,
    Option("max.body.size", "INT", "Largest request body accepted, in bytes; larger bodies get 413.", lambda v: parse_int(v, 1), MIB),
)

SSE_SOURCE_OPTIONS = (
    Option("receiver.url", "STRING", "The SSE endpoint to subscribe to (http or https; redirects are followed).", parse_url, required=True),
    Option(
        "worker.count", "INT", "Connections kept open at once to `receiver.url` (1 to 16); events arriving on several are "
        "delivered once, by id (see 'worker.count on a source').", lambda v: parse_int(v, 1, 16), 1,
    ),
    HEADERS,
    MAP_TYPE,
    FAIL_ON_MISSING,
    Option(
        "event.types", "LIST", "Only messages of these SSE event types are mapped (`message` is the type of an event "
        "without an `event:` line); empty keeps every type.", parse_list, (),
    ),
    Option(
        "reconnect.initial.delay", "FLOAT", "Seconds to wait before reconnecting after a stream ends, unless the server "
        "sent `retry:`; repeated failures back off from here.", lambda v: parse_number(v, 0.01), 1.0,
    ),
    Option(
        "reconnect.max.delay", "FLOAT", "Longest wait between attempts while failures repeat (a larger server `retry:` wins).",
        lambda v: parse_number(v, 0.01), 30.0,
    ),
    Option(
        "connect.timeout", "FLOAT", "Seconds to wait for the response head (connect, TLS and redirects included); 0 waits forever.",
        lambda v: parse_number(v, 0), 30.0,
    ),
    Option(
        "read.timeout", "FLOAT", "A stream silent this many seconds (not even a heartbeat comment) is dropped and "
        "reconnected; 0 turns this off.", lambda v: parse_number(v, 0), 60.0,
    ),
    Option(
        "max.event.size", "INT", "Largest event data accepted, in characters; a larger event is skipped and counted.",
        lambda v: parse_int(v, 1), 4 * MIB,
    ),
)

LOG_SINK_OPTIONS = (
    Option("prefix", "STRING", "Text written before each logged event.", parse_string, ""),
    MAP_TYPE,
)

#: (role, type) -> options of that connector type, beyond COMMON_OPTIONS
CONNECTOR_TYPES: dict[tuple[str, str], tuple[Option, ...]] = {
    ("sink", "sse-server"): SSE_SERVER_OPTIONS,
    ("sink", "log"): LOG_SINK_OPTIONS,
    ("source", "http"): HTTP_SOURCE_OPTIONS,
    ("source", "sse"): SSE_SOURCE_OPTIONS,
}


# --------------------------------------------------------------------------- raw and validated objects


@dataclass(frozen=True, slots=True)
class RawValue:
    value: Any
    location: Location


@dataclass(slots=True)
class RawConnector:
    role: str  # "source" or "sink"
    name: str
    location: Location
    options: dict[str, RawValue] = field(default_factory=dict)


@dataclass(slots=True)
class RawStream:
    name: str
    schema: RawValue


@dataclass(slots=True)
class RawRoute:
    location: Location
    fields: dict[str, RawValue]


@dataclass(slots=True)
class RawConfig:
    """What a front-end read, before any check."""

    files: list[str] = field(default_factory=list)
    streams: list[RawStream] = field(default_factory=list)
    connectors: list[RawConnector] = field(default_factory=list)
    routes: list[RawRoute] = field(default_factory=list)
    issues: list[ConfigIssue] = field(default_factory=list)  # syntax-level problems

    def extend(self, other: "RawConfig") -> None:
        self.files += other.files
        self.streams += other.streams
        self.connectors += other.connectors
        self.routes += other.routes
        self.issues += other.issues


@dataclass(frozen=True, slots=True)
class StreamDef:
    name: str
    schema: Schema
    location: Location


@dataclass(frozen=True, slots=True)
class ConnectorDef:
    role: str
    name: str
    type: str
    stream: str
    options: Mapping[str, Any]  # every option of the type, defaults filled in
    location: Location

    @property
    def label(self) -> str:
        return f"{self.role} '{self.name}'"

    def __getitem__(self, option: str) -> Any:
        return self.options[option]


@dataclass(frozen=True, slots=True)
class RouteDef:
    source: str
    target: str
    location: Location


@dataclass(frozen=True, slots=True)
class Config:
    files: tuple[str, ...]
    streams: Mapping[str, StreamDef]
    sources: tuple[ConnectorDef, ...]
    sinks: tuple[ConnectorDef, ...]
    routes: tuple[RouteDef, ...]

    @property
    def connectors(self) -> tuple[ConnectorDef, ...]:
        return self.sources + self.sinks

    def summary(self) -> str:
        """The text ``--check`` prints."""
        lines = [f"configuration OK ({', '.join(self.files)})", f"streams ({len(self.streams)}):"]
        for stream in self.streams.values():
            lines.append(f"  {stream.name} ({stream.schema})")
        for title, connectors in (("sources", self.sources), ("sinks", self.sinks)):
            lines.append(f"{title} ({len(connectors)}):")
            for c in connectors:
                lines.append(f"  {c.name}: {c.type} {_endpoint_text(c)} -> stream {c.stream}" if c.role == "source"
                             else f"  {c.name}: {c.type} {_endpoint_text(c)} <- stream {c.stream}")
        lines.append(f"routes ({len(self.routes)}):")
        for route in self.routes:
            lines.append(f"  {route.source} -> {route.target}")
        return "\n".join(lines)


def _endpoint_text(c: ConnectorDef) -> str:
    if c.type == "sse-server":
        return f"on {c['server.host']}:{c['server.port']}{c['server.path']}"
    if c.type in ("http", "sse"):
        return f"{'on' if c.type == 'http' else 'from'} {c['receiver.url']}"
    return ""


# --------------------------------------------------------------------------- YAML front-end

TOP_LEVEL_KEYS = ("streams", "sources", "sinks", "routes")
ROUTE_KEYS = ("from", "to")


def load_files(paths: Iterable[str]) -> Config:
    """Read and validate every file; raise ConfigError with all problems."""
    raw = RawConfig()
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raw.issues.append(ConfigIssue(Location(path), f"cannot read the file: {e.strerror or e}"))
            continue
        except UnicodeDecodeError as e:
            raw.issues.append(ConfigIssue(Location(path), f"the file is not UTF-8 text: {e}"))
            continue
        raw.extend(load_yaml(text, path))
    return validate(raw)


def load_yaml(text: str, filename: str = "<config>") -> RawConfig:
    """Turn YAML text into a RawConfig, keeping each value's line."""
    raw = RawConfig(files=[filename])
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(e, "problem", None) or str(e)
        raw.issues.append(ConfigIssue(Location(filename, line), f"YAML syntax error: {problem}"))
        return raw
    finally:
        loader.dispose()
    if root is None:
        raw.issues.append(ConfigIssue(Location(filename, 1), "the file is empty; expected streams:, sources:, sinks: or routes:"))
        return raw
    reader = _YamlReader(loader, filename, raw.issues)
    top = reader.mapping(root, "the top level", TOP_LEVEL_KEYS)
    if top is None:
        return raw
    if "streams" in top:
        for name, node in reader.named_entries(top["streams"], "streams"):
            if isinstance(node, yaml.MappingNode):
                fields = reader.mapping(node, f"stream '{name}'", ("schema",)) or {}
                if "schema" not in fields:
                    raw.issues.append(ConfigIssue(reader.loc(node), "expected a 'schema:' entry", f"stream '{name}'"))
                    continue
                node = fields["schema"]
            raw.streams.append(RawStream(name, RawValue(reader.value(node), reader.loc(node))))
    for key in top:  # in file order, so "first defined at" means what it says
        role = {"sources": "source", "sinks": "sink"}.get(key)
        if role is None:
            continue
        for name, node in reader.named_entries(top[key], key):
            fields = reader.mapping(node, f"{role} '{name}'")
            if fields is None:
                continue
            connector = RawConnector(role, name, reader.key_loc(node))
            for option, value_node in fields.items():
                connector.options[option] = RawValue(reader.value(value_node), reader.loc(value_node))
            raw.connectors.append(connector)
    if "routes" in top:
        node = top["routes"]
        if not isinstance(node, yaml.SequenceNode):
            raw.issues.append(ConfigIssue(reader.loc(node), "expected a list of routes such as '- {from: A, to: B}'", "routes"))
        else:
            for item in node.value:
                fields = reader.mapping(item, "route", ROUTE_KEYS)
                if fields is not None:
                    raw.routes.append(RawRoute(
                        reader.loc(item),
                        {k: RawValue(reader.value(v), reader.loc(v)) for k, v in fields.items()},
                    ))
    return raw


class _YamlReader:
    def __init__(self, loader: yaml.SafeLoader, filename: str, issues: list[ConfigIssue]) -> None:
        self._loader = loader
        self._filename = filename
        self._issues = issues
        self._key_lines: dict[int, int] = {}  # id(value node) -> line of its key

    def loc(self, node: yaml.Node) -> Location:
        return Location(self._filename, node.start_mark.line + 1)

    def value(self, node: yaml.Node) -> Any:
        return self._loader.construct_object(node, deep=True)

    def mapping(self, node: yaml.Node, what: str, allowed: tuple[str, ...] | None = None) -> dict[str, yaml.Node] | None:
        """A mapping's entries by key; duplicate and (if ``allowed``) unknown keys are issues."""
        if not isinstance(node, yaml.MappingNode):
            self._issues.append(ConfigIssue(self.loc(node), f"expected a mapping of 'key: value' entries, found {_node_kind(node)}", what))
            return None
        entries: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = self.value(key_node)
            if not isinstance(key, str):
                key = str(key)
            if key in entries:
                self._issues.append(ConfigIssue(self.loc(key_node), f"'{key}' is given twice (first on line {entries[key].start_mark.line + 1})", what))
                continue
            if allowed is not None and key not in allowed:
                self._issues.append(ConfigIssue(self.loc(key_node), unknown_message(key, allowed), what))
                continue
            entries[key] = value_node
            self._key_lines[id(value_node)] = key_node.start_mark.line + 1
        return entries

    def key_loc(self, value_node: yaml.Node) -> Location:
        """Where the entry holding ``value_node`` starts: the line of its key."""
        return Location(self._filename, self._key_lines.get(id(value_node), value_node.start_mark.line + 1))

    def named_entries(self, node: yaml.Node, what: str) -> list[tuple[str, yaml.Node]]:
        entries = self.mapping(node, what)
        return list(entries.items()) if entries else []


def _node_kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.ScalarNode):
        return f"{node.value!r}" if node.value else "nothing"
    return "a mapping"


def unknown_message(name: str, known: Iterable[str], what: str = "key") -> str:
    known = list(known)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else f"; expected one of: {', '.join(known)}"
    return f"unknown {what} '{name}'{hint}"


# --------------------------------------------------------------------------- validation


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

    connectors: list[ConnectorDef] = []
    seen_names: dict[str, Location] = {}
    for raw_connector in raw.connectors:
        if raw_connector.name in seen_names:
            issues.append(ConfigIssue(raw_connector.location, f"the name '{raw_connector.name}' is already used by a connector at {seen_names[raw_connector.name]}", f"{raw_connector.role} '{raw_connector.name}'"))
            continue
        seen_names[raw_connector.name] = raw_connector.location
        connector = _connector(raw_connector, schemas, issues)
        if connector is not None:
            connectors.append(connector)

    streams = {name: StreamDef(name, schema, where) for name, (schema, where, _) in schemas.items()}
    for connector in connectors:
        if connector.stream not in streams:
            issues.append(ConfigIssue(connector.location, f"stream '{connector.stream}' has no schema: add 'schema:' here or declare it under 'streams:'", connector.label))

    routes = _routes(raw.routes, streams, issues)
    _check_listeners(connectors, issues)

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
    )


def _schema(raw_value: RawValue, who: str, issues: list[ConfigIssue], option: str | None = None) -> Schema | None:
    try:
        return parse_schema(raw_value.value)
    except SchemaError as e:
        issues.append(ConfigIssue(raw_value.location, str(e), who, option))
        return None


def _connector(raw: RawConnector, schemas: dict, issues: list[ConfigIssue]) -> ConnectorDef | None:
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
        option = known.get(name)
        if option is None:
            issues.append(ConfigIssue(raw_value.location, unknown_message(name, known, "option"), label, name))
            ok = False
            continue
        try:
            values[name] = option.parse(raw_value.value)
        except OptionError as e:
            issues.append(ConfigIssue(raw_value.location, str(e), label, name))
            ok = False
    for option in known.values():
        if option.name in values or option.name in raw.options:
            continue
        if option.required:
            issues.append(ConfigIssue(raw.location, f"'{option.name}' is required ({option.doc})", label, option.name))
            ok = False
        else:
            values[option.name] = option.default
    values["type"] = type_name
    stream = values.get("stream") or raw.name
    values["stream"] = stream
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
    return ConnectorDef(raw.role, raw.name, type_name, stream, values, raw.location)


def _routes(raw_routes: list[RawRoute], streams: Mapping[str, StreamDef], issues: list[ConfigIssue]) -> list[RouteDef]:
    routes: list[RouteDef] = []
    for raw in raw_routes:
        ends = {}
        for key in ROUTE_KEYS:
            if key not in raw.fields:
                issues.append(ConfigIssue(raw.location, f"'{key}' is required: routes are written '- {{from: A, to: B}}'", "route"))
                continue
            name = str(raw.fields[key].value)
            if name not in streams:
                issues.append(ConfigIssue(raw.fields[key].location, unknown_message(name, streams, "stream"), "route", key))
                continue
            ends[key] = name
        if len(ends) != 2:
            continue
        source, target = streams[ends["from"]], streams[ends["to"]]
        problems = []
        for attribute in target.schema.attributes:
            source_type = source.schema.type_of(attribute.name)
            if source_type is None:
                problems.append(f"'{attribute.name}' is missing from {source.name}")
            elif source_type is not attribute.type:
                problems.append(f"'{attribute.name}' is {source_type.value} in {source.name} but {attribute.type.value} in {target.name}")
        if source.name == target.name:
            problems.append("a route from a stream to itself would loop forever")
        if problems:
            issues.append(ConfigIssue(raw.location, f"stream {target.name} ({target.schema}) cannot take events of {source.name} ({source.schema}): " + "; ".join(problems), "route"))
            continue
        routes.append(RouteDef(source.name, target.name, raw.location))
    cycle = _find_cycle(routes)
    if cycle:
        issues.append(ConfigIssue(cycle[0].location, "routes form a loop: " + " -> ".join([r.source for r in cycle] + [cycle[0].source]), "route"))
    return routes


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


def listen_address(connector: ConnectorDef) -> tuple[str, int, str] | None:
    """(host, port, path) that a sink or ingest source serves, or None."""
    if connector.type == "sse-server":
        return connector["server.host"], connector["server.port"], connector["server.path"]
    if connector.type == "http":
        url: Url = connector["receiver.url"]
        host = "127.0.0.1" if url.host == "localhost" else url.host
        return host, url.port, url.path
    return None


def _check_listeners(connectors: list[ConnectorDef], issues: list[ConfigIssue]) -> None:
    """One port is one listener: its paths must differ and its host must agree."""
    by_port: dict[int, tuple[str, ConnectorDef]] = {}
    by_path: dict[tuple[int, str], ConnectorDef] = {}
    for connector in connectors:
        address = listen_address(connector)
        if address is None:
            continue
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
