"""Option values: the parsers that turn what a file says into typed values. Pure.

Values may be strings or numbers, as in the spec's ``server.port='8020'``;
each parser raises :class:`OptionError` saying what was expected and what was
found. :class:`Url` and :class:`RedisUrl` never show their credentials.
"""

from __future__ import annotations

import math

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import unquote, urlsplit

from sse_daemon.policy.redact import redact_url, split_userinfo

KIB = 1024
MIB = 1024 * 1024


class OptionError(ValueError):
    """Raised by an option parser; the message says what was expected and found."""


def found(value: Any) -> str:
    """A value as an error message shows it: its repr, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------- option kinds


def parse_int(value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool):
        raise OptionError(f"expected an integer, found {found(value)}")
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        try:
            value = int(value)
        except ValueError:  # more digits than Python reads as an int (4300)
            raise OptionError(f"expected an integer, found one of {len(value.strip().lstrip('+-'))} digits") from None
    if not isinstance(value, int):
        raise OptionError(f"expected an integer, found {found(value)}")
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        bounds = (
            f"from {minimum} to {maximum}" if maximum is not None else f"of at least {minimum}"
        )
        raise OptionError(f"expected an integer {bounds}, found {value}")
    return value


def parse_number(value: Any, minimum: float | None = None) -> float:
    if isinstance(value, bool):
        raise OptionError(f"expected a number, found {found(value)}")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise OptionError(f"expected a number, found {found(value)}") from None
    if not isinstance(value, (int, float)) or value != value:
        raise OptionError(f"expected a number, found {found(value)}")
    if value in (math.inf, -math.inf):  # a deadline or a limit of infinity is 0 here ("off"), and no timer takes it
        raise OptionError(f"expected a finite number (0 turns a limit or a deadline off), found {found(value)}")
    if minimum is not None and value < minimum:
        raise OptionError(f"expected a number of at least {minimum:g}, found {value:g}")
    return float(value)


#: the words a boolean option takes: true and false, and YAML 1.1's yes, no, on and off (configurations that wrote them keep working)
_BOOLEANS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False}


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _BOOLEANS:
        return _BOOLEANS[value.strip().lower()]
    raise OptionError(f"expected true or false, found {found(value)}")


def parse_string(value: Any) -> str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise OptionError(f"expected a string, found {found(value)}")


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


def parse_headers(value: Any) -> tuple[tuple[str, str], ...]:
    """Headers in the spec's format ``'Name:value','Name2:value2'``.

    The unquoted form ``Name:value,Name2:value2`` and a YAML mapping are
    accepted too. Names must be HTTP tokens; values may not hold line breaks.
    """
    if isinstance(value, Mapping):
        items = [(str(k), "" if v is None else str(v)) for k, v in value.items()]
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return ()
        if text.startswith("'") and text.endswith("'") and len(text) >= 2:
            pieces = text[1:-1].split("','")
        else:
            pieces = text.split(",")
        items = []
        for piece in pieces:
            name, colon, header_value = piece.partition(":")
            if not colon:  # not echoed: it may be a header value (a token) missing its name
                raise OptionError(
                    f"expected 'Name:value','Name2:value2', found an item without a colon (item {len(items) + 1})"
                )
            items.append((name, header_value))
    else:
        raise OptionError(f"expected 'Name:value','Name2:value2', found {type(value).__name__}")
    headers = []
    for name, header_value in items:
        name, header_value = name.strip(), header_value.strip()
        if not _TOKEN.match(name):  # echoed only when it cannot be a value run into its name
            shown = found(name) if len(name) <= 40 and not any(c.isspace() for c in name) else "a header name"
            raise OptionError(f"{shown} is not a valid HTTP header name")
        if any(c in header_value for c in "\r\n\0"):
            raise OptionError(f"the value of header {name!r} contains a line break or NUL")
        headers.append((name, header_value))
    return tuple(headers)


@dataclass(frozen=True, slots=True)
class Url:
    """A parsed ``receiver.url``: where a source listens (http) or connects (sse).

    ``str()`` and ``repr()`` show it with credentials masked (:func:`redact_url`),
    so no log line, ``--check`` or status page can show them by accident;
    ``text`` is the URL as written, for the request alone.
    """

    text: str = field(repr=False)
    scheme: str
    host: str
    port: int
    path: str  # with leading slash, without query

    def __str__(self) -> str:
        return redact_url(self.text)

    def __repr__(self) -> str:
        return f"Url({redact_url(self.text)!r})"

    @property
    def request_url(self) -> str:
        """The URL to request: without ``user:password@`` (sent as Basic credentials instead)."""
        return split_userinfo(self.text)[0]

    @property
    def credentials(self) -> tuple[str, str] | None:
        """``(user, password)`` from the URL's userinfo (percent-decoded), or None."""
        return split_userinfo(self.text)[1]


def parse_url(value: Any) -> Url:
    if not isinstance(value, str) or not value.strip():
        raise OptionError(f"expected a URL such as 'http://localhost:8020/testsse', found {found(value)}")
    text = value.strip()
    try:
        parts = urlsplit(text)
    except ValueError:  # an unclosed [IPv6 literal
        raise OptionError(f"expected a URL such as 'http://localhost:8020/testsse', found {found(redact_url(text))}") from None
    if parts.scheme not in ("http", "https"):
        raise OptionError(f"expected an http:// or https:// URL, found {found(redact_url(text))}")
    if not parts.hostname:
        raise OptionError(f"expected a URL with a host, found {found(redact_url(text))}")
    try:
        port = parts.port
    except ValueError:
        raise OptionError(f"expected a port from 0 to 65535 in the URL, found {found(redact_url(text))}") from None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return Url(text, parts.scheme, parts.hostname, port, normalise_path(parts.path or "/"))


def normalise_path(path: str) -> str:
    """Leading slash optional, trailing slash ignored: ``testsse`` -> ``/testsse``."""
    stripped = path.strip().strip("/")
    return "/" + stripped


def parse_path(value: Any) -> str:
    text = parse_string(value)
    if any(c in text for c in "?#\r\n \t"):
        raise OptionError(f"expected a URL path such as 'testsse' or '/events/a', found {found(text)}")
    return normalise_path(text)


def parse_choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = parse_string(value).strip().lower()
        if text not in choices:
            raise OptionError(f"expected one of {', '.join(choices)}, found {found(value)}")
        return text

    return parse


def parse_list(value: Any) -> tuple[str, ...]:
    """A YAML list, or a comma-separated string (the statement form)."""
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise OptionError(f"expected a list of strings, found {found(value)}")




@dataclass(frozen=True, slots=True)
class RedisUrl:
    """``redis://[[user]:password@]host[:port][/db]``, parsed once at load."""

    host: str
    port: int
    db: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:  # never shows the password (logs, --check)
        return f"redis://{self.host}:{self.port}/{self.db}"


def parse_redis_url(value: Any) -> RedisUrl:
    text = parse_string(value).strip()
    shown = redact_url(text)  # errors never echo the password
    try:
        parts = urlsplit(text)
    except ValueError:
        raise OptionError(f"expected a URL such as redis://127.0.0.1:6379/0, found {found(shown)}") from None
    if parts.scheme != "redis":
        raise OptionError(f"expected a URL such as redis://127.0.0.1:6379/0, found {found(shown)}")
    try:
        port = parts.port or 6379
    except ValueError:
        raise OptionError(f"the port of {shown!r} is not a number from 1 to 65535") from None
    db_text = parts.path.strip("/") or "0"
    if not db_text.isdigit():
        raise OptionError(f"the database of {shown!r} must be a number, such as /0")
    if not parts.hostname:
        raise OptionError(f"{shown!r} names no host")
    return RedisUrl(parts.hostname, port, int(db_text),
                    unquote(parts.username) if parts.username else None,
                    unquote(parts.password) if parts.password is not None else None)


