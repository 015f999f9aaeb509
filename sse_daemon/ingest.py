"""HTTP ingest (``type: http`` source): POST JSON to publish into a stream.

A body is accepted whole or rejected whole: 200 with the number of events
published, 400 with a JSON error naming the problem (and nothing of that body
published), 413 above ``max.body.size``.
"""

from __future__ import annotations

import json
from collections import Counter

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.error import UnsupportedMethod
from twisted.web.resource import Resource

from .bus import IBus
from .limits import should_log
from .config import ConnectorDef
from .listener import json_error
from .mappers import IMapper, MappingError
from .schema import Event


class IngestResource(Resource):
    isLeaf = True
    log = Logger()

    def __init__(self, connector: ConnectorDef, mapper: IMapper, bus: IBus, clock: IReactorTime) -> None:
        super().__init__()
        self.connector = connector
        self.name = connector.name
        self.stream = connector.stream
        self.mapper = mapper
        self.bus = bus
        self.clock = clock
        self.max_body_size: int = connector["max.body.size"]
        self.counters: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()

    def render_HEAD(self, request: IRequest) -> bytes:
        # Resource's default HEAD calls render_GET, which an ingest has not: that was a 500 (found by tests/test_fuzz.py)
        raise UnsupportedMethod((b"POST",))

    def render_POST(self, request: IRequest) -> bytes:
        body = request.content.read(self.max_body_size + 1)
        if len(body) > self.max_body_size:
            return self._reject(request, 413, "too-large", f"the request body is larger than {self.max_body_size} bytes")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            return self._reject(request, 400, "invalid-utf8", f"the body is not UTF-8 text: {e}")
        try:
            rows = self.mapper.decode(text)
        except MappingError as e:
            return self._reject(request, 400, e.reason, str(e))
        now = self.clock.seconds()
        published = self.bus.publish(self.stream, [Event(values, ingress=now) for values in rows])
        if isinstance(published, Deferred):  # a shared bus: answer 200 only once it has the events
            published.addCallbacks(self._published, self._unavailable, (request, len(rows)), errbackArgs=(request,))
            published.addErrback(lambda f: self.log.failure("ingest {source} could not answer", f, source=self.name))
            return NOT_DONE_YET
        return self._accepted(request, len(rows))

    def _accepted(self, request: IRequest, count: int) -> bytes:
        self.counters["events_in"] += count
        self.counters["requests_accepted"] += 1
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"accepted": count}).encode() + b"\n"

    def _published(self, ids: object, request: IRequest, count: int) -> None:
        body = self._accepted(request, count)
        if not request.finished and not getattr(request, "_disconnected", False):
            request.setHeader(b"Content-Length", str(len(body)).encode())  # as a synchronous answer has
            request.write(body)
            request.finish()

    def _unavailable(self, failure: Failure, request: IRequest) -> None:
        """The bus refused or lost the events: 503, so the publisher retries (nothing is silently dropped)."""
        body = self._reject(request, 503, "bus-unavailable", f"the events were not published: {failure.getErrorMessage()}; retry later")
        if not request.finished and not getattr(request, "_disconnected", False):
            request.setHeader(b"Retry-After", b"1")
            request.setHeader(b"Content-Length", str(len(body)).encode())
            request.write(body)
            request.finish()

    def _reject(self, request: IRequest, code: int, reason: str, message: str) -> bytes:
        self.rejected[reason] += 1
        count = self.rejected[reason]
        if should_log(count):  # a publisher in a loop must not flood the log; the count is in /metrics
            self.log.warn(
                "ingest {source} rejected a request from {peer}: {message} ({reason}, {count} so far)",
                source=self.name, peer=getattr(request.getClientAddress(), "host", "?"),
                message=message, reason=reason, count=count,
            )
        return json_error(request, code, message, reason=reason)
