"""Where a configuration problem is and what it is: every front end and the validation report alike.

A :class:`ConfigIssue` names the file and line (and, for a syntax error in
statements, the column), the connector and the option, and says what was
expected and what was found; :class:`ConfigError` carries every issue found,
so one run of ``--check`` lists them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from sse_daemon.events.schema import did_you_mean
from sse_daemon.policy.redact import redact_urls


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



def unknown_message(name: str, known: Iterable[str], what: str = "key") -> str:
    return f"unknown {what} '{name}'{did_you_mean(name, known)}"
