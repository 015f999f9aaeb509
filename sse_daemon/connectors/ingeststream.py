"""A streaming publish: NDJSON lines, each accepted or refused on its own, as they arrive.

``POST`` with ``Content-Type: application/x-ndjson`` (edge/bodystream.py hands the
body over as it comes, chunked or not): each line is one event, or a JSON array of
events, mapped and checked like an ingest body (the same mapper: a line is refused
with the reason a whole body would get, and the others go on). The good lines of a
chunk are published together, once. When the body ends the publisher gets
``200 {"accepted": N, "refused": M, "lines": L, "refusals": [...]}`` once everything
it sent is acknowledged; the refusals name the line, the reason and the error (the
first :data:`REFUSALS_SHOWN`; every one is counted in the ingest's rejections).

Backpressure: a publish that the bus has not acknowledged yet (a shared bus, a
sink's history file) holds the stream's reading once :data:`MAX_UNSETTLED` events
are waiting; a shared bus whose fan-out here is behind (``fanout.max.lag``) holds
it too, re-asking every :data:`BEHIND_RETRY` seconds: the stream is slowed, not
refused. On the in-process bus events are delivered while the chunk is read, so
a publisher faster than the daemon is slowed by TCP alone.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sse_daemon.bus.interfaces import PublishUnconfirmed
from sse_daemon.connectors.sink.historyfile import HistoryUnavailable
from sse_daemon.edge.bodystream import BodyStream, IBodyConsumer
from sse_daemon.events.schema import Event
from sse_daemon.events.validate import InvalidValue
from sse_daemon.mapping.mappers import IMapper, MappingError
from sse_daemon.policy.limits import should_log
from sse_daemon.wire.ndjson import TOO_LONG, NdjsonLines

#: events published and not yet acknowledged before the stream's reading is held
MAX_UNSETTLED = 10_000
#: seconds between two looks at a shared bus's fan-out lag while the stream is held for it
BEHIND_RETRY = 0.1
#: refusals listed in the answer (all are counted)
REFUSALS_SHOWN = 100


@implementer(IBodyConsumer)
class NdjsonPublish:
    """One streaming publish: its lines, its publishes in flight, its answer (``done``)."""

    log = Logger()

    def __init__(self, name: str, stream: str, body: BodyStream, mapper: IMapper, publish: Callable[[list[Event]], Deferred],
                 clock: IReactorTime, max_line: int, max_events: int, rejected: Counter[str], counters: Counter[str],
                 behind: Callable[[int], float | None] | None = None) -> None:
        """``rejected`` and ``counters``: the ingest's (refusals by reason; ``events_in`` as each publish is acknowledged)."""
        self.name = name
        self.stream = stream
        self.body = body
        self.mapper = mapper
        self.publish = publish
        self.clock = clock
        self.max_events = max_events
        self.rejected = rejected
        self.counters = counters
        self.behind = behind
        self.lines = NdjsonLines(max_line)
        self.max_line = max_line
        self.accepted = 0
        self.refused = 0
        self.refusals: list[dict[str, Any]] = []
        #: fires with the answer's body (a dict) once the body ended and every publish settled
        self.done: Deferred = Deferred()
        self._unsettled = 0
        self._held: list[tuple[list[Event], list[int]]] = []  # batches waiting for the fan-out to catch up
        self._retry: Any = None
        self._holding_for_unsettled = False
        self._ended = False
        self._gone = False
        #: why the daemon ended it before its body did (:meth:`cut`), said in its answer
        self.cut_reason: str | None = None

    # -- IBodyConsumer
    def chunk(self, data: bytes) -> None:
        if not self._gone:
            self._take(self.lines.feed(data))

    def end(self, complete: bool = True) -> None:
        if self._gone or self._ended:
            return
        if complete:  # cut short (shutdown): a line not yet whole is not taken
            self._take(self.lines.end())
        self._ended = True
        self._maybe_done()

    def cut(self, reason: str) -> bool:
        """End it here (its credentials were revoked): what was read is published and answered, with
        ``reason``; the rest of the body is not read. False when its body had ended already (its answer
        waits only for the bus): nothing is cut, and its answer does not say so."""
        if self._ended or self._gone:
            return False
        self.cut_reason = reason
        self.body.end(complete=False)
        return True

    def lost(self, reason: Failure) -> None:
        """The client left: what it sent so far stays published; nothing more is read or answered."""
        self._gone = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        for _, numbers in self._held:  # read but never published: refused, for the count
            self._refuse_lines(numbers, "client-gone", "the client left before these were published")
        self._held = []

    # -- lines
    def _take(self, lines: list[tuple[int, bytes | None]]) -> None:
        events: list[Event] = []
        numbers: list[int] = []
        now = self.clock.seconds()
        for number, line in lines:
            if line is TOO_LONG:
                self._refuse(number, "too-large", f"the line is longer than {self.max_line} bytes")
                continue
            try:
                rows = self.mapper.decode(line.decode("utf-8"), self.max_events)
            except UnicodeDecodeError as e:
                self._refuse(number, "invalid-utf8", f"the line is not UTF-8 text: {e}")
                continue
            except MappingError as e:
                self._refuse(number, e.reason, str(e))
                continue
            for values in rows:
                events.append(Event(values, ingress=now))
                numbers.append(number)
        for start in range(0, len(events), self.max_events):  # a publish no larger than a body may be (a shared bus trims beyond)
            self._send(events[start:start + self.max_events], numbers[start:start + self.max_events])

    def _send(self, events: list[Event], numbers: list[int]) -> None:
        if self._held or (self.behind is not None and self.behind(len(events)) is not None):
            self._held.append((events, numbers))  # after those held already: in order
            self._hold_for_fanout()
            return
        self._unsettled += len(events)
        published = self.publish(events)
        published.addCallbacks(self._published, self._not_published, (len(events),), errbackArgs=(numbers,))
        if self._unsettled > MAX_UNSETTLED and not self._holding_for_unsettled:
            self._holding_for_unsettled = True
            self.body.pause()

    def _published(self, _: object, count: int) -> None:
        self.accepted += count
        self.counters["events_in"] += count  # as they go: a stream that never ends still shows in /metrics
        self._settled(count)

    def _not_published(self, failure: Failure, numbers: list[int]) -> None:
        error = failure.value
        if isinstance(error, InvalidValue):
            reason, message = error.reason, f"not published: {failure.getErrorMessage()}"
        elif isinstance(error, HistoryUnavailable):
            reason, message = "history-unavailable", f"could not be saved: {failure.getErrorMessage()}"
        elif isinstance(error, PublishUnconfirmed):
            reason, message = "bus-unavailable", f"may or may not have been published: {failure.getErrorMessage()}"
        else:
            reason, message = "bus-unavailable", f"not published: {failure.getErrorMessage()}"
        self._refuse_lines(numbers, reason, message)
        self._settled(len(numbers))

    def _settled(self, count: int) -> None:
        self._unsettled -= count
        if self._holding_for_unsettled and self._unsettled <= MAX_UNSETTLED // 2:
            self._holding_for_unsettled = False
            self.body.resume()
        self._maybe_done()

    def _hold_for_fanout(self) -> None:
        if self._retry is not None and self._retry.active():
            return
        self.body.pause()
        self._retry = self.clock.callLater(BEHIND_RETRY, self._look_again)

    def _look_again(self) -> None:
        self._retry = None
        if self._gone:
            return
        if self.behind is not None and self.behind(sum(len(events) for events, _ in self._held)) is not None:
            self._retry = self.clock.callLater(BEHIND_RETRY, self._look_again)
            return
        held, self._held = self._held, []
        self.body.resume()
        for events, numbers in held:
            self._send(events, numbers)
        self._maybe_done()

    # -- refusals and the answer
    def _refuse(self, number: int, reason: str, message: str) -> None:
        self.refused += 1
        self.rejected[reason] += 1
        if len(self.refusals) < REFUSALS_SHOWN:
            self.refusals.append({"line": number, "reason": reason, "error": message})
        if should_log(self.rejected[reason]):
            self.log.warn("ingest {source}: line {line} of a streaming publish refused: {message} ({reason}, {count} so far)",
                          source=self.name, line=number, message=message, reason=reason, count=self.rejected[reason])

    def _refuse_lines(self, numbers: list[int], reason: str, message: str) -> None:
        """Events of these lines were not published (one refusal per line, however many events it had)."""
        for number in sorted(set(numbers)):
            self._refuse(number, reason, message)

    def _maybe_done(self) -> None:
        if self._ended and not self._unsettled and not self._held and not self.done.called:
            summary: dict[str, Any] = {"accepted": self.accepted, "refused": self.refused, "lines": self.lines.number,
                                       "refusals": self.refusals}
            if self.cut_reason is not None:
                summary["ended"] = self.cut_reason
            self.done.callback(summary)
