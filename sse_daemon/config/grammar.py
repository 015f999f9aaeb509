"""The Lark parser for statements and conditions, and readable syntax errors. Pure.

The grammars are package data (``statements.lark``, and ``siddhi.lark``, which
imports the conditions from it) so they can be read and reviewed as grammars;
this module loads each once and turns Lark's exceptions
into :class:`StatementSyntaxError`, which names the line and column, says what
was expected and what was found, and shows the line with a caret.
"""

from __future__ import annotations

import functools
import re

from lark import Lark, Token, Tree, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from sse_daemon.policy.redact import SECRET_PARAM_WORDS, redact_urls

#: each start rule and the grammar file (package data) it is in
GRAMMARS = {"statements": "statements.lark", "condition": "statements.lark", "siddhi_app": "siddhi.lark"}
START_RULES = tuple(GRAMMARS)

#: how a regexp terminal is described in "expected ..."; string terminals show their text
_TERMINAL_NAMES = {
    "NAME": "a name",
    "KEY": "an option name",
    "NUMBER": "a number",
    "STRING": "a quoted value",
    "COMPARE": "a comparison (==, !=, <, <=, >, >=)",
    "$END": "the end of the text",
}


class StatementSyntaxError(ValueError):
    """Text that does not parse; ``line`` and ``column`` are 1-based, within the parsed text."""

    def __init__(self, line: int, column: int, message: str, source_line: str) -> None:
        super().__init__(message)
        self.line = line
        self.column = column
        self.message = message
        self.source_line = source_line

    def snippet(self, indent: str = "    ") -> str:
        """The offending line and a caret under the column."""
        return caret_snippet(self.source_line, self.column, indent)


#: the quoted value of an option named like a secret, as URL parameters are (``auth.jwt.key``, Siddhi's
#: ``basic.auth.password``), or of ``headers`` (Authorization, Cookie): a key after ``(``, ``,`` or a space, ``=`` or
#: not (a syntax error may be its missing ``=``); a quote left open runs to the end of the line
_SECRET_VALUE = re.compile(
    rf"""(?:^|(?<=[\s(,]))((?:headers|[\w.-]*(?:{'|'.join(SECRET_PARAM_WORDS)})[\w.-]*)\s*=?\s*)("{{3}}|"|')(?:.*?\2|.*)""", re.I)


def redact_line(line: str) -> str:
    """A line of statements or a Siddhi app as an error shows it: URL credentials and secret option values masked."""
    return redact_urls(_SECRET_VALUE.sub(lambda m: f"{m[1]}{m[2]}***{m[2]}", line))


def caret_snippet(source_line: str, column: int, indent: str = "    ") -> str:
    """A line of the file and a caret under its (1-based) column, secrets masked."""
    line = source_line.expandtabs(1).rstrip()
    before = redact_line(line[: column - 1])  # secrets masked; the caret stays under the column
    return f"{indent}{redact_line(line)}\n{indent}{' ' * len(before)}^"


@functools.cache
def parser(start: str) -> Lark:
    """One LALR parser per start rule: shared parse states would make a
    condition's error list terminals only a statement can take (such as ';')."""
    return Lark.open_from_package("sse_daemon.config", GRAMMARS[start], parser="lalr", start=start, propagate_positions=True)


def parse(text: str, start: str) -> Tree:
    """Parse ``text`` from the start rule ``start`` (one of START_RULES) or raise StatementSyntaxError."""
    try:
        return parser(start).parse(text)
    except UnexpectedInput as e:
        raise _syntax_error(text, e, parser(start)) from None


def leaf(node: Tree | Token) -> Token:
    """A child the grammar makes a token (a name, a number, a keyword).

    Lark types every child as "a token or a subtree"; the grammar decides which.
    The front ends narrow through here, so a grammar change that turns a token
    into a rule fails here, by name, rather than as a wrong value further on.
    """
    if not isinstance(node, Token):
        raise TypeError(f"expected a token in the parse tree, found rule {node.data!r}")
    return node


def line_of(node: Tree | Token) -> int:
    """The 1-based line a token or rule starts on (the parsers keep positions)."""
    line = node.line if isinstance(node, Token) else node.meta.line
    if line is None:  # pragma: no cover - the lexer sets every token's position
        raise TypeError(f"no position on {node!r}")
    return line


def _syntax_error(text: str, error: UnexpectedInput, lark: Lark) -> StatementSyntaxError:
    lines = text.split("\n")
    if isinstance(error, UnexpectedToken) and error.token.type == "$END" or isinstance(error, UnexpectedEOF):
        # Point just past the last character, where something more was expected.
        line = len(lines)
        while line > 1 and not lines[line - 1].strip():
            line -= 1
        column = len(lines[line - 1].rstrip()) + 1
        found = "the end of the text"
        expected = _accepted(error)
    elif isinstance(error, UnexpectedToken):
        line, column = error.line, error.column
        # a quoted value is not echoed (it may be a header's value or a key): the line shows it, masked if so
        found = "a quoted value" if error.token.type == "STRING" else _quote(error.token.value)
        expected = _accepted(error)
    elif isinstance(error, UnexpectedCharacters):
        # No terminal matches here at all (a token that is merely misplaced is an
        # UnexpectedToken): a stray character or a quote that is never closed.
        line, column = error.line, error.column
        char = lines[line - 1][column - 1:column]
        message = ("syntax error: a quoted value is not closed on its line" if char in ("'", '"')
                   else f"syntax error: unexpected character {char!r}")
        return StatementSyntaxError(line, column, message, lines[line - 1])
    else:  # pragma: no cover - Lark raises only the three above
        line, column, found, expected = getattr(error, "line", 1), getattr(error, "column", 1), "?", set()
    message = f"syntax error: expected {_describe_expected(expected, lark)}, found {found}"
    source_line = lines[line - 1] if 0 < line <= len(lines) else ""
    return StatementSyntaxError(line, column, message, source_line)


def _accepted(error: UnexpectedToken | UnexpectedEOF) -> set[str]:
    """What the parser could take here. ``expected`` alone misses keywords that the
    lexer folds into NAME (TRUE, NULL, ...); ``accepts`` replays the parser to find them."""
    accepts = getattr(error, "accepts", None)
    return set(accepts or error.expected)


def _quote(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _describe_expected(names: set[str] | frozenset[str], lark: Lark) -> str:
    terminals = {t.name: t for t in lark.terminals}
    described = set()
    for name in names:
        if name in _TERMINAL_NAMES:
            described.add(_TERMINAL_NAMES[name])
        elif name in terminals and terminals[name].pattern.type == "str":
            value = terminals[name].pattern.value
            described.add(value.upper() if value.isalpha() else f"'{value}'")
        else:  # pragma: no cover - every regexp terminal is named above
            described.add(name)
    ordered = sorted(described)
    if len(ordered) == 1:
        return ordered[0]
    return "one of " + ", ".join(ordered[:-1]) + " or " + ordered[-1]
