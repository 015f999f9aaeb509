"""The internal event bus that links sources, routes and sinks.

Everything talks to :class:`~sse_daemon.bus.interfaces.IBus`, so a broker-backed bus can replace the
embedded one without touching connectors. The embedded bus is synchronous:
``publish`` returns after every subscriber has seen the events (all of them in one call, in order),
which keeps delivery order and makes tests deterministic. The Deferred it
returns (the one publish contract of every bus) has fired already, unless a
subscriber returned a Deferred of its own (a sink with a history file: its
commit; a route: its own publish): then it fires once all of them have, and
fails with the first failure among them.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

from twisted.internet.defer import Deferred, FirstError, gatherResults, succeed
from twisted.python.failure import Failure
from twisted.logger import Logger
from zope.interface import implementer

from sse_daemon.bus.interfaces import IBus, IDeliveringBus, ISubscription, Subscriber
from sse_daemon.policy.limits import should_log
from sse_daemon.events.schema import Event

__all__ = ["IBus", "ISubscription", "MemoryBus", "Subscriber", "subscriber_failed"]

def subscriber_failed(log: Logger, failures: dict[str, int], stream: str, subscriber: Subscriber) -> None:
    """Count a subscriber call that raised (a bug: events are checked where they enter) and log it
    sampled, with its traceback (call from the ``except``): a bug hit by every event must not write
    one traceback per event per sink."""
    failures[stream] += 1
    count = failures[stream]
    if should_log(count):
        log.failure(
            "subscriber {subscriber!r} of stream {stream} failed ({count} so far); the event goes on to the others",
            subscriber=subscriber, stream=stream, count=count,
        )


def _nothing(_: object) -> None:
    return None


def _observe(shared: Deferred) -> Deferred:
    """A Deferred of our own with ``shared``'s outcome, leaving that outcome to its other observers
    (a subscriber's Deferred may be awaited by several publishes)."""
    mine: Deferred = Deferred()

    def copy(result: object) -> object:
        if isinstance(result, Failure):
            mine.errback(result)
        else:
            mine.callback(result)
        return result
    shared.addBoth(copy)
    return mine


def _first_failure(failure: Failure) -> Failure:
    """A subscriber's own failure (HistoryUnavailable, ...), not gatherResults' wrapper."""
    if isinstance(failure.value, FirstError):
        return failure.value.subFailure
    return failure


@implementer(ISubscription)
class _Subscription:
    def __init__(self, bus: "MemoryBus", stream: str, subscriber: Subscriber) -> None:
        self.stream = stream
        self.subscriber = subscriber
        self._bus = bus

    def cancel(self) -> None:
        self._bus._remove(self)


@implementer(IDeliveringBus)
class MemoryBus:
    """The embedded in-process bus (the default)."""

    log = Logger()
    provides_ids = False  # sinks number events themselves; a batch may be published in slices

    def __init__(self) -> None:
        self._subscriptions: dict[str, list[_Subscription]] = defaultdict(list)
        #: subscriber failures, by stream; a failing subscriber never stops the others
        self.failures: dict[str, int] = defaultdict(int)

    def subscribe(self, stream: str, subscriber: Subscriber) -> ISubscription:
        subscription = _Subscription(self, stream, subscriber)
        self._subscriptions[stream].append(subscription)
        return subscription

    def publish(self, stream: str, events: Iterable[Event]) -> Deferred:
        batch = events if isinstance(events, list) else list(events)
        # Copy: a subscriber may cancel (or add) subscriptions while we deliver.
        subscriptions = tuple(self._subscriptions.get(stream, ()))
        waits: dict[int, Deferred] = {}  # by identity: a durable sink gives every publish of a turn the same one
        if batch:
            for subscription in subscriptions:
                try:
                    result = subscription.subscriber(batch)
                except Exception:
                    subscriber_failed(self.log, self.failures, stream, subscription.subscriber)
                else:
                    if result is not None and id(result) not in waits:
                        waits[id(result)] = result
        if not waits:
            return succeed(None)
        observed = [_observe(wait) for wait in waits.values()]
        if len(observed) == 1:
            return observed[0].addCallback(_nothing)
        return gatherResults(observed, consumeErrors=True).addCallbacks(_nothing, _first_failure)

    def subscriber_count(self, stream: str) -> int:
        return len(self._subscriptions.get(stream, ()))

    def _remove(self, subscription: _Subscription) -> None:
        subscriptions = self._subscriptions.get(subscription.stream, [])
        if subscription in subscriptions:
            subscriptions.remove(subscription)
