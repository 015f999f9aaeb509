"""A sink's staged close: its subscribers ended in batches, so they do not all come back at once.

On shutdown (and when a reload removes or restarts a sink) every subscriber
is closed with a last comment and its own random ``retry:``, in batches spread
over the sink's ``drain.window`` (:func:`storms.drain_schedule`). The sources
and the bus keep running meanwhile, so the subscribers still connected keep
getting events. The daemon's ordered shutdown (daemon/drain.py) asks every
sink service for this.
"""

from __future__ import annotations

import random
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from sse_daemon.connectors.sink.core import SseSink
from sse_daemon.policy.storms import drain_schedule, retry_frame, retry_hint
from sse_daemon.wire.eventstream import encode_comment

__all__ = ["drain_sink", "flushed"]

log = Logger()

GOODBYE = encode_comment("server shutting down; reconnect")

#: after the last batch, how long to wait for closed connections to flush their last bytes
FLUSH_TIMEOUT = 2.0


def drain_sink(sink: SseSink, window: float, batch_min: int, clock: IReactorTime,
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
    calls: list[IDelayedCall] = []

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
            if last:  # hub connections that read this sink too (they resume its other streams on reconnect)
                sink.close_hub_readers(GOODBYE + retry_frame(retry_hint(sink.retry_min, sink.retry_max, jitter)))
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
