"""Graceful shutdown: stop accepting, close subscribers in stages, then stop the rest.

On SIGTERM twistd calls the application's ``stopService`` and waits for its
Deferred. :func:`shutdown` makes that an ordered drain instead of
``MultiService``'s "everything at once":

1. the shared ``Stopping`` is set, so every port answers any new request 503
   (``Retry-After``, ``Connection: close``) and the reloader ignores SIGHUP;
   every listener stops accepting (established connections stay open);
2. every SSE sink closes its subscribers in batches spread over its
   ``drain.window`` (:func:`storms.drain_schedule`), each with a last comment
   and its own random ``retry:``, so clients do not all come back in the same
   second; sources and the bus keep running meanwhile, so those still
   connected keep getting events;
3. everything else stops (sources, routes, the bus's subscribers).
"""

from __future__ import annotations

import random
from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sse_daemon.policy.connections import Stopping
from sse_daemon.wire.eventstream import encode_comment
from sse_daemon.policy.storms import drain_schedule, retry_frame, retry_hint

__all__ = ["drain_sink", "shutdown"]

log = Logger()

GOODBYE = encode_comment("server shutting down; reconnect")


#: after the last batch, how long to wait for closed connections to flush their last bytes
FLUSH_TIMEOUT = 2.0


def drain_sink(sink: Any, window: float, batch_min: int, clock: IReactorTime,
               jitter: Callable[[], float] = random.random, io: IReactorTime | None = None) -> Deferred:
    """Close ``sink``'s subscribers in batches over ``window`` seconds; fires when all are closed.

    Batches hold at least ``batch_min`` subscribers (a few connections coming
    back at once are no storm, and need no wait). Subscribers that leave on
    their own meanwhile are simply not there to close. With ``io`` (the real
    reactor), the Deferred waits until the closed connections have sent their
    last bytes: twistd cuts every connection still open once stopService's
    Deferred fires, and a cut stream would lose its clean end.
    """
    closed_transports: list[Any] = []
    calls: list[Any] = []

    def cancel(d: Deferred) -> None:  # a cancelled drain closes what is left at once
        for call in calls:
            if call.active():
                call.cancel()
        close(0, True)

    done: Deferred = Deferred(cancel)
    count = len(sink.subscribers)
    schedule = drain_schedule(count, window, batch_min)
    log.info("sink {sink}: closing {count} subscribers over {seconds:.1f}s in {batches} batches",
             sink=sink.name, count=count, seconds=schedule[-1][0] if schedule else 0.0, batches=len(schedule))

    def close(how_many: int, last: bool) -> None:
        with log.failuresHandled("closing subscribers of sink {sink} failed", sink=sink.name):
            # oldest connections first: they have had the longest run
            for subscriber in sorted(sink.subscribers, key=lambda s: s.connected_at)[: None if last else how_many]:
                hint = retry_hint(sink.retry_min, sink.retry_max, jitter)
                closed_transports.append(subscriber.request.transport)
                sink.close(subscriber, GOODBYE + retry_frame(hint))
        if last and not done.called:
            if io is None:
                done.callback(None)
            else:
                flushed(closed_transports, io, FLUSH_TIMEOUT).chainDeferred(done)

    if not schedule:
        done.callback(None)
        return done
    calls.extend(clock.callLater(delay, close, n, i == len(schedule) - 1) for i, (delay, n) in enumerate(schedule) if i)
    close(schedule[0][1], len(schedule) == 1)  # the first batch at once
    return done


def flushed(transports: list[Any], io: IReactorTime, timeout: float, poll: float = 0.01) -> Deferred:
    """Fires once every transport has disconnected (its buffer sent), or after ``timeout``."""
    d: Deferred = Deferred()
    end = io.seconds() + timeout

    def check() -> None:
        if all(getattr(t, "disconnected", True) for t in transports) or io.seconds() >= end:
            d.callback(None)
        else:
            io.callLater(poll, check)

    check()
    return d


def shutdown(listeners: Iterable[Any], sink_services: Iterable[Any], stop_rest: Callable[[], Any],
             io: IReactorTime | None = None, stopping: Stopping | None = None) -> Deferred:
    """Stop accepting, drain every SSE sink (in parallel), then ``stop_rest()``; one Deferred for all.

    ``stopping`` (shared with every port and the reloader) is set first: from
    then on every request on a kept-alive connection gets 503 with
    ``Retry-After`` and ``Connection: close`` (an ingest accepts nothing the
    drain would not deliver), and a SIGHUP is ignored.
    """
    if stopping is not None:
        stopping.begin()
    stopped = [maybeDeferred(listener.stopService) for listener in listeners]
    drains = [service.drain(io) for service in sink_services]

    def rest(_: object) -> Deferred:
        return maybeDeferred(stop_rest)

    return DeferredList(stopped + drains, consumeErrors=True).addCallback(rest)
