"""Graceful shutdown: stop accepting, close subscribers in stages, then stop the rest.

On SIGTERM twistd calls the application's ``stopService`` and waits for its
Deferred. :func:`shutdown` makes that an ordered drain instead of
``MultiService``'s "everything at once":

1. the shared ``Stopping`` is set, so every port answers any new request 503
   (``Retry-After``, ``Connection: close``) and the reloader ignores SIGHUP;
   every listener stops accepting (established connections stay open);
2. every SSE sink closes its subscribers in batches spread over its
   ``drain.window`` (its service's ``drain``: connectors/sink/drain.py), each
   with a last comment and its own random ``retry:``, so clients do not all
   come back in the same second; sources and the bus keep running meanwhile,
   so those still connected keep getting events; meanwhile every ingest answers the publishes
   under way (a streaming one is cut short, and its answer says what it took);
3. everything else stops (sources, routes, the bus's subscribers).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IReactorTime

from sse_daemon.policy.connections import Stopping

__all__ = ["shutdown"]


def shutdown(listeners: Iterable[Any], sink_services: Iterable[Any], stop_rest: Callable[[], Any],
             io: IReactorTime | None = None, stopping: Stopping | None = None, ingests: Iterable[Any] = ()) -> Deferred:
    """Stop accepting, drain every SSE sink and answer every ingest's publishes under way (in parallel),
    then ``stop_rest()``; one Deferred for all.

    ``stopping`` (shared with every port and the reloader) is set first: from
    then on every request on a kept-alive connection gets 503 with
    ``Retry-After`` and ``Connection: close`` (an ingest accepts nothing the
    drain would not deliver), and a SIGHUP is ignored.
    """
    if stopping is not None:
        stopping.begin()
    stopped = [maybeDeferred(listener.stopService) for listener in listeners]
    drains = [service.drain(io) for service in sink_services]
    answers = [ingest.settle() for ingest in ingests]

    def rest(_: object) -> Deferred:
        return maybeDeferred(stop_rest)

    return DeferredList(stopped + drains + answers, consumeErrors=True).addCallback(rest)
