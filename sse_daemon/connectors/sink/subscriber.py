"""One connected client of an SSE sink: an ``IPushProducer`` with a bounded backlog.

Written to at once while its socket keeps up; given a bounded backlog while it
does not, and disconnected by the sink (``drop_slow``) past the bound, instead
of growing memory (``request.write`` alone would buffer without limit).
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any, Callable, Mapping, Protocol

from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.web.server import Request
from zope.interface import implementer

from sse_daemon.connectors.fanout import PUMP_BYTES, direct_socket, write_now  # one send() per subscriber per turn
from sse_daemon.wire.eventstream import encode_comment

HEARTBEAT = encode_comment("heartbeat")

#: a subscriber's filter (``?where=``): True for the values of an event it wants
Select = Callable[[Mapping[str, Any]], bool]


class SubscriberHost(Protocol):
    """What a subscriber reads of what serves it: a sink (core.py), or a hub connection (hub.py)."""

    clock: IReactorTime
    raw: bool
    queue_size: int
    queue_bytes: int
    counters: Counter[str]

    def wire(self, frames: list[bytes]) -> bytes: ...

    def drop_slow(self, subscriber: "Subscriber") -> None: ...


@implementer(IPushProducer)
class Subscriber:
    """One connected client: written to at once while its socket keeps up, and
    given a bounded backlog while it does not (``request.write`` alone would
    buffer without limit)."""

    def __init__(self, sink: SubscriberHost, request: Request, peer: str, select: Select | None = None) -> None:
        self.sink = sink
        #: its own filter (``?where=``, filtering.py): None takes every event
        self.select = select
        self.request = request
        #: Twisted's TCP or TLS transport (tests may pass a fake): typed loosely on purpose
        self.transport: Any = request.transport
        self.socket = direct_socket(self.transport)  # None: every write goes through Twisted (TLS)
        self.peer = peer
        self.paused = False
        self.gone = False
        #: the response uses chunked transfer encoding (known once its head is written)
        self.chunked = False
        #: bytes not yet handed to the transport: (data, events, live); replayed history is
        #: not live and does not count against the bound (history bounds it already)
        self.backlog: deque[tuple[bytes, int, bool]] = deque()
        self.queued_events = 0
        self.queued_bytes = 0
        self.events_sent = 0
        self.connected_at = sink.clock.seconds()

    def deliver(self, frames: list[bytes], data: bytes, chunked: bytes) -> bool:
        """The live events of one reactor turn: ``data`` is their frames joined, ``chunked``
        the same as HTTP chunks, both shared by every subscriber. False when held instead."""
        if self.gone:
            return False
        if self.paused or self.backlog:
            if self.sink.raw:  # each raw event keeps its own chunk: nothing else separates them
                for frame in frames:
                    self.hold(frame, 1, live=True)
            else:
                self.hold(data, len(frames), live=True)
            return False
        write_now(self.transport, self.socket, chunked if self.chunked else data)
        self.events_sent += len(frames)
        return True

    def hold(self, data: bytes, events: int, live: bool) -> None:
        """Queue ``data`` behind what waits; past the bounds the subscriber is cut, once: nothing is held after
        (a raw sink holds a turn's events one by one, and each bound crossed again was another cut)."""
        if self.gone:
            return
        self.backlog.append((data, events, live))
        if live:
            self.queued_events += events
            self.queued_bytes += len(data)
            if self.queued_events > self.sink.queue_size or self.queued_bytes > self.sink.queue_bytes:
                self.sink.drop_slow(self)

    def pump(self) -> None:
        """Write the backlog, up to ``PUMP_BYTES`` at a time, until the transport pauses us."""
        while self.backlog and not self.paused and not self.gone:
            parts: list[bytes] = []
            size = events = live_events = live_bytes = 0
            while self.backlog and size < PUMP_BYTES:
                data, count, live = self.backlog.popleft()
                parts.append(data)
                size += len(data)
                events += count
                if live:
                    live_events += count
                    live_bytes += len(data)
            self.queued_events -= live_events
            self.queued_bytes -= live_bytes
            write_now(self.transport, self.socket, self.sink.wire(parts) if self.chunked else b"".join(parts))
            self.events_sent += events
            self.sink.counters["events_out"] += events
            self.sink.counters["bytes_written"] += size

    def heartbeat(self) -> None:
        # A paused or backlogged subscriber has bytes in flight already.
        if not self.gone and not self.paused and not self.backlog:
            self.request.write(HEARTBEAT)

    # IPushProducer: the transport tells us when its buffers are full or drained.
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.pump()

    def attach(self, headers: list[tuple[bytes, bytes]]) -> None:
        """Take over the response: 200 with ``headers``, TCP keep-alive, and the transport's flow control."""
        self.request.setResponseCode(200)
        for name, value in headers:
            self.request.responseHeaders.setRawHeaders(name, [value])
        if hasattr(self.transport, "setTcpKeepAlive"):  # a TCP transport (not a test's fake)
            self.transport.setTcpKeepAlive(True)
        self.request.registerProducer(self, True)

    def open(self, opening: bytes) -> None:
        """Write the head at once, with ``opening`` (proxies flush on the comment); then no Nagle delay:
        writes are whole turns already."""
        self.request.write(opening)
        self.head_written()
        if hasattr(self.transport, "setTcpNoDelay"):  # a TCP transport (not a test's fake)
            self.transport.setTcpNoDelay(True)

    def head_written(self) -> None:
        """The response's head is out: whether its body is chunked is known now."""
        self.chunked = bool(getattr(self.request, "chunked", False))  # Twisted's Request sets it with the head (a test's fake may not)

    def end(self, final: bytes = b"") -> None:
        """End the stream cleanly, after ``final`` (a last comment or ``retry:``; not in raw format,
        nor behind bytes still queued)."""
        if self.gone:
            return
        self.gone = True
        if final and not self.sink.raw and not self.paused and not self.backlog:
            self.request.write(final)
        channel = self.request.channel  # the request lets go of it when finished
        self.request.unregisterProducer()
        self.request.finish()
        # finish() alone would keep the connection alive for another request. The channel closes it, not the
        # transport: a TLS transport closes only once its producer (the channel) lets go, so the stream stayed open
        channel.loseConnection()

    def stopProducing(self) -> None:
        self.gone = True
        self.backlog.clear()
        self.queued_events = self.queued_bytes = 0
