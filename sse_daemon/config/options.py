"""The option tables and the typed options built from them.

The tables (:data:`CONNECTOR_TYPES`, :data:`ADMIN_OPTIONS`, :data:`BUS_OPTIONS`)
are the single source of truth for which options exist, their types, defaults,
parsers and documentation (docs/options.md is generated from them:
``python -m sse_daemon.config.reference``). Option names are the spec's own
(``server.port``, ``receiver.url``, ...).

Validation parses each option once and builds the connector type's frozen
options class (:class:`SseServerOptions`, ...), whose fields are the option
names in snake case (``history.size`` -> ``history_size``); the rest of the
daemon reads ``connector.options.history_size``, never a string.
tests/test_options.py checks that every table entry has a field and every
field an entry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Callable, ClassVar, Mapping, TypeVar

from sse_daemon.config.values import (
    MIB,
    OptionError,
    RedisUrl,
    Url,
    found,
    parse_bool,
    parse_choice,
    parse_headers,
    parse_int,
    parse_list,
    parse_number,
    parse_path,
    parse_redis_url,
    parse_string,
    parse_url,
)
from sse_daemon.mapping.jsonpath import JsonPath, JsonPathError, parse_path as parse_json_path
from sse_daemon.mapping.mappers import MappingOptions, Template, parse_template

#: seconds a verified credential is remembered (``auth.cache.ttl``)
DEFAULT_CACHE_TTL = 300.0
#: failed password checks a client address may make a minute (``auth.failures.per.minute``)
DEFAULT_FAILURES_PER_MINUTE = 10.0


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
    #: ``file``: the value names a file whose content is part of the definition (a reload
    #: that finds it changed restarts the connector); ``env``: the same for an environment variable
    reads: str | None = None

    @property
    def prefix(self) -> str:
        """``map.attributes.`` for ``map.attributes.<attr>``."""
        return self.name[: self.name.index("<")]

    @property
    def key(self) -> str:
        """The name its value is held under: ``map.attributes`` for ``map.attributes.<attr>``."""
        return self.prefix[:-1] if self.dynamic else self.name

    @property
    def attribute(self) -> str:
        """Its field in the typed options: ``history.size`` -> ``history_size``."""
        return self.key.replace(".", "_")



def _worker_count(value: Any) -> int:
    return parse_int(value, 1, MAX_SINK_WORKERS)


#: the most processes one sink may be served by
MAX_SINK_WORKERS = 64


def _history_path(value: Any) -> str:
    text = parse_string(value).strip()
    if not text or "\0" in text or text.endswith("/"):
        raise OptionError(f"expected the path of a file, found {found(value)}")
    return text


def _flush_interval(value: Any) -> float:
    seconds = parse_number(value, 0)
    if seconds > 1:
        raise OptionError(f"expected at most 1 second (a window longer than that is a delay, not a batch), found {seconds:g}")
    return seconds


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
        raise OptionError(f"expected a path of names such as '$.portfolio.company' (an output cannot be wrapped in an array index), found {found(path.text)}")
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
        raise OptionError(f"expected an SSE event type (one line, not empty), found {found(value)}")
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
        raise OptionError(f"expected a realm without quotes, backslashes or line breaks, found {found(value)}")
    return text


def _origins(value: Any) -> tuple[str, ...]:
    """Origins as a browser serialises them (compared as text with its ``Origin``): lower case, without the
    scheme's default port. ``https://App.example.com:443`` written here matched no request before."""
    origins = []
    for origin in (o.rstrip("/") for o in parse_list(value)):
        if origin != "*" and origin != "null" and not re.fullmatch(r"https?://[^/\s?#]+", origin, re.IGNORECASE):
            raise OptionError(f"expected origins such as 'https://app.example.com' or '*', found {found(origin)}")
        origin = origin.lower()
        for scheme, port in (("https://", ":443"), ("http://", ":80")):
            if origin.startswith(scheme) and origin.endswith(port):
                origin = origin[: -len(port)]
        origins.append(origin)
    return tuple(origins)


#: TLS on a sink's or ingest's port (issue 5); checked as a whole by _check_access (tls.py)
TLS_SERVER_OPTIONS = (
    Option("server.tls.cert", "STRING", "A PEM certificate file (with its chain) to serve this port over TLS (https); needs `server.tls.key`. An ingest on a TLS port writes its `receiver.url` with `https://`.", parse_string, reads="file"),
    Option("server.tls.key", "STRING", "The PEM private key file of `server.tls.cert` (unencrypted; readable by the daemon's user only).", parse_string, reads="file"),
    Option("server.endpoint", "STRING", "A Twisted endpoint string that binds this port instead (e.g. `ssl:8443:privateKey=key.pem:certKey=cert.pem:extraCertChain=chain.pem`, `systemd:domain=INET:index=0`); connectors sharing the port must give the same.", parse_string),
    Option("server.http2", "BOOL", "On a TLS port (`server.tls.*` or an `ssl:` `server.endpoint`): offer HTTP/2 through ALPN (clients that do not ask for it get HTTP/1.1); `false` offers HTTP/1.1 only. A plain port speaks HTTP/1.1. Connectors sharing a port must give the same; see [http2.md](http2.md).", parse_bool, True),
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
    Option("auth.users.file", "STRING", "For `basic`: a file of `name:hash` lines, each hash bcrypt (`$2b$...`) or Argon2 (`$argon2id$...`); plain-text passwords are refused.", parse_string, reads="file"),
    Option("auth.tokens.file", "STRING", "For `bearer`: a file of static tokens, one a line (at least 16 characters each).", parse_string, reads="file"),
    Option("auth.tokens.env", "STRING", "For `bearer`: the name of an environment variable holding static tokens, comma-separated.", parse_string, reads="env"),
    Option("auth.jwt.key", "STRING", "For `bearer`: the key JWTs are verified with (a PEM public key; an HMAC secret belongs in `auth.jwt.key.file`).", parse_string),
    Option("auth.jwt.key.file", "STRING", "For `bearer`: a file holding the JWT key (PEM public key, or an HMAC secret of at least 32 bytes).", parse_string, reads="file"),
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
    Option("flush.interval", "FLOAT", "The least time, in seconds, between two writes to the subscribers: what arrives meanwhile goes out together, one write per subscriber. Writes are paced to one per interval on average, after a burst of four at once: a stream slower than that never waits, a faster one's events wait at most the interval. The default, 1 ms, caps each subscriber at about a thousand writes a second: on a fast stream to many subscribers the writes are most of the CPU. 0 writes at the end of every reactor turn (the least latency); up to 0.005 saves more (at most 1; see [sink.md](sink.md#the-sse-sink-on-the-wire)).", _flush_interval, 0.001),
    Option("history.size", "INT", "Events kept for subscribers that resume with `Last-Event-ID`; 0 keeps none.", lambda v: parse_int(v, 0), 1000),
    Option("history.path", "STRING", "A file (SQLite) in which the sink keeps its history, under the same bounds, so a restart, an upgrade or a crash costs resuming clients nothing; ingest then answers 200 only once the events are committed to it (503 `history-unavailable` when they cannot be, e.g. a full disk). Its directory must exist and be writable. Unset: history lives in memory. Not with `bus: {type: redis}`, which keeps history in Redis (see [durability.md](durability.md)).", _history_path, None),
    Option("history.on.corrupt", "STRING", "What the daemon does at start when `history.path` is not a readable history file: `refuse` (it does not start, and says why) or `move-aside` (the file is renamed `<path>.corrupt-<UTC time>`, a warning is logged and the sink starts with an empty history).", parse_choice("refuse", "move-aside"), "refuse"),
    Option("subscriber.queue.size", "INT", "Events queued for a subscriber that cannot keep up; past this it is disconnected (it may resume from history).", lambda v: parse_int(v, 1), 1000),
    Option("subscriber.queue.bytes", "INT", "Bytes queued for a subscriber that cannot keep up; past this it is disconnected.", lambda v: parse_int(v, 1), 4 * MIB),
    # issue 16: subscribers that choose what they receive, several streams on one connection
    Option("subscriber.where", "BOOL", "Let each subscriber send a filter, `?where=price > 100` in the condition language of routes, checked against the stream's schema; it then gets only the events the filter passes, resume included. A bad filter gets 400 with the message and a caret; length and complexity are bounded (see [subscribing.md](subscribing.md#filters-where)). Not with `sse.format: raw`, nor `worker.count` above 1.", parse_bool, False),
    Option("hub.path", "STRING", "A path on this sink's port at which one connection may subscribe to several sinks of the port, `GET /hub?stream=A&stream=B` (each sink that names the same path takes part, under its own auth, CORS and limits; see [subscribing.md](subscribing.md#several-streams-on-one-connection)); unset: the sink takes part in no hub. Not with `sse.format: raw` or `worker.count` above 1.", parse_path, None),
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
    Option("max.events.per.request", "INT", "Most events one request may carry (an array body); more get 413 before any is mapped. A large body is mapped and checked in steps of about 15 ms and published in slices of 500 events, other streams served between them (see 'HTTP ingest'). On the Redis bus, at most the bus's `history.size` (a stream keeps no more: a larger body would be trimmed before anyone read it).", lambda v: parse_int(v, 1), 10_000),
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
    Option("tls.ca.file", "STRING", "A PEM bundle of CA certificates that an https `receiver.url`'s certificate must chain to, instead of the system's trust store (certificates and host names are always verified).", parse_string, reads="file"),
)

LOG_SINK_OPTIONS = (
    Option("prefix", "STRING", "Text written before each logged event.", parse_string, ""),
    Option("priority", "STRING", "The level events are logged at, as Siddhi's log sink names them: `trace` and `debug` (debug), `info`, `warn`, "
           "`error`, `fatal` (critical), or `off` (nothing is logged; the events are still counted). Case does not matter.",
           parse_choice("info", "debug", "trace", "warn", "error", "fatal", "off"), "info"),
    SINK_MAP_TYPE,
    *SINK_MAPPING_OPTIONS,
)

def _admin_auth_types(value: Any) -> tuple[str, ...]:
    """``none``, ``basic``, ``bearer`` or both (``basic, bearer``): the schemes the admin listener accepts."""
    kinds = tuple(dict.fromkeys(k.lower() for k in parse_list(value)))
    if not kinds or kinds == ("none",):
        return ()
    if any(k not in ("basic", "bearer") for k in kinds):
        raise OptionError(f"expected none, basic, bearer or 'basic, bearer', found {found(value)}")
    return kinds


def _host_names(value: Any) -> tuple[str, ...]:
    names = tuple(n.strip().lower().rstrip(".") for n in parse_list(value))
    for name in names:
        if not name or any(c in name for c in "/@?# \t"):
            raise OptionError(f"expected host names such as 'status.example.com' or '*' (no scheme, path or port), found {found(name)}")
    return tuple(n.strip("[]") for n in names)


#: the top-level ``admin:`` section: metrics, health, status page (off unless given)
ADMIN_OPTIONS = (
    Option("port", "INT", "Port of the admin listener (`/metrics`, `/healthz`, `/readyz`, the status page); 0 picks a free port. It may not be a connector's port.", _port, required=True),
    Option("host", "STRING", "Address the admin listener binds; keep it local or firewalled, or set `auth.type` (see 'Admin access').", parse_string, "127.0.0.1"),
    Option("ready.grace", "FLOAT", "Seconds an SSE source may be down (reconnecting, or not yet connected since start) before `/readyz` answers 503.", lambda v: parse_number(v, 0), 10.0),
    Option("charts.interval", "FLOAT", "Seconds between two samples of the figures the status page charts.", lambda v: parse_number(v, 0.05), 1.0),
    Option("charts.window", "FLOAT", "Seconds of figures the status page's charts show, kept by the daemon: `charts.window / charts.interval` values of 8 bytes per figure (see 'The status page').", lambda v: parse_number(v, 1), 900.0),
    Option("live.history", "INT", "Events of each stream the status page's live view keeps, for a browser that reconnects.", lambda v: parse_int(v, 1), 100),
    Option("allowed.hosts", "LIST", "Names the `Host` header may carry besides `localhost`, `*.localhost`, `127.0.0.1`, `::1`, `host` and the address the request came in on; any other gets 421 (this defeats DNS rebinding). `*` turns the check off (only behind a proxy that checks `Host` itself).", _host_names, ()),
    Option("auth.type", "STRING", "Who may use the admin listener (all but `/healthz` and `/readyz`): `none`, `basic` (users of `auth.users.file`), `bearer` (static tokens) or `basic, bearer` (either); see 'Admin access'.", _admin_auth_types, (), default_doc="`none`"),
    Option("auth.realm", "STRING", "The realm named in the admin listener's `WWW-Authenticate` challenge.", _realm, "sse-daemon admin"),
    Option("auth.users.file", "STRING", "For `basic`: a file of `name:hash` lines (bcrypt or Argon2 hashes), as for sinks.", parse_string, reads="file"),
    Option("auth.tokens.file", "STRING", "For `bearer`: a file of static tokens, one a line (at least 16 characters each).", parse_string, reads="file"),
    Option("auth.tokens.env", "STRING", "For `bearer`: the name of an environment variable holding static tokens, comma-separated.", parse_string, reads="env"),
    # TLS on the admin listener: the connectors' options of the same names, with the admin's own words
    Option("server.tls.cert", "STRING", "A PEM certificate file to serve the admin listener over TLS (https); needs `server.tls.key`.", parse_string, reads="file"),
    Option("server.tls.key", "STRING", "The PEM private key file of `server.tls.cert` (unencrypted; readable by the daemon's user only).", parse_string, reads="file"),
    Option("server.endpoint", "STRING", "A Twisted endpoint string that binds the admin listener instead (e.g. `ssl:9443:privateKey=key.pem:certKey=cert.pem`).", parse_string),
    Option("server.http2", "BOOL", "Over TLS: offer HTTP/2 through ALPN as well as HTTP/1.1; `false` offers HTTP/1.1 only. See [http2.md](http2.md).", parse_bool, True),
)




#: the top-level ``bus:`` section: which bus links the connectors (memory unless given)
BUS_OPTIONS = (
    Option("type", "STRING", "`memory` (in this process only; the default) or `redis` (Redis Streams, shared by every instance using the same Redis and `key.prefix`).", parse_choice("memory", "redis"), "memory"),
    Option("url", "STRING", "With `type: redis`: the Redis server, `redis://[[user]:password@]host[:port][/db]`.", parse_redis_url, parse_redis_url("redis://127.0.0.1:6379/0"), default_doc="`redis://127.0.0.1:6379/0`"),
    Option("key.prefix", "STRING", "With `type: redis`: prefix of the Redis key of each stream (`<prefix><stream>`); instances that share it share the streams.", parse_string, "sse-daemon:"),
    Option("history.size", "INT", "With `type: redis`: entries each Redis stream keeps, approximately (`XADD MAXLEN ~`); what a subscriber can resume from on any instance.", lambda v: parse_int(v, 1), 1000),
    Option("history.max.age", "FLOAT", "With `type: redis`: seconds an entry is kept at most (trimmed with `XTRIM MINID ~` on publish); 0 keeps entries until `history.size` trims them.", lambda v: parse_number(v, 0), 0.0),
    Option("reconnect.max.delay", "FLOAT", "With `type: redis`: longest wait, in seconds, between attempts to reconnect to Redis (the wait doubles from 0.1 s up to this).", lambda v: parse_number(v, 0.1), 5.0),
    Option("fanout.max.lag", "FLOAT", "With `type: redis`: seconds the events an instance's ingest published may wait for that instance's own fan-out (Redis acknowledges faster than one process fans out); above it the ingest answers 503 (`fanout-behind`, `Retry-After: 1`) until the fan-out catches up, so subscriber latency stays bounded instead of growing with the backlog. The ingest also refuses while the instance's waiting events and the new ones would be more than `history.size` (Redis would trim unread ones). 0 turns both bounds off.", lambda v: parse_number(v, 0), 2.0),
    Option("source.lease.ttl", "FLOAT", "With `type: redis`: seconds an instance's lease on an SSE source lasts; one instance reads each upstream, and another takes over within this time when it vanishes (at once when it stops cleanly).", lambda v: parse_number(v, 0.3), 10.0),
)

#: (role, type) -> options of that connector type, beyond COMMON_OPTIONS
CONNECTOR_TYPES: dict[tuple[str, str], tuple[Option, ...]] = {
    ("sink", "sse-server"): SSE_SERVER_OPTIONS,
    ("sink", "log"): LOG_SINK_OPTIONS,
    ("source", "http"): HTTP_SOURCE_OPTIONS,
    ("source", "sse"): SSE_SOURCE_OPTIONS,
}




# --------------------------------------------------------------------------- typed options

_Options = TypeVar("_Options", bound="TypedOptions")


class TypedOptions:
    """Base of the typed options: built from a table's parsed values, read by attribute.

    ``TABLE`` names the options a class holds; its fields are their attributes
    (:attr:`Option.attribute`), checked by tests/test_options.py.
    """

    TABLE: ClassVar[tuple[Option, ...]] = ()

    @classmethod
    def build(cls: type[_Options], values: Mapping[str, Any]) -> _Options:
        """From parsed values by option name (``history.size``; ``map.attributes`` for the family)."""
        return cls(**{option.attribute: values[option.key] for option in cls.TABLE})

    @classmethod
    def with_defaults(cls: type[_Options], **overrides: Any) -> _Options:
        """Every option at its table default, but for ``overrides`` (by attribute)."""
        values = {option.key: {} if option.dynamic else option.default for option in cls.TABLE}
        built = cls.build(values)
        return replace(built, **overrides) if overrides else built  # type: ignore[type-var]

    def by_name(self) -> dict[str, Any]:
        """Every value under its option's name: for comparing definitions, never for reading one."""
        return {option.key: getattr(self, option.attribute) for option in self.TABLE}

    def files(self, credentials: bool | None = None) -> tuple[str, ...]:
        """The files these options name (``auth.users.file``, ``server.tls.cert``, ...) whose content defines them too;
        ``credentials``: only the ``auth.*`` ones (True: users, tokens, a JWT key) or only the others (False)."""
        return self._reads("file", credentials)

    def environment(self, credentials: bool | None = None) -> tuple[str, ...]:
        """The environment variables these options name (``auth.tokens.env``); ``credentials`` as for :meth:`files`."""
        return self._reads("env", credentials)

    def _reads(self, kind: str, credentials: bool | None) -> tuple[str, ...]:
        return tuple(value for option in self.TABLE if option.reads == kind
                     and (credentials is None or option.name.startswith("auth.") == credentials)
                     and (value := getattr(self, option.attribute)))


@dataclass(frozen=True, kw_only=True)
class AccessOptions(TypedOptions):
    """Who may subscribe (sink) or post (ingest): ``auth.*`` and ``cors.*`` (edge/auth.py, edge/guard.py)."""

    TABLE: ClassVar[tuple[Option, ...]] = ACCESS_OPTIONS

    auth_type: str
    auth_realm: str
    auth_users_file: str | None
    auth_tokens_file: str | None
    auth_tokens_env: str | None
    auth_jwt_key: str | None
    auth_jwt_key_file: str | None
    auth_jwt_algorithms: tuple[str, ...]
    auth_jwt_audience: str | None
    auth_jwt_issuer: str | None
    auth_jwt_claim: str
    auth_jwt_leeway: float
    auth_cookie: str
    auth_query_token: bool
    auth_cache_ttl: float
    auth_failures_per_minute: float
    cors_origins: tuple[str, ...]
    cors_credentials: bool
    cors_max_age: int


@dataclass(frozen=True, kw_only=True)
class ServerTlsOptions(TypedOptions):
    """How a sink's or ingest's port is bound: TLS files or an endpoint string (config/endpoints.py)."""

    TABLE: ClassVar[tuple[Option, ...]] = TLS_SERVER_OPTIONS

    server_tls_cert: str | None
    server_tls_key: str | None
    server_endpoint: str | None
    server_http2: bool


@dataclass(frozen=True, kw_only=True)
class PortLimitOptions(TypedOptions):
    """What one connection may cost a port (policy/connections.py)."""

    TABLE: ClassVar[tuple[Option, ...]] = PORT_LIMIT_OPTIONS

    server_head_timeout: float
    server_body_timeout: float
    server_max_connections_per_address: int


@dataclass(frozen=True, kw_only=True)
class ListenOptions(AccessOptions, ServerTlsOptions, PortLimitOptions):
    """What every connector that serves a port takes: access, TLS and port limits."""

    TABLE: ClassVar[tuple[Option, ...]] = ACCESS_OPTIONS + TLS_SERVER_OPTIONS + PORT_LIMIT_OPTIONS


@dataclass(frozen=True, kw_only=True)
class SinkMappingOptions(TypedOptions):
    """How a sink writes events: ``map.*`` of a sink."""

    TABLE: ClassVar[tuple[Option, ...]] = (SINK_MAP_TYPE, *SINK_MAPPING_OPTIONS)

    map_type: str
    map_enclosing_element: JsonPath | None
    map_payload: Template | None
    map_validate_json: bool

    @property
    def mapping(self) -> MappingOptions:
        """What ``make_mapper`` takes."""
        return MappingOptions(
            map_type=self.map_type, enclosing=self.map_enclosing_element, attributes={},
            payload=self.map_payload, validate_json=self.map_validate_json, fail_on_missing=True,
        )


@dataclass(frozen=True, kw_only=True)
class SourceMappingOptions(TypedOptions):
    """How a source reads events: ``map.*`` of a source."""

    TABLE: ClassVar[tuple[Option, ...]] = (SOURCE_MAP_TYPE, FAIL_ON_MISSING, *SOURCE_MAPPING_OPTIONS)

    map_type: str
    map_fail_on_missing_attribute: bool
    map_enclosing_element: JsonPath | None
    map_attributes: Mapping[str, JsonPath]

    @property
    def mapping(self) -> MappingOptions:
        """What ``make_mapper`` takes."""
        return MappingOptions(
            map_type=self.map_type, enclosing=self.map_enclosing_element, attributes=self.map_attributes,
            payload=None, validate_json=False, fail_on_missing=self.map_fail_on_missing_attribute,
        )


@dataclass(frozen=True, kw_only=True)
class SseServerOptions(SinkMappingOptions, ListenOptions):
    """An SSE sink (``type: sse-server``)."""

    TABLE: ClassVar[tuple[Option, ...]] = SSE_SERVER_OPTIONS

    server_port: int
    server_path: str
    server_host: str
    worker_count: int
    headers: tuple[tuple[str, str], ...]
    sse_format: str
    heartbeat_interval: float
    flush_interval: float
    history_size: int
    history_path: str | None
    history_on_corrupt: str
    subscriber_queue_size: int
    subscriber_queue_bytes: int
    subscriber_where: bool
    hub_path: str | None
    history_max_age: float
    history_max_bytes: int
    resume_reset_event: str
    retry_min: int
    retry_max: int
    drain_window: float
    drain_batch_min: int
    max_subscribers: int
    max_subscribers_per_address: int
    max_connections_per_second: float
    limit_retry_after: int


@dataclass(frozen=True, kw_only=True)
class LogSinkOptions(SinkMappingOptions):
    """A log sink (``type: log``)."""

    TABLE: ClassVar[tuple[Option, ...]] = LOG_SINK_OPTIONS

    prefix: str
    priority: str


@dataclass(frozen=True, kw_only=True)
class HttpSourceOptions(SourceMappingOptions, ListenOptions):
    """An HTTP ingest (``type: http`` source)."""

    TABLE: ClassVar[tuple[Option, ...]] = HTTP_SOURCE_OPTIONS

    receiver_url: Url
    max_body_size: int
    max_events_per_request: int
    max_requests_per_second: float


@dataclass(frozen=True, kw_only=True)
class SseSourceOptions(SourceMappingOptions):
    """An SSE source (``type: sse``)."""

    TABLE: ClassVar[tuple[Option, ...]] = SSE_SOURCE_OPTIONS

    receiver_url: Url
    worker_count: int
    headers: tuple[tuple[str, str], ...]
    event_types: tuple[str, ...]
    reconnect_initial_delay: float
    reconnect_max_delay: float
    reconnect_on_client_error: bool
    connect_timeout: float
    read_timeout: float
    max_event_size: int
    max_events_per_message: int
    sse_format: str
    tls_ca_file: str | None


#: the admin section's options that ``AdminOptions.access`` hands to the auth machinery
ADMIN_AUTH_OPTIONS = ("auth.realm", "auth.users.file", "auth.tokens.file", "auth.tokens.env")


@dataclass(frozen=True, kw_only=True)
class AdminOptions(ServerTlsOptions):
    """The ``admin:`` section (with TLS as a connector's port has it)."""

    TABLE: ClassVar[tuple[Option, ...]] = ADMIN_OPTIONS

    port: int
    host: str
    ready_grace: float
    charts_interval: float
    charts_window: float
    live_history: int
    allowed_hosts: tuple[str, ...]
    auth_type: tuple[str, ...]  # the schemes accepted (``basic``, ``bearer``); empty: no auth
    auth_realm: str
    auth_users_file: str | None
    auth_tokens_file: str | None
    auth_tokens_env: str | None

    def access(self, kind: str) -> AccessOptions:
        """A sink's access options (defaults) with this section's auth for one scheme, for
        ``auth.build_authenticator`` and ``guard.Guard``: the same machinery as sinks."""
        changes = {name.replace(".", "_"): getattr(self, name.replace(".", "_")) for name in ADMIN_AUTH_OPTIONS
                   if getattr(self, name.replace(".", "_")) is not None}
        return AccessOptions.with_defaults(**changes, auth_type=kind)


@dataclass(frozen=True, kw_only=True)
class BusOptions(TypedOptions):
    """The ``bus:`` section."""

    TABLE: ClassVar[tuple[Option, ...]] = BUS_OPTIONS

    type: str
    url: RedisUrl
    key_prefix: str
    history_size: int
    history_max_age: float
    reconnect_max_delay: float
    fanout_max_lag: float
    source_lease_ttl: float


#: ConnectorOptions: what ``ConnectorDef.options`` holds, by connector type
ConnectorOptions = SseServerOptions | LogSinkOptions | HttpSourceOptions | SseSourceOptions

#: (role, type) -> the class of that connector type's options (its table is CONNECTOR_TYPES' entry)
OPTION_CLASSES: dict[tuple[str, str], type[TypedOptions]] = {
    ("sink", "sse-server"): SseServerOptions,
    ("sink", "log"): LogSinkOptions,
    ("source", "http"): HttpSourceOptions,
    ("source", "sse"): SseSourceOptions,
}
