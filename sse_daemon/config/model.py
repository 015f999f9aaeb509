"""The configuration's objects: what a front end read (Raw*) and what validation made of it.

Loading has two steps so that every front end gets the same checks:

1. a front end (``yamlfile.load_yaml``, ``statements.load_statements``) turns
   text into a :class:`RawConfig`: names and option values exactly as written,
   each with the file and line it came from;
2. ``validate.validate`` checks everything at once and returns a :class:`Config`,
   or raises ``ConfigError`` listing every problem.

Both front ends build this module's Raw* objects and validation reads them, so
neither front end imports the other's module or the validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Mapping, TypeVar

from sse_daemon.config.errors import ConfigIssue, Location
from sse_daemon.config.expressions import Condition
from sse_daemon.config.options import (
    AdminOptions,
    BusOptions,
    ConnectorOptions,
    HttpSourceOptions,
    SseServerOptions,
    SseSourceOptions,
    TypedOptions,
)
from sse_daemon.events.schema import Schema

# --------------------------------------------------------------------------- raw objects


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
    #: a Siddhi query: a target stream no one declares takes the query's output as its schema,
    #: as Siddhi defines it (YAML and statements routes need a declared target)
    infers_target: bool = False


@dataclass(slots=True)
class RawSection:
    """A top-level section of options (``admin:``), with where it starts."""

    location: Location
    options: dict[str, RawValue]


@dataclass(slots=True)
class RawConfig:
    """What a front-end read, before any check."""

    files: list[str] = field(default_factory=list)
    streams: list[RawStream] = field(default_factory=list)
    connectors: list[RawConnector] = field(default_factory=list)
    routes: list[RawRoute] = field(default_factory=list)
    issues: list[ConfigIssue] = field(default_factory=list)  # syntax-level problems
    admin: list[RawSection] = field(default_factory=list)  # more than one is an error
    bus: list[RawSection] = field(default_factory=list)  # more than one is an error

    def extend(self, other: "RawConfig") -> None:
        self.files += other.files
        self.streams += other.streams
        self.connectors += other.connectors
        self.routes += other.routes
        self.issues += other.issues
        self.admin += other.admin
        self.bus += other.bus


# --------------------------------------------------------------------------- validated objects


@dataclass(frozen=True, slots=True)
class StreamDef:
    name: str
    schema: Schema
    # Where a definition was written is not part of what it defines: a statements
    # file and the equivalent YAML give equal Configs (locations and files aside).
    location: Location = field(compare=False)


#: the options class of a connector definition: SseServerOptions, HttpSourceOptions, ...
OptionsT = TypeVar("OptionsT", bound=TypedOptions, covariant=True)


@dataclass(frozen=True, slots=True)
class ConnectorDef(Generic[OptionsT]):
    """A checked connector: its common options as fields, its type's options as a typed object.

    ``options`` is the class of its type (``OPTION_CLASSES``): a sink of type
    ``sse-server`` holds :class:`SseServerOptions`, read as ``options.history_size``.
    """

    role: str  # "source" or "sink"
    name: str
    type: str
    stream: str
    options: OptionsT  # every option of the type, defaults filled in
    location: Location = field(compare=False)
    schema: str | None = None  # the ``schema`` option as written, if given here

    @property
    def label(self) -> str:
        return f"{self.role} '{self.name}'"


@dataclass(frozen=True, slots=True)
class RouteDef:
    source: str
    target: str
    location: Location = field(compare=False)
    select: tuple[str, ...] | None = None  # the attributes kept; None is SELECT *
    where: Condition | None = None  # checked against the source's schema; None passes all
    renames: tuple[tuple[str, str], ...] = ()  # (source attribute, target attribute) of `select b as c`

    def outputs(self, target_names: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
        """(target attribute, the source attribute it takes its value from), for each of the target's attributes."""
        renamed = {target: source for source, target in self.renames}
        return tuple((name, renamed.get(name, name)) for name in target_names)

    def __str__(self) -> str:
        text = f"{self.source} -> {self.target}"
        if self.select is not None:
            renamed = dict(self.renames)
            text += " select " + ", ".join(f"{n} as {renamed[n]}" if n in renamed else n for n in self.select)
        return text + (f" where {self.where}" if self.where is not None else "")


@dataclass(frozen=True, slots=True)
class AdminDef:
    """The admin listener: the ``admin:`` section's options and where it was written."""

    options: AdminOptions
    location: Location

    @property
    def host(self) -> str:
        return self.options.host

    @property
    def port(self) -> int:
        return self.options.port

    @property
    def auth_types(self) -> tuple[str, ...]:
        """The schemes the admin listener accepts (``basic``, ``bearer``); empty: no auth."""
        return self.options.auth_type


@dataclass(frozen=True, slots=True)
class BusDef:
    """The bus: the ``bus:`` section's options (every one, defaults filled in)."""

    options: BusOptions
    location: Location | None = None  # None: no ``bus:`` section (the memory bus)

    @property
    def type(self) -> str:
        return self.options.type


MEMORY_BUS = BusDef(BusOptions.with_defaults())


@dataclass(frozen=True, slots=True)
class Config:
    files: tuple[str, ...] = field(compare=False)
    streams: Mapping[str, StreamDef]
    sources: tuple[ConnectorDef[Any], ...]
    sinks: tuple[ConnectorDef[Any], ...]
    routes: tuple[RouteDef, ...]
    admin: AdminDef | None = None  # None: no admin listener
    bus: BusDef = MEMORY_BUS

    @property
    def connectors(self) -> tuple[ConnectorDef[Any], ...]:
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
                             else f"  {c.name}: {c.type} {_endpoint_text(c)} <- stream {c.stream}"
                             + (f" ({c.options.worker_count} worker processes)" if served_by_workers(c) else ""))
        lines.append(f"routes ({len(self.routes)}):")
        for route in self.routes:
            lines.append(f"  {route}")
        if self.admin is None:
            lines.append("admin: off")
        else:
            allowed = self.admin.options.allowed_hosts
            hosts = "any Host" if "*" in allowed else "Host " + ", ".join(dict.fromkeys(
                ["localhost", "127.0.0.1", "::1", self.admin.host.strip("[]"), *allowed])) + " or the address a request came in on"
            lines.append(f"admin: on {self.admin.host}:{self.admin.port} (ready.grace {self.admin.options.ready_grace:g}s), "
                         f"auth {' or '.join(self.admin.auth_types) or 'none'}, {hosts}")
        if self.bus.type == "redis":
            lines.append(f"bus: redis {self.bus.options.url} (key.prefix {self.bus.options.key_prefix!r})")
        return "\n".join(lines)


def _endpoint_text(c: ConnectorDef[ConnectorOptions]) -> str:
    options = c.options
    if isinstance(options, SseServerOptions):
        return f"on {options.server_host}:{options.server_port}{options.server_path}"
    if isinstance(options, (HttpSourceOptions, SseSourceOptions)):
        return f"{'on' if c.type == 'http' else 'from'} {options.receiver_url}"
    return ""


def served_by_workers(connector: ConnectorDef[Any]) -> bool:
    """A sink whose port worker processes serve (workers/), not one of the daemon's listeners."""
    options = connector.options
    return isinstance(options, SseServerOptions) and options.worker_count > 1


def listen_address(connector: ConnectorDef[Any]) -> tuple[str, int, str] | None:
    """(host, port, path) that a sink or ingest source serves, or None."""
    options = connector.options
    if isinstance(options, SseServerOptions):
        return options.server_host, options.server_port, options.server_path
    if isinstance(options, HttpSourceOptions):
        url = options.receiver_url
        host = "127.0.0.1" if url.host == "localhost" else url.host
        return host, url.port, url.path
    return None
