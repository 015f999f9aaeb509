"""Newline-delimited JSON bodies, cut into lines as their bytes arrive (pure: bytes in, lines out).

A streaming publish (``Content-Type: application/x-ndjson``) sends one event (or one
JSON array of events) per line, for as long as it likes: the daemon takes each line as
it completes, so nothing waits for the end of the body. A line is ended by ``\\n`` (a
``\\r`` before it is dropped); blank lines are skipped; the last line needs no newline.
A line longer than ``max_line`` bytes is never held whole: its bytes are dropped as
they come and the line is reported as :data:`TOO_LONG`, so memory stays bounded by
``max_line`` whatever a client sends.
"""

from __future__ import annotations

from typing import Final

#: what :meth:`NdjsonLines.feed` gives in place of a line longer than ``max_line``
TOO_LONG: Final = None


class NdjsonLines:
    """Cuts a body into numbered lines (1-based, blank ones counted) as chunks arrive."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self.number = 0  # lines ended so far
        self._partial = bytearray()
        self._too_long = False  # the line being read is past max_line: its bytes are dropped

    def feed(self, data: bytes) -> list[tuple[int, bytes | None]]:
        """The lines ``data`` ends: (number, line without its newline, or TOO_LONG); blank ones left out."""
        *ended, rest = data.split(b"\n")
        lines: list[tuple[int, bytes | None]] = []
        if ended:
            self._take(ended[0])  # the end of the line the previous chunks began
            self._end_line(lines)
            number, max_line = self.number, self.max_line
            for line in ended[1:]:  # lines whole in this chunk, at once (the common case)
                number += 1
                if len(line) > max_line:
                    lines.append((number, TOO_LONG))
                elif line.strip():
                    lines.append((number, line.removesuffix(b"\r")))
            self.number = number
        self._take(rest)
        return lines

    def end(self) -> list[tuple[int, bytes | None]]:
        """The last line, when the body did not end with a newline."""
        lines: list[tuple[int, bytes | None]] = []
        if self._partial or self._too_long:
            self._end_line(lines)
        return lines

    def _take(self, piece: bytes) -> None:
        if self._too_long or not piece:
            return
        if len(self._partial) + len(piece) > self.max_line:
            self._too_long = True
            self._partial.clear()
            return
        self._partial += piece

    def _end_line(self, lines: list[tuple[int, bytes | None]]) -> None:
        self.number += 1
        if self._too_long:
            lines.append((self.number, TOO_LONG))
        else:
            line = bytes(self._partial).removesuffix(b"\r")
            if line.strip():
                lines.append((self.number, line))
        self._partial.clear()
        self._too_long = False
