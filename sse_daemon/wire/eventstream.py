"""The ``text/event-stream`` wire format: an incremental parser and an encoder.

The parser follows the WHATWG HTML standard, "9.2.5 Parsing an event stream"
and "9.2.6 Interpreting an event stream", rule for rule; the only additions
are memory limits (an over-long line or an oversized event is reported as a
:class:`Rejection` and skipped instead of being buffered).

Everything here is sans-I/O and uses only the standard library: the caller
feeds bytes as they arrive and gets back what a browser's ``EventSource``
would have dispatched, so the same code serves Twisted, tests and benchmarks.
"""

from __future__ import annotations

import codecs
import collections
from dataclasses import dataclass
from typing import Union

__all__ = ["Comment", "EventStreamParser", "Item", "Message", "Rejection", "encode_comment", "encode_event"]

_BOM = "\ufeff"
#: the largest ``retry:`` kept, in milliseconds (about 24.8 days, the most a browser's
#: setTimeout takes); larger values, however many digits, read as this
MAX_RETRY = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Message:
    """One dispatched event, as a browser's ``MessageEvent`` would carry it."""

    data: str
    event: str = "message"
    id: str = ""


@dataclass(frozen=True, slots=True)
class Comment:
    """A comment line (``: text``), reported only by a parser made with ``comments=True``."""

    text: str


@dataclass(frozen=True, slots=True)
class Rejection:
    """An event the parser refused in order to keep its memory bounded.

    ``size`` is in characters (decoded text, not bytes) and does not depend on
    how the stream was chunked: for ``"line-too-long"`` it is ``max_line + 1``
    (the line is never buffered, so its full length is never known); for
    ``"event-too-large"`` it is the length the event's data would have had
    after the line that crossed ``max_event``.
    """

    reason: str
    size: int


#: what the parser returns: dispatched events, refused ones, and (when asked for) comments
Item = Union[Message, Rejection, Comment]


class EventStreamParser:
    """Incremental event-stream parser for one connection at a time.

    ``max_line`` bounds a single line (without its line end) and ``max_event``
    bounds an event's data as it would be dispatched (the data buffer minus
    its final LF), both in characters. A line or an event over its limit is
    rejected: its data and event type are dropped up to the next blank line,
    but its ``id`` and ``retry`` still count, as they would in a browser, so a
    reconnect does not ask the server for the refused event again (it would
    be resent and refused on every reconnect).

    With ``comments`` a comment line is reported as a :class:`Comment` (one
    leading space removed, as for a field value); a browser drops them.
    """

    def __init__(self, max_line: int = 1 << 20, max_event: int = 1 << 20, comments: bool = False) -> None:
        self.max_line = max_line
        self.max_event = max_event
        self.comments = comments
        self.last_event_id = ""
        self.retry: int | None = None
        self.rejected: collections.Counter[str] = collections.Counter()
        self._new_stream()

    def _new_stream(self) -> None:
        """Reset per-connection state; last_event_id and retry survive a reconnect."""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._started = False  # a BOM is only stripped before the first character
        self._after_cr = False  # the last chunk ended in CR: a leading LF is its pair
        self._pending: list[str] = []  # pieces of the unfinished current line
        self._pending_size = 0
        self._skip_line = False  # dropping the rest of an over-long line
        self._data: list[str] = []  # data values; joined with LF this is the buffer minus its final LF
        self._data_size = 0  # length of the data buffer, LFs included
        self._event_type = ""
        self._id_buffer = self.last_event_id  # seeded again at the stream's first character (_feed_text)
        self._discarding = False  # the current event was rejected: its data and type are dropped

    def feed(self, chunk: bytes) -> list[Item]:
        """Take the next bytes of the stream; return what they completed."""
        return self._feed_text(self._decoder.decode(chunk))

    def close(self) -> list[Item]:
        """End of stream: drop the unfinished event and get ready for a new stream."""
        out = self._feed_text(self._decoder.decode(b"", final=True))
        self._new_stream()
        return out

    def _feed_text(self, text: str) -> list[Item]:
        """Handle whole lines with str methods; only the unfinished line is kept."""
        if not text:
            return []
        if not self._started:
            self._started = True
            # The standard starts each stream with an empty buffer; seeding it with the last
            # event ID the request resent (set before the stream began, as a saved cursor is)
            # keeps it from being blanked or set back by the first blank line on the new stream.
            self._id_buffer = self.last_event_id
            if text[0] == _BOM:
                text = text[1:]
        if self._after_cr:
            self._after_cr = False
            if text[:1] == "\n":
                text = text[1:]
        if "\r" in text:
            self._after_cr = text[-1] == "\r"
            text = text.replace("\r\n", "\n").replace("\r", "\n")

        out: list[Item] = []
        lines = text.split("\n")
        tail = lines.pop()  # not yet terminated
        if lines:
            rest = iter(lines)
            first = next(rest)
            if self._skip_line:
                self._skip_line = False  # first ends a line already rejected
            elif self._pending:
                size = self._pending_size + len(first)
                self._pending.append(first)
                pieces = self._pending
                self._pending = []
                self._pending_size = 0
                if size > self.max_line:
                    self._reject_line(out)
                else:
                    self._line("".join(pieces), out)
            else:
                self._complete_line(first, out)
            for line in rest:
                self._complete_line(line, out)
        if tail and not self._skip_line:
            size = self._pending_size + len(tail)
            if size > self.max_line:
                self._pending = []
                self._pending_size = 0
                self._skip_line = True
                self._reject_line(out)
            else:
                self._pending.append(tail)
                self._pending_size = size
        return out

    def _complete_line(self, line: str, out: list[Item]) -> None:
        if len(line) > self.max_line:
            self._reject_line(out)
        else:
            self._line(line, out)

    def _line(self, line: str, out: list[Item]) -> None:
        """Interpret one complete line, as in the standard's step list."""
        if not line:
            self._dispatch(out)
            return
        if line[0] == ":":
            if self.comments:
                out.append(Comment(line[2:] if line[1:2] == " " else line[1:]))
            return
        field, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if self._discarding and field not in ("id", "retry"):
            return
        if field == "data":
            size = self._data_size + len(value)  # the data length this line would give
            if size > self.max_event:
                self._reject(out, Rejection("event-too-large", size))
            else:
                self._data.append(value)
                self._data_size = size + 1
        elif field == "event":
            self._event_type = value
        elif field == "id":
            if "\0" not in value:
                self._id_buffer = value
        elif field == "retry":
            if value.isascii() and value.isdigit():
                # Clamped, not refused: a server asking for "very long" gets the longest wait
                # there is. Past ten digits int() is not even tried (a 400-digit value would
                # be a valid int and raise OverflowError wherever it met a float).
                digits = value.lstrip("0") or "0"
                self.retry = MAX_RETRY if len(digits) > len(str(MAX_RETRY)) else min(int(digits), MAX_RETRY)

    def _dispatch(self, out: list[Item]) -> None:
        """A blank line: the standard's "dispatch the event" steps."""
        self.last_event_id = self._id_buffer
        if self._data and not self._discarding:
            out.append(Message("\n".join(self._data), self._event_type or "message", self.last_event_id))
        self._data = []
        self._data_size = 0
        self._event_type = ""
        self._discarding = False

    def _reject_line(self, out: list[Item]) -> None:
        self._reject(out, Rejection("line-too-long", self.max_line + 1))

    def _reject(self, out: list[Item], rejection: Rejection) -> None:
        """Drop the current event; one Rejection per event, however many lines break limits."""
        if self._discarding:
            return
        self._discarding = True
        self.rejected[rejection.reason] += 1
        out.append(rejection)
        self._data = []
        self._data_size = 0
        self._event_type = ""


def _lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def encode_event(
    data: str,
    *,
    id: str | None = None,
    event: str | None = None,
    retry: int | None = None,
) -> bytes:
    """Encode one event; every line of ``data`` becomes a ``data:`` line.

    A value is always written after ``": "`` so a value that starts with a
    space survives the parser's removal of one space. Empty data still gives
    one ``data:`` line, so the client dispatches an event with data ``""``.
    """
    if retry is None and event is None and "\n" not in data and "\r" not in data:  # the common frame, at once
        if id is None:
            return ("data: " + data + "\n\n").encode("utf-8")
        if "\r" not in id and "\n" not in id and "\0" not in id:
            return ("id: " + id + "\ndata: " + data + "\n\n").encode("utf-8")
    head: list[str] = []
    if retry is not None:
        if not isinstance(retry, int) or isinstance(retry, bool):
            raise TypeError(f"retry must be an int (milliseconds), got {retry!r}")
        if retry < 0:
            raise ValueError(f"retry must be a non-negative number of milliseconds, got {retry}")
        head.append(f"retry: {retry}\n")
    if event is not None:
        if "\r" in event or "\n" in event:
            raise ValueError(f"event type must not contain CR or LF: {event!r}")
        head.append(f"event: {event}\n")
    if id is not None:
        if "\r" in id or "\n" in id or "\0" in id:
            raise ValueError(f"event id must not contain CR, LF or NUL: {id!r}")
        head.append(f"id: {id}\n")
    body = "data: " + "\ndata: ".join(_lines(data)) + "\n\n"
    return ("".join(head) + body).encode("utf-8")


def encode_comment(text: str = "") -> bytes:
    """Encode a comment block (keep-alives, notes); clients ignore it."""
    return ("".join(f": {line}\n" if line else ":\n" for line in _lines(text)) + "\n").encode("utf-8")
