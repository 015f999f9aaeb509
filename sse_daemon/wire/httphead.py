"""Whole, plain HTTP/1.1 POSTs at the front of a buffer, for the publish fast lane (edge/leanrequest.py).

A publisher's small POST arrives in one read: its head and body whole. Such a
request is split here at once, with a few C-speed string calls, instead of
line by line through twisted.web's parser. Only the plainest requests are
taken; anything this module does not recognise (another method or version,
a header twisted.web gives a meaning of its own, a byte that is not printable
ASCII, a body that has not arrived whole, a head past twisted.web's limits)
is :data:`None`, and the caller leaves the bytes to twisted.web, whose answer
(a 400, a 413, a 100 Continue, chunked decoding) is then the one the client gets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["PlainPost", "plain_post", "MAX_HEAD", "MAX_HEADERS"]

#: twisted.web's own limits on a request head (``HTTPChannel.totalHeadersSize``), and fewer headers
#: than its ``maxHeaders``: a head past them goes to twisted.web, which refuses it
MAX_HEAD = 16384
MAX_HEADERS = 100

#: headers with a meaning for the connection or the body that twisted.web handles itself
_NOT_PLAIN = frozenset((b"transfer-encoding", b"expect", b"upgrade", b"te", b"trailer", b"http2-settings"))
#: the bytes a head may hold between its CRLFs: printable ASCII and tab (no control byte, bare CR or LF, DEL, non-ASCII)
_PRINTABLE = bytes(range(0x20, 0x7F)) + b"\t"
#: header names, all of them joined: RFC 9110 tokens
_TOKENS = re.compile(rb"[!#$%&'*+.^_`|~0-9a-z-]+")


@dataclass(frozen=True, slots=True)
class PlainPost:
    """One whole request: what its resource reads, and where the next request starts."""

    target: bytes  # as sent: the path and any query
    path: bytes  # the target without its query
    headers: dict[bytes, bytes]  # by lower-cased name; each name once
    body: bytes
    end: int  # the offset in the buffer just past the body
    close: bool  # the client asked to close after the answer (``Connection: close``)


def plain_post(data: bytes, start: int = 0) -> PlainPost | None:
    """The plain POST that starts at ``data[start]``, if one is there whole; else None (twisted.web's)."""
    if not data.startswith(b"POST /", start):
        return None
    head_end = data.find(b"\r\n\r\n", start, start + MAX_HEAD)
    if head_end < 0:
        return None
    head = data[start:head_end]
    if head.replace(b"\r\n", b"").translate(None, _PRINTABLE):  # what is left is a byte twisted.web must judge
        return None
    lines = head.split(b"\r\n")
    request_line = lines[0].split(b" ")
    if len(request_line) != 3 or request_line[2] != b"HTTP/1.1" or len(lines) > MAX_HEADERS + 1:
        return None
    target = request_line[1]
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:  # an obs-fold continuation, or no colon at all
            return None
        headers[name.lower()] = value.strip(b" \t")
    if (len(headers) != len(lines) - 1 or b"" in headers  # a name twice, or an empty one
            or _TOKENS.fullmatch(b"".join(headers)) is None  # a space before a colon, a name that is no token
            or not _NOT_PLAIN.isdisjoint(headers)):
        return None
    length = headers.get(b"content-length")
    if length is None or not length.isdigit() or len(length) > 15:
        return None
    body_start = head_end + 4
    end = body_start + int(length)
    if len(data) < end:
        return None
    connection = headers.get(b"connection")
    close = connection is not None and b"close" in connection.lower()
    return PlainPost(target, target.partition(b"?")[0], headers, data[body_start:end], end, close)
