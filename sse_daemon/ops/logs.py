"""Log observers for twistd: JSON or text, with a level filter.

twistd writes every level, debug included, and has no ``--log-level``; its
``--logger=module.factory`` option takes a zero-argument factory. These
factories read their settings from the environment, so a systemd unit can
say::

    Environment=SSE_DAEMON_LOG_LEVEL=info
    ExecStart=... twistd --nodaemon --pidfile= --logger=sse_daemon.ops.logs.json_observer sse-daemon ...

The plugin's own ``--log-format``/``--log-level`` options do the same without
``--logger``: they are parsed before twistd starts logging, so they can
choose this module's :func:`selected_observer` for it (see ``tap.py``).

A JSON line holds ``time`` (ISO 8601, UTC), ``level``, ``namespace``,
``message`` (the formatted text) and the event's structured fields; values
of fields whose names look like secrets are replaced by ``"<redacted>"``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from datetime import datetime, timezone
from typing import IO, Any, Callable

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    formatEventAsClassicLogText,
)
from twisted.python import logfile

LEVEL_ENV = "SSE_DAEMON_LOG_LEVEL"
FORMAT_ENV = "SSE_DAEMON_LOG_FORMAT"
FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warn", "error", "critical")
#: field names whose values never reach a log line
SECRET_WORDS = ("password", "passwd", "secret", "token", "authorization", "cookie", "api_key", "apikey", "credential")

#: characters that move the cursor, end or split a line for some reader, or have no UTF-8 form: every
#: C0 control but LF and tab (twistd's text lines already continue an LF with a tab), DEL, the C1
#: controls (NEL, CSI), U+2028/U+2029 and lone surrogates
_TEXT_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
#: what json.dumps(ensure_ascii=False) leaves raw of the above (it escapes C0 itself)
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff]")

#: set by the plugin's options (tap.py); wins over the environment
_selected: dict[str, str] = {}


def parse_level(text: str) -> LogLevel:
    name = text.strip().lower()
    name = {"warning": "warn", "fatal": "critical"}.get(name, name)
    if name not in LEVELS:
        raise ValueError(f"unknown log level {text!r}; expected one of {', '.join(LEVELS)}")
    return LogLevel.levelWithName(name)


def parse_format(text: str) -> str:
    name = text.strip().lower()
    if name not in FORMATS:
        raise ValueError(f"unknown log format {text!r}; expected one of {', '.join(FORMATS)}")
    return name


def _escaped(match: re.Match[str]) -> str:
    char = ord(match.group())
    return f"\\x{char:02x}" if char < 0x100 else f"\\u{char:04x}"


def _json_escaped(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def event_as_text(event: dict[str, Any]) -> str | None:
    """twistd's text line, with the characters of :data:`_TEXT_UNSAFE` written as ``\\xNN``/``\\uNNNN``.

    A value a client or an upstream sent (a log sink's payload, an origin, a
    status line) must not return the cursor over the line, forge a line of its
    own (CR, NUL for journald, NEL) or make the write fail (a lone surrogate,
    which would lose the line).
    """
    text = formatEventAsClassicLogText(event)
    return None if text is None else _TEXT_UNSAFE.sub(_escaped, text)


def _redact(name: str, value: Any) -> Any:
    lowered = name.lower()
    return "<redacted>" if any(word in lowered for word in SECRET_WORDS) else value


def _plain(value: Any) -> Any:
    """A JSON-safe form of a field value; anything exotic becomes its repr."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else repr(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(_redact(str(k), v)) for k, v in value.items()}
    return repr(value)


def event_as_json(event: dict[str, Any]) -> str:
    """One log event as one JSON line (no embedded newlines)."""
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0.0), timezone.utc).isoformat(timespec="milliseconds"),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    system = event.get("log_system")
    if system not in (None, "-"):
        record["system"] = system
    for key, value in event.items():
        if key.startswith("log_") or key in record or key in ("format", "message", "isError", "system", "time", "why", "failure"):
            continue
        record[key] = _plain(_redact(key, value))
    # json.dumps escapes C0 controls; NEL and U+2028/U+2029 end a line for some readers (str.splitlines),
    # and a lone surrogate has no UTF-8 form: written as JSON escapes, a record stays one line that writes
    line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    return _JSON_UNSAFE.sub(_json_escaped, line) + "\n"


def make_observer(fmt: str, level: LogLevel, stream: IO[str]) -> ILogObserver:
    """An observer writing ``fmt`` lines to ``stream``, dropping events below ``level``."""
    formatter: Callable[[dict], str | None] = (
        event_as_json if fmt == "json" else event_as_text
    )
    return FilteringLogObserver(
        FileLogObserver(stream, formatter),
        [LogLevelFilterPredicate(defaultLogLevel=level)],
    )


def _settings(fmt: str | None) -> tuple[str, LogLevel]:
    level = parse_level(_selected.get("level") or os.environ.get(LEVEL_ENV) or "info")
    chosen = fmt or _selected.get("format") or os.environ.get(FORMAT_ENV) or "text"
    return parse_format(chosen), level


def _stream() -> IO[str]:
    """Where lines go: the file chosen with twistd's --logfile (via the plugin), else stdout.

    Taken when the observer is made, before twistd redirects ``sys.stdout``
    into the log (which would make a loop).
    """
    path = _selected.get("logfile")
    if path and path != "-":
        return logfile.LogFile.fromFullPath(path)
    return sys.stdout


def json_observer() -> ILogObserver:
    """``twistd --logger=sse_daemon.ops.logs.json_observer``: JSON lines, level from $SSE_DAEMON_LOG_LEVEL."""
    fmt, level = _settings("json")
    return make_observer(fmt, level, _stream())


def text_observer() -> ILogObserver:
    """``twistd --logger=sse_daemon.ops.logs.text_observer``: twistd's text lines with a level filter."""
    fmt, level = _settings("text")
    return make_observer(fmt, level, _stream())


def observer() -> ILogObserver:
    """``twistd --logger=sse_daemon.ops.logs.observer``: format from $SSE_DAEMON_LOG_FORMAT (default text)."""
    fmt, level = _settings(None)
    return make_observer(fmt, level, _stream())


#: what the plugin's --log-format/--log-level install as twistd's --logger
selected_observer = observer


def select(fmt: str | None = None, level: str | None = None, logfile_path: str | None = None) -> None:
    """Called by the plugin's options: settings that win over the environment."""
    if fmt is not None:
        _selected["format"] = parse_format(fmt)
    if level is not None:
        parse_level(level)
        _selected["level"] = level
    if logfile_path:
        _selected["logfile"] = logfile_path
