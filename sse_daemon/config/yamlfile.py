"""The YAML front end: a YAML file in, a RawConfig out, each value with its line.

``streams:``, ``sources:``, ``sinks:``, ``routes:``, ``admin:`` and ``bus:``
become the Raw* objects of :mod:`sse_daemon.config.model`; a ``statements: |``
block is handed to the statement front end, and a ``siddhi: |`` block to the
Siddhi front end, placed at their real lines. Nothing
is checked here beyond the file's shape: :mod:`sse_daemon.config.validate` does that.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from sse_daemon.config.errors import ConfigIssue, Location, unknown_message
from sse_daemon.config.model import RawConfig, RawConnector, RawRoute, RawSection, RawStream, RawValue
from sse_daemon.config.siddhi import load_siddhi
from sse_daemon.config.statements import load_statements

class _Loader(yaml.SafeLoader):
    """The safe loader with YAML 1.2's booleans: only true and false.

    YAML 1.1 also reads yes, no, on and off as booleans, so ``priority: OFF``
    (Siddhi's log level) or ``prefix: no`` became ``False``, while statements
    and Siddhi apps read the text; a boolean option takes those words itself
    (``values.parse_bool``)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))

TOP_LEVEL_KEYS = ("streams", "sources", "sinks", "routes", "admin", "bus", "statements", "siddhi")
ROUTE_KEYS = ("from", "to", "select", "where")


def load_yaml(text: str, filename: str = "<config>") -> RawConfig:
    """Turn YAML text into a RawConfig, keeping each value's line."""
    try:
        return _load_yaml(text, filename)
    except RecursionError:  # PyYAML composes and builds nested values by recursion: hundreds of levels exhaust it
        raw = RawConfig(files=[filename])
        raw.issues.append(ConfigIssue(Location(filename, None), "the YAML nests too deep (hundreds of levels of lists or "
                                                                 "mappings); no option takes such a value"))
        return raw


def _load_yaml(text: str, filename: str) -> RawConfig:
    raw = RawConfig(files=[filename])
    loader = _Loader(text)
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
                stream_fields = reader.mapping(node, f"stream '{name}'", ("schema",)) or {}
                if "schema" not in stream_fields:
                    raw.issues.append(ConfigIssue(reader.loc(node), "expected a 'schema:' entry", f"stream '{name}'"))
                    continue
                node = stream_fields["schema"]
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
                (raw.admin if section == "admin" else raw.bus).append(RawSection(
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
    for key, what, load in (("statements", "statements", load_statements), ("siddhi", "a Siddhi app", load_siddhi)):
        if key not in top:
            continue
        node = top[key]
        if not isinstance(node, yaml.ScalarNode) or not isinstance(reader.value(node), str):
            raw.issues.append(ConfigIssue(reader.loc(node), f"expected {what} as text ('{key}: |' with the {what.split()[-1]} indented below), found {_node_kind(node)}", key))
        else:
            inner = load(reader.value(node), filename, *_text_offsets(node, text))
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
    def __init__(self, loader: _Loader, filename: str, issues: list[ConfigIssue]) -> None:
        self._loader = loader
        self._filename = filename
        self._issues = issues
        self._key_lines: dict[int, int] = {}  # id(value node) -> line of its key

    def loc(self, node: yaml.Node) -> Location:
        return Location(self._filename, node.start_mark.line + 1)

    def value(self, node: yaml.Node) -> Any:
        """The node's value. A scalar that only looks like an integer or a date (one of thousands of digits,
        2020-13-45) is its text, for the option's parser to judge; a tag no safe loader knows is an issue."""
        try:
            return self._loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as e:
            self._issues.append(ConfigIssue(self.loc(node), f"YAML error: {e.problem or e}"))
            return None
        except ValueError as e:
            if isinstance(node, yaml.ScalarNode):
                return node.value
            self._issues.append(ConfigIssue(self.loc(node), f"YAML error: {e}"))  # such a scalar inside a list or mapping
            return None

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
