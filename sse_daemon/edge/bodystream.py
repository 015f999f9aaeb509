"""A request body handed to its resource as it arrives, for publishes that stream.

twisted.web gives a resource its request only once the whole body is in (held in
memory or a temporary file). A streaming publish (``POST`` with ``Content-Type:
application/x-ndjson``) has no end in sight, so its port hands it over as soon as
its headers are in: the path's resource (behind its guard: auth, CORS, limits, all
decided on the headers) gets the request then, and takes its body through a
:class:`BodyStream`: chunks as they arrive, the end, or the connection's loss.

Backpressure is the transport's: a consumer that cannot keep up pauses the stream,
which stops reading from the socket, so a publisher faster than the daemon is
slowed by TCP and nothing is buffered without bound. The body has no total size
limit (the consumer bounds what it holds, a line), but it must keep coming: the
port's ``server.body.timeout`` is the longest pause between two chunks, not
counting the time the daemon itself holds the stream. The connection closes
after the response.
"""

from __future__ import annotations

from typing import Any

from twisted.python.failure import Failure
from zope.interface import Interface

#: the media type of a streaming publish
NDJSON = b"application/x-ndjson"


class IBodyConsumer(Interface):
    """What takes a streamed body: called on the reactor, in order."""

    def chunk(data: bytes) -> None:
        """More of the body."""

    def end(complete: bool) -> None:
        """The body ends: answer the request now (or once what it started is done). ``complete`` is
        False when the daemon cut it short (shutdown): what follows its last whole line is not taken."""

    def lost(reason: Failure) -> None:
        """The connection went away (the client left, a deadline): no answer can be given."""


def wants_stream(method: bytes, content_type: bytes | None) -> bool:
    """Whether a request is a streaming publish: its body goes to the resource as it comes."""
    return method == b"POST" and content_type is not None and content_type.split(b";")[0].strip().lower() == NDJSON


class BodyStream:
    """One request's body on its way to a consumer; what arrives before one attaches is kept."""

    def __init__(self, producer: Any) -> None:
        #: what reads the socket (the channel's transport): paused to slow the client down; None for a body
        #: that twisted.web read whole (the same consumer takes it, in one chunk)
        self.producer = producer
        self.consumer: Any = None
        self._early: list[bytes] = []
        self._ended = False
        self._complete = True
        self._lost: Failure | None = None
        self._paused_by = 0  # pauses not yet resumed: the consumer's, and one while nobody consumes
        self._waiting = False  # reading held because no consumer is attached yet
        #: its request was handed to its resource (at its headers); kept here, not on the request: one more
        #: attribute set on every twisted.web Request cost 1.2 KiB per idle subscriber (bench, C scenarios;
        #: its instance dict no longer shared its keys with the others')
        self.dispatched = False

    def attach(self, consumer: Any) -> None:
        """``consumer`` (an :class:`IBodyConsumer`) takes the body from here: what came meanwhile first."""
        self.consumer = consumer
        early, self._early = self._early, []
        for data in early:
            consumer.chunk(data)
        if self._lost is not None:
            consumer.lost(self._lost)
        elif self._ended:
            consumer.end(self._complete)
        if self._waiting:  # reading was held until someone takes the body
            self._waiting = False
            self.resume()

    def chunk(self, data: bytes) -> None:
        if self._ended:  # cut short by the daemon (shutdown, revoked credentials): the rest is not read
            return
        if self.consumer is not None:
            self.consumer.chunk(data)
            return
        # nobody takes it yet (a password being checked): keep this read, hold the next ones
        self._early.append(data)
        if not self._waiting:
            self._waiting = True
            self.pause()

    def end(self, complete: bool = True) -> None:
        """The body ended (``complete``), or the daemon cuts it short here (shutdown, revoked credentials)."""
        if self._ended:
            return
        self._ended = True
        self._complete = complete
        if self.consumer is not None:
            self.consumer.end(complete)

    def lost(self, reason: Failure) -> None:
        if self._lost is not None:
            return
        self._lost = reason
        if self.consumer is not None:
            self.consumer.lost(reason)

    def pause(self) -> None:
        """Stop reading the client's bytes until :meth:`resume`: TCP slows the client down."""
        self._paused_by += 1
        if self._paused_by == 1 and self.producer is not None:  # None: the body is here whole, nothing to hold
            self.producer.pauseProducing()

    def resume(self) -> None:
        if self._paused_by == 0:
            return
        self._paused_by -= 1
        if self._paused_by == 0 and self._lost is None and self.producer is not None:
            self.producer.resumeProducing()

    @property
    def paused(self) -> bool:
        return self._paused_by > 0
