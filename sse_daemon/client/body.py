"""Body protocols: one that hands an event stream's bytes on and can pause or close it,
and one that closes a response the client will not read."""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

__all__ = ["BodyReceiver", "Discard"]


class BodyReceiver(Protocol):
    """Hands body bytes on as they arrive and keeps the transport.

    treq's ``collect`` cannot be cancelled and would keep the connection open;
    with the transport we can close it, and pause it when downstream cannot
    keep up.
    """

    def __init__(self, on_data: Callable[[bytes], None]) -> None:
        self._on_data = on_data
        self.done: Deferred[None] = Deferred()  # fires (never fails) once the body has ended
        self.reason: Failure | None = None
        self.closing = False
        self.paused = False

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        if self.closing:  # closed before the body began (stop() in the handler's opened)
            transport.stopProducing()
        elif self.paused:
            transport.pauseProducing()

    def receive(self, response: IResponse) -> None:
        """Take ``response``'s body. twisted.web resumes the transport once the body protocol is
        connected (after handing it what it had buffered), undoing a pause made before or meanwhile:
        it is made again here, so a held stream stays unread."""
        response.deliverBody(self)
        if self.paused:
            self.pause()

    def dataReceived(self, data: bytes) -> None:
        if not self.closing:  # what twisted.web had buffered, or parsed from the same read, is not handed on
            self._on_data(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.transport = None
        self.reason = reason
        if not self.done.called:
            self.done.callback(None)

    def close(self) -> None:
        """Drop the connection now. Not ``loseConnection``: over TLS that waits for the peer's
        close_notify, which a silent peer (a read timeout) never sends and a held stream never reads."""
        self.closing = True
        transport: Any = self.transport  # the response body's transport is also an IPushProducer
        if transport is not None:
            transport.stopProducing()

    def pause(self) -> None:
        self.paused = True
        transport: Any = self.transport  # the response body's transport is also an IPushProducer
        if transport is not None:
            transport.pauseProducing()

    def resume(self) -> None:
        self.paused = False
        transport: Any = self.transport
        if transport is not None:
            transport.resumeProducing()


class Discard(Protocol):
    """Closes a response we will not read (an error page, a wrong content type)."""

    def makeConnection(self, transport: Any) -> None:
        transport.stopProducing()
