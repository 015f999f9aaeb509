"""Each of Twisted's private internals that sse_daemon.compat uses, pinned against the installed Twisted.

A Twisted upgrade that renames or changes one of them fails here, by name,
rather than as a slower fan-out, an uncounted 400 or a write to a closed request.
"""

from __future__ import annotations

import inspect
import socket
from collections.abc import Iterator

import pytest
from twisted.internet import tcp
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

from sse_daemon.compat import (BadRequestChannel, between_requests, has_write_buffer, request_disconnected, request_line, skip_form_parsing,
                               write_buffer_empty)

pytestmark = pytest.mark.reactor_free


# --------------------------------------------------------------------------- the TCP write buffer

@pytest.fixture
def tcp_transport() -> Iterator[tuple[tcp.Connection, socket.socket]]:
    """A plain TCP transport over one end of a socket pair (on a memory reactor), and the other end."""
    ours, theirs = socket.socketpair()
    transport = tcp.Connection(ours, Protocol(), MemoryReactor())
    transport.connected = True
    yield transport, theirs
    ours.close()
    theirs.close()


def test_a_tcp_transport_keeps_its_unsent_bytes_where_compat_looks(tcp_transport) -> None:
    transport, peer = tcp_transport
    assert has_write_buffer(transport)
    assert write_buffer_empty(transport), "nothing written yet"
    transport.write(b"held")
    assert not write_buffer_empty(transport), "a write waits for the reactor's next writable turn"
    transport.doWrite()  # that turn: the buffer goes to the socket
    assert write_buffer_empty(transport)
    assert peer.recv(16) == b"held"


def test_a_partly_sent_buffer_is_not_empty(tcp_transport) -> None:
    transport, _ = tcp_transport
    transport.write(b"x" * (8 * 1024 * 1024))  # more than a socket pair's buffers take at once
    transport.doWrite()
    assert transport.dataBuffer and not write_buffer_empty(transport)


def test_an_object_without_twisteds_buffer_takes_the_slow_path() -> None:
    assert not has_write_buffer(StringTransport())


# --------------------------------------------------------------------------- bad requests

class CountingChannel(BadRequestChannel):
    refused = 0

    def bad_request(self) -> None:
        self.refused += 1


def connect(channel_type: type[http.HTTPChannel], request_type: type[server.Request] = server.Request,
            resource: Resource | None = None) -> tuple[http.HTTPChannel, StringTransport]:
    site = server.Site(resource or Resource(), requestFactory=request_type, reactor=Clock())  # its timeouts on a clock of their own
    site.protocol = channel_type
    channel = site.buildProtocol(None)
    assert channel is not None
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def test_a_malformed_request_line_is_reported_then_answered_400() -> None:
    channel, transport = connect(CountingChannel)
    channel.dataReceived(b"NONSENSE\r\n\r\n")
    assert isinstance(channel, CountingChannel) and channel.refused == 1
    assert transport.value().startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert transport.disconnecting


def test_a_bad_chunk_is_reported_then_answered_400() -> None:
    channel, transport = connect(CountingChannel)
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert isinstance(channel, CountingChannel) and channel.refused == 1
    assert transport.value().startswith(b"HTTP/1.1 400 Bad Request\r\n")


def test_a_header_line_too_long_is_answered_400_where_twisted_would_only_close() -> None:
    line = b"GET / HTTP/1.1\r\nX-Long: " + b"a" * (http.HTTPChannel.MAX_LENGTH + 1) + b"\r\n\r\n"
    plain, plain_transport = connect(http.HTTPChannel)
    plain.dataReceived(line)
    assert plain_transport.value() == b"" and plain_transport.disconnecting, "why BadRequestChannel overrides lineLengthExceeded"
    channel, transport = connect(CountingChannel)
    channel.dataReceived(line)
    assert isinstance(channel, CountingChannel) and channel.refused == 1
    assert transport.value().startswith(b"HTTP/1.1 400 Bad Request\r\n")


class Ok(Resource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        return b"ok"


def test_a_good_request_is_not_reported() -> None:
    channel, transport = connect(CountingChannel, resource=Ok())
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(channel, CountingChannel) and channel.refused == 0
    assert transport.value().startswith(b"HTTP/1.1 200 OK\r\n")


# --------------------------------------------------------------------------- requests

class Recorder(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[server.Request] = []

    def render_POST(self, request: server.Request) -> int:
        self.requests.append(request)
        return server.NOT_DONE_YET

    render_GET = render_POST


class FormlessRequest(server.Request):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        skip_form_parsing(self)


FORM_POST = (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
             b"Content-Length: 7\r\n\r\nkey=val")


def test_form_parsing_is_skipped_for_a_request_that_asks() -> None:
    parsed = Recorder()
    channel, _ = connect(http.HTTPChannel, server.Request, parsed)
    channel.dataReceived(FORM_POST)
    assert parsed.requests[0].args == {b"key": [b"val"]}, "Twisted parses forms by default: the switch still matters"
    skipped = Recorder()
    channel, _ = connect(http.HTTPChannel, FormlessRequest, skipped)
    channel.dataReceived(FORM_POST)
    assert skipped.requests[0].args == {}
    assert skipped.requests[0].content.read() == b"key=val", "the body is still there to read"


def test_a_request_whose_client_left_is_disconnected() -> None:
    resource = Recorder()
    channel, _ = connect(http.HTTPChannel, server.Request, resource)
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    request = resource.requests[0]
    assert not request_disconnected(request)
    channel.connectionLost(Failure(ConnectionDone()))
    assert request_disconnected(request)
    with pytest.raises(RuntimeError):  # why the flag is read: finishing it now raises
        request.finish()


def test_a_test_double_is_never_disconnected() -> None:
    assert not request_disconnected(DummyRequest([b"in"]))


# --------------------------------------------------------------------------- the request line, at the headers

class LineAtHeaders(http.HTTPChannel):
    seen: tuple[bytes, bytes, bytes] | None = None

    def allHeadersReceived(self) -> None:
        super().allHeadersReceived()
        self.seen = request_line(self)


def test_the_request_line_is_on_the_channel_when_the_headers_are_in() -> None:
    channel, _ = connect(LineAtHeaders)
    channel.dataReceived(b"POST /in?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
    assert isinstance(channel, LineAtHeaders) and channel.seen == (b"POST", b"/in?x=1", b"HTTP/1.1")


def test_a_channel_is_between_requests_only_when_its_parser_holds_nothing() -> None:
    recorder = Recorder()
    channel, transport = connect(http.HTTPChannel, resource=recorder)
    assert between_requests(channel), "a new connection"
    channel.dataReceived(b"POST /in HTTP/1.1\r\nHost: x\r\n")
    assert not between_requests(channel), "half a head read"
    channel.dataReceived(b"Content-Length: 4\r\n\r\nab")
    assert not between_requests(channel), "half a body read"
    channel.dataReceived(b"cd")
    assert not between_requests(channel), "a request in progress"
    channel.dataReceived(b"GET")
    (request,) = recorder.requests
    request.write(b"ok")
    request.finish()
    assert not between_requests(channel), "the next request's first bytes, read while the first was answered"
    channel.dataReceived(b" / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert not between_requests(channel), "a connection that closes after its answer takes nothing more"
    fresh, _ = connect(http.HTTPChannel, resource=recorder)
    fresh.dataReceived(b"POST /in HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nz")
    recorder.requests[-1].finish()
    assert between_requests(fresh), "answered in full, nothing buffered: the next request's first byte is awaited"
    fresh.dataReceived(b"\r\n")
    assert not between_requests(fresh), "a stray empty line ignored: only one is, until twisted.web parses a request"
    fresh.dataReceived(b"POST /in HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nz")
    recorder.requests[-1].finish()
    assert between_requests(fresh), "a request parsed: the next stray empty line is ignored again"


# --------------------------------------------------------------------------- HTTP/2 (compat.StreamingH2Connection)

def test_twisteds_http2_connection_keeps_what_the_streaming_connection_overrides_and_reads() -> None:
    from twisted.web import _http2

    from sse_daemon.compat import StreamingH2Connection

    for name in ("_requestReceived", "_requestDataReceived", "_requestEnded", "_requestAborted", "_handlePriorityUpdate",
                 "_respondToBadRequestAndDisconnect", "_terminate",
                 "_sendPrioritisedData", "_handleWindowUpdate", "_requestDone", "_tryToWriteControlData",
                 "writeDataToStream", "endRequest", "abortRequest", "remainingOutboundWindow"):
        assert callable(getattr(_http2.H2Connection, name)), name
    assert hasattr(_http2, "_END_STREAM_SENTINEL")
    assert "_cancelTimeouts" in inspect.signature(_http2.H2Connection.connectionLost).parameters, "how its own teardown is told apart"
    connection = StreamingH2Connection(Clock())
    for name in ("streams", "_outboundStreamQueues", "_streamCleanupCallbacks", "priority", "_sendingDeferred", "_stillProducing", "conn"):
        assert hasattr(connection, name), name
    for name in ("flowControlBlocked", "windowUpdated", "requestComplete", "receiveDataChunk", "connectionLost", "_send100Continue"):
        assert callable(getattr(_http2.H2Stream, name)), name


def test_a_stream_is_built_by_the_stream_factory_with_its_queue_and_place_in_the_send_order() -> None:
    import h2.config
    import h2.connection
    from twisted.web import _http2

    from sse_daemon.compat import StreamingH2Connection

    built: list[object] = []

    class Stream(_http2.H2Stream):
        def __init__(self, *args: object) -> None:
            built.append(self)
            super().__init__(*args)

    site = server.Site(Resource(), reactor=Clock())
    connection = StreamingH2Connection(site.reactor)
    connection.stream_factory = Stream
    connection.requestFactory = server.Request
    connection.site = connection.factory = site
    connection.makeConnection(StringTransport())
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(1, [(":method", "POST"), (":path", "/"), (":scheme", "https"), (":authority", "x")])
    connection.dataReceived(client.data_to_send())
    assert built == [connection.streams[1]]
    assert 1 in connection._outboundStreamQueues and 1 in connection._streamCleanupCallbacks
    connection.abortRequest(1)  # reset by us: the request hears of it, as of a lost connection
    assert built[0]._request._disconnected and 1 not in connection.streams
