"""What a bus is, declared: the contracts connectors, the admin and the daemon rely on.

Every piece that moves events talks to :class:`IBus` (publish, subscribe). What
only some buses offer is a separate interface, checked with ``providedBy``,
never found by name: :class:`IDeliveringBus` is the daemon's own bus (not a
view of it) with its delivery figures, and :class:`ISharedBus` a bus shared by
instances (Redis), which numbers events itself (its :class:`IEventIds`),
replays what follows an id, runs commands for leases and can be down.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from sse_daemon.events.schema import Event

#: ``subscriber(events)``: the events of one publish (or of one read of a shared bus), in order, as a
#: sequence it must not change; None when it is done with them, or a Deferred that fires once it is (a
#: sink with a history file: once they are committed; a route: once the target stream has them); a bus
#: that delivers in-process makes its publish wait for it (IBus.publish). The same Deferred may come
#: back for several publishes (a sink's turn) and be awaited by each: a bus observes it without taking
#: its result. A batch, not an event: each subscriber's steps run once per publish, not once per event
Subscriber = Callable[[Sequence[Event]], Deferred | None]


class ISubscription(Interface):
    stream = Attribute("The stream name this subscription listens to.")

    def cancel() -> None:
        """Stop delivering; calling it twice is harmless."""


class PublishUnconfirmed(Exception):
    """The bus's answer to a publish was lost (a timeout, a dropped connection): it may have taken the
    events, so a publisher that retries may publish them twice."""


class IBus(Interface):
    """Publish events into a stream; subscribe to a stream's events."""

    def publish(stream: str, events: Iterable[Event]) -> Deferred:
        """Hand ``events`` to every subscriber of ``stream``, in order.

        Always a Deferred: it fires once the bus has every event (on the in-process
        bus, which delivers before it returns: at once, or once every Deferred its
        subscribers returned has fired; with the bus's ids on a shared one) and fails
        when the bus took none of them (``BusUnavailable``, or ``InvalidValue`` for a
        value the bus cannot store), with ``PublishUnconfirmed`` when it may have taken them, or with the first failure a subscriber's Deferred
        had (``HistoryUnavailable``: a sink could not commit them to its history file).
        """

    def subscribe(stream: str, subscriber: Subscriber) -> ISubscription:
        """Call ``subscriber(events)`` with the events of every publish on ``stream``; it may return a Deferred
        (see :data:`Subscriber`), which the in-process bus's publish waits for (a shared bus ignores it)."""


class IDeliveringBus(IBus):
    """The daemon's bus itself (not a connector's view of it): it calls the subscribers."""

    provides_ids = Attribute(
        "True on a shared bus (ISharedBus.providedBy(bus)): events carry the bus's id (``Event.bus_id``) and "
        "``publish`` takes a batch in one transaction, so a batch must not be split; False on the in-process bus."
    )
    failures = Attribute("Subscriber calls that raised, by stream (a dict of counts): a failing subscriber never stops the others.")

    def subscriber_count(stream: str) -> int:
        """How many subscriptions ``stream`` has now."""


class IEventIds(Interface):
    """A bus's id scheme: ids as text on the wire, as ordered keys in a sink's history."""

    def key(text: str) -> Any:
        """The ordered key of an id (ValueError when ``text`` is not one of this scheme's ids)."""

    def show(key: Any) -> str:
        """The id of a key, as sent in ``id:`` and ``SSE-Replay-From``."""

    def below(key: Any) -> Any:
        """The greatest key below ``key``: a history's floor just under the first event it holds."""


class ISharedBus(IDeliveringBus):
    """A bus every instance shares (``bus: {type: redis}``): same events, same order, same ids everywhere."""

    ids = Attribute("The bus's IEventIds: how its ids (``Event.bus_id``) read and order.")
    prefix = Attribute("The key prefix of everything this bus keeps (leases and cursors live under it too).")
    lease_ttl = Attribute("Seconds a source's lease lasts (``source.lease.ttl``): one instance at a time reads an upstream.")
    history_size = Attribute("Entries each stream keeps, about (``history.size``): a body may not hold more (they would be "
                             "trimmed before anyone read them).")
    state = Attribute('"connecting", "up" or "down".')
    counters = Attribute("The bus's own figures (a Counter): events_published, publish_refused, reconnects, ...")

    def replay(stream: str, after: str | None, limit: int) -> Deferred:
        """What follows ``after`` on ``stream`` (at most ``limit`` events): a Deferred BusReplay."""

    def command(*args: str) -> Deferred:
        """One command on the bus's connection (a lease's SET, EVAL, GET); fails while the bus is down."""

    def readiness() -> str:
        """For ``/readyz``: "ok", or why the bus cannot take events now."""

    def fanout_lag(stream: str) -> float:
        """Seconds the oldest publish the bus acknowledged to this instance has waited for this instance's
        own fan-out of ``stream`` (0 when none waits, or nobody here reads it)."""

    def behind(stream: str, incoming: int = 0) -> float | None:
        """``fanout_lag(stream)`` when it is over the bus's bound (``fanout.max.lag``), or when the events
        waiting for this instance's fan-out and ``incoming`` more would be more than ``history_size``: this
        instance's ingest refuses (or holds) publishes to ``stream`` then; None otherwise."""
