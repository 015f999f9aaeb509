"""Resuming from a shared bus: what follows an id this sink's history does not cover.

A client may resume with an id another instance gave out, or one older than
this history. The bus says what follows it; meanwhile live events for that
subscriber are kept, and those the bus's answer already holds are dropped, so
each event reaches it once. The bus has :data:`BUS_REPLAY_TIMEOUT` seconds:
after that, or if the replay fails, the client is answered from local history
(with a reset event, since that does not cover its id).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from sse_daemon.connectors.history import History, Resume
from sse_daemon.events.schema import Event
from sse_daemon.policy.limits import excerpt, should_log

if TYPE_CHECKING:
    from sse_daemon.connectors.sink.subscriber import Subscriber

#: seconds a shared bus has to say what follows a client's Last-Event-ID; then the client gets its
#: head from local history (with a reset event): a resuming client never waits longer for its head
BUS_REPLAY_TIMEOUT = 5.0

#: ``replay(after, limit)``: a Deferred of what follows an id on the bus (a BusReplay)
BusReplayer = Callable[[str | None, int], Deferred]


class BusResumes:
    """Subscribers waiting for the bus's answer, with the live frames that arrived meanwhile."""

    def __init__(self, name: str, clock: IReactorTime, counters: Counter[str], log: Logger,
                 encode: Callable[[Event, str], bytes | None]) -> None:
        self.name = name
        self.clock = clock
        self.counters = counters
        self.log = log
        self.encode = encode
        self.waiting: dict["Subscriber", list[tuple[Any, bytes]]] = {}

    def ask(self, replay: BusReplayer, history: History, subscriber: "Subscriber", last_event_id: str) -> Deferred:
        """Fires with the Resume to send ``subscriber`` (None: it left meanwhile); never fails."""
        try:
            history.key(last_event_id)
            after: str | None = last_event_id
        except ValueError:
            after = None
        self.waiting[subscriber] = []
        self.counters["bus_replays"] += 1
        d = within(replay(after, max(history.size, 1)), BUS_REPLAY_TIMEOUT, self.clock)
        d.addCallback(self._answered, history, subscriber, last_event_id)
        d.addErrback(self._failed, history, subscriber, last_event_id)
        return d

    def live(self, event_id: Any, frame: bytes) -> None:
        """A live event: kept for every subscriber still waiting, within its queue bounds as its backlog
        is (the bus may take BUS_REPLAY_TIMEOUT to answer); past them it is cut, as a slow one is."""
        for subscriber, frames in tuple(self.waiting.items()):
            frames.append((event_id, frame))
            subscriber.queued_events += 1
            subscriber.queued_bytes += len(frame)
            host = subscriber.sink
            if subscriber.queued_events > host.queue_size or subscriber.queued_bytes > host.queue_bytes:
                self.waiting.pop(subscriber, None)
                host.drop_slow(subscriber)

    def forget(self, subscriber: "Subscriber") -> None:
        self.waiting.pop(subscriber, None)

    def _answered(self, replay: Any, history: History, subscriber: "Subscriber", last_event_id: str) -> Resume | None:
        """What to send a subscriber from the bus's answer (None: it left meanwhile)."""
        live = self.waiting.pop(subscriber, [])
        if subscriber.gone:
            return None
        subscriber.queued_events = subscriber.queued_bytes = 0  # what was held goes out as its resume
        key = history.key
        frames: list[bytes] = []
        keys: list[Any] = []
        newest = key(replay.after) if replay.after else None
        for event in replay.events:
            newest = key(event.bus_id)
            frame = self.encode(event, event.bus_id)
            if frame is not None:
                frames.append(frame)
                keys.append(newest)
        # live events that arrived while the bus answered, minus those the answer had already
        later = [(event_id, frame) for event_id, frame in live if newest is None or event_id > newest]
        frames += [frame for _, frame in later]
        keys += [event_id for event_id, _ in later]
        after = key(replay.after) if replay.after else None
        oldest = key(replay.oldest) if replay.oldest else None
        return Resume(tuple(frames), after, replay.reset, last_event_id, oldest, tuple(keys))

    def _failed(self, failure: Failure, history: History, subscriber: "Subscriber", last_event_id: str) -> Resume | None:
        self.waiting.pop(subscriber, None)
        if subscriber.gone:
            return None
        subscriber.queued_events = subscriber.queued_bytes = 0  # local history has what was held
        self.counters["bus_replays_failed"] += 1
        reason = failure.getErrorMessage() or (failure.type.__name__ if failure.type else "unknown error")
        if should_log(self.counters["bus_replays_failed"]):
            self.log.warn("sink {sink} could not ask the bus what follows {last_event_id!r} ({reason}); resuming from local history",
                          sink=self.name, last_event_id=excerpt(last_event_id), reason=reason)
        return history.resume(last_event_id)


def within(answer: Deferred, seconds: float, clock: IReactorTime) -> Deferred:
    """``answer``'s result, or a TimeoutError after ``seconds``, whichever comes first. Unlike
    ``addTimeout`` this does not wait for ``answer`` to honour its cancellation: a bus that
    swallows a cancel cannot hold a client's response head."""
    out: Deferred = Deferred()

    def settle(result: Any) -> None:
        if timer.active():
            timer.cancel()
        if not out.called:
            out.callback(result)  # a Failure goes down the errbacks

    def expire() -> None:
        out.errback(defer.TimeoutError(f"no answer within {seconds:g}s"))
        answer.cancel()

    timer = clock.callLater(seconds, expire)
    answer.addBoth(settle)
    return out
