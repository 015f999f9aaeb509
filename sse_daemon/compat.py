"""Twisted's private internals, in one place.

The daemon reaches past Twisted's public API where that API has no way to
say what it needs: a faster write path, a count of the requests Twisted
refuses itself, a form parse it never uses, a disconnect it must not write
to. Every such use is a named function or class here, with the reason, and
``tests/test_compat.py`` pins each one against the installed Twisted, so an
upgrade that changes one fails there, loudly, and not somewhere downstream.

No other module names a private attribute of Twisted.
"""

from __future__ import annotations

from collections import deque
from typing import Any, cast

from h2.events import DataReceived, PriorityUpdated, RequestReceived, StreamEnded, StreamReset, WindowUpdated
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import _newclient, client as web_client, http, server
from twisted.web._http2 import _END_STREAM_SENTINEL, H2Connection, H2Stream

__all__ = ["BadRequestChannel", "between_requests", "DATA_LOSS", "H2Stream", "MAX_RESPONSE_HEAD", "ResponseHeadTooLarge", "STREAM_BUFFER", "StreamingH2Connection",
           "StreamingH2Stream", "has_write_buffer", "quiet_connection_pool", "request_disconnected", "request_line", "skip_form_parsing", "write_buffer_empty"]


# --------------------------------------------------------------------------- the TCP write buffer (connectors/fanout.py)

#: where a FileDescriptor keeps the bytes it has not sent yet
_WRITE_BUFFER = ("_tempDataLen", "dataBuffer")


def has_write_buffer(transport: object) -> bool:
    """Whether ``transport`` keeps its unsent bytes where :func:`write_buffer_empty` looks.

    The fan-out sends straight to a drained socket only when it can tell that
    Twisted holds nothing for it (else bytes would go out of order); a
    transport that keeps its buffer elsewhere just takes ``transport.write``.
    """
    return all(hasattr(transport, name) for name in _WRITE_BUFFER)


def write_buffer_empty(transport: FileDescriptor) -> bool:
    """Twisted holds no unsent bytes for ``transport`` (pending writes and the buffer being sent).

    Twisted has no public "is anything buffered" question; this is read once
    per subscriber per reactor turn, so it is two attribute reads and no more.
    """
    return not transport._tempDataLen and not transport.dataBuffer


# --------------------------------------------------------------------------- bad requests (edge/listener.py)

class BadRequestChannel(http.HTTPChannel):
    """An HTTPChannel that reports every request Twisted's own parser refuses.

    Twisted answers a malformed request line, header or chunk with 400 and
    closes, all inside ``_respondToBadRequestAndDisconnect``, with no public
    hook: subclasses override :meth:`bad_request` to count it and stop their
    timers. A header line past ``MAX_LENGTH`` would be dropped without any
    answer (``LineReceiver.lineLengthExceeded``); it gets the same 400.
    """

    def bad_request(self) -> None:
        """Called just before Twisted answers 400 and closes the connection."""

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.bad_request()
        super()._respondToBadRequestAndDisconnect()

    def lineLengthExceeded(self, line: bytes) -> None:
        self._respondToBadRequestAndDisconnect()


# --------------------------------------------------------------------------- requests (edge/listener.py, connectors/ingest.py)

def request_line(channel: http.HTTPChannel) -> tuple[bytes, bytes, bytes]:
    """The method, target and version of the request whose headers ``channel`` has just read.

    A streaming publish is handed to its resource when its headers are in, not
    when its body has ended (edge/bodystream.py); Twisted keeps the request line
    on the channel, privately, until then, and has no public way to ask for it.
    Valid from ``allHeadersReceived`` until ``allContentReceived``.
    """
    return channel._command, channel._path, channel._version


def between_requests(channel: http.HTTPChannel) -> bool:
    """Whether ``channel``'s parser waits for the first byte of a request line, holding nothing.

    The publish fast lane (edge/leanrequest.py) takes a whole plain request
    only then; any other time the bytes belong to twisted.web's parser (a
    head half read, a body, a request in progress). Twisted keeps that state
    privately: the request queue, LineReceiver's buffer and mode, the
    channel's first-line flag and the buffer of bytes read during a request.
    The flag is 2, not 1, once twisted.web has ignored a stray empty line (a
    CRLF some clients send after a POST's body): it ignores only one until it
    parses a request, which resets the flag. A request the lane took would not
    reset it, and the next stray CRLF would be parsed as a request line (400):
    that state is twisted.web's to carry through its next request.
    """
    return bool(not channel.requests and channel.line_mode and not channel._buffer
                and cast(Any, channel)._HTTPChannel__first_line == 1 and not channel._dataBuffer and channel.persistent)


def skip_form_parsing(request: server.Request) -> None:
    """Turn off the parse of form bodies (urlencoded, multipart) into ``request.args`` for ``request``.

    Nothing in the daemon reads form fields, and the parse (through the email
    package, on every POST) cost 7 % of the daemon's CPU under publish load.
    Twisted has a public switch only on ``Site`` in newer releases than the
    oldest this project supports; call from the request's ``__init__``.
    """
    request._parsePOSTFormSubmission = False


def request_disconnected(request: object) -> bool:
    """Whether the connection under ``request`` was lost before it was answered.

    ``request.finished`` only says that we finished; writing to or finishing a
    request whose client left raises in Twisted, and the only record of that
    is the request's private flag. Test doubles without the flag (Twisted's
    ``DummyRequest``) are never disconnected.
    """
    return bool(getattr(request, "_disconnected", False))


# --------------------------------------------------------------------------- HTTP client


#: what Twisted adds to a ``ResponseFailed`` when a chunked body is cut short; it only
#: repeats that the body ended early, so failure texts leave it out
DATA_LOSS: type[Exception] = http._DataLoss


#: bytes of a response head (status line and headers) the client reads before it gives the response up
MAX_RESPONSE_HEAD = 64 * 1024


class ResponseHeadTooLarge(Exception):
    """An upstream's response head went on past :data:`MAX_RESPONSE_HEAD` bytes."""


class HeadLimitedClientProtocol(_newclient.HTTP11ClientProtocol):
    """Twisted's HTTP/1.1 client protocol, giving a response up once its head passes :data:`MAX_RESPONSE_HEAD`.

    twisted.web's client keeps every header line of a response head until the
    blank line, with no bound on their number (its server side has
    ``maxHeaders`` and ``totalHeadersSize``): an upstream that never ends its
    head would grow it until the connect timeout. Bytes are counted per
    response parser (``_parser``, replaced for each request) while it is still
    in its head (``state``); ``_giveUp`` is how Twisted itself fails a response
    and closes the connection.
    """

    _counted: object = None
    _head_bytes = 0

    def dataReceived(self, data: bytes) -> None:
        parser = self._parser
        if parser is not self._counted:
            self._counted, self._head_bytes = parser, 0
        self._head_bytes += len(data)
        super().dataReceived(data)
        if (parser is not None and self._parser is parser and parser.state in (_newclient.STATUS, _newclient.HEADER)
                and self._head_bytes > MAX_RESPONSE_HEAD):
            self._giveUp(Failure(ResponseHeadTooLarge(f"the response head is over {MAX_RESPONSE_HEAD} bytes")))


class _QuietClientFactory(web_client._HTTP11ClientFactory):
    """The pool's per-connection factory without its "Starting factory" log line
    (one line per reconnect is noise in a daemon's log), building protocols that
    bound a response head."""

    noisy = False

    def buildProtocol(self, addr: Any) -> HeadLimitedClientProtocol:
        return HeadLimitedClientProtocol(self._quiescentCallback)


def quiet_connection_pool(reactor: Any, persistent: bool = False) -> web_client.HTTPConnectionPool:
    """An ``HTTPConnectionPool`` whose connections do not log their start and stop.

    Twisted has no public way to choose the pool's factory: its private
    ``_factory`` attribute is the one place it is read (``_newConnection``).
    """
    pool = web_client.HTTPConnectionPool(reactor, persistent=persistent)
    pool._factory = _QuietClientFactory
    return pool


# --------------------------------------------------------------------------- HTTP/2 (edge/listener.py)


#: bytes of one stream Twisted may hold while its window is open but the connection does not
#: drain; past them the stream's producer is paused, as a TCP transport pauses past its buffer
STREAM_BUFFER = 64 * 1024


class StreamingH2Stream(H2Stream):
    """A stream of a :class:`StreamingH2Connection`: a window update does not resume it while the
    connection holds it past :data:`STREAM_BUFFER`.

    Twisted resumes a stream's producer on every ``WINDOW_UPDATE`` while its
    window (less what is queued) is open. A client that reads nothing may
    still send those frames, a few bytes each: each let one more write into a
    queue that does not drain, past every bound, and the subscriber was never
    cut. Only the queue draining (the send loop) resumes a held stream.
    """

    def windowUpdated(self) -> None:
        if cast("StreamingH2Connection", self._conn).holds(self.streamID):
            return
        super().windowUpdated()

    def _send100Continue(self) -> None:
        """No ``100 Continue`` once the answer has started: a request refused at its ``Content-Length``
        (413) whose ``Expect`` came later in its head had Twisted send one after the final answer,
        a protocol error raised out of the connection."""
        if not self._request.startedWriting:
            super()._send100Continue()


class StreamingH2Connection(H2Connection):
    """Twisted's HTTP/2 connection, made to keep a subscriber's flow-control promise.

    Twisted's ``H2Connection`` pauses a stream's producer only when the
    stream's send window is used up, counting what it queued; with the large
    windows browsers grant (megabytes) a stream whose connection does not
    drain would queue that much before its subscriber noticed. Here a stream
    pauses past :data:`STREAM_BUFFER` queued bytes too, and resumes once its
    queue is sent, not at a window update (:class:`StreamingH2Stream`). Also:

    - a stream whose window is closed while it has data queued leaves the
      send loop (Twisted's keeps picking it, one ``callLater(0)`` after
      another, until a ``WINDOW_UPDATE``), and the loop wakes when a window opens;
    - a stream we reset (a subscriber cut for being slow) tells its request,
      as a lost TCP connection does, so the request's ``notifyFinish`` fires;
    - frames for a stream already ended (data the client goes on sending
      after our 413 or 408, or its reset of that stream) are dropped, not a
      ``KeyError`` that kills the connection;
    - a SETTINGS frame that raises the initial window opens the streams'
      windows as a WINDOW_UPDATE does (Twisted heard only the latter);
    - a PRIORITY frame orders only the streams open: Twisted added every
      stream one named (and the one it depends on) to the priority tree for
      good, and past the tree's 1000 its refusal killed the connection;
    - the streams are of :attr:`stream_factory`; subclasses hear of a
      malformed request or protocol error (:meth:`bad_request`), a stream's
      head (:meth:`stream_opened`) and its end (:meth:`stream_closed`), and
      of the connection told to close (:meth:`closing`), and may close the
      connection with :meth:`goaway`, without naming Twisted's private attributes.
    """

    #: builds each stream: ``(streamID, connection, headers, requestFactory, site, factory)``
    stream_factory: Any = StreamingH2Stream
    #: builds each stream's request (the site's), set by whoever makes the connection
    requestFactory: Any = None

    def __init__(self, reactor: Any = None) -> None:
        super().__init__(reactor)
        #: streams paused because their queue passed STREAM_BUFFER
        self._held: set[int] = set()

    def holds(self, streamID: int) -> bool:
        """Whether the stream is paused past STREAM_BUFFER: only its queue draining resumes it."""
        return streamID in self._held

    def bad_request(self) -> None:
        """Called when a request or the connection is refused as malformed (400, or GOAWAY)."""

    def stream_opened(self) -> None:
        """Called when a request's head arrived, before its stream is built."""

    def stream_closed(self) -> None:
        """Called when a stream is over (its end sent, or reset) and forgotten."""

    @property
    def open(self) -> bool:
        """The connection is not lost."""
        return bool(self._stillProducing)

    def closing(self) -> None:
        """Called when the connection has told its open transport to close (our GOAWAY, a protocol error,
        the client's GOAWAY): the transport may still be open, for as long as the client likes."""

    def goaway(self) -> None:
        """Refuse new streams (GOAWAY, when the connection is still open) and close once what is queued is sent."""
        if self._stillProducing:
            self.conn.close_connection()
            self._tryToWriteControlData()
        if self.transport is not None:
            self.transport.loseConnection()
            self.closing()

    def connectionLost(self, reason: Failure = connectionDone, _cancelTimeouts: bool = True) -> None:
        super().connectionLost(reason, _cancelTimeouts)
        if not _cancelTimeouts:  # Twisted's own teardown (a protocol error, the client's GOAWAY), not the transport's loss
            self.closing()

    def _requestDone(self, streamID: int) -> None:
        super()._requestDone(streamID)
        self.stream_closed()

    def dataReceived(self, data: bytes) -> None:
        window = self.conn.remote_settings.initial_window_size
        super().dataReceived(data)
        grown = self.conn.remote_settings.initial_window_size - window
        if grown > 0 and self._stillProducing:
            # every stream's window grew (RFC 9113 6.9.2): what waited for a WINDOW_UPDATE may go now
            self._handleWindowUpdate(WindowUpdated(stream_id=0, delta=grown))

    # -- streams of our own class (Twisted's _requestReceived, with stream_factory)
    def _requestReceived(self, event: RequestReceived) -> None:
        self.stream_opened()
        # the stream's queue and place in the priority tree first: its request may answer
        # while the stream is built (a 413 on its Content-Length)
        self._streamCleanupCallbacks[event.stream_id] = Deferred()
        self._outboundStreamQueues[event.stream_id] = deque()
        self.priority.insert_stream(event.stream_id)  # not there before: a PRIORITY frame adds no stream (below)
        self.priority.block(event.stream_id)
        self.streams[event.stream_id] = self.stream_factory(event.stream_id, self, event.headers, self.requestFactory,
                                                            self.site, self.factory)

    def _requestDataReceived(self, event: DataReceived) -> None:
        if event.stream_id in self.streams:
            super()._requestDataReceived(event)
            return
        try:  # an ended stream: drop the data, give its room back to the connection's window
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        except Exception:
            pass
        self._tryToWriteControlData()

    def _requestEnded(self, event: StreamEnded) -> None:
        if event.stream_id in self.streams:
            super()._requestEnded(event)

    def _requestAborted(self, event: StreamReset) -> None:
        if event.stream_id in self.streams:  # else we ended it already: nothing is left to tell
            super()._requestAborted(event)

    def _handlePriorityUpdate(self, event: PriorityUpdated) -> None:
        if event.stream_id not in self.streams:
            return  # not open (idle, or over): nothing to order, and nothing kept for it
        parent = event.depends_on if event.depends_on in self.streams else None  # else on the root
        self.priority.reprioritize(stream_id=event.stream_id, depends_on=parent, weight=event.weight,
                                   exclusive=event.exclusive)

    def _respondToBadRequestAndDisconnect(self, streamID: int) -> None:
        self.bad_request()
        super()._respondToBadRequestAndDisconnect(streamID)

    def _terminate(self, reason: Failure) -> None:
        self.bad_request()
        super()._terminate(reason)

    # -- writes
    def writeDataToStream(self, streamID: int, data: bytes) -> None:
        if streamID not in self._outboundStreamQueues:
            return  # the stream is gone: like a write to a closed socket, dropped
        super().writeDataToStream(streamID, data)
        if streamID in self.streams and self.queued(streamID) >= STREAM_BUFFER:
            self._held.add(streamID)
            self.streams[streamID].flowControlBlocked()

    def endRequest(self, streamID: int) -> None:
        if streamID in self._outboundStreamQueues:
            super().endRequest(streamID)

    def abortRequest(self, streamID: int) -> None:
        stream = self.streams.get(streamID)
        if stream is None:
            return
        super().abortRequest(streamID)
        stream.connectionLost(Failure(ConnectionAborted("the stream was reset")))

    def queued(self, streamID: int) -> int:
        """Bytes queued on the stream, not sent yet."""
        return sum(len(chunk) for chunk in self._outboundStreamQueues.get(streamID, ()) if chunk is not _END_STREAM_SENTINEL)

    # -- the send loop
    def _sendPrioritisedData(self, *args: object) -> None:
        super()._sendPrioritisedData(*args)
        queues = self._outboundStreamQueues
        for streamID, queue in queues.items():
            if queue and queue[0] is not _END_STREAM_SENTINEL and self.conn.local_flow_control_window(streamID) <= 0:
                self.priority.block(streamID)  # nothing can go until a WINDOW_UPDATE unblocks it
        for streamID in tuple(self._held):
            if streamID not in self.streams:
                self._held.discard(streamID)
            elif self.queued(streamID) < STREAM_BUFFER // 2:
                self._held.discard(streamID)
                self.streams[streamID].windowUpdated()  # resumes its producer if its window is open

    def _handleWindowUpdate(self, event: Any) -> None:
        super()._handleWindowUpdate(event)
        if self._sendingDeferred is not None and any(
                queue and self.conn.local_flow_control_window(streamID) > 0 for streamID, queue in self._outboundStreamQueues.items()):
            d, self._sendingDeferred = self._sendingDeferred, None
            d.callback(None)
