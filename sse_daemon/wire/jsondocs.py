"""Back-to-back JSON documents in a byte stream: the original system's "SSE".

The sink of the system the spec comes from wrote each payload as one bare
chunk (``{"event":{...}}{"event":{...}}``, no framing, no newline), and its
source trusted TCP reads to keep documents apart. This splitter finds document
boundaries by scanning brackets and strings, so documents split across reads
or packed into one read come out whole. Sans-I/O, like the SSE parser.
"""

from __future__ import annotations

import codecs
from collections import Counter

from sse_daemon.wire.eventstream import Rejection

_OPEN = {"{": "}", "[": "]"}
_WHITESPACE = " \t\r\n"


class JsonDocumentSplitter:
    """Bytes in, JSON document texts out (top-level objects and arrays).

    Text between documents that is neither white space nor the start of an
    object or array is skipped and counted (``not-json``); a document longer
    than ``max_document`` characters is skipped whole and counted
    (``event-too-large``), without being buffered.
    """

    def __init__(self, max_document: int = 1 << 20) -> None:
        self.max_document = max_document
        self.rejected: Counter[str] = Counter()
        self._reset()

    def _reset(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pieces: list[str] = []  # the current document so far
        self._size = 0
        self._closers: list[str] = []  # expected closing brackets, innermost last
        self._in_string = False
        self._escaped = False
        self._oversized = False
        self._junk = False  # inside a run of skipped text

    def feed(self, chunk: bytes) -> list[str | Rejection]:
        return self._scan(self._decoder.decode(chunk))

    def close(self) -> list[str | Rejection]:
        """End of stream: an unfinished document is discarded; ready for a new stream."""
        out = self._scan(self._decoder.decode(b"", final=True))
        self._reset()
        return out

    def _scan(self, text: str) -> list[str | Rejection]:
        out: list[str | Rejection] = []
        start = 0  # where the current document's text in ``text`` begins
        i, n = 0, len(text)
        while i < n:
            c = text[i]
            if not self._closers:  # between documents
                if c in _OPEN:
                    self._closers.append(_OPEN[c])
                    self._junk = False
                    start = i
                elif c not in _WHITESPACE and not self._junk:
                    self._junk = True
                    self.rejected["not-json"] += 1
                    out.append(Rejection("not-json", 1))
                i += 1
                continue
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif c == "\\":
                    self._escaped = True
                elif c == '"':
                    self._in_string = False
            elif c == '"':
                self._in_string = True
            elif c in _OPEN:
                self._closers.append(_OPEN[c])
            elif c == self._closers[-1]:
                self._closers.pop()
                if not self._closers:
                    out.extend(self._finish(text[start:i + 1]))
            i += 1
        if self._closers:
            self._keep(text[start:])
        return out

    def _keep(self, piece: str) -> None:
        self._size += len(piece)
        if self._size > self.max_document:
            if not self._oversized:
                self._oversized = True
                self._pieces = []
            return
        self._pieces.append(piece)

    def _finish(self, last: str) -> list[str | Rejection]:
        self._keep(last)
        document = "".join(self._pieces)
        size, oversized = self._size, self._oversized
        self._pieces, self._size, self._oversized = [], 0, False
        if oversized:
            self.rejected["event-too-large"] += 1
            return [Rejection("event-too-large", size)]
        return [document]
