"""The small JSONPath subset the JSON mapper needs. Pure.

Supported: ``$`` (the whole document), dotted names (``$.portfolio.stock``),
array indexes (``$.stocks[0]``, ``$[1]``) and bracketed names for keys that
are not plain words (``$['first name']``). The leading ``$`` is optional
(``stock.price`` is ``$.stock.price``), as in the original's paths. Wildcards,
filters, slices and recursive descent are not supported: a path names one
place, so a missing value can be reported as missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]|\['([^']*)'\]|\[\"([^\"]*)\"\]")
_FIRST_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")

#: returned by :meth:`JsonPath.find` when the path leads nowhere
MISSING: Any = object()


class JsonPathError(ValueError):
    """A path outside the supported subset; the message shows an example."""


@dataclass(frozen=True, slots=True)
class JsonPath:
    steps: tuple[str | int, ...]  # names (str) and array indexes (int); () is ``$``
    text: str = field(compare=False)  # as written: ``stock.price`` equals ``$.stock.price``

    def __str__(self) -> str:
        return self.text

    @property
    def is_root(self) -> bool:
        return not self.steps

    @property
    def names_only(self) -> bool:
        return all(isinstance(step, str) for step in self.steps)

    def find(self, document: Any) -> Any:
        """The value at this path, or :data:`MISSING`."""
        value = document
        for step in self.steps:
            if isinstance(step, int):
                if not isinstance(value, list) or step >= len(value):
                    return MISSING
            elif not isinstance(value, dict) or step not in value:
                return MISSING
            value = value[step]
        return value


def parse_path(text: str) -> JsonPath:
    """Parse ``$.a.b[0]``, ``a.b`` or ``$``; raise JsonPathError otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise JsonPathError(f"expected a JSONPath such as '$.portfolio.stock' or 'stock.price[0]', found {text!r}")
    source = text.strip()
    rest = source
    if rest.startswith("$"):
        rest = rest[1:]
    else:
        first = _FIRST_NAME.match(rest)
        if first is None:
            raise JsonPathError(f"expected a JSONPath starting with '$' or a name, found {source!r}")
        rest = "." + rest
    steps: list[str | int] = []
    position = 0
    while position < len(rest):
        match = _STEP.match(rest, position)
        if match is None:
            raise JsonPathError(
                f"expected '.name', '[index]' or ['name'] at {rest[position:]!r} in {source!r} "
                "(only dotted names and array indexes are supported)"
            )
        name, index, quoted, double_quoted = match.groups()
        steps.append(int(index) if index is not None else next(s for s in (name, quoted, double_quoted) if s is not None))
        position = match.end()
    return JsonPath(tuple(steps), source)
