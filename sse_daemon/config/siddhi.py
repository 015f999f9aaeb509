"""The Siddhi front end: a Siddhi app (``.siddhi``) compiled to a RawConfig. Pure.

Users of the original system have Siddhi apps, not statements: ``@source`` and
``@sink`` annotations (with a nested ``@map``, ``@payload``, ``@attributes``)
on ``define stream``, and queries ``from S[condition] select a, b as c insert
into T;``. This module reads them as they are and builds the same Raw* objects
as the YAML and statement front ends, translating Siddhi's spellings
(``server.url``, ``@map(type=...)``, the log sink's ``prefix``) into the
daemon's options, so ``validate.validate`` checks everything alike.

The grammar (``siddhi.lark``) is the subset the daemon runs. Anything else
Siddhi has (windows, joins, patterns, sequences, tables, aggregations,
partitions, functions) fails to parse, and :func:`unsupported_construct` names
the construct at the error, so the message says what the daemon does not run
rather than what token it expected. Errors found here carry file, line, column
and the line with a caret, as statement syntax errors do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from lark import Token, Tree

from sse_daemon.config.errors import ConfigIssue, Location
from sse_daemon.config.grammar import StatementSyntaxError, caret_snippet, leaf, parse
from sse_daemon.config.model import RawConfig, RawConnector, RawRoute, RawStream, RawValue
from sse_daemon.config.statements import APP_ANNOTATIONS, option_value, schema_text

__all__ = ["load_siddhi", "unsupported_construct"]

#: Siddhi's source types this daemon runs, and what each is here (the spec's syntax line calls the source sse-server)
SOURCE_TYPES = {"sse": "sse", "sse-server": "sse", "http": "http"}
SINK_TYPES = ("sse-server", "log")
MAP_TYPES = ("json", "text")

#: Siddhi's defaults for a connector that gives no URL: ``<scheme>://0.0.0.0:<port>/<app>/<stream>``
DEFAULT_URLS = {("sink", "sse-server"): ("server.url", 8280), ("source", "http"): ("receiver.url", 9763)}

#: the Macrometa spelling of what ``server.url`` says, on an sse-server sink
SERVER_URL_PARTS = ("server.host", "server.port", "server.path")

#: shown after every "not supported": what the daemon does run
WHAT_RUNS = ("this daemon runs 'define stream' with @source and @sink, and queries "
             "'from S[condition] select a, b as c insert into T' (see docs/migration.md)")


def load_siddhi(text: str, filename: str = "<siddhi>", line_offset: int = 0, column_offset: int = 0) -> RawConfig:
    """Siddhi app text -> RawConfig; a syntax error or an unsupported construct is one issue with a caret.

    ``line_offset`` and ``column_offset`` place an app embedded in another file
    (YAML's ``siddhi: |``) at its real lines and columns.
    """
    raw = RawConfig(files=[filename])
    try:
        tree = parse(text, "siddhi_app")
    except StatementSyntaxError as e:
        construct = unsupported_construct(text, e.line, e.column)
        message = e.message if construct is None else f"{construct}: not supported; {WHAT_RUNS}"
        where = Location(filename, e.line + line_offset, e.column + column_offset)
        raw.issues.append(ConfigIssue(where, f"{message}\n{e.snippet()}"))
        return raw
    _App(text, filename, raw, (line_offset, column_offset)).run(tree)
    return raw


# --------------------------------------------------------------------------- the app


@dataclass(slots=True)
class _Written:
    """An option as written in an annotation: its value, and the tokens to point at."""

    value: object
    key: Token
    at: Token  # the value's first token


@dataclass(slots=True)
class _Annotation:
    name: Token
    options: dict[str, _Written] = field(default_factory=dict)
    nested: list[Tree] = field(default_factory=list)


class _App:
    def __init__(self, text: str, filename: str, raw: RawConfig, offsets: tuple[int, int] = (0, 0)) -> None:
        self.text = text
        self.lines = text.split("\n")
        self.filename = filename
        self.raw = raw
        self.offsets = offsets  # (lines, columns) before the app's text in its file
        self.app_name: str | None = None
        self.query_names: dict[str, Location] = {}

    # ------------------------------------------------------------ positions and problems

    def at(self, line: int | None, column: int | None) -> Location:
        """Where a (line, column) of the app's text is in its file."""
        return Location(self.filename, (line or 1) + self.offsets[0], (column or 1) + self.offsets[1])

    def loc(self, node: Token | Tree) -> Location:
        if isinstance(node, Token):
            return self.at(node.line, node.column)
        return self.at(node.meta.line, node.meta.column)

    def problem(self, node: Token | Tree, message: str) -> None:
        line, column = (node.line, node.column) if isinstance(node, Token) else (node.meta.line, node.meta.column)
        text = self.lines[line - 1] if line else ""
        self.raw.issues.append(ConfigIssue(self.at(line, column), f"{message}\n{caret_snippet(text, column or 1)}"))

    # ------------------------------------------------------------ the walk

    def run(self, tree: Tree) -> None:
        for node in tree.children:
            if isinstance(node, Tree):
                getattr(self, str(node.data))(node)

    def app_annotation(self, node: Tree) -> None:
        scope, key = leaf(node.children[0]), leaf(node.children[1])
        if scope.lower() != "app":
            self.problem(scope, f"unknown annotation '@{scope}:{key}'; expected @App:name('...')")
            return
        known = {k.lower(): k for k in APP_ANNOTATIONS}
        if key.lower() not in known:
            self.problem(key, f"annotation @App:{key} is not supported; this daemon reads @App:name, @App:description and @App:qlVersion")
            return
        values = [option_value(e.children[0]) for e in node.children[2:] if isinstance(e, Tree) and e.data == "positional"]
        if key.lower() == "name" and values:
            self.app_name = str(values[0])

    def define_stream(self, node: Tree) -> None:
        annotations = [c for c in node.children if isinstance(c, Tree) and c.data == "annotation"]
        name, attributes = leaf(node.children[-2]), node.children[-1]
        if not isinstance(attributes, Tree):  # pragma: no cover - the grammar requires the list
            return
        stream = str(name)
        attribute_names = [str(a.children[0]) for a in attributes.children if isinstance(a, Tree)]
        self.raw.streams.append(RawStream(stream, RawValue(schema_text(attributes), self.loc(attributes))))
        found: list[RawConnector] = []
        for annotation in annotations:
            kind = leaf(annotation.children[0])
            if kind.lower() in ("source", "sink"):
                connector = self.connector(kind.lower(), self.annotation(annotation), stream, attribute_names)
                if connector is not None:
                    found.append(connector)
            elif kind.lower() in ("store", "primarykey", "index"):
                self.problem(kind, f"tables (@{kind}): not supported; {WHAT_RUNS}")
            else:
                self.problem(kind, f"annotation @{kind} on a stream: not supported; a stream takes @source and @sink")
        for connector in found:
            same_role = [c for c in found if c.role == connector.role]
            if len(found) == 1:
                connector.name = stream
            else:  # the first of its role keeps its name when another one is added
                index = same_role.index(connector)
                connector.name = f"{stream}.{connector.role}{index + 1 if index else ''}"
        self.raw.connectors += found

    def annotation(self, node: Tree, positional: bool = False) -> _Annotation:
        """An annotation's keyed options (duplicates are problems) and nested annotations;
        values without a key are problems unless ``positional`` (@payload, @attributes)."""
        result = _Annotation(leaf(node.children[0]))
        for element in node.children[1:]:
            if not isinstance(element, Tree):
                continue
            if element.data == "annotation":
                result.nested.append(element)
            elif element.data == "keyed":
                key, value = leaf(element.children[0]), element.children[1]
                if str(key) in result.options:
                    first = result.options[str(key)].key
                    self.problem(key, f"'{key}' is given twice in @{result.name} (first on line {first.line})")
                    continue
                result.options[str(key)] = _Written(option_value(value), key, _first_token(value))
            elif not positional:
                self.problem(_first_token(element), f"expected key='value' in @{result.name}")
        return result

    def connector(self, role: str, annotation: _Annotation, stream: str, attributes: list[str]) -> RawConnector | None:
        options = annotation.options
        written_type = options.get("type")
        if written_type is None:
            self.problem(annotation.name, f"@{annotation.name} needs type='...': "
                         + (", ".join(SOURCE_TYPES) if role == "source" else ", ".join(SINK_TYPES)))
            return None
        type_name = str(written_type.value).strip().lower()
        if role == "source" and type_name in SOURCE_TYPES:
            type_name = SOURCE_TYPES[type_name]
        elif role == "sink" and type_name in SINK_TYPES:
            pass
        else:
            runs = "sse and http sources" if role == "source" else "sse-server and log sinks"
            self.problem(written_type.at, f"{type_name} {role}s: not supported; this daemon runs {runs}")
            return None
        connector = RawConnector(role, stream, self.loc(annotation.name))
        for key, written in options.items():
            connector.options[key] = RawValue(written.value, self.loc(written.key))
        connector.options["type"] = RawValue(type_name, self.loc(written_type.key))
        if "stream" in options:
            self.problem(options["stream"].key, f"@{annotation.name} writes to the stream it annotates ({stream}); 'stream' cannot name another")
            return None
        connector.options["stream"] = RawValue(stream, self.loc(annotation.name))
        for nested in annotation.nested:
            kind = leaf(nested.children[0])
            if kind.lower() == "map":
                self.mapping(self.annotation(nested), connector, attributes)
            elif kind.lower() == "distribution":
                self.problem(kind, f"distributed sinks (@distribution): not supported; {WHAT_RUNS}")
            else:
                self.problem(kind, f"annotation @{kind} inside @{annotation.name}: not supported; it takes @map")
        if not self.urls(role, type_name, annotation, connector, stream):
            return None  # said why; validation would only add that the port is missing
        if type_name == "log":
            prefix = connector.options.get("prefix")
            # Siddhi writes '<prefix> : <event>', its default prefix '<app> : <stream>'
            text = str(prefix.value) if prefix is not None else " : ".join(n for n in (self.app_name, stream) if n)
            connector.options["prefix"] = RawValue(f"{text} : ", prefix.location if prefix is not None else connector.location)
        return connector

    def urls(self, role: str, type_name: str, annotation: _Annotation, connector: RawConnector, stream: str) -> bool:
        """Siddhi's ``server.url`` as the daemon's host, port and path; Siddhi's default URLs where none is
        given. False after a problem."""
        options = annotation.options
        default = DEFAULT_URLS.get((role, type_name))
        if default is None:
            return True
        option, port = default
        given_parts = [k for k in SERVER_URL_PARTS if k in options] if type_name == "sse-server" else []
        if option not in options:
            if given_parts or (type_name == "http" and "receiver.url" in options):
                return True  # the Macrometa spelling (server.port, server.path): the daemon's own options
            if self.app_name is None:
                self.problem(annotation.name, f"@{annotation.name}(type='{type_name}') needs {option}: Siddhi's default "
                             "names the app, and this app has no @App:name")
                return False
            url, where = f"http://0.0.0.0:{port}/{self.app_name}/{stream}", self.loc(annotation.name)
        else:
            written = options[option]
            url, where = str(written.value), self.loc(written.at)
            if given_parts:
                self.problem(options[given_parts[0]].key, f"{option} and {given_parts[0]} say the same thing: give one of them "
                             "(server.url as Siddhi writes it, or server.port and server.path as the Macrometa spec does)")
                return False
        if type_name == "http":
            connector.options["receiver.url"] = RawValue(url, where)
            return True
        connector.options.pop(option, None)
        parts = _server_url(url)
        if isinstance(parts, str):
            self.problem(options[option].at if option in options else annotation.name, f"{option}: {parts}")
            return False
        scheme, host, port_number, path = parts
        tls = "server.tls.cert" in options or "server.endpoint" in options
        if scheme == "https" and not tls:
            self.problem(options[option].at, f"an https {option} needs server.tls.cert and server.tls.key (or an ssl: server.endpoint)")
            return False
        if scheme == "http" and "server.tls.cert" in options:
            self.problem(options["server.tls.cert"].key, f"this port is served over TLS: write {option} with https://")
            return False
        connector.options["server.host"] = RawValue(host, where)
        connector.options["server.port"] = RawValue(port_number, where)
        connector.options["server.path"] = RawValue(path, where)
        return True

    def mapping(self, annotation: _Annotation, connector: RawConnector, attributes: list[str]) -> None:
        """``@map(type='json', <mapper options>, @payload(...), @attributes(...))`` as the ``map.*`` options."""
        def put(key: str, value: object, where: Token) -> None:
            if key in connector.options:
                self.problem(where, f"'{key}' is given twice (as {key} and in @map)")
            else:
                connector.options[key] = RawValue(value, self.loc(where))

        for key, written in annotation.options.items():
            if key == "type":
                map_type = str(written.value).strip().lower()
                if map_type not in MAP_TYPES:
                    self.problem(written.at, f"{map_type} mappers: not supported; this daemon maps json and text")
                    continue
                put("map.type", map_type, written.key)
            else:
                put(f"map.{key}", written.value, written.key)
        for nested in annotation.nested:
            kind = leaf(nested.children[0])
            inner = self.annotation(nested, positional=True)
            values = [(option_value(e.children[0]), _first_token(e)) for e in nested.children[1:]
                      if isinstance(e, Tree) and e.data == "positional"]
            if kind.lower() == "payload":
                if inner.options or len(values) != 1:
                    self.problem(kind, "@payload takes one template, such as @payload('{\"price\":{{price}}}')")
                else:
                    put("map.payload", values[0][0], values[0][1])
            elif kind.lower() == "attributes":
                for key, written in inner.options.items():
                    put(f"map.attributes.{key}", written.value, written.key)
                if values and len(values) != len(attributes):
                    self.problem(kind, f"@attributes lists {len(values)} paths for the {len(attributes)} attributes of the stream: give one per attribute, in order")
                elif values:
                    for name, (path, where) in zip(attributes, values):
                        put(f"map.attributes.{name}", path, where)
            else:
                self.problem(kind, f"annotation @{kind} inside @map: not supported; it takes @payload and @attributes")

    def query(self, node: Tree) -> None:
        children = node.children
        annotations = [c for c in children if isinstance(c, Tree) and c.data == "annotation"]
        _, source, lsqb, _, rsqb, _, projection, _, _, target = children[len(annotations):]
        for annotation in annotations:
            kind = leaf(annotation.children[0])
            info = self.annotation(annotation)
            if kind.lower() != "info":
                self.problem(kind, f"annotation @{kind} on a query: not supported; a query takes @info(name='...')")
            elif "name" in info.options:
                name = str(info.options["name"].value)
                if name in self.query_names:
                    self.problem(info.options["name"].at, f"a query named '{name}' is already defined at {self.query_names[name]}")
                self.query_names.setdefault(name, self.loc(info.options["name"].at))
        source_token, target_token = leaf(source), leaf(target)
        fields = {"from": RawValue(str(source_token), self.loc(source_token)), "to": RawValue(str(target_token), self.loc(target_token))}
        if isinstance(projection, Tree) and projection.data == "select_names":
            selected = [" as ".join(str(n) for n in output.children if n is not None and str(n).lower() != "as")
                        for output in projection.children if isinstance(output, Tree)]
            fields["select"] = RawValue(selected, self.loc(projection))
        if lsqb is not None and rsqb is not None:
            start, end = leaf(lsqb), leaf(rsqb)
            # the condition as written; validate() parses, checks and compiles it as it does a route's `where:`
            fields["where"] = RawValue(self.text[start.end_pos:end.start_pos].strip(), self.at(start.line, (start.column or 0) + 1))
        self.raw.routes.append(RawRoute(self.loc(node), fields, infers_target=True))


def _first_token(node: Tree | Token) -> Token:
    """The first token of a subtree, to point a caret at."""
    if isinstance(node, Token):
        return node
    return next(node.scan_values(lambda v: isinstance(v, Token)))


def _server_url(url: str) -> tuple[str, str, int, str] | str:
    """``http://host:port/path`` -> (scheme, bind host, port, path); a string says what is wrong."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        return f"expected a URL such as 'http://0.0.0.0:8020/events', found {url!r} ({e})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"expected a URL such as 'http://0.0.0.0:8020/events', found {url!r}"
    if port is None:
        return f"give the port, as in 'http://0.0.0.0:8020/events'; found {url!r}"
    if parts.path.strip("/") == "":
        return f"give a path after the port (Siddhi refuses an empty one too), as in 'http://0.0.0.0:8020/events'; found {url!r}"
    if parts.query or parts.fragment or parts.username or parts.password:
        return f"a server URL has no query, fragment or credentials; found {url!r}"
    host = "127.0.0.1" if parts.hostname == "localhost" else parts.hostname  # what Siddhi binds for localhost
    return parts.scheme, host, port, parts.path


# --------------------------------------------------------------------------- what is not supported

_DEFINED = {
    "table": "tables (define table)",
    "window": "windows (define window)",
    "aggregation": "aggregations (define aggregation)",
    "function": "functions (define function)",
    "trigger": "triggers (define trigger)",
}
_JOIN_WORDS = ("join", "left", "right", "full", "outer", "inner", "unidirectional")
_AGGREGATE_FUNCTIONS = ("sum", "count", "avg", "min", "max", "distinctcount", "stddev", "maxforever", "minforever", "unionset")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LAST_WORD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\Z")
_CLAUSE = re.compile(r"\b(from|select|insert|define|partition)\b", re.IGNORECASE)


def unsupported_construct(text: str, line: int, column: int) -> str | None:
    """The Siddhi construct a syntax error at (line, column) stands on, or None for a plain syntax error.

    The grammar holds only what the daemon runs, so Siddhi's other constructs
    stop the parser at a recognisable place: a word (``join``, ``partition``,
    ``every``), a ``#`` after the input stream, a ``(`` after a name. This
    reads the text around that place; it never decides what parses.
    """
    lines = text.split("\n")
    offset = sum(len(x) + 1 for x in lines[: line - 1]) + column - 1
    before, rest = text[:offset], text[offset:]
    match = _WORD.match(rest)
    word = match.group(0).lower() if match else ""
    previous_match = _LAST_WORD.search(before)
    previous = previous_match.group(1).lower() if previous_match else ""
    clauses = _CLAUSE.findall(before)
    clause = clauses[-1].lower() if clauses else None
    if re.search(r"@\s*[A-Za-z_][A-Za-z0-9_]*\s*\Z", before):
        return None  # an annotation's name: a misplaced @App:..., not a function
    if previous == "define" and word in _DEFINED:
        return _DEFINED[word]
    if word == "partition":
        return "partitions (partition with ... begin ... end)"
    if rest.startswith("#"):
        if re.match(r"#\s*window\s*\.", rest, re.IGNORECASE):
            return "windows (#window...)"
        if previous == "from":
            return "inner streams of partitions (#Stream)"
        return "functions (stream functions such as #str:tokenize(...))"
    if rest.startswith("!"):
        return "fault streams (!Stream)"
    if word in _JOIN_WORDS:
        return "joins"
    if "every" in (word, previous) or word == "within" or rest.startswith("->"):
        return "patterns"
    if clause == "from":
        if (word == "not" and previous == "from") or re.search(r"\bfrom\s+not\s*\Z", before, re.IGNORECASE):
            return "patterns (absent events: not ... for ...)"
        if word == "as":
            return "joins (stream aliases: from A as a join B as b)"
        if rest.startswith("=") or rest.startswith(","):
            end = _CLAUSE.search(text, offset)
            input_text = text[offset:end.start() if end else len(text)]
            return "patterns" if "->" in input_text else "sequences" if "," in input_text else "patterns"
    if previous_match:  # a name right before: a call
        if rest.startswith("("):
            name = previous_match.group(1)
            if name.lower() in _AGGREGATE_FUNCTIONS:
                return f"aggregations (the aggregate function {name}(...))"
            return f"functions ({name}(...))"
        namespaced = re.match(r":\s*([A-Za-z_][A-Za-z0-9_]*)\s*\(", rest)
        if namespaced:
            return f"functions ({previous_match.group(1)}:{namespaced.group(1)}(...))"
    if word in ("group", "having"):
        return "aggregations (group by, having)"
    if word in ("order", "limit", "offset"):
        return "ordering and limits (order by, limit, offset)"
    if word == "output":
        return "output rate limiting (output every ...)"
    if word in ("update", "delete"):
        return f"tables ({word})"
    if word == "return":
        return "queries without an output stream (return)"
    if previous == "insert" and word in ("expired", "all", "current"):
        return "windows (insert expired or all events)"
    if clause == "select" and (rest[:1] in ("+", "-", "*", "/", "%") or word in ("and", "or", "not", "is")
                               or rest[:1] in ("'", '"') or rest[:1].isdigit()):
        return "expressions in select (a query selects attributes, and 'name as other')"
    return None
