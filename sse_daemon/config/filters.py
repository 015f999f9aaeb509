"""A subscriber's own filter (``?where=``): a route condition from an untrusted request, bounded. Pure.

The text is the condition language of routes (expressions.py), parsed, checked
against the stream's schema and compiled into closures (never ``eval``), with
bounds an untrusted client cannot pass: its length, the number of operations and
values in it (which bounds how deeply they nest: the closures call each other that
deep), and, for ``like``, a literal pattern with few
``%`` (each one more can multiply the work of a match). A filter that breaks one
is refused with a message like any other bad filter: the subscriber gets a 400,
never a slow daemon.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sse_daemon.config.expressions import (
    Attr, Binary, Condition, Expr, ExpressionError, IsNull, Literal, Unary, check, compile_expr, parse_condition,
)
from sse_daemon.config.grammar import StatementSyntaxError
from sse_daemon.events.schema import Schema

__all__ = ["FilterError", "FilterLimits", "LIMITS", "subscriber_filter"]


@dataclass(frozen=True, slots=True)
class FilterLimits:
    """What one subscriber's filter may cost (docs/subscribing.md, "Filters")."""

    length: int = 512  # characters of the filter text
    nodes: int = 64  # operations, attributes and values in it
    like_wildcards: int = 2  # '%' in one like pattern


LIMITS = FilterLimits()


class FilterError(ValueError):
    """A filter the daemon refuses; ``detail`` is the message with the text and a caret, as ``--check`` prints."""

    def __init__(self, message: str, text: str, column: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.column = column  # 1-based, where the caret goes; None: no one place is at fault
        self.detail = message
        if column is not None:
            line = text.replace("\n", " ").replace("\r", " ").expandtabs(1)
            self.detail = f"{message}\n    {line}\n    {' ' * (column - 1)}^"


def subscriber_filter(text: str, schema: Schema, stream: str, limits: FilterLimits = LIMITS) -> Condition:
    """``text`` checked against ``schema`` and compiled, or FilterError saying why not."""
    if not text.strip():
        raise FilterError("the filter is empty: give a condition such as price > 100", text)
    if len(text) > limits.length:
        raise FilterError(f"the filter is {len(text)} characters long; at most {limits.length} are allowed", text, limits.length + 1)
    try:
        expr = parse_condition(text)
    except StatementSyntaxError as e:
        offset = sum(len(line) + 1 for line in text.split("\n")[: e.line - 1])
        raise FilterError(f"{e.message} (column {offset + e.column} of the filter)", text, offset + e.column) from None
    _bound(expr, text, limits)
    try:
        check(expr, schema, stream)
    except ExpressionError as e:
        raise FilterError(str(e), text, _column_of(expr, str(e), text)) from None
    return Condition(expr, text, compile_expr(expr))


def _bound(expr: Expr, text: str, limits: FilterLimits) -> None:
    """Refuse a filter with too many parts or a costly ``like``."""
    nodes = _walk(expr)
    if len(nodes) > limits.nodes:
        raise FilterError(f"the filter has {len(nodes)} operations and values, more than {limits.nodes}; simplify it", text)
    for node in nodes:
        if isinstance(node, Binary):
            if node.op == "like":
                pattern = node.right
                if not (isinstance(pattern, Literal) and pattern.kind == "string"):
                    raise FilterError("'like' in a filter needs a quoted pattern, such as name like 'AC%'", text)
                if pattern.value.count("%") > limits.like_wildcards:
                    raise FilterError(f"a 'like' pattern in a filter may have at most {limits.like_wildcards} '%'", text,
                                      _find(text, pattern.value))


def _column_of(expr: Expr, message: str, text: str) -> int | None:
    """Where a type error is: the attribute it names, when the text has it as a word."""
    named = re.search(r"attribute '([^']+)'", message)
    if named is None:
        return None
    for node in _walk(expr):
        if isinstance(node, Attr) and node.name == named.group(1):
            match = re.search(rf"(?<![\w.]){re.escape(node.name)}(?![\w.])", text)
            return match.start() + 1 if match else None
    return None


def _find(text: str, value: str) -> int | None:
    at = text.find(value)
    return at + 1 if at >= 0 else None


def _walk(expr: Expr) -> list[Expr]:
    out: list[Expr] = []
    stack = [expr]
    while stack:
        node = stack.pop()
        out.append(node)
        if isinstance(node, Binary):
            stack += [node.right, node.left]
        elif isinstance(node, (Unary, IsNull)):
            stack.append(node.operand)
    return out
