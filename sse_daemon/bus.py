"""The internal event bus that links sources, routes and sinks.

Everything talks to :class:`IBus`, so a broker-backed bus can replace the
embedded one without touching connectors. The embedded bus is synchronous:
``publish`` returns after every subscriber has seen the events, in order,
which keeps delivery order and makes tests deterministic.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable

from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from .schema import Event

Subscriber = Callable[[Event], None]


class ISubscription(Interface):
    stream = Attribute("The stream name this subscription listens to.")

    def cancel() -> None:
        """Stop delivering; calling it twice is harmless."""


class IBus(Interface):
    def publish(stream: str, events: Iterable[Event]) -> None:
        """Hand ``events`` to every subscriber of ``stream``, in order."""

    def subscribe(stream: str, subscriber: Subscriber) -> ISubscription:
        """Call ``subscriber(event)`` for every event published on ``stream``."""


@implementer(ISubscription)
class _Subscription:
    def __init__(self, bus: "MemoryBus", stream: str, subscriber: Subscriber) -> None:
        self.stream = stream
        self.subscriber = subscriber
        self._bus = bus

    def cancel(self) -> None:
        self._bus._remove(self)


@implementer(IBus)
class MemoryBus:
    """The embedded in-process bus (the default)."""

    log = Logger()

    def __init__(self) -> None:
        self._subscriptions: dict[str, list[_Subscription]] = defaultdict(list)
        #: subscriber failures, by stream; a failing subscriber never stops the others
        self.failures: dict[str, int] = defaultdict(int)

    def subscribe(self, stream: str, subscriber: Subscriber) -> ISubscription:
        subscription = _Subscription(self, stream, subscriber)
        self._subscriptions[stream].append(subscription)
        return subscription

    def publish(self, stream: str, events: Iterable[Event]) -> None:
        # Copy: a subscriber may cancel (or add) subscriptions while we deliver.
        subscriptions = tuple(self._subscriptions.get(stream, ()))
        for event in events:
            for subscription in subscriptions:
                try:
                    subscription.subscriber(event)
                except Exception:
                    self.failures[stream] += 1
                    self.log.failure(
                        "subscriber {subscriber!r} of stream {stream} failed; the event goes on to the others",
                        subscriber=subscription.subscriber,
                        stream=stream,
                    )

    def subscriber_count(self, stream: str) -> int:
        return len(self._subscriptions.get(stream, ()))

    def _remove(self, subscription: _Subscription) -> None:
        subscriptions = self._subscriptions.get(subscription.stream, [])
        if subscription in subscriptions:
            subscriptions.remove(subscription)
