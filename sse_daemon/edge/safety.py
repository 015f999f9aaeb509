"""What no request may do, checked once for every port (listener.PathRouter) rather than per header or per resource.

- Header values that are not UTF-8: twisted.web decodes a header as UTF-8 when
  it is asked for by a ``str`` name (``request.getHeader("origin")``), and a
  byte like ``0xff`` raised ``UnicodeDecodeError`` there: a 500 with a
  traceback, from whichever resource read it first. The router refuses such a
  request with 400 (``invalid-header``) before any resource sees it.
- An unexpected exception (a bug) is answered 500 without a traceback to the
  client, counted (``internal-error``) and logged with its traceback, sampled
  as every refusal is (``limits.should_log``): a client that finds a bug cannot
  flood the log with it. Met after the answer started, it cuts the answer (the
  connection; on HTTP/2 the stream alone), so no client takes half for whole.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import cast

from twisted.internet.interfaces import ITCPTransport
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import NOT_DONE_YET, Request

from sse_daemon.policy.limits import should_log

__all__ = ["undecodable_header", "internal_error"]


def undecodable_header(request: IRequest) -> str | None:
    """The name of the first request header whose name or value is not UTF-8 text, or None."""
    for name, values in request.requestHeaders.getAllRawHeaders():
        for text in (name, *values):
            if text.isascii():  # nearly every header: no decode, no copy
                continue
            try:
                text.decode("utf-8")
            except UnicodeDecodeError:
                return name.decode("latin-1")[:40].encode("ascii", "backslashreplace").decode("ascii")
    return None


def internal_error(request: Request, failure: Failure, counter: Counter[str], log: Logger, where: str) -> bytes | int:
    """Count and log (sampled) an exception met while answering ``request``; answer 500 if the
    response has not started, else close the connection. Returns what a render method returns."""
    counter["internal-error"] += 1
    count = counter["internal-error"]
    if should_log(count):
        log.failure("{where}: an unexpected error answering {method} from {peer} ({count} so far; "
                    "logged the first ten times, then every thousandth)", failure, LogLevel.error,
                    where=where, method=request.method.decode("latin-1")[:20], peer=getattr(request.getClientAddress(), "host", "?"),
                    count=count, reason="internal-error")
    if request.startedWriting or request.finished:
        if not request.finished and request.transport is not None:
            transport = cast(ITCPTransport, request.transport)
            if request.clientproto == b"HTTP/2":
                # its transport is its stream (listener.LimitedRequest): closing would end it cleanly (END_STREAM),
                # as if whole; it is reset, and the connection's other streams go on
                transport.abortConnection()
            else:
                transport.loseConnection()  # the answer stops short of its last chunk or its length: visibly cut
        return NOT_DONE_YET
    request.setResponseCode(500)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps({"error": "an unexpected error; it was logged", "reason": "internal-error"}).encode() + b"\n"
