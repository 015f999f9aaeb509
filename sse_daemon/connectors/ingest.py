"""HTTP ingest (``type: http`` source): POST JSON to publish into a stream.

A body is accepted whole or rejected whole: 200 with the number of events
published, 400 with a JSON error naming the problem (and nothing of that body
published), 413 above ``max.body.size`` or ``max.events.per.request``. Every
value is checked where it enters (validate.py, through the mapper), so a 200
means every sink can write every event. A large body is published in slices
of :data:`PUBLISH_SLICE` events, one per reactor turn, so other streams are
served between them; the 200 is sent once the last slice is published. Mapping
and checking a large body is spread over reactor turns too, in steps of
``DECODE_SLICE`` (mapping/mappers.py): a body's values, not only its events,
can take a long walk (a megabyte of empty objects in one attribute). With a
sink's ``history.path`` a publish is done once the events are committed to the
file: a commit that fails is a 503 (``history-unavailable``), never a 200.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Callable, Collection, Generator

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime, ITCPTransport
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.error import UnsupportedMethod
from twisted.web.resource import Resource
from zope.interface import implementer

from sse_daemon.compat import request_disconnected  # the client left before its answer
from sse_daemon.bus.interfaces import IBus, PublishUnconfirmed
from sse_daemon.connectors.interfaces import ISource
from sse_daemon.connectors.sink.drain import FLUSH_TIMEOUT, flushed
from sse_daemon.connectors.sink.historyfile import HistoryUnavailable
from sse_daemon.policy.limits import should_log
from sse_daemon.config.model import ConnectorDef
from sse_daemon.config.options import HttpSourceOptions
from sse_daemon.connectors.ingeststream import NdjsonPublish
from sse_daemon.edge.bodystream import BodyStream, wants_stream
from sse_daemon.edge.listener import body_stream, json_error
from sse_daemon.mapping.mappers import DECODE_SLICE, IMapper, MappingError
from sse_daemon.events.schema import Event
from sse_daemon.events.validate import InvalidValue

#: events published in one reactor turn on the in-process bus: about 4 ms per SSE sink
#: (bench figures in docs/reliability-validate.md), so a 10,000-event body leaves other
#: streams waiting for one slice at a time instead of the whole body
PUBLISH_SLICE = 500
#: bytes of an NDJSON body that came whole (HTTP/2) taken in one reactor turn: a TCP read's worth, as a streamed
#: body arrives (8,000 short lines: about 20 ms)
WHOLE_PIECE = 65536
#: at shutdown, how long the publishes under way get for their answers (a shared bus's own timeout is 5 s)
ANSWER_TIMEOUT = 10.0


@implementer(ISource)
class IngestResource(Resource):
    isLeaf = True
    log = Logger()

    def __init__(
        self, connector: ConnectorDef[HttpSourceOptions], mapper: IMapper, bus: IBus, clock: IReactorTime,
        turns: IReactorTime | None = None, slice_size: int = PUBLISH_SLICE,
        behind: Callable[[str, int], float | None] | None = None, max_events: int | None = None,
        decode_budget: int = DECODE_SLICE,
    ) -> None:
        """``turns`` schedules the next slice (the real reactor even when ``clock`` is a test's Clock);
        ``slice_size`` 0 publishes a body in one call (a shared bus: one transaction, all or nothing);
        ``behind``: a shared bus's ``ISharedBus.behind``, the fan-out lag over its bound (then 503);
        ``max_events``: fewer events a body than ``max.events.per.request`` (a shared bus's history.size);
        ``decode_budget``: the work of one reactor turn's mapping (:meth:`IMapper.decode_steps`)."""
        super().__init__()
        self.connector = connector
        self.name = connector.name
        self.stream = connector.stream
        self.mapper = mapper
        self.bus = bus
        self.clock = clock
        self.max_body_size: int = connector.options.max_body_size
        self.max_events: int = connector.options.max_events_per_request if max_events is None else max_events
        self.turns = turns if turns is not None else clock
        self.slice_size = slice_size
        self.decode_budget = decode_budget
        self.behind = behind
        self.counters: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        #: streaming publishes under way, by request: what its guard checks again when credentials are renewed
        self.streaming: dict[Any, NdjsonPublish] = {}
        #: other requests whose answer waits for the bus (an acknowledgement, a commit, a large body's slices)
        self.answering: set[Any] = set()

    def render_HEAD(self, request: IRequest) -> bytes:
        # Resource's default HEAD calls render_GET, which an ingest has not: that was a 500 (found by tests/test_fuzz.py)
        raise UnsupportedMethod((b"POST",))

    def render_POST(self, request: Request) -> bytes | int:
        streamed = body_stream(request)
        if streamed is not None:  # application/x-ndjson on a port that hands its body over as it comes
            return self._streaming(request, streamed)
        assert request.content is not None, "twisted.web gives a request its body before a resource renders it"
        body = request.content.read(self.max_body_size + 1)
        if len(body) > self.max_body_size:
            return self._reject(request, 413, "too-large", f"the request body is larger than {self.max_body_size} bytes")
        if wants_stream(b"POST", request.getHeader(b"content-type")):  # NDJSON whose body came whole (HTTP/2, a test)
            whole = BodyStream(None)
            whole.attach(self._ndjson(request, whole))
            fed = Deferred.fromCoroutine(self._feed_whole(whole, body))
            fed.addErrback(lambda f: self.log.failure("ingest {source} could not take an NDJSON body", f, source=self.name))
            return self._answer_later(request)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            return self._reject(request, 400, "invalid-utf8", f"the body is not UTF-8 text: {e}")
        steps = self.mapper.decode_steps(text, self.max_events, self.decode_budget)
        try:
            next(steps)
        except StopIteration as mapped:  # in one step (the usual): published and answered in this turn
            return self._publish(request, mapped.value)
        except MappingError as e:
            return self._refuse(request, e)
        rest: Deferred = Deferred.fromCoroutine(self._decode_in_turns(steps))
        rest.addCallbacks(self._decoded, self._undecoded, (request,), errbackArgs=(request,))
        rest.addErrback(lambda f: self.log.failure("ingest {source} could not answer", f, source=self.name))
        return self._answer_later(request)

    async def _decode_in_turns(self, steps: Generator[None, None, list]) -> list:
        """The rest of a large body's mapping and checks, one step per reactor turn (other requests between)."""
        while True:
            await deferLater(self.turns, 0, lambda: None)
            try:
                next(steps)
            except StopIteration as mapped:
                return mapped.value

    def _decoded(self, rows: list, request: Request) -> None:
        self._send(request, self._publish(request, rows))

    def _undecoded(self, failure: Failure, request: Request) -> None:
        failure.trap(MappingError)  # anything else is a bug: logged by the errback after this one
        assert isinstance(failure.value, MappingError)
        self._send(request, self._refuse(request, failure.value))

    def _send(self, request: Request, body: bytes | int) -> None:
        """A synchronous answer given later: ``body`` written, unless it is NOT_DONE_YET or the client left."""
        if isinstance(body, bytes) and not request.finished and not request_disconnected(request):
            request.setHeader(b"Content-Length", str(len(body)).encode())
            request.write(body)
            request.finish()

    def _refuse(self, request: Request, error: MappingError) -> bytes:
        return self._reject(request, 413 if error.reason == "too-many-events" else 400, error.reason, str(error))

    def _publish(self, request: Request, rows: list) -> bytes | int:
        """Publish a body's events (in slices if large); its answer now, or NOT_DONE_YET."""
        lag = self.behind(self.stream, len(rows)) if self.behind is not None else None
        if lag is not None:  # Redis would take them, but this instance's subscribers would get them late, or not at all
            body = self._reject(request, 503, "fanout-behind",
                                f"this instance's fan-out of stream {self.stream} is behind what it accepted (the oldest "
                                f"has waited {lag:.1f} s); nothing was published; retry later")
            request.setHeader(b"Retry-After", b"1")
            return body
        now = self.clock.seconds()
        if self.slice_size and len(rows) > self.slice_size:
            published: Deferred = Deferred.fromCoroutine(self._publish_in_slices(rows, now))
        else:
            published = self.bus.publish(self.stream, [Event(values, ingress=now) for values in rows])
        # 200 only once the bus has every event: at once on the in-process bus (its Deferred has fired),
        # once Redis acknowledged them on a shared one, after the last slice of a large body
        if published.called and not isinstance(published.result, Failure):
            return self._accepted(request, len(rows))  # delivered already: answered now, without a callback's cost
        published.addCallbacks(self._published, self._unavailable, (request, len(rows)), errbackArgs=(request,))
        published.addErrback(lambda f: self.log.failure("ingest {source} could not answer", f, source=self.name))
        return self._answer_later(request)

    def _answer_later(self, request: Request) -> int:
        if not request.finished:
            self.answering.add(request)
            request.notifyFinish().addBoth(lambda _: self.answering.discard(request))
        return NOT_DONE_YET

    async def _publish_in_slices(self, rows: list, now: float) -> None:
        """Publish ``rows`` ``slice_size`` at a time, one slice per reactor turn, in order."""
        for start in range(0, len(rows), self.slice_size):
            if start:
                await deferLater(self.turns, 0, lambda: None)  # other streams and requests are served here
            await self.bus.publish(self.stream, [Event(values, ingress=now) for values in rows[start:start + self.slice_size]])

    async def _feed_whole(self, stream: BodyStream, body: bytes) -> None:
        """An NDJSON body that came whole, taken :data:`WHOLE_PIECE` bytes a reactor turn, as if it arrived
        over TCP: a megabyte of short lines in one go held the reactor about 0.3 s."""
        for start in range(0, len(body), WHOLE_PIECE):
            if start:
                await deferLater(self.turns, 0, lambda: None)
            stream.chunk(body[start:start + WHOLE_PIECE])  # nothing once cut short (BodyStream.end)
        stream.end()

    def _streaming(self, request: Request, body: BodyStream) -> int:
        publish = self.streaming[request] = self._ndjson(request, body)
        request.notifyFinish().addBoth(self._stream_over, request)  # answered, or the client left
        body.attach(publish)
        return NOT_DONE_YET

    def _stream_over(self, _: object, request: Request) -> None:
        self.streaming.pop(request, None)

    def stream_requests(self) -> list[Any]:
        """The requests of the streaming publishes under way."""
        return list(self.streaming)

    def end_streams(self, requests: Collection[Any], reason: str) -> int:
        """Cut the streaming publishes of ``requests`` short (:meth:`NdjsonPublish.cut`); how many were (one
        whose body had ended already is not)."""
        ending = {id(request) for request in requests}
        return sum(publish.cut(reason) for request, publish in list(self.streaming.items()) if id(request) in ending)

    def settle(self) -> Deferred:
        """Shutdown: cut every streaming publish short (its answer says what it took, with ``"ended":
        "shutting-down"``) and fire once every publish under way has its answer sent (or after
        :data:`ANSWER_TIMEOUT`). twistd cuts every connection still open once the daemon has stopped, and a
        publisher cut before its answer cannot tell what was accepted."""
        requests = [*self.streaming, *self.answering]
        transports = [request.transport for request in requests]
        answers = [request.notifyFinish() for request in requests]  # before the cut, which may answer at once
        self.end_streams(requests, "shutting-down")
        answered = DeferredList(answers, consumeErrors=True).addTimeout(ANSWER_TIMEOUT, self.turns)
        answered.addErrback(lambda _: self.log.warn("ingest {source}: publishes still unanswered at shutdown after {seconds}s",
                                                    source=self.name, seconds=ANSWER_TIMEOUT))

        def sent(_: object) -> Deferred:
            for transport in transports:  # a kept-alive HTTP/1.1 connection closes once its answer is sent (an HTTP/2 stream has ended)
                if ITCPTransport.providedBy(transport) and not getattr(transport, "disconnecting", False):
                    transport.loseConnection()
            return flushed(transports, self.turns, FLUSH_TIMEOUT)

        return answered.addCallback(sent)

    def _ndjson(self, request: Request, body: BodyStream) -> NdjsonPublish:
        """The consumer of an NDJSON body: each line taken or refused on its own; answered once all settled."""
        stream = self.stream
        behind = self.behind
        publish = NdjsonPublish(self.name, stream, body, self.mapper, lambda events: self.bus.publish(stream, events),
                                self.clock, self.max_body_size, self.max_events, self.rejected, self.counters,
                                behind=(lambda incoming: behind(stream, incoming)) if behind is not None else None)
        publish.done.addCallback(self._streamed, request)
        publish.done.addErrback(lambda f: self.log.failure("ingest {source} could not answer a streaming publish", f, source=self.name))
        return publish

    def _streamed(self, summary: dict, request: Request) -> None:
        self.counters["requests_accepted"] += 1
        if request.finished or request_disconnected(request):
            return
        body = json.dumps(summary).encode() + b"\n"
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", str(len(body)).encode())
        request.write(body)
        request.finish()

    def _accepted(self, request: IRequest, count: int) -> bytes:
        self.counters["events_in"] += count
        self.counters["requests_accepted"] += 1
        request.setHeader(b"Content-Type", b"application/json")
        return b'{"accepted": %d}\n' % count  # json.dumps's bytes, without its cost on every small publish

    def _published(self, ids: object, request: Request, count: int) -> None:
        body = self._accepted(request, count)
        if not request.finished and not request_disconnected(request):
            request.setHeader(b"Content-Length", str(len(body)).encode())  # as a synchronous answer has
            request.write(body)
            request.finish()

    def _unavailable(self, failure: Failure, request: Request) -> None:
        """The bus refused or lost the events: 503, so the publisher retries (nothing is silently dropped);
        a payload the bus cannot encode is the publisher's 400, never the bus's failure."""
        refused = failure.value if isinstance(failure.value, InvalidValue) else None
        if refused is not None:
            body = self._reject(request, 400, refused.reason, f"nothing was published: {failure.getErrorMessage()}")
        elif isinstance(failure.value, HistoryUnavailable):  # a sink's history file could not take them (a full disk)
            body = self._reject(request, 503, "history-unavailable",
                                f"the events could not be saved: {failure.getErrorMessage()}; retry later")
        elif isinstance(failure.value, PublishUnconfirmed):  # honest: the bus may have them, a retry may repeat them
            body = self._reject(request, 503, "bus-unavailable", f"the events may or may not have been published (a retry "
                                f"may publish them twice): {failure.getErrorMessage()}; retry later")
        else:
            body = self._reject(request, 503, "bus-unavailable", f"the events were not published: {failure.getErrorMessage()}; retry later")
        if not request.finished and not request_disconnected(request):
            if refused is None:
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
