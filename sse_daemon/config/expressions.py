"""Route conditions (``WHERE``): parse, type-check against a schema, compile. Pure.

A condition is parsed by the shared grammar (``statements.lark``, start rule
``condition``) into a small tree of frozen dataclasses, checked against the
input stream's schema when the configuration loads (unknown attributes and
mismatched types are configuration errors), then compiled into nested
closures. Nothing is ever passed to Python's ``eval``.

Null follows SQL's three-valued logic: an operation on a null gives null
("unknown"), ``and``/``or`` take the usual shortcuts (``false and null`` is
false, ``true or null`` is true), and an event passes only when the whole
condition is true. So a null never raises at run time; it just fails the
filter. ``is null`` and ``is not null`` are the only tests that see a null.
A division by zero gives null too.
"""

from __future__ import annotations

import enum
import functools
import operator
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Union

from lark import Token, Tree

from sse_daemon.config.grammar import leaf, parse
from sse_daemon.events.schema import AttrType, Schema, did_you_mean

# --------------------------------------------------------------------------- the tree


@dataclass(frozen=True, slots=True)
class Literal:
    kind: str  # "number", "string", "bool" or "null"; kept so 1 and true differ
    value: Any


@dataclass(frozen=True, slots=True)
class Attr:
    name: str


@dataclass(frozen=True, slots=True)
class Unary:
    op: str  # "not" or "-"
    operand: "Expr"


@dataclass(frozen=True, slots=True)
class Binary:
    op: str  # and or == != < <= > >= + - * / % like contains
    left: "Expr"
    right: "Expr"


@dataclass(frozen=True, slots=True)
class IsNull:
    operand: "Expr"
    negated: bool  # True for "is not null"


Expr = Union[Literal, Attr, Unary, Binary, IsNull]

_COMPARE_ALIASES = {"=": "==", "<>": "!="}


def parse_condition(text: str) -> Expr:
    """Parse condition text; raise grammar.StatementSyntaxError with line and column."""
    return from_tree(parse(text, "condition"))


def from_tree(node: Tree | Token) -> Expr:
    """Build the expression tree from the Lark parse tree of a ``condition``."""
    kind = node.data if isinstance(node, Tree) else None
    children = node.children if isinstance(node, Tree) else []
    if kind == "literal_number":
        return Literal("number", number_value(leaf(children[0])))
    if kind == "literal_string":
        return Literal("string", string_value(leaf(children[0])))
    if kind in ("literal_true", "literal_false"):
        return Literal("bool", kind == "literal_true")
    if kind == "literal_null":
        return Literal("null", None)
    if kind == "attribute_ref":
        return Attr(str(children[0]))
    if kind == "neg":
        return Unary("-", from_tree(children[1]))
    if kind == "not_":
        return Unary("not", from_tree(children[1]))
    if kind in ("or_", "and_", "compare", "like", "contains", "arith"):
        op = str(children[1]).lower()
        return Binary(_COMPARE_ALIASES.get(op, op), from_tree(children[0]), from_tree(children[2]))
    if kind in ("is_null", "is_not_null"):
        return IsNull(from_tree(children[0]), kind == "is_not_null")
    raise AssertionError(f"unexpected parse node {node!r}")  # pragma: no cover - the grammar is closed


def number_value(token: Token | str) -> int | float:
    """``12`` and ``12L`` are integers; ``1.5``, ``1e3`` and ``1.0f``/``1.0d`` are floats."""
    text = str(token)
    if text[-1] in "fFdD":
        return float(text[:-1])
    digits = text.rstrip("lL")  # 1.5L is 1.5
    if any(c in digits for c in ".eE"):
        return float(digits)
    try:
        return int(digits)
    except ValueError:  # more digits than Python reads as an int (4300): the float it is (inf), as 1e5000 is
        return float(digits)


def string_value(token: Token | str) -> str:
    """The text between the quotes; there are no escape sequences."""
    text = str(token)
    return text[3:-3] if text.startswith('"""') else text[1:-1]


def to_text(expr: Expr) -> str:
    """Canonical text of an expression, for messages and ``--check``."""
    if isinstance(expr, Literal):
        if expr.kind == "string":
            return "'" + expr.value + "'" if "'" not in expr.value else '"' + expr.value + '"'
        if expr.kind == "bool":
            return "true" if expr.value else "false"
        return "null" if expr.kind == "null" else repr(expr.value)
    if isinstance(expr, Attr):
        return expr.name
    if isinstance(expr, Unary):
        inner = _operand_text(expr.operand)
        return f"not {inner}" if expr.op == "not" else f"-{inner}"
    if isinstance(expr, IsNull):
        return f"{_operand_text(expr.operand)} is {'not ' if expr.negated else ''}null"
    return f"{_operand_text(expr.left)} {expr.op} {_operand_text(expr.right)}"


def _operand_text(expr: Expr) -> str:
    return f"({to_text(expr)})" if isinstance(expr, (Binary, IsNull)) else to_text(expr)


# --------------------------------------------------------------------------- type check


class ExpressionError(ValueError):
    """A condition that does not fit the schema; the message names the part at fault."""


class Kind(enum.Enum):
    STRING = "string"
    NUMBER = "number"
    BOOL = "bool"
    OBJECT = "object"
    NULL = "null"


_ATTR_KINDS = {
    AttrType.STRING: Kind.STRING, AttrType.INT: Kind.NUMBER, AttrType.LONG: Kind.NUMBER,
    AttrType.FLOAT: Kind.NUMBER, AttrType.DOUBLE: Kind.NUMBER, AttrType.BOOL: Kind.BOOL,
    AttrType.OBJECT: Kind.OBJECT,
}
_ORDERING = ("<", "<=", ">", ">=")
_ARITHMETIC = ("+", "-", "*", "/", "%")


def check(expr: Expr, schema: Schema, stream: str) -> None:
    """Raise ExpressionError unless ``expr`` is a true/false condition over ``schema``."""
    kind = _kind(expr, schema, stream)
    if kind not in (Kind.BOOL, Kind.NULL):
        raise ExpressionError(f"a condition must be true or false, found {_describe(expr, kind)}")


def _kind(expr: Expr, schema: Schema, stream: str) -> Kind:
    if isinstance(expr, Literal):
        return Kind(expr.kind)
    if isinstance(expr, Attr):
        attr_type = schema.type_of(expr.name)
        if attr_type is None:
            raise ExpressionError(f"unknown attribute '{expr.name}' of stream {stream}{did_you_mean(expr.name, schema.names)}")
        return _ATTR_KINDS[attr_type]
    if isinstance(expr, IsNull):
        _kind(expr.operand, schema, stream)
        return Kind.BOOL
    if isinstance(expr, Unary):
        operand = _kind(expr.operand, schema, stream)
        wanted = Kind.BOOL if expr.op == "not" else Kind.NUMBER
        if operand not in (wanted, Kind.NULL):
            need = "a true/false condition" if wanted is Kind.BOOL else "a number"
            raise ExpressionError(f"'{expr.op}' needs {need}, found {_describe(expr.operand, operand)}")
        return wanted
    left, right = _kind(expr.left, schema, stream), _kind(expr.right, schema, stream)
    sides = ((expr.left, left), (expr.right, right))
    if expr.op in ("==", "!=") and Kind.NULL in (left, right):
        raise ExpressionError(f"use 'is null' or 'is not null' to test for null, not '{expr.op}' (in {to_text(expr)})")
    for side, kind in sides:
        if kind is Kind.OBJECT:
            raise ExpressionError(f"{_describe(side, kind)} can only be tested with 'is null' or 'is not null' (in {to_text(expr)})")
    if expr.op in ("and", "or"):
        _require(expr, sides, (Kind.BOOL,), "true/false conditions")
        return Kind.BOOL
    if expr.op in _ARITHMETIC:
        _require(expr, sides, (Kind.NUMBER,), "numbers")
        return Kind.NUMBER
    if expr.op in ("like", "contains"):
        _require(expr, sides, (Kind.STRING,), "strings")
        return Kind.BOOL
    # comparisons
    if expr.op in _ORDERING:
        _require(expr, sides, (Kind.NUMBER, Kind.STRING), "numbers or strings")
    if Kind.NULL not in (left, right) and left is not right:
        raise ExpressionError(
            f"cannot compare {_describe(expr.left, left)} with {_describe(expr.right, right)} (in {to_text(expr)})"
        )
    return Kind.BOOL


def _require(expr: Binary, sides: tuple, kinds: tuple[Kind, ...], need: str) -> None:
    for side, kind in sides:
        if kind not in kinds and kind is not Kind.NULL:
            raise ExpressionError(f"'{expr.op}' needs {need}, found {_describe(side, kind)} (in {to_text(expr)})")


def _describe(expr: Expr, kind: Kind) -> str:
    if isinstance(expr, Attr):
        return f"attribute '{expr.name}' ({kind.value})"
    if isinstance(expr, Literal):
        return f"{to_text(expr)} ({kind.value})"
    return f"'{to_text(expr)}' ({kind.value})"


# --------------------------------------------------------------------------- compile

Values = Mapping[str, Any]
Evaluator = Callable[[Values], Any]


def _constant(expr: Expr) -> Literal | None:
    """``expr`` as a literal when it is one: a literal, or a negated number (``-5`` parses as ``-(5)``)."""
    if isinstance(expr, Literal):
        return expr
    if isinstance(expr, Unary) and expr.op == "-" and isinstance(expr.operand, Literal) and expr.operand.kind == "number":
        return Literal("number", -expr.operand.value)
    return None


def compile_expr(expr: Expr) -> Evaluator:
    """A closure computing ``expr`` over an event's values (None is null)."""
    if isinstance(expr, Literal):
        value = expr.value
        return lambda values: value
    constant = _constant(expr)
    if constant is not None:
        folded = constant.value
        return lambda values: folded
    if isinstance(expr, Attr):
        name = expr.name
        return lambda values: values.get(name)
    if isinstance(expr, IsNull):
        operand = compile_expr(expr.operand)
        if expr.negated:
            return lambda values: operand(values) is not None
        return lambda values: operand(values) is None
    if isinstance(expr, Unary):
        operand = compile_expr(expr.operand)
        if expr.op == "not":
            return lambda values: _not(operand(values))
        return lambda values: _negate(operand(values))
    literal = _constant(expr.right)
    if expr.op in _COMPARE and isinstance(expr.left, Attr) and literal is not None and literal.value is not None:
        return _attr_compared(expr.left.name, _COMPARE[expr.op], literal.value)
    left, right = compile_expr(expr.left), compile_expr(expr.right)
    if expr.op == "and":
        return _and_of(left, right)
    if expr.op == "or":
        return _or_of(left, right)
    if expr.op == "like" and isinstance(expr.right, Literal) and expr.right.kind == "string":
        matches = _like_matcher(expr.right.value)  # the usual literal pattern, compiled once

        def like(values: Values) -> Any:
            a = left(values)
            return None if a is None else matches(a)

        return like
    function = _BINARY[expr.op]

    def binary(values: Values) -> Any:
        a, b = left(values), right(values)
        if a is None or b is None:
            return None
        try:
            return function(a, b)
        except ArithmeticError:  # division by zero, overflow: unknown, like a null
            return None

    return binary


def _not(value: Any) -> Any:
    return None if value is None else not value


def _negate(value: Any) -> Any:
    return None if value is None else -value


def _attr_compared(name: str, compare: Callable[[Any, Any], Any], literal: Any) -> Evaluator:
    """``attribute <op> literal``, the most common test, as one closure (fewer calls and objects: a
    sink may hold a thousand subscribers' filters, each evaluated for every event)."""

    def compared(values: Values) -> Any:
        a = values.get(name)
        return None if a is None else compare(a, literal)

    return compared


def _and_of(left: Evaluator, right: Evaluator) -> Evaluator:
    def both(values: Values) -> Any:
        a = left(values)
        if a is False:
            return False
        b = right(values)
        if b is False:
            return False
        return None if a is None or b is None else True

    return both


def _or_of(left: Evaluator, right: Evaluator) -> Evaluator:
    def either(values: Values) -> Any:
        a = left(values)
        if a is True:
            return True
        b = right(values)
        if b is True:
            return True
        return None if a is None or b is None else False

    return either


def _remainder(a: float, b: float) -> float:
    """Remainder with the sign of the dividend, as in SQL and Java (-7 % 3 is -1)."""
    r = abs(a) % abs(b)
    return r if a >= 0 else -r


@functools.lru_cache(maxsize=256)
def _like_matcher(pattern: str) -> Callable[[str], bool]:
    """SQL LIKE: ``%`` is any run of characters, ``_`` one character; case-sensitive.

    The parts between ``%`` have fixed lengths, so each is taken at its leftmost place after the
    one before, never tried again: the work is at most the text's length times the pattern's. A
    regular expression with a ``.*`` for each ``%`` backtracks: twelve of them against 24 characters
    (a pattern an event may carry, ``a like b``) held the reactor for seconds, and each more for longer.
    """
    first, *middle = [re.compile("".join("." if c == "_" else re.escape(c) for c in part), re.DOTALL)
                      for part in pattern.split("%")]
    if not middle:
        return lambda text: first.fullmatch(text) is not None
    *middle, last = middle
    last_length = len(pattern) - pattern.rfind("%") - 1

    def matches(text: str) -> bool:
        found = first.match(text)
        if found is None:
            return False
        position = found.end()
        for part in middle:
            found = part.search(text, position)
            if found is None:
                return False
            position = found.end()
        start = len(text) - last_length
        return start >= position and last.fullmatch(text, start) is not None

    return matches


#: comparisons as the C functions of ``operator`` (they cannot raise an ArithmeticError)
_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}

_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,  # always a true division: 7 / 2 is 3.5
    "%": _remainder,
    "contains": lambda a, b: b in a,
    "like": lambda a, b: _like_matcher(b)(a),
}


# --------------------------------------------------------------------------- the checked condition


@dataclass(frozen=True, slots=True)
class Condition:
    """A checked, compiled condition. Two conditions are equal when their trees are."""

    expr: Expr
    text: str = field(compare=False)
    evaluate: Evaluator = field(compare=False, repr=False)

    def __str__(self) -> str:
        return to_text(self.expr)

    def matches(self, values: Values) -> bool:
        """True only when the condition is true; false and null (unknown) are not."""
        return self.evaluate(values) is True


#: the deepest a route's condition may nest: building, checking, compiling, evaluating and comparing its tree
#: (a reload compares its repr, three frames a level) recurse level by level, and Python's stack holds about a thousand
MAX_DEPTH = 200


def _depth(tree: Tree) -> int:
    """How deep a parse tree nests, counted without recursion (a chain of ``or`` nests once a term)."""
    deepest, todo = 0, [(tree, 1)]
    while todo:
        node, depth = todo.pop()
        deepest = max(deepest, depth)
        todo += [(child, depth + 1) for child in node.children if isinstance(child, Tree)]
    return deepest


def compile_condition(text: str, schema: Schema, stream: str) -> Condition:
    """Parse, check and compile; raise StatementSyntaxError or ExpressionError."""
    tree = parse(text, "condition")
    depth = _depth(tree)
    if depth > MAX_DEPTH:
        raise ExpressionError(f"the condition nests {depth} levels deep; at most {MAX_DEPTH} (each or, and, not, comparison "
                              "and value is a level): split it over several routes into the same stream")
    expr = from_tree(tree)
    check(expr, schema, stream)
    return Condition(expr, text, compile_expr(expr))
