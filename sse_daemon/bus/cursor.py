"""A leased source's view of the bus: the upstream cursor saved after each acknowledged publish.

With a shared bus, an upstream event is either in Redis or read again: after each
publish Redis acknowledged, the upstream id of its last event is saved under
``cursor_key``; when a publish fails, ``restart`` is called so the source stops and
reads again from the cursor once its lease lets it (lease.py), and the failure goes on to
the source, which counts it.
"""

from __future__ import annotations

from typing import Callable, Iterable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from sse_daemon.bus.interfaces import IBus, ISharedBus, ISubscription, Subscriber
from sse_daemon.events.schema import Event


@implementer(IBus)
class CursorBus:
    """Saves the cursor after each acknowledged publish, and calls ``restart`` (with why) when a
    publish fails, so the source reads again from the cursor (nothing read is dropped)."""

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
        d.addCallbacks(lambda _: self._save(cursor) if cursor else None, self._refused)
        return d

    def subscribe(self, stream: str, subscriber: Subscriber) -> ISubscription:
        return self.inner.subscribe(stream, subscriber)

    def _save(self, cursor: str) -> Deferred:
        self.acknowledged = cursor
        return self.redis.command("SET", self.cursor_key, cursor).addErrback(self._not_saved)

    def _not_saved(self, failure: Failure) -> None:
        """The events are in Redis, only the cursor is behind: nothing to count, read again from it."""
        self.restart("the cursor could not be saved")

    def _refused(self, failure: Failure) -> Failure:
        """Restart from the cursor, and pass the failure on: the source counts what the bus did not
        take (``bus-unavailable``) and logs it sampled; every publish in flight when Redis went away
        fails, and a line each would be a burst."""
        self.restart("a publish failed")
        return failure
