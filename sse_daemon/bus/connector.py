"""The bus as one source sees it: the daemon's bus, noting when that source last published."""

from __future__ import annotations

from typing import Iterable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from sse_daemon.bus.interfaces import IBus, ISubscription, Subscriber
from sse_daemon.events.schema import Event


@implementer(IBus)
class ConnectorBus:
    """A source's view of the bus: notes when that source last published.

    A source only publishes; wrapping its bus gives an exact "last event"
    time (``last_publish``, for the admin's figures) without touching the
    source or timing anything per subscriber.
    """

    def __init__(self, bus: IBus, clock: IReactorTime) -> None:
        self.bus = bus
        self.clock = clock
        self.last_publish: float | None = None

    def publish(self, stream: str, events: Iterable[Event]) -> Deferred:
        events = list(events)
        if events:
            self.last_publish = self.clock.seconds()
        return self.bus.publish(stream, events)

    def subscribe(self, stream: str, subscriber: Subscriber) -> ISubscription:
        return self.bus.subscribe(stream, subscriber)
