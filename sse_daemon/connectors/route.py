"""A route: the events of one stream that pass its ``where``, into another stream."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from sse_daemon.bus.interfaces import IBus, ISubscription
from sse_daemon.config.model import RouteDef
from sse_daemon.connectors.sink.historyfile import HistoryUnavailable
from sse_daemon.events.schema import Event
from sse_daemon.events.validate import InvalidValue, check_values
from sse_daemon.policy.limits import should_log


class RouteService(Service):
    """Sends the events of one stream that pass the route's ``where`` into
    another, keeping the target's attributes (the ``select`` ones, renamed by ``as``, checked at load)."""

    log = Logger()

    def __init__(self, route: RouteDef, names: tuple[str, ...], bus: IBus) -> None:
        self.route = route
        self.names = names
        self._outputs = route.outputs(names)  # (target attribute, source attribute): `select b as c` renames
        self.bus = bus
        self.events = 0  # forwarded
        self.filtered = 0  # held back by the route's where (false or null)
        self.rejected: Counter[str] = Counter()  # dropped, by reason: values no sink could write (none expected)
        self._subscription: ISubscription | None = None
        self.setName(f"route:{route}")  # with its select and where: several routes may join the same two streams

    def startService(self) -> None:
        super().startService()
        self._subscription = self.bus.subscribe(self.route.source, self.forward)

    def stopService(self) -> None:
        super().stopService()
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None

    def forward(self, events: Sequence[Event]) -> Deferred | None:
        """Publish the events that pass to the target, in one publish. Its Deferred is returned, so the
        original publish waits for it too: a routed event is as durable as the target's sinks make it."""
        where = self.route.where
        routed: list[Event] = []
        for event in events:
            if where is not None and not where.matches(event.values):
                self.filtered += 1
                continue
            values = {name: event.values[source] for name, source in self._outputs}
            try:  # what enters a stream is checked, whoever puts it there (validate.py); a route only narrows events
                check_values(values)
            except InvalidValue as e:
                self.rejected[e.reason] += 1
                if should_log(sum(self.rejected.values())):
                    self.log.warn("route {route} dropped an event no sink could write: {error} ({reason})",
                                  route=self.name, error=str(e), reason=e.reason)
                continue
            routed.append(Event(values, event.id, event.type, event.ingress))
        if not routed:
            return None
        self.events += len(routed)
        outcome: Deferred = Deferred()
        published = self.bus.publish(self.route.target, routed)
        published.addErrback(self._not_published, len(routed)).addBoth(_relay, outcome)
        return outcome

    def _not_published(self, failure: Failure, count: int) -> Failure:
        """The bus did not take the routed events (a shared bus that is down), or a sink of the target could
        not commit them (``history-unavailable``): counted, logged sampled, and passed on to the original publish."""
        reason = "history-unavailable" if failure.check(HistoryUnavailable) else "bus-unavailable"
        self.rejected[reason] += count
        if should_log(self.rejected[reason]):
            self.log.warn("route {route}: {count} events were not taken: {error} ({reason}, {total} so far)",
                          route=self.name, error=failure.getErrorMessage(), reason=reason, total=self.rejected[reason],
                          count=count)
        return failure


def _relay(result: object, outcome: Deferred) -> None:
    """Hand the publish's result to the route's caller (the bus, which consumes a failure); the publish's own chain ends here."""
    outcome.callback(result)
    return None
