"""A leased source's view of the bus: the upstream cursor saved after each acknowledged publish.

With a shared bus, an upstream event is either in Redis or read again: after each
publish Redis acknowledged, the upstream id of its last event is saved under
``cursor_key``; when a publish fails, ``restart`` is called so the source stops and
reads again from the cursor once its lease lets it (lease.py).
"""

from __future__ import annotations

from typing import Callable, Iterable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sse_daemon.bus.interfaces import IBus, ISharedBus, ISubscription, Subscriber
from sse_daemon.events.schema import Event


@implementer(IBus)
class CursorBus:
    """Saves the cursor after each acknowledged publish, and calls ``restart`` (with why) when a
    publish fails, so the source reads again from the cursor (nothing read is dropped)."""

    log = Logger()

    def __init__(self, inner: IBus, redis: ISharedBus, cursor_key: str, restart: Callable[[str], None]) -> None:
        self.inner = inner  # the source's ConnectorBus
        self.redis = redis  # the shared bus, for the cursor
        self.cursor_key = cursor_key
        self.restart = restart
        #: the upstream id of the last event Redis acknowledged here, if the cursor in Redis is lost
        self.acknowledged: str | None = None

    def publish(self, stream: str, events: Iterable[Event]) -> Deferred:
        events = list(events)
        d = self.inner.publish(stream, events)
        cursor = next((e.id for e in reversed(events) if e.id), None)
        d.addCallback(lambda _: self._save(cursor) if cursor else None)
        d.addErrback(self._failed)
        return d

    def subscribe(self, stream: str, subscriber: Subscriber) -> ISubscription:
        return self.inner.subscribe(stream, subscriber)

    def _save(self, cursor: str) -> Deferred:
        self.acknowledged = cursor
        return self.redis.command("SET", self.cursor_key, cursor)

    def _failed(self, failure: Failure) -> None:
        self.log.warn("a leased source could not publish ({reason}); reading again from the saved cursor",
                      reason=failure.getErrorMessage())
        self.restart("a publish failed")
