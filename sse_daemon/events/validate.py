"""One check for every value that enters a stream. Pure: no I/O, no Twisted.

Whatever enters the daemon (an ingest body, an SSE source's message, a route's
output, an entry read back from Redis) must be encodable by every mapper that
may carry it: the JSON and text mappers, ``map.payload`` templates and the
Redis bus's fields. A value that passes :func:`check_value` is; one that does
not is refused where it enters, with one of a fixed set of reasons (used as
metric labels and in the 400 body) and the place it was found:

- ``invalid-unicode``: a lone surrogate (``"\\ud800"``) in a string or a key;
  it has no UTF-8 form, so no sink could write it.
- ``non-finite-number``: ``1e400`` (Python's ``json`` reads it as infinity,
  silently), ``NaN``, ``Infinity``: JSON has no way to write them.
- ``too-deep``: arrays and objects nested more than :data:`MAX_DEPTH` deep in
  one value, or a JSON text nested more than :data:`MAX_DOCUMENT_DEPTH` deep.
- ``number-out-of-range``: an integer outside :data:`INT_MIN`..:data:`INT_MAX`.

Depth is checked without recursion: a 100,000-deep body is refused by a
bracket count before ``json.loads`` (which recurses in C and would raise
RecursionError near Python's recursion limit) ever sees it.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate, islice
from typing import Any, Iterator, Mapping

__all__ = [
    "REASONS", "MAX_DEPTH", "MAX_DOCUMENT_DEPTH", "INT_MIN", "INT_MAX", "InvalidValue",
    "load_json", "check_value", "check_steps", "check_values", "nesting", "show_path", "CHECK_STEP",
]

REASONS = ("invalid-unicode", "non-finite-number", "too-deep", "number-out-of-range")

#: Arrays and objects one attribute value may nest. Sinks write a value inside
#: ``{"event":{...}}`` and possibly a ``map.enclosing.element``; 32 leaves room for
#: both under 64, the smallest default limit of mainstream JSON decoders
#: (.NET System.Text.Json 64; Ruby 100; serde_json 128), and is far below
#: Python's recursion limit, so no encoder of the daemon can fail on depth.
MAX_DEPTH = 32
#: Nesting of a whole JSON text read (a body, an upstream message, a Redis entry):
#: a value's 32 plus room for arrays of events, ``{"event":...}`` and enclosing elements.
MAX_DOCUMENT_DEPTH = 64
#: Integers carried: signed and unsigned 64-bit. Beyond that Go, Java, .NET and Rust
#: decoders refuse the number or lose it, and parsing a long digit string is
#: quadratic in CPython (hence its own 4300-digit guard); ids of 64 bits still pass.
INT_MIN = -(2**63)
INT_MAX = 2**64 - 1
#: items of arrays and objects :func:`check_steps` walks between two yields: well under a millisecond
CHECK_STEP = 1000
#: longest integer literal parsed at all ("-18446744073709551615" has 21 characters)
_MAX_INT_TEXT = 21

_SURROGATE = re.compile("[\ud800-\udfff]")
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_DELTA = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class InvalidValue(ValueError):
    """A value no sink could write: ``reason`` is one of :data:`REASONS`, ``path`` where inside the value."""

    def __init__(self, reason: str, message: str, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.reason = reason
        self.path = path

    @property
    def at(self) -> str:
        """`` at .a[2]`` when the problem is inside the value, else empty."""
        return f" at {show_path(self.path)}" if self.path else ""


class _OutOfRange:
    """An integer literal too long to parse (``parse_int``); refused as number-out-of-range where it is carried."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def show_path(path: tuple[str | int, ...], most: int = 12) -> str:
    """``("a", 2, "b c")`` -> ``.a[2]["b c"]``; a longer path than ``most`` steps shows its end only."""
    parts = ["..."] if len(path) > most else []
    for step in path[-most:]:
        if isinstance(step, int):
            parts.append(f"[{step}]")
        elif step.isidentifier():
            parts.append(f".{step}")
        else:
            parts.append("[" + json.dumps(step) + "]")  # ensure_ascii: a lone surrogate key shows as \ud800
    return "".join(parts)


def nesting(text: str) -> int:
    """How deep the arrays and objects of a JSON text nest, without recursion or a parse.

    Brackets inside strings do not count. On text that is not JSON the figure
    may be off, but only past the first syntax error, where ``json.loads`` stops.
    """
    plain = text.replace("\\\\", "").replace('\\"', "")  # after this every '"' opens or closes a string
    outside = "".join(plain.split('"')[::2])
    brackets = outside.encode("utf-8", "surrogatepass").translate(None, _NOT_BRACKET)
    return max(accumulate(map(_DELTA.__getitem__, brackets)), default=0)


def _parse_int(text: str) -> int | _OutOfRange:
    return int(text) if len(text) <= _MAX_INT_TEXT else _OutOfRange(text)


def _parse_constant(name: str) -> Any:
    raise InvalidValue("non-finite-number", f"{name} is not a finite number (JSON cannot carry it)")


#: one decoder for every document: ``json.loads`` with hooks would build a new one per call (a fifth of
#: the cost of a small line of a streaming publish)
_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_constant=_parse_constant)


def load_json(text: str, max_depth: int = MAX_DOCUMENT_DEPTH) -> Any:
    """``json.loads`` that cannot recurse too deep or take ages over digits.

    Raises :class:`InvalidValue` (``too-deep``, ``non-finite-number`` for NaN and
    Infinity) or ``ValueError`` for text that is not JSON. ``1e400`` comes back
    as infinity and long integers as an out-of-range marker: :func:`check_value`
    refuses them, naming where, in whatever part of the document is carried.
    """
    if text.count("[") + text.count("{") > max_depth:  # the count bounds the depth: scan only when it could be over
        depth = nesting(text)
        if depth > max_depth:
            raise InvalidValue("too-deep", f"the JSON nests {depth} arrays and objects deep; at most {max_depth} are accepted")
    try:  # the value at once, without decode's two whitespace matches: a JSON text with nothing around it (the common case)
        value, end = _DECODER.raw_decode(text)
    except json.JSONDecodeError:
        if text.startswith("\ufeff"):  # the decoder's error would point at its first character and say no more
            raise ValueError("it starts with a byte order mark (U+FEFF); send the JSON without one") from None
        return _DECODER.decode(text)  # whitespace before it, or not JSON: the decoder's own answer and error
    if end != len(text):
        return _DECODER.decode(text)  # whitespace after it, or more than one value: likewise
    return value


def _scalar_problem(value: Any) -> tuple[str, str] | None:
    kind = type(value)
    if kind is str:
        if not value.isascii():
            found = _SURROGATE.search(value)
            if found:
                return "invalid-unicode", f"a lone surrogate (U+{ord(found.group()):04X}) at character {found.start()}; it has no UTF-8 form"
        return None
    if kind is float:
        return None if math.isfinite(value) else ("non-finite-number", f"{value} is not a finite number (JSON cannot carry it)")
    if kind is int:
        if INT_MIN <= value <= INT_MAX:
            return None
        return "number-out-of-range", f"{_digits(str(value))} is outside the integers carried ({INT_MIN} to {INT_MAX})"
    if kind is _OutOfRange:
        return "number-out-of-range", f"{_digits(value.text)} is outside the integers carried ({INT_MIN} to {INT_MAX})"
    return None  # bool, None (and containers, walked by check_value)


def _digits(text: str) -> str:
    return text if len(text) <= 24 else f"{text[:12]}...({len(text.lstrip('-'))} digits)"


def _fine(value: Any) -> bool:
    """The common cases, cheaply: plain ASCII text, an integer in range, a finite float, true, false, null."""
    kind = type(value)
    if kind is str:
        return value.isascii()
    if kind is int:
        return INT_MIN <= value <= INT_MAX
    if kind is float:
        return value - value == 0.0  # false for inf and nan
    return value is None or kind is bool


def check_value(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Raise :class:`InvalidValue` unless every sink can write ``value`` (a decoded JSON value).

    Walks arrays and objects with an explicit stack, so no input can exhaust
    Python's recursion; the first problem found is reported with its path.
    """
    kind = type(value)
    if kind is not dict and kind is not list:
        if not _fine(value):
            problem = _scalar_problem(value)
            if problem is not None:
                raise InvalidValue(*problem)
        return
    for _ in check_steps(value, max_depth, 0):
        pass


def check_steps(value: Any, max_depth: int = MAX_DEPTH, step: int = CHECK_STEP) -> Iterator[int]:
    """:func:`check_value` as a generator: it yields how many items it walked, every ``step`` or more
    (0: only at the end), so a caller can spread a large value's walk over reactor turns."""
    kind = type(value)
    if kind is not dict and kind is not list:
        check_value(value, max_depth)
        yield 1
        return
    walked = 0
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        container, path = stack.pop()
        if len(path) >= max_depth:
            raise InvalidValue("too-deep", f"arrays and objects nest deeper than {max_depth} levels", path)
        if type(container) is dict:
            for key in container:
                if not key.isascii() and _SURROGATE.search(key):
                    raise InvalidValue("invalid-unicode", "a key holds a lone surrogate; it has no UTF-8 form", path + (key,))
            items: Any = iter(container.items())
        else:
            items = enumerate(container)
        length = len(container)
        piece = step if step and length > step else length  # a long one in pieces, a step each
        for _ in range(0, length, piece) if length else ():
            for key, item in islice(items, piece) if piece < length else items:
                if _fine(item):
                    continue
                kind = type(item)
                if kind is dict or kind is list:
                    stack.append((item, path + (key,)))
                    continue
                problem = _scalar_problem(item)
                if problem is not None:
                    raise InvalidValue(*problem, path + (key,))
            walked += piece
            if step and walked >= step:
                yield walked
                walked = 0
        walked += 1  # the container itself: a million empty ones are a long walk too
        if step and walked >= step:
            yield walked
            walked = 0
    yield walked


def check_values(values: Mapping[str, Any], max_depth: int = MAX_DEPTH) -> None:
    """Check an event's attribute values; the error's message names the attribute."""
    for name, value in values.items():
        try:
            check_value(value, max_depth)
        except InvalidValue as e:
            raise InvalidValue(e.reason, f"attribute '{name}'{e.at}: {e}", e.path) from None
