"""The statement front-end: the spec's own language compiled to a RawConfig. Pure.

``CREATE STREAM``, ``CREATE SOURCE``, ``CREATE SINK`` and ``INSERT INTO``
define exactly what the YAML form defines, as the same Raw* objects, so
``validate.validate`` checks both alike and reports every problem with file and
line. The grammar is ``statements.lark``; this module only walks the parse
tree. A syntax error is one ConfigIssue naming line and column, with the line
and a caret.
"""

from __future__ import annotations

from lark import Token, Tree

from sse_daemon.config.errors import ConfigIssue, Location, unknown_message
from sse_daemon.config.model import RawConfig, RawConnector, RawRoute, RawStream, RawValue
from sse_daemon.config.expressions import number_value, string_value
from sse_daemon.config.grammar import StatementSyntaxError, leaf, line_of, parse

#: accepted ``@App:<key>('...')`` annotations; the daemon has no apps, so their values are not used
APP_ANNOTATIONS = ("name", "description", "qlVersion")


def load_statements(text: str, filename: str = "<statements>", line_offset: int = 0, column_offset: int = 0) -> RawConfig:
    """Statements text -> RawConfig.

    ``line_offset`` and ``column_offset`` place text embedded in another file
    (YAML's ``statements: |``) at its real lines and columns.
    """
    raw = RawConfig(files=[filename])
    try:
        tree = parse(text, "statements")
    except StatementSyntaxError as e:
        where = Location(filename, e.line + line_offset, e.column + column_offset)
        raw.issues.append(ConfigIssue(where, f"{e.message}\n{e.snippet()}"))
        return raw
    if not tree.children:
        raw.issues.append(ConfigIssue(
            Location(filename, line_offset + 1),
            "no statements found; expected CREATE STREAM, CREATE SOURCE, CREATE SINK or INSERT INTO",
        ))
        return raw
    _Compiler(text, filename, line_offset, raw).run(tree)
    return raw


class _Compiler:
    def __init__(self, text: str, filename: str, line_offset: int, raw: RawConfig) -> None:
        self.text = text
        self.filename = filename
        self.line_offset = line_offset
        self.raw = raw

    def loc(self, token: Token | Tree) -> Location:
        return Location(self.filename, line_of(token) + self.line_offset)

    def run(self, tree: Tree) -> None:
        for node in tree.children:
            getattr(self, node.data)(node)

    def app_annotation(self, node: Tree) -> None:
        """``@App:name('...')``; its words are case-insensitive, as in a Siddhi app (``@app:name`` loads in both)."""
        scope, key = leaf(node.children[0]), leaf(node.children[1])
        if scope.lower() != "app":
            self.raw.issues.append(ConfigIssue(self.loc(scope), f"unknown annotation '@{scope}'; expected @App:name('...')"))
        elif key.lower() not in {k.lower() for k in APP_ANNOTATIONS}:
            self.raw.issues.append(ConfigIssue(self.loc(key), unknown_message(str(key), APP_ANNOTATIONS, "annotation @App:")))

    def create_stream(self, node: Tree) -> None:
        name, attributes = node.children[2], node.children[3]
        self.raw.streams.append(RawStream(str(name), RawValue(schema_text(attributes), self.loc(attributes))))

    def create_source(self, node: Tree) -> None:
        self._connector("source", node)

    def create_sink(self, node: Tree) -> None:
        self._connector("sink", node)

    def _connector(self, role: str, node: Tree) -> None:
        name, options, attributes = node.children[2], node.children[3], node.children[4]
        connector = RawConnector(role, str(name), self.loc(name))
        label = f"{role} '{name}'"
        for option in options.children:
            if not isinstance(option, Tree):  # WITH, or the placeholder of an empty list
                continue
            key, value_node = option.children
            where = self.loc(key)
            if str(key) in connector.options:
                first = connector.options[str(key)].location.line
                self.raw.issues.append(ConfigIssue(where, f"'{key}' is given twice (first on line {first})", label))
                continue
            value = option_value(value_node)
            if role == "source" and key == "type" and isinstance(value, str) and value.strip().lower() == "sse-server":
                value = "sse"  # the spec's source syntax line says sse-server; its example and the original say sse
            connector.options[str(key)] = RawValue(value, where)
        if attributes is not None:
            connector.options["schema"] = RawValue(schema_text(attributes), self.loc(attributes))
        self.raw.connectors.append(connector)

    def insert(self, node: Tree) -> None:
        _, _, target, _, projection, _, source, where_keyword, _, semicolon = node.children
        fields = {"from": RawValue(str(source), self.loc(source)), "to": RawValue(str(target), self.loc(target))}
        if projection.data == "select_names":
            fields["select"] = RawValue([str(n) for n in projection.children], self.loc(projection))
        if where_keyword is not None:
            # The condition as written; validate() parses, checks and compiles it as it does YAML's `where:`.
            condition = self.text[leaf(where_keyword).end_pos:leaf(semicolon).start_pos].strip()
            fields["where"] = RawValue(condition, self.loc(where_keyword))
        self.raw.routes.append(RawRoute(self.loc(node), fields))


def schema_text(attributes: Tree) -> str:
    """``(a STRING, b int)`` -> ``a string, b int``: the schema option's text, type names as the YAML form writes them."""
    return ", ".join(f"{a.children[0]} {str(a.children[1]).lower()}" for a in attributes.children)


def option_value(node: Tree) -> object:
    """An option value: quoted text as a string; a bare number or true/false as itself.

    The Siddhi grammar imports ``value`` from this one, so its nodes arrive
    namespaced (``statements__string``): the kind is the name's last part."""
    kind = str(node.data).rsplit("__", 1)[-1]
    if kind == "string":
        return string_value(leaf(node.children[0]))
    if kind == "number":
        number = number_value(leaf(node.children[-1]))
        return -number if len(node.children) == 2 else number
    return kind == "true"
