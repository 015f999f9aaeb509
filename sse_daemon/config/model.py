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
options exist, their defaults and their documentation (docs/options.md is
generated from them: ``python -m sse_daemon.config.reference``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import unquote, urlsplit

import yaml

from sse_daemon.edge.auth import DEFAULT_CACHE_TTL, DEFAULT_FAILURES_PER_MINUTE  # stdlib only: bcrypt and friends load lazily
from sse_daemon.config.expressions import Condition, ExpressionError, compile_condition
from sse_daemon.config.grammar import StatementSyntaxError
from sse_daemon.mapping.jsonpath import JsonPath, JsonPathError, parse_path as parse_json_path
from sse_daemon.mapping.mappers import MapperConfigError, Template, make_mapper, parse_template
from sse_daemon.policy.redact import redact_url, redact_urls, split_userinfo
from sse_daemon.events.schema import Schema, SchemaError, did_you_mean, parse_schema

KIB = 1024
MIB = 1024 * 1024


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True, slots=True)
class Location:
    file: str
    line: int | None = None  # 1-based
    column: int | None = None  # 1-based; given for syntax errors in statements

    def __str__(self) -> str:
        if self.line and self.column:
            return f"{self.file}:{self.line}:{self.column}"
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
        return ": ".join(where) + ": " + redact_urls(self.message)  # a quoted line may hold a URL with credentials


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
            if not colon:  # not echoed: it may be a header value (a token) missing its name
                raise OptionError(
                    f"expected 'Name:value','Name2:value2', found an item without a colon (item {len(items) + 1})"
                )
            items.append((name, header_value))
    else:
        raise OptionError(f"expected 'Name:value','Name2:value2', found {type(value).__name__}")
    headers = []
    for name, header_value in items:
        name, header_value = name.strip(), header_value.strip()
        if not _TOKEN.match(name):  # echoed only when it cannot be a value run into its name
            shown = _found(name) if len(name) <= 40 and not any(c.isspace() for c in name) else "a header name"
            raise OptionError(f"{shown} is not a valid HTTP header name")
        if any(c in header_value for c in "\r\n\0"):
            raise OptionError(f"the value of header {name!r} contains a line break or NUL")
        headers.append((name, header_value))
    return tuple(headers)


@dataclass(frozen=True, slots=True)
class Url:
    """A parsed ``receiver.url``: where a source listens (http) or connects (sse).

    ``str()`` and ``repr()`` show it with credentials masked (:func:`redact_url`),
    so no log line, ``--check`` or status page can show them by accident;
    ``text`` is the URL as written, for the request alone.
    """

    text: str = field(repr=False)
    scheme: str
    host: str
    port: int
    path: str  # with leading slash, without query

    def __str__(self) -> str:
        return redact_url(self.text)

    def __repr__(self) -> str:
        return f"Url({redact_url(self.text)!r})"

    @property
    def request_url(self) -> str:
        """The URL to request: without ``user:password@`` (sent as Basic credentials instead)."""
        return split_userinfo(self.text)[0]

    @property
    def credentials(self) -> tuple[str, str] | None:
        """``(user, password)`` from the URL's userinfo (percent-decoded), or None."""
        return split_userinfo(self.text)[1]


def parse_url(value: Any) -> Url:
    if not isinstance(value, str) or not value.strip():
        raise OptionError(f"expected a URL such as 'http://localhost:8020/testsse', found {_found(value)}")
    text = value.strip()
    try:
        parts = urlsplit(text)
    except ValueError:  # an unclosed [IPv6 literal
        raise OptionError(f"expected a URL such as 'http://localhost:8020/testsse', found {_found(redact_url(text))}") from None
    if parts.scheme not in ("http", "https"):
        raise OptionError(f"expected an http:// or https:// URL, found {_found(redact_url(text))}")
    if not parts.hostname:
        raise OptionError(f"expected a URL with a host, found {_found(redact_url(text))}")
    try:
        port = parts.port
    except ValueError:
        raise OptionError(f"expected a port from 0 to 65535 in the URL, found {_found(redact_url(text))}") from None
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
    type_name: str  # as shown in docs/options.md: INT, STRING, BOOL, ...
    doc: str
    parse: Callable[[Any], Any]
    default: Any = None
    required: bool = False
    default_doc: str | None = None  # when the default is computed (e.g. from the name)
    #: a family of options named by a suffix, such as ``map.attributes.<attr>``; their
    #: values are collected in one mapping under the name before ``.<``: ``map.attributes``
    dynamic: bool = False

    @property
    def prefix(self) -> str:
        """``map.attributes.`` for ``map.attributes.<attr>``."""
        return self.name[: self.name.index("<")]


def _worker_count(value: Any) -> int:
    return parse_int(value, 1, MAX_SINK_WORKERS)


#: the most processes one sink may be served by
MAX_SINK_WORKERS = 64


def _port(value: Any) -> int:
    return parse_int(value, 0, 65535)


COMMON_OPTIONS = (
    Option("type", "STRING", "Connector type: `sse-server` or `log` for a sink, `sse` or `http` for a source.", parse_string, required=True),
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

def _map_type(doc: str) -> Option:
    return Option("map.type", "STRING", doc, parse_choice("json", "text"), "json")


SINK_MAP_TYPE = _map_type("How events are written: `json` or `text` (see [mapping.md](mapping.md)).")
SOURCE_MAP_TYPE = _map_type("How message data (SSE source) or request bodies (ingest) become events: `json` or `text` (see [mapping.md](mapping.md)).")
FAIL_ON_MISSING = Option(
    "map.fail.on.missing.attribute", "BOOL",
    "Reject a message that lacks a schema attribute; `false` makes the attribute null instead.",
    parse_bool, True,
)
SINK_HEADERS = Option(
    "headers", "STRING",
    "Extra response headers, `'Name:value','Name2:value2'` (the unquoted form and a YAML mapping work too). "
    "A `Content-Type` here replaces the default.",
    parse_headers, (),
)
SOURCE_HEADERS = Option(
    "headers", "STRING",
    "Extra request headers, `'Name:value','Name2:value2'` (the unquoted form and a YAML mapping work too). "
    "They may replace `Accept`; their values are never logged or shown.",
    parse_headers, (),
)


def _source_path(value: Any) -> JsonPath:
    try:
        return parse_json_path(parse_string(value))
    except JsonPathError as e:
        raise OptionError(str(e)) from None


def _sink_path(value: Any) -> JsonPath:
    path = _source_path(value)
    if not path.names_only:
        raise OptionError(f"expected a path of names such as '$.portfolio.company' (an output cannot be wrapped in an array index), found {_found(path.text)}")
    return path


def _template(value: Any) -> Template:
    try:
        return parse_template(parse_string(value))
    except ValueError as e:
        raise OptionError(str(e)) from None


#: the original JSON mapper's options, with the `map.` prefix (issue 4; docs/mapping.md)
SOURCE_MAPPING_OPTIONS = (
    Option("map.enclosing.element", "STRING", "JSONPath of the event, or array of events, inside each message, such as `$.portfolio`; a message without it is rejected (json only).", _source_path, default_doc="`$` (the whole message)"),
    Option("map.attributes.<attr>", "STRING", "JSONPath of attribute `<attr>` inside each event, such as `$.stock.price`; `<attr>` must be a schema attribute. Attributes without one are read from `$.<attr>` (json only).", _source_path, dynamic=True, default_doc="the default mapping"),
)
SINK_MAPPING_OPTIONS = (
    Option("map.enclosing.element", "STRING", "Wraps each output in this path of names: `$.portfolio.company` gives `{\"portfolio\":{\"company\":<payload>}}` (json only).", _sink_path, default_doc="none"),
    Option("map.payload", "STRING", "A template for each output with `{{attr}}` placeholders, instead of `{\"event\":{...}}` (see [mapping.md](mapping.md#payload-templates)).", _template, default_doc="none"),
    Option("map.validate.json", "BOOL", "Drop (log and count as `events_unmapped`) an output that is not valid JSON instead of sending it (it matters for `map.payload` templates).", parse_bool, False),
)
SSE_FORMAT = Option(
    "sse.format", "STRING", "`sse`: the SSE wire format. `raw`: each payload as one bare chunk with the mapper's Content-Type and no SSE "
    "framing, ids, opening comment, resume or heartbeat, as the original sink wrote it (see [mapping.md](mapping.md#interop-with-the-original-sseformat-raw)).", parse_choice("sse", "raw"), "sse",
)

def _event_name(value: Any) -> str:
    text = parse_string(value).strip()
    if not text or any(c in text for c in "\r\n\0"):
        raise OptionError(f"expected an SSE event type (one line, not empty), found {_found(value)}")
    return text


#: production hardening of an SSE sink (issue 5): honest resume, reconnect storms, limits, access
SINK_HARDENING_OPTIONS = (
    Option("history.max.age", "FLOAT", "Seconds an event stays in history; older events are dropped (a client resuming from one gets a reset event); 0 keeps them until `history.size` or `history.max.bytes` push them out.", lambda v: parse_number(v, 0), 0.0),
    Option("history.max.bytes", "INT", "Bytes of encoded events kept in history; past this the oldest are dropped; 0 means no byte bound.", lambda v: parse_int(v, 0), 16 * MIB),
    Option("resume.reset.event", "STRING", "Event type of the event sent before the replay when a client's `Last-Event-ID` is older than history, unknown or unreadable (see [sink.md](sink.md#resume-honestly)).", _event_name, "reset"),
    Option("retry.min", "INT", "Least `retry:` hint in milliseconds sent to a new subscriber; each gets a random value from `retry.min` to `retry.max` so clients do not reconnect in lockstep.", lambda v: parse_int(v, 0), 1000),
    Option("retry.max", "INT", "Largest `retry:` hint in milliseconds; 0 sends no hint (clients use their default, about 3 s in browsers).", lambda v: parse_int(v, 0), 5000),
    Option("drain.window", "FLOAT", "On shutdown, subscribers are closed in batches spread over this many seconds (each with its own `retry:`), so they do not all reconnect at once; keep it below systemd's `TimeoutStopSec` (30 s in `etc/sse-daemon.service`; see [sink.md](sink.md#shutdown-drain-without-a-reconnect-storm)); 0 closes all at once.", lambda v: parse_number(v, 0), 10.0),
    Option("drain.batch.min", "INT", "Fewest subscribers closed together while draining: a sink with at most this many closes them at once.", lambda v: parse_int(v, 1), 20),
    Option("max.subscribers", "INT", "Most subscribers the sink serves at once; more get 503 with `Retry-After`; 0 is no limit.", lambda v: parse_int(v, 0), 0),
    Option("max.subscribers.per.address", "INT", "Most subscribers from one client address at once (behind a reverse proxy every client has the proxy's address); 0 is no limit.", lambda v: parse_int(v, 0), 0),
    Option("max.connections.per.second", "FLOAT", "New subscribers accepted per second (a token bucket holding one second's worth); more get 503 with `Retry-After`; 0 is no limit.", lambda v: parse_number(v, 0), 0.0),
    Option("limit.retry.after", "INT", "`Retry-After` seconds sent with a 503 for `max.subscribers` and `max.subscribers.per.address` (a rate limit sends the time until a slot frees).", lambda v: parse_int(v, 1), 5),
)

#: production hardening of an HTTP ingest (issue 5)
INGEST_HARDENING_OPTIONS = (
    Option("max.requests.per.second", "FLOAT", "Requests accepted per second from one client address (a token bucket holding one second's worth, at least 1); more get 503 with `Retry-After`; 0 is no limit.", lambda v: parse_number(v, 0), 0.0),
)

def _realm(value: Any) -> str:
    text = parse_string(value)
    if any(c in text for c in '"\\\r\n'):
        raise OptionError(f"expected a realm without quotes, backslashes or line breaks, found {_found(value)}")
    return text


def _origins(value: Any) -> tuple[str, ...]:
    origins = tuple(o.rstrip("/") for o in parse_list(value))
    for origin in origins:
        if origin != "*" and origin != "null" and not re.fullmatch(r"https?://[^/\s?#]+", origin):
            raise OptionError(f"expected origins such as 'https://app.example.com' or '*', found {_found(origin)}")
    return origins


#: TLS on a sink's or ingest's port (issue 5); checked as a whole by _check_access (tls.py)
TLS_SERVER_OPTIONS = (
    Option("server.tls.cert", "STRING", "A PEM certificate file (with its chain) to serve this port over TLS (https); needs `server.tls.key`. An ingest on a TLS port writes its `receiver.url` with `https://`.", parse_string),
    Option("server.tls.key", "STRING", "The PEM private key file of `server.tls.cert` (unencrypted; readable by the daemon's user only).", parse_string),
    Option("server.endpoint", "STRING", "A Twisted endpoint string that binds this port instead (e.g. `ssl:8443:privateKey=key.pem:certKey=cert.pem:extraCertChain=chain.pem`, `systemd:domain=INET:index=0`); connectors sharing the port must give the same.", parse_string),
)

#: what one connection may cost a sink's or an ingest's port (issue 12; connections.py); connectors
#: sharing a port must give the same values (_check_port_limits)
PORT_LIMIT_OPTIONS = (
    Option("server.head.timeout", "FLOAT", "Seconds a client has to send a whole request head, counted from the accept (or from the end of the previous response on a kept-alive connection); sending slowly does not extend it. Past it: 408 and close (a kept-alive connection that sent nothing more just closes). 0 turns it off. Connectors sharing a port must give the same.", lambda v: parse_number(v, 0), 10.0),
    Option("server.body.timeout", "FLOAT", "Seconds a client has to send a whole request body, counted from the end of its head; sending slowly does not extend it. Past it: 408 and close. 0 turns it off. Connectors sharing a port must give the same.", lambda v: parse_number(v, 0), 30.0),
    Option("server.max.connections.per.address", "INT", "Open connections one client address may hold on this port, counted from the accept (a request still arriving counts); more are closed at accept, unanswered. 0 is no limit (behind a reverse proxy every client has the proxy's address). Connectors sharing a port must give the same.", lambda v: parse_int(v, 0), 0),
)

#: access control of a sink or an ingest (issue 5); checked as a whole by _check_access
ACCESS_OPTIONS = (
    Option("auth.type", "STRING", "Who may subscribe (sink) or post (ingest): `none`, `basic` (users of `auth.users.file`) or `bearer` (static tokens and/or JWTs); see [security.md](security.md).", parse_choice("none", "basic", "bearer"), "none"),
    Option("auth.realm", "STRING", "The realm named in the `WWW-Authenticate` challenge of a 401.", _realm, "sse-daemon"),
    Option("auth.users.file", "STRING", "For `basic`: a file of `name:hash` lines, each hash bcrypt (`$2b$...`) or Argon2 (`$argon2id$...`); plain-text passwords are refused.", parse_string),
    Option("auth.tokens.file", "STRING", "For `bearer`: a file of static tokens, one a line (at least 16 characters each).", parse_string),
    Option("auth.tokens.env", "STRING", "For `bearer`: the name of an environment variable holding static tokens, comma-separated.", parse_string),
    Option("auth.jwt.key", "STRING", "For `bearer`: the key JWTs are verified with (a PEM public key; an HMAC secret belongs in `auth.jwt.key.file`).", parse_string),
    Option("auth.jwt.key.file", "STRING", "For `bearer`: a file holding the JWT key (PEM public key, or an HMAC secret of at least 32 bytes).", parse_string),
    Option("auth.jwt.algorithms", "LIST", "JWT signature algorithms accepted, e.g. `RS256, ES256` or `HS256`; the key must suit each (`none` is refused).", parse_list, ("RS256",)),
    Option("auth.jwt.audience", "STRING", "The `aud` a JWT must name; required when a JWT key is given.", parse_string),
    Option("auth.jwt.issuer", "STRING", "The `iss` a JWT must name; none checks no issuer.", parse_string),
    Option("auth.jwt.claim", "STRING", "The JWT claim listing the streams the token may read (sink) or write (ingest): a list or a space-separated string; `*` grants every stream.", parse_string, "streams"),
    Option("auth.jwt.leeway", "FLOAT", "Seconds of clock skew allowed around a JWT's `exp` and `nbf`.", lambda v: parse_number(v, 0), 0.0),
    Option("auth.cookie", "STRING", "Name of a cookie that may carry the bearer token (a browser's EventSource cannot set headers); empty reads no cookie.", parse_string, ""),
    Option("auth.query.token", "BOOL", "Also accept the bearer token in an `access_token` query parameter (it may end up in proxy logs; off by default).", parse_bool, False),
    Option("auth.cache.ttl", "FLOAT", "For `basic`: seconds a verified user name and password are remembered (as an HMAC under a per-process key, never in clear), so a reconnect is not hashed again; 0 hashes every request.", lambda v: parse_number(v, 0), DEFAULT_CACHE_TTL),
    Option("auth.failures.per.minute", "FLOAT", "For `basic`: failed password checks allowed per client address per minute (a bucket holding a minute's worth); past it that address gets 429 with `Retry-After`, without a check; 0 is no limit.", lambda v: parse_number(v, 0), DEFAULT_FAILURES_PER_MINUTE),
    Option("cors.origins", "LIST", "Origins (`https://app.example.com`) whose pages may subscribe (sink) or post (ingest); a request from another origin gets 403; `*` allows any; empty turns CORS handling off.", _origins, ()),
    Option("cors.credentials", "BOOL", "Let pages send cookies and `Authorization` cross-origin (`Access-Control-Allow-Credentials: true`); not with `cors.origins: '*'`.", parse_bool, False),
    Option("cors.max.age", "INT", "Seconds a browser may cache a preflight (`OPTIONS`) answer.", lambda v: parse_int(v, 0), 600),
)


SSE_SERVER_OPTIONS = (
    Option("server.port", "INT", "Port that subscribers connect to. Sinks and ingest sources on one port share it; 0 picks a free port (all connectors given 0 on one host share that one port).", _port, required=True),
    Option("server.path", "STRING", "Path that subscribers connect to; the leading slash is optional. The same port and path twice is an error.", parse_path, default_doc="`/<sink name>`"),
    Option("server.host", "STRING", "Address to listen on (`0.0.0.0` all IPv4, `::` all IPv6, `127.0.0.1` local only). Connectors sharing a port must agree.", parse_string, "0.0.0.0"),
    Option("worker.count", "INT", "Processes that serve this sink's port (1 to 64). Above 1 the daemon starts that many worker processes that accept on the port and gets every event to each, so a subscriber resumes on any of them; the port is then the sink's alone, plain TCP (see [scaling.md](scaling.md#workercount)).", _worker_count, 1),
    SINK_HEADERS,
    SINK_MAP_TYPE,
    *SINK_MAPPING_OPTIONS,
    SSE_FORMAT,
    Option("heartbeat.interval", "FLOAT", "Seconds between heartbeat comments that keep proxies and idle connections open; 0 turns them off.", lambda v: parse_number(v, 0), 15.0),
    Option("history.size", "INT", "Events kept for subscribers that resume with `Last-Event-ID`; 0 keeps none.", lambda v: parse_int(v, 0), 1000),
    Option("subscriber.queue.size", "INT", "Events queued for a subscriber that cannot keep up; past this it is disconnected (it may resume from history).", lambda v: parse_int(v, 1), 1000),
    Option("subscriber.queue.bytes", "INT", "Bytes queued for a subscriber that cannot keep up; past this it is disconnected.", lambda v: parse_int(v, 1), 4 * MIB),
    *SINK_HARDENING_OPTIONS,
    *ACCESS_OPTIONS,
    *TLS_SERVER_OPTIONS,
    *PORT_LIMIT_OPTIONS,
)

HTTP_SOURCE_OPTIONS = (
    Option("receiver.url", "STRING", "Where to listen for POSTed events: its host and port are bound (the port may be shared with sinks; `localhost` means 127.0.0.1), its path is the endpoint.", parse_url, required=True),
    SOURCE_MAP_TYPE,
    FAIL_ON_MISSING,
    *SOURCE_MAPPING_OPTIONS,
    Option("max.body.size", "INT", "Largest request body accepted, in bytes; larger bodies get 413.", lambda v: parse_int(v, 1), MIB),
    Option("max.events.per.request", "INT", "Most events one request may carry (an array body); more get 413 before any is mapped. A body is checked in one go and published in slices of 500 events, other streams served between them (see 'HTTP ingest').", lambda v: parse_int(v, 1), 10_000),
    *INGEST_HARDENING_OPTIONS,
    *ACCESS_OPTIONS,
    *TLS_SERVER_OPTIONS,
    *PORT_LIMIT_OPTIONS,
)

SSE_SOURCE_OPTIONS = (
    Option("receiver.url", "STRING", "The SSE endpoint to subscribe to: `http://` or `https://`, with path and query. Redirects (301, 302, 303, 307, 308) are followed, at most 10 per attempt.", parse_url, required=True),
    Option(
        "worker.count", "INT", "Connections kept open at once to `receiver.url` (1 to 16); events arriving on several are "
        "delivered once, by id (see [source.md](source.md#workercount-on-a-source)).", lambda v: parse_int(v, 1, 16), 1,
    ),
    SOURCE_HEADERS,
    SOURCE_MAP_TYPE,
    FAIL_ON_MISSING,
    *SOURCE_MAPPING_OPTIONS,
    Option(
        "event.types", "LIST", "Only messages of these SSE event types are mapped; the others are counted and dropped. A message without "
        "an `event:` line has type `message`. A YAML list or `a, b`; empty keeps every type.", parse_list, (),
    ),
    Option(
        "reconnect.initial.delay", "FLOAT", "Seconds to wait before reconnecting after a stream ends, unless the server "
        "sent `retry:`; repeated failures back off from here. At least 0.01.", lambda v: parse_number(v, 0.01), 1.0,
    ),
    Option(
        "reconnect.max.delay", "FLOAT", "Longest wait between attempts while failures repeat (a larger server `retry:` wins).",
        lambda v: parse_number(v, 0.01), 30.0,
    ),
    Option(
        "reconnect.on.client.error", "BOOL", "Retry, with backoff, after a 4xx answer other than 429 or a 200 that is not "
        "`text/event-stream`; `false` stops the source instead (until a restart, or a reload that changes it), as a "
        "browser's EventSource does.", parse_bool, True,
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
        "max.event.size", "INT", "Largest event data accepted, in characters (bytes, for ASCII); a larger event is skipped and counted, and the stream goes on.",
        lambda v: parse_int(v, 1), 4 * MIB,
    ),
    Option(
        "max.events.per.message", "INT", "Most events one message may carry (a JSON array); a message with more is skipped "
        "before any is mapped and counted (`too-many-events`), so one upstream message cannot hold the daemon for long.",
        lambda v: parse_int(v, 1), 10_000,
    ),
    Option(
        "sse.format", "STRING", "`sse`: read `text/event-stream`. `raw`: read a body of back-to-back JSON documents "
        "with any Content-Type, as the original sink writes it (see [mapping.md](mapping.md#interop-with-the-original-sseformat-raw)).", parse_choice("sse", "raw"), "sse",
    ),
    # issue 5: certificates of https sources are verified; this replaces the system's trust store
    Option("tls.ca.file", "STRING", "A PEM bundle of CA certificates that an https `receiver.url`'s certificate must chain to, instead of the system's trust store (certificates and host names are always verified).", parse_string),
)

LOG_SINK_OPTIONS = (
    Option("prefix", "STRING", "Text written before each logged event.", parse_string, ""),
    SINK_MAP_TYPE,
    *SINK_MAPPING_OPTIONS,
)

def _admin_auth_types(value: Any) -> tuple[str, ...]:
    """``none``, ``basic``, ``bearer`` or both (``basic, bearer``): the schemes the admin listener accepts."""
    kinds = tuple(dict.fromkeys(k.lower() for k in parse_list(value)))
    if not kinds or kinds == ("none",):
        return ()
    if any(k not in ("basic", "bearer") for k in kinds):
        raise OptionError(f"expected none, basic, bearer or 'basic, bearer', found {_found(value)}")
    return kinds


def _host_names(value: Any) -> tuple[str, ...]:
    names = tuple(n.strip().lower().rstrip(".") for n in parse_list(value))
    for name in names:
        if not name or any(c in name for c in "/@?# \t"):
            raise OptionError(f"expected host names such as 'status.example.com' or '*' (no scheme, path or port), found {_found(name)}")
    return tuple(n.strip("[]") for n in names)


#: the top-level ``admin:`` section: metrics, health, status page (off unless given)
ADMIN_OPTIONS = (
    Option("port", "INT", "Port of the admin listener (`/metrics`, `/healthz`, `/readyz`, the status page); 0 picks a free port. It may not be a connector's port.", _port, required=True),
    Option("host", "STRING", "Address the admin listener binds; keep it local or firewalled, or set `auth.type` (see 'Admin access').", parse_string, "127.0.0.1"),
    Option("ready.grace", "FLOAT", "Seconds an SSE source may be down (reconnecting, or not yet connected since start) before `/readyz` answers 503.", lambda v: parse_number(v, 0), 10.0),
    Option("live.history", "INT", "Events of each stream the status page's live view keeps, for a browser that reconnects.", lambda v: parse_int(v, 1), 100),
    Option("allowed.hosts", "LIST", "Names the `Host` header may carry besides `localhost`, `*.localhost`, `127.0.0.1`, `::1`, `host` and the address the request came in on; any other gets 421 (this defeats DNS rebinding). `*` turns the check off (only behind a proxy that checks `Host` itself).", _host_names, ()),
    Option("auth.type", "STRING", "Who may use the admin listener (all but `/healthz` and `/readyz`): `none`, `basic` (users of `auth.users.file`), `bearer` (static tokens) or `basic, bearer` (either); see 'Admin access'.", _admin_auth_types, (), default_doc="`none`"),
    Option("auth.realm", "STRING", "The realm named in the admin listener's `WWW-Authenticate` challenge.", _realm, "sse-daemon admin"),
    Option("auth.users.file", "STRING", "For `basic`: a file of `name:hash` lines (bcrypt or Argon2 hashes), as for sinks.", parse_string),
    Option("auth.tokens.file", "STRING", "For `bearer`: a file of static tokens, one a line (at least 16 characters each).", parse_string),
    Option("auth.tokens.env", "STRING", "For `bearer`: the name of an environment variable holding static tokens, comma-separated.", parse_string),
)



@dataclass(frozen=True, slots=True)
class RedisUrl:
    """``redis://[[user]:password@]host[:port][/db]``, parsed once at load."""

    host: str
    port: int
    db: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:  # never shows the password (logs, --check)
        return f"redis://{self.host}:{self.port}/{self.db}"


def parse_redis_url(value: Any) -> RedisUrl:
    text = parse_string(value).strip()
    shown = redact_url(text)  # errors never echo the password
    try:
        parts = urlsplit(text)
    except ValueError:
        raise OptionError(f"expected a URL such as redis://127.0.0.1:6379/0, found {_found(shown)}") from None
    if parts.scheme != "redis":
        raise OptionError(f"expected a URL such as redis://127.0.0.1:6379/0, found {_found(shown)}")
    try:
        port = parts.port or 6379
    except ValueError:
        raise OptionError(f"the port of {shown!r} is not a number from 1 to 65535") from None
    db_text = parts.path.strip("/") or "0"
    if not db_text.isdigit():
        raise OptionError(f"the database of {shown!r} must be a number, such as /0")
    if not parts.hostname:
        raise OptionError(f"{shown!r} names no host")
    return RedisUrl(parts.hostname, port, int(db_text),
                    unquote(parts.username) if parts.username else None,
                    unquote(parts.password) if parts.password is not None else None)


#: the top-level ``bus:`` section: which bus links the connectors (memory unless given)
BUS_OPTIONS = (
    Option("type", "STRING", "`memory` (in this process only; the default) or `redis` (Redis Streams, shared by every instance using the same Redis and `key.prefix`).", parse_choice("memory", "redis"), "memory"),
    Option("url", "STRING", "With `type: redis`: the Redis server, `redis://[[user]:password@]host[:port][/db]`.", parse_redis_url, parse_redis_url("redis://127.0.0.1:6379/0"), default_doc="`redis://127.0.0.1:6379/0`"),
    Option("key.prefix", "STRING", "With `type: redis`: prefix of the Redis key of each stream (`<prefix><stream>`); instances that share it share the streams.", parse_string, "sse-daemon:"),
    Option("history.size", "INT", "With `type: redis`: entries each Redis stream keeps, approximately (`XADD MAXLEN ~`); what a subscriber can resume from on any instance.", lambda v: parse_int(v, 1), 1000),
    Option("history.max.age", "FLOAT", "With `type: redis`: seconds an entry is kept at most (trimmed with `XTRIM MINID ~` on publish); 0 keeps entries until `history.size` trims them.", lambda v: parse_number(v, 0), 0.0),
    Option("reconnect.max.delay", "FLOAT", "With `type: redis`: longest wait, in seconds, between attempts to reconnect to Redis (the wait doubles from 0.1 s up to this).", lambda v: parse_number(v, 0.1), 5.0),
    Option("source.lease.ttl", "FLOAT", "With `type: redis`: seconds an instance's lease on an SSE source lasts; one instance reads each upstream, and another takes over within this time when it vanishes (at once when it stops cleanly).", lambda v: parse_number(v, 0.3), 10.0),
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


@dataclass(frozen=True, slots=True)
class StreamDef:
    name: str
    schema: Schema
    # Where a definition was written is not part of what it defines: a statements
    # file and the equivalent YAML give equal Configs (locations and files aside).
    location: Location = field(compare=False)


@dataclass(frozen=True, slots=True)
class ConnectorDef:
    role: str
    name: str
    type: str
    stream: str
    options: Mapping[str, Any]  # every option of the type, defaults filled in
    location: Location = field(compare=False)

    @property
    def label(self) -> str:
        return f"{self.role} '{self.name}'"

    def __getitem__(self, option: str) -> Any:
        return self.options[option]


@dataclass(frozen=True, slots=True)
class RouteDef:
    source: str
    target: str
    location: Location = field(compare=False)
    select: tuple[str, ...] | None = None  # the attributes kept; None is SELECT *
    where: Condition | None = None  # checked against the source's schema; None passes all

    def __str__(self) -> str:
        text = f"{self.source} -> {self.target}"
        if self.select is not None:
            text += f" select {', '.join(self.select)}"
        return text + (f" where {self.where}" if self.where is not None else "")


@dataclass(frozen=True, slots=True)
class AdminDef:
    """The admin listener's options (every one of ADMIN_OPTIONS, defaults filled in)."""

    options: Mapping[str, Any]
    location: Location

    @property
    def host(self) -> str:
        return self.options["host"]

    @property
    def port(self) -> int:
        return self.options["port"]

    @property
    def auth_types(self) -> tuple[str, ...]:
        """The schemes the admin listener accepts (``basic``, ``bearer``); empty: no auth."""
        return self.options["auth.type"]

    def access_options(self, kind: str) -> dict[str, Any]:
        """A sink's access options (defaults) with this section's auth for one scheme, for
        ``auth.build_authenticator`` and ``guard.Guard``: the same machinery as sinks."""
        options = {option.name: option.default for option in ACCESS_OPTIONS}
        options.update({name: self.options[name] for name in ADMIN_AUTH_OPTIONS if self.options.get(name) is not None})
        options["auth.type"] = kind
        return options

    def __getitem__(self, option: str) -> Any:
        return self.options[option]


#: the admin section's options that ``access_options`` hands to the auth machinery
ADMIN_AUTH_OPTIONS = ("auth.realm", "auth.users.file", "auth.tokens.file", "auth.tokens.env")


@dataclass(frozen=True, slots=True)
class BusDef:
    """The bus's options (every one of BUS_OPTIONS, defaults filled in)."""

    options: Mapping[str, Any]
    location: Location | None = None  # None: no ``bus:`` section (the memory bus)

    @property
    def type(self) -> str:
        return self.options["type"]

    def __getitem__(self, option: str) -> Any:
        return self.options[option]


MEMORY_BUS = BusDef({o.name: o.default for o in BUS_OPTIONS})


@dataclass(frozen=True, slots=True)
class Config:
    files: tuple[str, ...] = field(compare=False)
    streams: Mapping[str, StreamDef]
    sources: tuple[ConnectorDef, ...]
    sinks: tuple[ConnectorDef, ...]
    routes: tuple[RouteDef, ...]
    admin: AdminDef | None = None  # None: no admin listener
    bus: BusDef = MEMORY_BUS

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
                             else f"  {c.name}: {c.type} {_endpoint_text(c)} <- stream {c.stream}"
                             + (f" ({c['worker.count']} worker processes)" if served_by_workers(c) else ""))
        lines.append(f"routes ({len(self.routes)}):")
        for route in self.routes:
            lines.append(f"  {route}")
        if self.admin is None:
            lines.append("admin: off")
        else:
            allowed = self.admin["allowed.hosts"]
            hosts = "any Host" if "*" in allowed else "Host " + ", ".join(dict.fromkeys(
                ["localhost", "127.0.0.1", "::1", self.admin.host.strip("[]"), *allowed])) + " or the address a request came in on"
            lines.append(f"admin: on {self.admin.host}:{self.admin.port} (ready.grace {self.admin['ready.grace']:g}s), "
                         f"auth {' or '.join(self.admin.auth_types) or 'none'}, {hosts}")
        if self.bus.type == "redis":
            lines.append(f"bus: redis {self.bus['url']} (key.prefix {self.bus['key.prefix']!r})")
        return "\n".join(lines)


def _endpoint_text(c: ConnectorDef) -> str:
    if c.type == "sse-server":
        return f"on {c['server.host']}:{c['server.port']}{c['server.path']}"
    if c.type in ("http", "sse"):
        return f"{'on' if c.type == 'http' else 'from'} {c['receiver.url']}"
    return ""


# --------------------------------------------------------------------------- YAML front-end

TOP_LEVEL_KEYS = ("streams", "sources", "sinks", "routes", "admin", "bus", "statements")
ROUTE_KEYS = ("from", "to", "select", "where")


def load_files(paths: Iterable[str]) -> Config:
    """Read and validate every file; raise ConfigError with all problems.

    The front-end is chosen by extension: ``.sql`` files hold statements
    (``sse_daemon.config.statements``), anything else is YAML.
    """
    from sse_daemon.config.statements import load_statements  # statements.py builds this module's Raw* objects

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
        raw.extend(load_statements(text, path) if path.lower().endswith(".sql") else load_yaml(text, path))
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
    for section in ("admin", "bus"):
        if section in top:
            fields = reader.mapping(top[section], section)
            if fields is not None:
                getattr(raw, section).append(RawSection(
                    reader.key_loc(top[section]),
                    {k: RawValue(reader.value(v), reader.loc(v)) for k, v in fields.items()},
                ))
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
    if "statements" in top:
        node = top["statements"]
        if not isinstance(node, yaml.ScalarNode) or not isinstance(reader.value(node), str):
            raw.issues.append(ConfigIssue(reader.loc(node), f"expected statements as text ('statements: |' with the statements indented below), found {_node_kind(node)}", "statements"))
        else:
            from sse_daemon.config.statements import load_statements  # statements.py builds this module's Raw* objects

            inner = load_statements(reader.value(node), filename, *_text_offsets(node, text))
            inner.files = []  # the same file
            raw.extend(inner)
    return raw


def _text_offsets(node: yaml.ScalarNode, text: str) -> tuple[int, int]:
    """(lines, columns) before the first character of a scalar's value in the file.

    Exact for a literal block scalar (``|``), whose lines keep one indentation;
    otherwise (a folded, quoted or plain scalar) only the first line is placed exactly.
    """
    if node.style == "|":
        lines = text.split("\n")[node.start_mark.line + 1:]
        first = next((line for line in lines if line.strip()), "")
        return node.start_mark.line + 1, len(first) - len(first.lstrip(" "))
    return node.start_mark.line, node.start_mark.column + (1 if node.style in ("'", '"') else 0)


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
    return f"unknown {what} '{name}'{did_you_mean(name, known)}"


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
    first_raw = {}
    for raw_connector in raw.connectors:
        first_raw.setdefault(raw_connector.name, raw_connector)
    for connector in connectors:
        if connector.stream not in streams:
            issues.append(ConfigIssue(connector.location, f"stream '{connector.stream}' has no schema: add 'schema:' here or declare it under 'streams:'", connector.label))
        else:
            _check_mapping(connector, first_raw[connector.name], streams[connector.stream].schema, issues)

    routes = _routes(raw.routes, streams, issues)
    _check_listeners(connectors, issues)
    _check_worker_sinks(connectors, first_raw, issues)
    _check_access(connectors, first_raw, issues)
    _check_tls(connectors, first_raw, issues)
    _check_port_limits(connectors, first_raw, issues)
    admin = _admin(raw.admin, connectors, issues)
    bus = _bus(raw.bus, connectors, raw.routes, issues)

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


def _dynamic_option(name: str, options: Iterable[Option]) -> Option | None:
    """The option family ``name`` belongs to (``map.attributes.x`` -> ``map.attributes.<attr>``)."""
    return next((o for o in options if o.dynamic and name.startswith(o.prefix) and len(name) > len(o.prefix)), None)


def _check_mapping(connector: ConnectorDef, raw: RawConnector, schema: Schema, issues: list[ConfigIssue]) -> None:
    """The map.* options against the stream's schema (placeholders, attribute paths, text mapping)."""
    try:
        make_mapper(connector.options, schema, connector.role)
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
                issues.append(ConfigIssue(raw.fields[key].location, unknown_message(name, streams, "stream"), "route", key))
                continue
            ends[key] = name
        if len(ends) != 2:
            continue
        source, target = streams[ends["from"]], streams[ends["to"]]
        select = _route_select(raw, source, issues)
        where = _route_where(raw, source, issues)
        if select is False or where is False:
            continue
        problems = []
        for attribute in target.schema.attributes:
            source_type = source.schema.type_of(attribute.name)
            if source_type is None:
                problems.append(f"'{attribute.name}' is missing from {source.name}")
            elif select is not None and attribute.name not in select:
                problems.append(f"'{attribute.name}' is not selected")
            elif source_type is not attribute.type:
                problems.append(f"'{attribute.name}' is {source_type.value} in {source.name} but {attribute.type.value} in {target.name}")
        for name in select or ():
            if target.schema.type_of(name) is None:
                problems.append(f"'{name}' is selected but {target.name} has no attribute '{name}'")
        if source.name == target.name:
            problems.append("a route from a stream to itself would loop forever")
        if problems:
            issues.append(ConfigIssue(raw.location, f"stream {target.name} ({target.schema}) cannot take events of {source.name} ({source.schema}): " + "; ".join(problems), "route"))
            continue
        routes.append(RouteDef(source.name, target.name, raw.location, select, where))
    cycle = _find_cycle(routes)
    if cycle:
        issues.append(ConfigIssue(cycle[0].location, "routes form a loop: " + " -> ".join([r.source for r in cycle] + [cycle[0].source]), "route"))
    return routes


def _route_select(raw: RawRoute, source: StreamDef, issues: list[ConfigIssue]) -> tuple[str, ...] | None | bool:
    """The selected attribute names, None for all (no ``select`` or ``*``), False after an issue."""
    field_value = raw.fields.get("select")
    if field_value is None:
        return None
    try:
        names = parse_list(field_value.value)
    except OptionError:
        names = ()
    if not names:
        issues.append(ConfigIssue(field_value.location, f"expected attribute names such as [a, b] or '*', found {_found(field_value.value)}", "route", "select"))
        return False
    if names == ("*",):
        return None
    ok = True
    for index, name in enumerate(names):
        if source.schema.type_of(name) is None:
            issues.append(ConfigIssue(field_value.location, f"unknown attribute '{name}' of stream {source.name}{did_you_mean(name, source.schema.names)}", "route", "select"))
            ok = False
        elif name in names[:index]:
            issues.append(ConfigIssue(field_value.location, f"'{name}' is selected twice", "route", "select"))
            ok = False
    return names if ok else False


def _route_where(raw: RawRoute, source: StreamDef, issues: list[ConfigIssue]) -> Condition | None | bool:
    """The checked, compiled condition; None when there is none, False after an issue."""
    field_value = raw.fields.get("where")
    if field_value is None:
        return None
    if not isinstance(field_value.value, str) or not field_value.value.strip():
        issues.append(ConfigIssue(field_value.location, f"expected a condition such as \"n > 3 and name is not null\", found {_found(field_value.value)}", "route", "where"))
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


def _admin(sections: list[RawSection], connectors: list[ConnectorDef], issues: list[ConfigIssue]) -> AdminDef | None:
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
    from sse_daemon.edge.auth import AuthConfigError, build_authenticator  # reads files; pulls in bcrypt/PyJWT lazily

    for kind in values["auth.type"]:
        options = AdminDef(values, first.location).access_options(kind)
        try:
            build_authenticator(options, "admin")
        except AuthConfigError as e:
            raw = first.options.get(e.option)
            message = "auth.type bearer needs auth.tokens.file or auth.tokens.env (static tokens; JWTs are for sinks)" \
                if e.option == "auth.type" and kind == "bearer" else str(e)
            issues.append(ConfigIssue(raw.location if raw is not None else first.location, message, "admin", e.option))
            ok = False
    for name in ADMIN_AUTH_OPTIONS[1:]:
        if name in first.options and not values["auth.type"]:
            issues.append(ConfigIssue(first.options[name].location, f"'{name}' has no effect without 'auth.type'", "admin", name))
            ok = False
    if not ok:
        return None
    port = values["port"]
    for connector in connectors:
        address = listen_address(connector)
        if port and address is not None and address[1] == port:
            where = first.options["port"].location
            issues.append(ConfigIssue(where, f"port {port} is already used by {connector.label} (at {connector.location}); the admin listener needs a port of its own", "admin", "port"))
            return None
    return AdminDef(values, first.location)


def _bus(sections: list[RawSection], connectors: list[ConnectorDef], routes: list[RawRoute], issues: list[ConfigIssue]) -> BusDef:
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
    return BusDef(values, first.location)


def served_by_workers(connector: ConnectorDef) -> bool:
    """A sink whose port worker processes serve (workers.py), not one of the daemon's listeners."""
    return connector.type == "sse-server" and connector["worker.count"] > 1


def listen_address(connector: ConnectorDef) -> tuple[str, int, str] | None:
    """(host, port, path) that a sink or ingest source serves, or None."""
    if connector.type == "sse-server":
        return connector["server.host"], connector["server.port"], connector["server.path"]
    if connector.type == "http":
        url: Url = connector["receiver.url"]
        host = "127.0.0.1" if url.host == "localhost" else url.host
        return host, url.port, url.path
    return None


def _check_tls(connectors: list[ConnectorDef], raws: Mapping[str, RawConnector], issues: list[ConfigIssue]) -> None:
    """TLS files readable and matching; https ingests have a certificate; a shared port is bound one way."""
    from sse_daemon.edge.tls import check_ca_file, check_server_tls, is_tls, listen_description

    def issue(connector: ConnectorDef, option: str, message: str) -> None:
        raw = raws[connector.name].options.get(option)
        issues.append(ConfigIssue(raw.location if raw is not None else connector.location, message, connector.label, option))

    bound: dict[tuple[str, int], tuple[str, ConnectorDef]] = {}
    for connector in connectors:
        if connector.type == "sse":
            problem = check_ca_file(connector.options.get("tls.ca.file"))
            if problem:
                issue(connector, "tls.ca.file", problem)
            continue
        address = listen_address(connector)
        if address is None or "server.endpoint" not in connector.options:
            continue
        problems = check_server_tls(connector.options)
        for option, message in problems:
            issue(connector, option, message)
        if connector.type == "http" and not problems:
            https = connector["receiver.url"].scheme == "https"
            if https != is_tls(connector.options):
                issue(connector, "receiver.url", "an https receiver.url needs server.tls.cert and server.tls.key (or an ssl: server.endpoint)"
                      if https else "this port is served over TLS: write receiver.url with https://")
        if problems:
            continue
        host, port, _ = address
        description = listen_description(host, port, connector.options)
        first = bound.setdefault((host, port), (description, connector))
        if first[0] != description:
            issue(connector, "server.endpoint" if connector.options.get("server.endpoint") else "server.tls.cert",
                  f"port {port} is already bound differently by {first[1].label}: connectors sharing a port must agree on TLS and server.endpoint")


def _check_port_limits(connectors: list[ConnectorDef], raws: Mapping[str, RawConnector], issues: list[ConfigIssue]) -> None:
    """A port has one set of deadlines and one per-address cap: connectors sharing it must agree, as on server.endpoint."""
    first: dict[tuple[str, int], ConnectorDef] = {}
    for connector in connectors:
        address = listen_address(connector)
        if address is None or served_by_workers(connector):
            continue  # a worker-served sink has its port to itself
        other = first.setdefault(address[:2], connector)
        for option in PORT_LIMIT_OPTIONS:
            if connector[option.name] != other[option.name]:
                raw = raws[connector.name].options.get(option.name)
                issues.append(ConfigIssue(raw.location if raw is not None else connector.location,
                                          f"port {address[1]} has {option.name} {other[option.name]:g} from {other.label} "
                                          f"(at {other.location}), found {connector[option.name]:g}: connectors sharing a port must give the same",
                                          connector.label, option.name))


def _check_access(connectors: list[ConnectorDef], raws: Mapping[str, RawConnector], issues: list[ConfigIssue]) -> None:
    """The auth.* options of each sink and ingest as a whole: files readable, hashes not plain text, keys that suit."""
    from sse_daemon.edge.auth import AuthConfigError, build_authenticator  # reads files; pulls in bcrypt/argon2/PyJWT lazily

    for connector in connectors:
        if "auth.type" not in connector.options:
            continue
        if "*" in connector.options["cors.origins"] and connector.options["cors.credentials"]:
            raw = raws[connector.name].options.get("cors.credentials")
            issues.append(ConfigIssue(raw.location if raw else connector.location, "credentials cannot be allowed for any origin ('*'): list the origins", connector.label, "cors.credentials"))
        try:
            build_authenticator(connector.options, connector.stream)
        except AuthConfigError as e:
            raw = raws[connector.name].options.get(e.option)
            where = raw.location if raw is not None else connector.location
            issues.append(ConfigIssue(where, str(e), connector.label, e.option))


def _check_worker_sinks(connectors: list[ConnectorDef], raws: Mapping[str, RawConnector], issues: list[ConfigIssue]) -> None:
    """A sink served by worker processes binds its port alone, over plain TCP (workers.py)."""
    for connector in connectors:
        if not served_by_workers(connector):
            continue
        raw = raws[connector.name].options.get("worker.count")
        where = raw.location if raw is not None else connector.location
        if connector.options.get("server.endpoint") or connector.options.get("server.tls.cert"):
            issues.append(ConfigIssue(where, "worker.count above 1 serves plain TCP on server.host and server.port; "
                                      "terminate TLS in a proxy in front, or use worker.count 1", connector.label, "worker.count"))
        port = connector["server.port"]
        sharing = [other for other in connectors if other is not connector and port
                   and (address := listen_address(other)) is not None and address[1] == port]
        if sharing:
            issues.append(ConfigIssue(where, f"worker.count above 1 needs port {port} to itself, and {sharing[0].label} "
                                      f"(at {sharing[0].location}) uses it too: give one of them another port", connector.label, "worker.count"))


def _check_listeners(connectors: list[ConnectorDef], issues: list[ConfigIssue]) -> None:
    """One port is one listener: its paths must differ and its host must agree."""
    by_port: dict[int, tuple[str, ConnectorDef]] = {}
    by_path: dict[tuple[int, str], ConnectorDef] = {}
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
