"""A sink's own id scheme, used when the bus numbers nothing (the in-process bus).

On a shared bus a sink sends the bus's ids instead (``ISharedBus.ids``); both
schemes are :class:`~sse_daemon.bus.interfaces.IEventIds`, which is all a
sink's history needs to know of them.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from sse_daemon.bus.interfaces import IEventIds


class EventIds:
    """Opaque, strictly increasing ids that are not reused after a restart.

    An id is the wall-clock time in microseconds, bumped by one when two
    events fall in the same microsecond; a restarted daemon therefore starts
    above every id it gave out before (unless the clock went backwards: a sink
    with a history file starts ``after`` the newest id in it, whatever the clock says).
    """

    def __init__(self, clock: IReactorTime, after: int | None = None) -> None:
        self._clock = clock
        self._last = 0 if after is None else after

    def above(self, event_id: int) -> None:
        """Every id from now on is above ``event_id`` (one given out before: a history file's, a predecessor's)."""
        self._last = max(self._last, event_id)

    def next(self) -> int:
        return self.take(1)

    def take(self, count: int) -> int:
        """The first of ``count`` consecutive new ids (the rest follow it by one)."""
        now = int(self._clock.seconds() * 1_000_000)
        first = now if now > self._last else self._last + 1
        self._last = first + count - 1 if count else self._last
        return first


@implementer(IEventIds)
class LocalIds:
    """:class:`EventIds` as text and keys: decimal integers."""

    def key(self, text: str) -> int:
        return int(text)

    def show(self, key: int) -> str:
        return str(key)

    def below(self, key: int) -> int:
        return key - 1


LOCAL_IDS = LocalIds()
