"""The publish fast lane: a plain POST to an ingest, answered without twisted.web's Request.

Most of a small publish's CPU went to twisted.web's per-request machinery
(a Request and its two Headers, the head parsed line by line, the resource
walk, the response head assembled through Headers) rather than to the
publish. A :class:`LeanRequest` is built from a whole request split at once
(wire/httphead.py) and goes through the very same router, guard and ingest
resource as any request (limits, auth, CORS, 400s with reasons, metrics are
theirs); it provides the part of twisted.web's ``Request`` they use, and a
test runs requests through both and compares the answers. Its answer is one
write, sent at once when nothing is queued before it (compat.write_now).
Sinks never see one: only POSTs to a path an ingest serves take this lane.
"""

from __future__ import annotations

import time
from io import BytesIO
from urllib.parse import parse_qs
from typing import Any, Protocol, cast

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.http import datetimeToString

from sse_daemon.edge.safety import internal_error
from sse_daemon.wire.httphead import PlainPost

__all__ = ["LeanRequest", "ILeanChannel", "LeanHeaders"]


class ILeanChannel(Protocol):
    """What a lean request needs of its connection (edge/listener.py's PortChannel)."""

    transport: Any

    def getPeer(self) -> Any: ...
    def getHost(self) -> Any: ...
    def lean_answer(self, request: "LeanRequest", response: bytes) -> None: ...


_date_second = -1
_date_header = b""


def _date() -> bytes:
    """The ``Date`` header line, formatted once a second (twisted.web formats it for every request)."""
    global _date_second, _date_header
    now = int(time.time())
    if now != _date_second:
        _date_second, _date_header = now, b"Date: %s\r\n" % datetimeToString(now)
    return _date_header


#: what every answer says the server is: the daemon's name, not its version nor Twisted's (a scanner's first clue)
SERVER_NAME = b"sse-daemon"
_SERVER = b"Server: %s\r\n" % SERVER_NAME


class LeanHeaders:
    """The request's headers as ``requestHeaders`` gives them (only ``getAllRawHeaders`` is used)."""

    __slots__ = ("_headers",)

    def __init__(self, headers: dict[bytes, bytes]) -> None:
        self._headers = headers

    def getAllRawHeaders(self) -> Any:
        return ((name, [value]) for name, value in self._headers.items())

    def getRawHeaders(self, name: bytes | str, default: Any = None) -> Any:
        key = name.lower() if isinstance(name, bytes) else name.lower().encode("latin-1")
        value = self._headers.get(key)
        return default if value is None else [value]


class LeanRequest:
    """One plain POST, answered by the port's router like any request (see the module's docstring)."""

    log = Logger()
    method = b"POST"
    clientproto = b"HTTP/1.1"
    startedWriting = False  # the answer is written whole, at finish: a 500 can always replace it until then
    code = 200
    _disconnected = False  # compat.request_disconnected reads it, as on twisted.web's Request

    def __init__(self, channel: ILeanChannel, post: PlainPost) -> None:
        self.channel = channel
        self.transport = channel.transport
        self.uri = post.target
        self.path = post.path
        self._headers = post.headers
        self.requestHeaders = LeanHeaders(post.headers)
        self.content = BytesIO(post.body)
        self.close = post.close
        self.finished = False
        self._out: dict[bytes, tuple[bytes, bytes]] = {}
        self._body: list[bytes] = []
        self._waiting: list[Deferred[None]] = []
        self.phrase: bytes = b"OK"

    def render(self, router: Any) -> None:
        """Answer with ``router`` (the port's PathRouter), now or when it finishes the request."""
        try:
            body = router.render(self)
        except Exception:  # the router answers its resources' bugs itself; this is one of the lane's own
            body = internal_error(cast(Request, self), Failure(), router.rejected, self.log, "the publish fast lane")
        if body is not NOT_DONE_YET and not self.finished:
            self.write(body)
            self.finish()

    # what the router, guards and ingest read
    def getHeader(self, name: bytes | str) -> Any:
        if isinstance(name, bytes):
            return self._headers.get(name.lower())
        value = self._headers.get(name.lower().encode("latin-1"))
        return None if value is None else value.decode("ascii")  # the head is ASCII (httphead.py)

    def getCookie(self, name: bytes) -> bytes | None:
        found = None
        for part in self._headers.get(b"cookie", b"").split(b";"):
            key, equals, value = part.strip().partition(b"=")
            if equals and key == name:
                found = value  # the last one, as twisted.web's parseCookies keeps
        return found

    @property
    def args(self) -> dict[bytes, list[bytes]]:
        """The query's arguments, as twisted.web gives them (never a form body's: nothing here reads forms)."""
        return parse_qs(self.uri.partition(b"?")[2], keep_blank_values=True)

    def getClientAddress(self) -> Any:
        return self.channel.getPeer()

    def getHost(self) -> Any:
        return self.channel.getHost()

    def notifyFinish(self) -> Deferred[None]:
        waiting: Deferred[None] = Deferred()
        if self.finished:
            waiting.callback(None)
        elif self._disconnected:
            waiting.errback(Failure(ConnectionError("the client left before its answer")))
        else:
            self._waiting.append(waiting)
        return waiting

    # what they answer with
    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        self.code = code
        self.phrase = message or RESPONSES.get(code, b"Unknown Status")

    def setHeader(self, name: bytes, value: bytes) -> None:
        self._out[name.lower()] = (name, value)

    def write(self, data: bytes) -> None:
        if self.finished:
            raise RuntimeError("write after finish on a lean request")
        self._body.append(data)

    def finish(self) -> None:
        if self.finished:
            raise RuntimeError("finish called twice on a lean request")
        self.finished = True
        if self._disconnected:
            return
        body = b"".join(self._body)
        self._out.pop(b"content-length", None)
        self._out.pop(b"connection", None)
        head = [b"HTTP/1.1 %d %s\r\n" % (self.code, self.phrase), _SERVER, _date()]
        head.extend(b"%s: %s\r\n" % pair for pair in self._out.values())
        if self.close:
            head.append(b"Connection: close\r\n")
        head.append(b"Content-Length: %d\r\n\r\n" % len(body))
        head.append(body)
        waiting, self._waiting = self._waiting, []
        self.channel.lean_answer(self, b"".join(head))
        for each in waiting:
            each.callback(None)

    def lost(self, reason: Failure) -> None:
        """The connection closed before the answer: whoever waits for it is told, and nothing is written."""
        self._disconnected = True
        waiting, self._waiting = self._waiting, []
        for each in waiting:
            each.errback(reason)
