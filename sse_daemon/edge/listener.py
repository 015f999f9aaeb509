"""One listening port, shared by every sink and ingest source that names it.

A port is bound once, so connectors are grouped by (host, port): one
``Site`` per port and one resource per path. Binding happens in
``privilegedStartService`` and a failure is raised there, so the daemon exits
instead of running without its port (a plain endpoint service would only log).

Every connection goes through :class:`QuietSite` and :class:`PortChannel`,
the port's one mechanism for what a client may cost before any resource sees
it (connections.py holds the bookkeeping): at accept, the descriptor headroom
and the per-address cap (a refused connection is closed at once); then a
deadline for each request head and one for its body, which trickling bytes do
not extend (408); once shutdown has begun, every new request gets 503.
"""

from __future__ import annotations

import json
import os
import socket
from collections import Counter
from dataclasses import dataclass
from resource import RLIM_INFINITY, RLIMIT_NOFILE, getrlimit
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (IDelayedCall, IListeningPort, INegotiated, IProtocol, IPushProducer, IReactorTime,
                                         IStreamServerEndpoint, ITCPTransport, ITransport)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.iweb import IRequest
from twisted.web.error import UnsupportedMethod
from twisted.web.resource import IResource, Resource

from zope.interface import implementer

from sse_daemon.compat import (BadRequestChannel, StreamingH2Connection, StreamingH2Stream, between_requests, request_line,
                               skip_form_parsing)
from sse_daemon.config.values import normalise_path
from sse_daemon.policy.connections import AddressCounts, DescriptorBudget, PortPolicy, Stopping
from sse_daemon.policy.limits import excerpt, should_log
from sse_daemon.edge.bodystream import BodyStream, wants_stream
from sse_daemon.edge.leanrequest import SERVER_NAME, LeanRequest
from sse_daemon.edge.sendnow import direct_socket, write_now
from sse_daemon.edge.safety import internal_error, undecodable_header
from sse_daemon.edge.tls import HTTP2_MARK
from sse_daemon.wire.httphead import plain_post

#: body limit on a port that only serves sinks (subscribing needs no body)
SINK_ONLY_BODY_LIMIT = 64 * 1024

#: a connection answered and closed (refused, timed out, too large) is cut if it is still open this much later
CLOSE_GRACE = 2.0

#: endpoint types whose port hands connections to the Site itself (nothing wraps it, as TLS does),
#: so that a connection refused at accept can be closed inside the accept loop
DIRECT_ENDPOINTS = ("tcp", "tcp6", "unix", "systemd")

#: bytes a pipelining client may send while a fast-lane request awaits its answer, before its reading is paused
#: (twisted.web's own ``HTTPChannel._optimisticEagerReadSize``)
LEAN_BACKLOG = 0x4000

#: ``Retry-After`` of a request answered 503 because the daemon is shutting down
SHUTDOWN_RETRY_AFTER = 5

#: the ALPN names of the two protocols a port speaks, as the port's figures count open connections
HTTP1 = "http/1.1"
HTTP2 = "h2"


class BindError(Exception):
    """A listener could not bind; the message names the connectors and the port."""


def server_endpoint(reactor: Any, description: str) -> IStreamServerEndpoint:
    """Twisted's endpoint for an endpoint string, or a ValueError saying why there is none.

    ``server.endpoint`` is the operator's text, which only Twisted's parsers read (the config layer
    cannot), and they raise whatever they meet: ValueError, TypeError, IndexError, OSError, ...
    """
    try:
        return endpoints.serverFromString(reactor, description)
    except Exception as e:
        raise ValueError(f"server.endpoint {description!r} is not an endpoint Twisted can listen on: {e}") from None


def json_error(request: IRequest, code: int, message: str, **fields: object) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps({"error": message, **fields}).encode() + b"\n"


class PathRouter(Resource):
    """Dispatches on the exact path (query string ignored, trailing slash optional)."""

    isLeaf = True

    log = Logger()

    def __init__(self, list_paths: bool = True) -> None:
        super().__init__()
        self.routes: dict[str, IResource] = {}
        #: a 404 lists the paths served (helpful on a sink's port; not on the admin listener,
        #: whose paths name every stream and which answers a wrong Host only after routing)
        self.list_paths = list_paths
        #: requests refused here, by reason ("not-found", "method-not-allowed", "body-too-large")
        self.rejected: Counter[str] = Counter()
        #: the request targets whose POSTs may take the fast lane (an ingest's path, with and without its
        #: trailing slash): a plain POST to one of them is answered without twisted.web's Request (leanrequest.py)
        self.lean_targets: frozenset[bytes] = frozenset()

    def reject(self, request: IRequest, code: int, reason: str, message: str, **fields: object) -> bytes:
        self.rejected[reason] += 1
        count = self.rejected[reason]
        if should_log(count):  # a scanner must not flood the log; the count is in /metrics
            self.log.info(
                "refused {method} {path} from {peer}: {message} ({reason}, {count} so far)",
                method=request.method.decode("latin-1"), path=excerpt(request.path.decode("latin-1", "replace")),
                peer=getattr(request.getClientAddress(), "host", "?"), message=message, reason=reason, count=count,
            )
        return json_error(request, code, message, reason=reason, **fields)

    def note(self, reason: str, peer: str, message: str) -> None:
        """Count a refusal made before any resource ran (at accept, a deadline, a body limit); log it sampled."""
        self.rejected[reason] += 1
        count = self.rejected[reason]
        if should_log(count):
            self.log.info("refused {peer}: {message} ({reason}, {count} so far)",
                          peer=peer, message=message, reason=reason, count=count)

    def add(self, path: str, resource: IResource, takes_posts: bool = False) -> None:
        """``takes_posts``: an ingest's path, whose plain POSTs take the fast lane."""
        path = normalise_path(path)
        self.routes[path] = resource
        targets = set(self.lean_targets) - {path.encode(), path.encode() + b"/"}
        if takes_posts:
            targets |= {path.encode(), path.encode() + b"/"}
        self.lean_targets = frozenset(targets)

    def retarget(self, routes: "tuple[PortRoute, ...]") -> None:
        """Serve ``routes`` from now on, in place of every path served before."""
        self.routes = {}
        self.lean_targets = frozenset()
        for route in routes:
            self.add(route.path, route.resource, route.max_body_size is not None)

    def render(self, request: server.Request) -> object:
        body = self._dispatch(request)
        if request.method == b"HEAD" and isinstance(body, bytes) and body:
            # a HEAD refusal: the head a GET would get, no body (else twisted.web drops the
            # body itself and logs a warning for every such request: a log flood)
            request.setHeader(b"Content-Length", b"%d" % len(body))
            return b""
        return body

    def _dispatch(self, request: server.Request) -> object:
        path = normalise_path(request.path.decode("utf-8", "replace"))
        bad_header = undecodable_header(request)  # here, once for every resource (safety.py)
        if bad_header is not None:
            return self.reject(request, 400, "invalid-header", f"the {bad_header} header is not UTF-8 text")
        resource = self.routes.get(path)
        if resource is None:
            listing = {"paths": sorted(self.routes)} if self.list_paths else {}
            return self.reject(request, 404, "not-found", f"nothing is served at {excerpt(path)}", **listing)
        try:
            return resource.render(request)
        except UnsupportedMethod as e:
            methods: tuple[bytes, ...] = tuple(e.allowedMethods)
            allowed = [m.decode() for m in methods]
            request.setHeader(b"Allow", ", ".join(allowed).encode())
            message = f"{request.method.decode('latin-1')} is not allowed on {path}"
            return self.reject(request, 405, "method-not-allowed", message, allowed=allowed)
        except Exception:  # a bug: a counted, sampled 500, never a traceback per request
            return internal_error(request, Failure(), self.rejected, self.log, f"the resource at {path}")


def _raw_response(code: int, phrase: bytes, body: dict[str, Any], headers: dict[str, str]) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, for answers written before or
    instead of a request's own (at accept, at a deadline, at a body limit)."""
    data = json.dumps(body).encode() + b"\n"
    extra = b"".join(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items())
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nConnection: close\r\n%sContent-Length: %d\r\n\r\n%s"
            % (code, phrase, extra, len(data), data))


def abortable(transport: ITransport | None) -> ITCPTransport:
    """A connection's transport, as one that can be cut: TCP, UNIX and TLS transports all have
    ``abortConnection`` (Protocol types ``transport`` as a plain ITransport, set or not)."""
    if transport is None:
        raise RuntimeError("the connection has no transport yet")
    return cast(ITCPTransport, transport)


class AbortAtOnce(Protocol):
    """A connection refused at accept on a port whose Site is wrapped (TLS): the wrapper
    needs a protocol, and this one cuts the connection as soon as it has it."""

    def connectionMade(self) -> None:
        abortable(self.transport).abortConnection()


class PortChannel(BadRequestChannel):
    """HTTP/1.1 under the port's deadlines (the site's ``policy``), once the site admitted it.

    A request head must arrive within ``head_timeout`` of the accept (or of
    the end of the previous response on a kept-alive connection) and its body
    within ``body_timeout`` of the end of the head; a byte now and then does
    not extend either (Twisted's own idle timeout restarts with every byte).
    Past a deadline: 408 and close, or just close for a kept-alive connection
    that has sent nothing of a next request. While a request is handled (an
    SSE stream above all) there is no deadline: heartbeats find dead peers.
    """

    site: "QuietSite"
    #: the client's address, set by the site that admitted the connection (and frees its slot at the end)
    peer_host = "?"
    _closing = False  # answered and closing: nothing more is read or timed
    _phase: str | None = None  # "head" or "body" while a deadline runs
    _timer: IDelayedCall | None = None
    _served = 0  # responses finished on this connection
    _partial = False  # bytes of a request arrived since the head deadline was set
    _streaming: "LimitedRequest | None" = None  # a streaming publish, handed to its resource at its headers
    _host: Any = None  # getHost, once
    _body_held = False  # a streaming publish's reading held by the daemon (no body deadline meanwhile)
    _lean: LeanRequest | None = None  # a fast-lane request awaiting its answer
    _lean_backlog = b""  # bytes that arrived meanwhile
    _lean_paused = False  # reading paused for them
    _unread = False  # the transport's buffer is full of answers the client has not read (it paused the channel)
    _send: socket.socket | None = None  # the socket a fast-lane answer is sent on directly (None: TLS; sendnow.py)
    _peer: Any = None  # getPeer, once

    def connectionMade(self) -> None:
        super().connectionMade()
        # twisted.web's own idle timeout (the Site's, 60 s) would cut a kept-alive connection the port's
        # head deadline (server.head.timeout, 0: none) still lets wait: the port's deadlines alone govern
        self.setTimeout(None)
        self._send = direct_socket(self.transport)
        self._deadline("head")

    def getHost(self) -> Any:
        """The connection's own address, asked of the socket once: twisted.web asks for every request
        (a ``getsockname`` call each, 3 % of a small publish)."""
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def getPeer(self) -> Any:
        if self._peer is None:
            self._peer = super().getPeer()
        return self._peer

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if self._lean is not None:  # a fast-lane request awaits its answer: what follows waits (answers go in order)
            self._lean_backlog += data
            self._hold_backlog()
            return
        if self.site.resource.lean_targets and between_requests(self):
            data = self._lean_requests(data)
            if not data or self._closing:
                return
        if self._phase == "head":
            self._partial = True
        super().dataReceived(data)

    def _lean_requests(self, data: bytes) -> bytes:
        """Answer the plain POSTs to an ingest at the front of ``data`` on the fast lane (leanrequest.py);
        what is left (none, part of a request, or one twisted.web must parse) is returned for twisted.web."""
        site = self.site
        router = site.resource
        start = 0
        while start < len(data) and not self._closing and not site.stopping:
            post = plain_post(data, start)
            if (post is None or post.path not in router.lean_targets or len(post.body) > site.max_body_size
                    or wants_stream(b"POST", post.headers.get(b"content-type"))):
                break  # twisted.web's: its parser, its refusals, a streaming publish
            start = post.end
            site.requests["HTTP/1.1"] += 1
            request = self._lean = LeanRequest(self, post)
            request.render(router)
            if self._lean is not None:  # answered later (a shared bus, a history file, a password check)
                self._deadline(None)
                self._lean_backlog = data[start:]
                self._hold_backlog()
                return b""
        return data[start:]

    def _hold_backlog(self) -> None:
        """Stop reading while more than LEAN_BACKLOG waits behind a fast-lane request, as twisted.web holds a
        pipelining client. Checked after every read and every request taken from the backlog, not only when the
        backlog first grows past it: an answer resumes reading (and so does the transport once its buffer drains)
        with the rest of a large backlog still held, and one read more for each answer would hold memory without bound."""
        if len(self._lean_backlog) > LEAN_BACKLOG:
            self._lean_paused = True
            cast(IPushProducer, self.transport).pauseProducing()

    def lean_answer(self, request: LeanRequest, response: bytes) -> None:
        """A fast-lane request's whole answer: sent at once if the socket takes it; then the next request."""
        self._lean = None
        self._served += 1
        write_now(self.transport, self._send, response)
        if request.close or self._closing:
            self.persistent = False
            self._closing_now()
            abortable(self.transport).loseConnection()
            return
        if self._phase == "head" and self._timer is not None and self._timer.active():
            self._timer.reset(self.site.policy.head_timeout)  # cheaper than a new timer, a request at a time
            self._partial = False
        else:
            self._deadline("head")
        backlog, self._lean_backlog = self._lean_backlog, b""
        if self._lean_paused:
            self._lean_paused = False
            if not self._unread:  # else the transport resumes reading once the client has read its answers
                cast(IPushProducer, self.transport).resumeProducing()
        if backlog:
            self.dataReceived(backlog)

    def pauseProducing(self) -> None:
        """The transport holds more answers than it takes (the client is not reading them): twisted.web stops
        reading; a fast-lane answer must not resume it (:meth:`lean_answer`), or a pipelining client that reads
        nothing would have answers pile up here for as long as it kept sending."""
        self._unread = True
        super().pauseProducing()

    def resumeProducing(self) -> None:
        """The client read its answers: twisted.web reads on, unless the daemon holds a streaming publish
        (:meth:`hold_body`), whose body would then be read on into what waits for a commit or the fan-out."""
        self._unread = False
        super().resumeProducing()
        if self._body_held:
            cast(IPushProducer, self.transport).pauseProducing()

    def allHeadersReceived(self) -> None:
        super().allHeadersReceived()  # may refuse the body (413): then we are closing
        if not self._closing and self.length != 0:
            self._deadline("body")
        request = self.requests[-1] if self.requests else None
        if not self._closing and isinstance(request, LimitedRequest) and request.body_stream is not None:
            # a streaming publish: its resource gets it now, its body as it comes (bodystream.py);
            # the connection closes after its answer, whenever that comes (a refusal: at once)
            self.persistent = False
            self._streaming = request
            request.setHeader(b"Connection", b"close")
            request.requestReceived(*request_line(self))

    def streamed(self) -> None:
        """A chunk of a streaming publish arrived: its body deadline starts again (the longest pause between chunks)."""
        if not self._closing and not self._body_held:
            self._deadline("body")

    def hold_body(self) -> None:
        """Stop reading a streaming publish (the daemon is behind, bodystream.py): a pause that is ours is no
        reason for its body deadline, which stops until :meth:`release_body`."""
        self._body_held = True
        self._deadline(None)
        cast(IPushProducer, self.transport).pauseProducing()  # TCP and TLS transports are push producers

    def release_body(self) -> None:
        self._body_held = False
        if not self._closing:
            self._deadline("body")
            cast(IPushProducer, self.transport).resumeProducing()

    def allContentReceived(self) -> None:
        self._deadline(None)  # handled from here on; the resource decides how long
        if self._streaming is not None and self._streaming.finished:
            return  # a streaming publish answered before its body ended (a refusal): the connection is closing
        super().allContentReceived()

    def requestDone(self, request: IRequest) -> None:
        self._served += 1
        if self.persistent and not self._closing:
            self._deadline("head")  # set before the next request, which may be buffered whole already
        elif self._phase == "body" and not self._closing:
            # answered before its body ended (a streaming publish refused at its head): the connection closes
            # now, and its body's deadline must not answer the request a second time (a 408 after the answer)
            self._closing_now()
        super().requestDone(request)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._deadline(None)
        self.site.release(self.peer_host, HTTP1)
        if self._lean is not None:
            self._lean.lost(reason)
            self._lean = None
        super().connectionLost(reason)

    def hand_over(self) -> float | None:
        """ALPN chose HTTP/2 and the connection goes to a :class:`PortH2Connection`: stop this
        channel's timers and producer; the seconds left of its head deadline (None: none runs)."""
        left = None
        if self._timer is not None and self._timer.active() and self._phase == "head":
            left = max(0.0, self._timer.getTime() - self.site.reactor.seconds())
        self._deadline(None)
        self.setTimeout(None)
        cast(Any, self.transport).unregisterProducer()  # TLS transports take producers (not declared IConsumer)
        return left

    def bad_request(self) -> None:
        """Twisted's parser refused the request (400; a header line past 16 KiB too): count it like every other refusal."""
        self.site.resource.note("malformed-request", self.peer_host, "a malformed request: 400")
        self._closing_now()

    def end_after_response(self) -> None:
        """Close once the response in progress is sent (it says ``Connection: close``)."""
        self.persistent = False

    def answer(self, code: int, phrase: bytes, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        """Write a whole response of our own (no request's response has started) and close."""
        self._closing_now()
        transport = abortable(self.transport)
        transport.write(_raw_response(code, phrase, body, headers or {}))
        transport.loseConnection()

    def _closing_now(self) -> None:
        self._closing = True
        self._deadline(None)
        # a peer that does not read cannot keep a closing connection open for long
        self._timer = self.callLater(CLOSE_GRACE, abortable(self.transport).abortConnection)

    def _deadline(self, phase: str | None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._phase = phase
        if phase is None:
            return
        policy = self.site.policy
        seconds = policy.head_timeout if phase == "head" else policy.body_timeout
        if phase == "head":
            self._partial = False
        if seconds > 0:
            self._timer = self.callLater(seconds, lambda: self._expired(phase, seconds))

    def _expired(self, phase: str, seconds: float) -> None:
        self._timer = None
        if phase == "head" and self._served and not self._partial:
            self._closing_now()  # an idle kept-alive connection: no request to answer
            abortable(self.transport).loseConnection()
            return
        what = "request head" if phase == "head" else "request body"
        message = f"the whole {what} did not arrive within {seconds:g} seconds"
        request = self.requests[-1] if self.requests else None
        if phase == "body" and isinstance(request, LimitedRequest) and request.body_stream is not None:
            message = f"the streaming request body paused for more than {seconds:g} seconds"
        self.site.resource.note(f"{phase}-timeout", self.peer_host, message)
        self.answer(408, b"Request Timeout", {"error": message, "reason": f"{phase}-timeout"})


@implementer(IProtocol)
class AlpnSwitch:
    """The protocol of a connection to a port that offers HTTP/2: its :class:`PortChannel`
    until the first bytes, then, if ALPN chose ``h2``, a :class:`PortH2Connection`.

    The TLS transport knows only this object, so it stays in between (as
    Twisted's own switch, ``_GenericHTTPChannelProtocol``, does). Unlike that
    switch it registers the HTTP/2 connection as the TLS transport's
    producer, so a peer that does not read pauses the connection's sending
    (and, stream by stream, its subscribers: compat.StreamingH2Connection).
    """

    def __init__(self, channel: PortChannel) -> None:
        self.http1 = channel
        self.http2: PortH2Connection | None = None
        self._decided = False

    def makeConnection(self, transport: ITransport) -> None:
        self.http1.makeConnection(transport)

    def connectionMade(self) -> None:
        pass  # makeConnection passed it on

    def logPrefix(self) -> str:
        return "PortChannel"

    def dataReceived(self, data: bytes) -> None:
        if not self._decided:
            self._decided = True
            negotiated = INegotiated(self.http1.transport, None)
            if negotiated is not None and negotiated.negotiatedProtocol == b"h2":
                self._switch()
        if self.http2 is not None:
            self.http2.dataReceived(data)
        else:
            self.http1.dataReceived(data)

    def _switch(self) -> None:
        channel = self.http1
        site = channel.site
        head_left = channel.hand_over()
        connection = self.http2 = PortH2Connection(site, channel.peer_host, head_left)
        site.switched(HTTP1, HTTP2)
        transport = abortable(channel.transport)
        connection.makeConnection(transport)
        cast(Any, transport).registerProducer(connection, True)  # TLS transports take producers (not declared IConsumer)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.http2 is None:
            self.http1.connectionLost(reason)
            return
        self.http2.connectionLost(reason)
        self.http1.site.release(self.http1.peer_host, HTTP2)


class PortH2Connection(StreamingH2Connection):
    """An HTTP/2 connection under the port's policy, as :class:`PortChannel` is for HTTP/1.1.

    HTTP/2 carries requests side by side, so the deadlines are split: while
    no stream is open, the next request head must arrive within the head
    deadline (counted from the accept for the first, from the end of the
    last stream for the next; an idle connection that served requests then
    just closes, with GOAWAY); each stream's body must arrive within the
    body deadline of its head (:class:`PortStream`). Twisted's idle timeout
    is off: as over HTTP/1.1, an open stream has no deadline, heartbeats find dead peers.
    """

    def __init__(self, site: "QuietSite", peer_host: str, head_left: float | None) -> None:
        super().__init__(site.reactor)
        self.stream_factory = PortStream
        self.port_site = site
        self.site = self.factory = cast(Any, site)
        self.requestFactory = site.requestFactory
        self.timeOut = None
        self.clock = site.reactor
        self.peer_host = peer_host
        self._timer: IDelayedCall | None = None
        self._abort: IDelayedCall | None = None  # cuts the connection CLOSE_GRACE after it was told to close
        self._served = 0
        self._closing = False
        self._port_of_origin: bytes | None = None  # the port the first request's authority names
        seconds = site.policy.head_timeout if head_left is None else head_left
        if head_left is not None or site.policy.head_timeout > 0:
            self._timer = self.clock.callLater(seconds, self._head_expired, site.policy.head_timeout)

    def bad_request(self) -> None:
        self.port_site.resource.note("malformed-request", self.peer_host, "a malformed HTTP/2 request or frame: refused")

    def misdirected(self, authority: bytes | None) -> bool:
        """Whether a request for ``authority`` came over a connection opened for another port.

        A browser reuses an HTTP/2 connection for every origin its certificate and address
        cover, other ports of this host included (connection coalescing); another port is
        another listener, with other paths and limits. The first request names the port the
        connection is for (behind a proxy or NAT that may not be the one bound here).
        """
        port = _authority_port(authority)
        if self._port_of_origin is None:
            self._port_of_origin = port
        return port != self._port_of_origin

    def end_after_response(self) -> None:
        """Close once the open streams are answered, with GOAWAY: the client opens a new connection
        for its next request (HTTP/2 can send nothing more on any stream after a GOAWAY)."""
        self._closing = True
        if not self.streams:
            self._goaway()

    def _goaway(self) -> None:
        self._stop_timer()
        self.goaway()

    def stream_opened(self) -> None:
        self._stop_timer()  # a head arrived; the stream keeps its own body deadline

    def stream_closed(self) -> None:
        self._served += 1
        if self.streams or not self.open:
            return
        if self._closing:
            self._goaway()
            return
        seconds = self.port_site.policy.head_timeout
        if seconds > 0:
            self._timer = self.clock.callLater(seconds, self._head_expired, seconds)

    def _head_expired(self, seconds: float) -> None:
        self._timer = None
        if self.streams:
            return
        if not self._served:
            message = f"no whole request head arrived within {seconds:g} seconds"
            self.port_site.resource.note("head-timeout", self.peer_host, message)
        self.end_after_response()

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def closing(self) -> None:
        """The connection told its TLS transport to close: TLS closes only once its producer (this
        connection, registered by the AlpnSwitch) lets go, and a client that ignores the GOAWAY and
        reads nothing is cut CLOSE_GRACE later, as over HTTP/1.1 (else it held its slot for good)."""
        self._stop_timer()
        if self._abort is not None:
            return
        transport = abortable(self.transport)
        cast(Any, transport).unregisterProducer()  # TLS transports take producers (not declared IConsumer)
        self._abort = self.clock.callLater(CLOSE_GRACE, transport.abortConnection)

    def connectionLost(self, reason: Failure = connectionDone, _cancelTimeouts: bool = True) -> None:
        self._stop_timer()
        if _cancelTimeouts and self._abort is not None and self._abort.active():
            self._abort.cancel()  # the transport is gone
        super().connectionLost(reason, _cancelTimeouts)


def _authority_port(authority: bytes | None) -> bytes:
    """The port an HTTP/2 request's ``:authority`` (``Host``) names: ``b""`` for the scheme's default."""
    host, colon, port = (authority or b"").rpartition(b":")
    return port if colon and not port.endswith(b"]") else b""


class PortStream(StreamingH2Stream):
    """One request of a :class:`PortH2Connection`: what :class:`LimitedRequest` asks of its
    channel (the site, the client's address, an answer of our own, closing after the
    response), and the stream's body deadline."""

    def __init__(self, streamID: int, connection: PortH2Connection, headers: Any, requestFactory: Any, site: Any,
                 factory: Any) -> None:
        self.port_site = connection.port_site
        self.port = connection  # before Twisted's __init__: the request it builds may answer at once (413)
        self.peer_host = connection.peer_host
        self._closing = False
        self._timer: IDelayedCall | None = None

        def build_request(channel: "PortStream", queued: bool) -> "LimitedRequest":
            self.request = requestFactory(channel, queued=queued)  # the stream's one request, kept to answer it
            return self.request

        super().__init__(streamID, connection, headers, build_request, site, factory)
        seconds = connection.port_site.policy.body_timeout
        if seconds > 0 and not self._closing:
            self._timer = connection.clock.callLater(seconds, self._body_expired, seconds)

    @property
    def disconnected(self) -> bool:
        """The stream is over (its end sent, or reset): what a drain waits for (sink/drain.py ``flushed``)."""
        return self.streamID not in self.port.streams

    def requestComplete(self) -> None:
        self._stop_timer()
        if not self._closing:
            super().requestComplete()

    def receiveDataChunk(self, data: bytes, flowControlledLength: int) -> None:
        if self._closing:  # answered already: the rest of the body is dropped
            self.port.openStreamWindow(self.streamID, flowControlledLength)
            return
        super().receiveDataChunk(data, flowControlledLength)

    def connectionLost(self, reason: Failure) -> None:
        self._stop_timer()
        super().connectionLost(reason)

    def end_after_response(self) -> None:
        self.port.end_after_response()

    def answer(self, code: int, phrase: bytes, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        """A whole response of our own on this stream (no response has started), which ends it."""
        self._closing = True
        self._stop_timer()
        request = self.request
        if request.startedWriting or request.finished:
            self.abortConnection()
            return
        data = json.dumps(body).encode() + b"\n"
        request.setResponseCode(code, phrase)
        for name, value in {"Content-Type": "application/json", **(headers or {}), "Content-Length": str(len(data))}.items():
            request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
        request.write(data)
        request.finish()

    def _body_expired(self, seconds: float) -> None:
        self._timer = None
        message = f"the whole request body did not arrive within {seconds:g} seconds"
        self.port_site.resource.note("body-timeout", self.peer_host, message)
        self.answer(408, b"Request Timeout", {"error": message, "reason": "body-timeout"})

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class LimitedRequest(server.Request):
    """A request whose body is refused with 413 as soon as it passes the port's limit.

    Twisted would otherwise read any body, however large, before a resource
    sees it. The exact per-path limit is checked again by the ingest resource.
    Once the daemon is shutting down, every request is answered 503 here.
    """

    _refused = False
    _received = 0

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        # Nothing here reads form fields: skip Twisted's Content-Type parse through the
        # email package on every POST (7 % of the daemon's CPU under publish load, bench/).
        skip_form_parsing(self)
        if isinstance(self.link, PortStream):
            # Twisted gives an HTTP/2 request no transport; its stream is one (write, loseConnection
            # and abortConnection act on this stream alone), so a subscriber writes and is cut alike
            self.transport = self.channel

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        if name == b"Server":  # twisted.web's Request.process names itself and its exact version: the daemon's name instead
            value = SERVER_NAME
        super().setHeader(name, value)

    @property
    def link(self) -> "PortChannel | PortStream":
        """The request's channel: a PortChannel (HTTP/1.1) or a PortStream (HTTP/2), both under the port's policy."""
        return cast("PortChannel | PortStream", self.channel)

    #: a streaming publish's body, on its way to the resource (bodystream.py); None for every other request
    body_stream: BodyStream | None = None

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length)
        link = self.link
        # a streaming publish over HTTP/1.1; over HTTP/2 its body comes whole (the ingest takes it so too)
        if (isinstance(link, PortChannel) and length != 0 and link.transport is not None
                and wants_stream(request_line(link)[0], self.getHeader(b"content-type"))):
            self.body_stream = BodyStream(_BodyHold(link))  # no total limit: its consumer bounds a line
            return
        if length is not None and length > link.site.max_body_size:
            self.requestHeaders.removeHeader(b"Expect")  # no "100 Continue" after our 413
            self._refuse()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        if self.body_stream is not None:
            if self.link.site.stopping:  # shutdown: the stream ends here; its answer says how many lines were read
                self.body_stream.end(complete=False)
                return
            cast(PortChannel, self.link).streamed()  # a body stream is HTTP/1.1's only (gotLength)
            self.body_stream.chunk(data)
            return
        self._received += len(data)
        if self._received > self.link.site.max_body_size:
            self._refuse()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return
        stream = self.body_stream
        if stream is not None:
            if stream.dispatched:  # the body's end: the resource has the request already
                stream.end()
                return
            stream.dispatched = True
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Failure) -> None:
        if self.body_stream is not None:
            self.body_stream.lost(reason)
        super().connectionLost(reason)

    def process(self) -> None:
        site = self.link.site
        site.requests[self.clientproto.decode("latin-1")] += 1
        if site.stopping:
            self._shutting_down()
            return
        link = self.link
        if isinstance(link, PortStream) and link.port.misdirected(self.getHeader(b"host")):
            message = "this connection serves another port of this host: open a new connection (421)"
            site.resource.note("misdirected", link.peer_host, message)
            link.answer(421, b"Misdirected Request", {"error": message, "reason": "misdirected"})
            return
        if self.path == b"*" and self.method != b"OPTIONS":  # Twisted answers 405 itself; count it too
            site.resource.rejected["method-not-allowed"] += 1
        super().process()

    def _shutting_down(self) -> None:
        """503 with ``Retry-After`` and ``Connection: close``: nothing is accepted that the drain
        would not deliver, and a kept-alive client goes elsewhere."""
        message = "the daemon is shutting down; retry later"
        self.link.site.resource.note("shutting-down", self.link.peer_host, message)
        body = json.dumps({"error": message, "reason": "shutting-down"}).encode() + b"\n"
        self.setResponseCode(503)
        for name, value in ((b"Content-Type", b"application/json"), (b"Retry-After", b"%d" % SHUTDOWN_RETRY_AFTER),
                            (b"Content-Length", b"%d" % len(body))):
            self.setHeader(name, value)
        if isinstance(self.link, PortChannel):
            self.setHeader(b"Connection", b"close")  # a connection-specific header, which HTTP/2 forbids (GOAWAY says it there)
        self.link.end_after_response()
        self.write(body)
        self.finish()

    def _refuse(self) -> None:
        self._refused = True
        limit = self.link.site.max_body_size
        message = f"the request body is larger than {limit} bytes"
        self.link.site.resource.note("body-too-large", self.link.peer_host, message)
        self.link.answer(413, b"Request Entity Too Large", {"error": message})


class _BodyHold:
    """What a streaming publish's BodyStream pauses: its connection's reading, with the body deadline."""

    def __init__(self, channel: PortChannel) -> None:
        self.channel = channel

    def pauseProducing(self) -> None:
        self.channel.hold_body()

    def resumeProducing(self) -> None:
        self.channel.release_body()


def body_stream(request: IRequest) -> BodyStream | None:
    """The body of a streaming publish, as it arrives (bodystream.py); None when twisted.web has the body whole."""
    return request.body_stream if isinstance(request, LimitedRequest) else None


class QuietSite(server.Site):
    """A Site whose connections are :class:`PortChannel` under ``policy``, and that logs no access
    lines: an SSE request is only logged when it finishes, which is misleading; sinks and ingest
    log what matters themselves.

    ``descriptors`` is the process's budget, shared by every port; ``stopping`` the daemon's
    shutdown state, shared by every port and the reloader. ``direct``: the port calls
    ``buildProtocol`` itself (nothing wraps the site), so a connection refused at the
    descriptor headroom is closed inside the accept loop, before the next accept, instead of
    holding its descriptor for a reactor turn (a burst of connects would reach ``EMFILE``).
    """

    requestFactory = LimitedRequest
    resource: "PathRouter"
    # Twisted types HTTPFactory.protocol as its private ALPN proxy's factory, though its
    # buildProtocol sets up any HTTPChannel subclass alike (callLater, timeOut): the stub is narrower than the class.
    protocol = PortChannel  # type: ignore[assignment]
    noisy = False

    def __init__(self, resource: "PathRouter", reactor: IReactorTime, max_body_size: int,
                 policy: PortPolicy = PortPolicy(), descriptors: DescriptorBudget | None = None,
                 stopping: Stopping | None = None, direct: bool = True) -> None:
        super().__init__(resource, reactor=reactor)
        self.max_body_size = max_body_size
        self.policy = policy
        self.descriptors = descriptors
        self.direct = direct
        self.stopping = stopping if stopping is not None else Stopping()
        self.connections = AddressCounts()
        #: offer HTTP/2 (a TLS port whose endpoint offers it through ALPN): connections go through an AlpnSwitch
        self.http2 = False
        #: open connections by the protocol they speak (HTTP1, HTTP2), and requests by HTTP version
        self.protocols: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()

    def log(self, request: http.Request) -> None:
        pass

    def acceptableProtocols(self) -> list[bytes]:
        """What a TLS port offers through ALPN (Twisted asks the site: IProtocolNegotiationFactory).
        Twisted's Site offers ``h2`` whenever the h2 package is installed; here only with ``http2``."""
        return [HTTP2.encode(), HTTP1.encode()] if self.http2 else [HTTP1.encode()]

    def buildProtocol(self, addr: Any) -> Any:
        """Admit a new connection (counted from accept to close) or close it at once.

        At once, inside the accept loop and with no answer: a refusal that waited a
        reactor turn to send one would hold its descriptor meanwhile, and a burst of
        connects would eat the headroom (an EventSource retries after a network
        error, while a 503 would stop it for good).
        """
        host = str(getattr(addr, "host", addr))
        if self.descriptors is not None and not self.descriptors.admit():
            return self._refuse(host, "descriptors-low", "the process is at its descriptor headroom")
        if not self.connections.admit(host, self.policy.max_per_address):
            return self._refuse(host, "too-many-connections-from-address",
                                f"{self.policy.max_per_address} connections are open from this address already")
        if self.descriptors is not None:
            self.descriptors.opened()
        channel = super().buildProtocol(addr)
        channel.peer_host = host  # Site.buildProtocol sets the channel's site the same way
        self.protocols[HTTP1] += 1
        return AlpnSwitch(channel) if self.http2 else channel

    def _refuse(self, host: str, reason: str, message: str) -> Protocol | None:
        self.resource.note(reason, host, message + ": connection closed at accept")
        return None if self.direct else AbortAtOnce()

    def switched(self, old: str, new: str) -> None:
        """An open connection speaks ``new`` from now on (ALPN chose HTTP/2)."""
        self.protocols[old] -= 1
        self.protocols[new] += 1

    def release(self, host: str, protocol: str = HTTP1) -> None:
        """A channel is gone: its address's slot and its descriptor."""
        self.connections.release(host)
        self.protocols[protocol] -= 1
        if self.descriptors is not None:
            self.descriptors.closed()


def descriptor_budget(clock: IReactorTime) -> DescriptorBudget:
    """The budget of this process's descriptors (RLIMIT_NOFILE's soft limit; /proc/self/fd counts them)."""

    def soft_limit() -> int:
        soft, _ = getrlimit(RLIMIT_NOFILE)
        return soft if soft != RLIM_INFINITY and soft > 0 else 1 << 30  # unlimited: no budget to speak of

    def count_open() -> int | None:
        for directory in ("/proc/self/fd", "/dev/fd"):
            try:
                return len(os.listdir(directory)) - 1  # less the listing's own descriptor
            except OSError:
                continue
        return None

    return DescriptorBudget(soft_limit, count_open, clock.seconds)


@dataclass(frozen=True)
class PortRoute:
    """One path on a port: what serves it, the label its messages name, an ingest's body limit."""

    path: str
    resource: IResource
    label: str
    max_body_size: int | None = None


@dataclass(frozen=True)
class RouteTable:
    """Everything a port serves: its paths, and the deadlines and cap shared by all of them."""

    routes: tuple[PortRoute, ...]
    policy: PortPolicy = PortPolicy()

    @property
    def max_body_size(self) -> int | None:
        """The largest limit of the ingests on the port (None: it serves only sinks)."""
        limits = [route.max_body_size for route in self.routes if route.max_body_size is not None]
        return max(limits) if limits else None

    def site(self, reactor: IReactorTime, descriptors: DescriptorBudget | None = None,
             stopping: Stopping | None = None) -> "QuietSite":
        """A Site serving the table on a socket bound elsewhere (a worker process's)."""
        router = PathRouter()
        for route in self.routes:
            router.add(route.path, route.resource, route.max_body_size is not None)
        return QuietSite(router, reactor, self.max_body_size or SINK_ONLY_BODY_LIMIT, self.policy, descriptors, stopping)


class ListenerService(Service):
    """Binds one (host, port) for the connectors that share it."""

    log = Logger()

    def __init__(self, reactor: Any, host: str, port: int, policy: PortPolicy = PortPolicy(),
                 descriptors: DescriptorBudget | None = None, stopping: Stopping | None = None,
                 list_paths: bool = True, endpoint: str | None = None, http2: bool = False, files_mark: str = "") -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        #: deadlines and the per-address cap (connections.py); shared by every connector on the port
        self.policy = policy
        self.descriptors = descriptors
        self.stopping = stopping
        self.site: QuietSite | None = None
        self.router = PathRouter(list_paths)
        self.labels: list[str] = []
        self.max_body_size: int | None = None  # the largest limit of the ingests on this port
        self.listening: IListeningPort | None = None
        #: the endpoint string to bind with (TLS, server.endpoint; see tls.py); None: plain TCP
        self.endpoint = endpoint
        #: a TLS port that offers HTTP/2 through ALPN (server.http2)
        self.http2 = http2
        #: the content of the TLS files read when the port binds (tls.py ``tls_files_mark``): a reload that finds
        #: them renewed binds the port again, since a bound port keeps the certificate it read
        self.files_mark = files_mark
        self._parsed: IStreamServerEndpoint | None = None  # the endpoint, once parsed (resolve)
        self.setName(f"listener:{host}:{port}")

    @property
    def description(self) -> str:
        """How the port is bound, as a plan compares ports (daemon/plan.py ``port_endpoints``)."""
        return (self.endpoint or "") + (HTTP2_MARK if self.http2 else "") + self.files_mark

    def add(self, path: str, resource: IResource, label: str, max_body_size: int | None = None) -> None:
        self.router.add(path, resource, max_body_size is not None)
        self.labels.append(f"{label} at {normalise_path(path)}")
        if max_body_size is not None:
            self.max_body_size = max(self.max_body_size or 0, max_body_size)

    def serve(self, table: "RouteTable") -> None:
        """Serve ``table``'s paths (before binding)."""
        for route in table.routes:
            self.add(route.path, route.resource, route.label, route.max_body_size)
        self.policy = table.policy

    def retarget(self, table: "RouteTable") -> None:
        """Point the port, bound or not, at ``table``: its paths (a path not in it answers 404 from
        now on), labels, body limit and policy (deadlines and cap), also for open connections."""
        self.router.retarget(table.routes)
        self.labels = [f"{route.label} at {route.path}" for route in table.routes]
        self.max_body_size = table.max_body_size
        self.policy = table.policy
        if self.site is not None:
            self.site.max_body_size = self.max_body_size or SINK_ONLY_BODY_LIMIT
            self.site.policy = self.policy

    def resource(self, path: str) -> IResource:
        """What the port serves at ``path`` now."""
        return self.router.routes[normalise_path(path)]

    @property
    def bound_port(self) -> int:
        """The port actually bound (differs from ``port`` when that is 0)."""
        assert self.listening is not None, "not listening"
        address = self.listening.getHost()
        if not isinstance(address, (IPv4Address, IPv6Address)):
            raise TypeError(f"{self.name} is bound to {address}, which has no port")
        return address.port

    def resolve(self) -> IStreamServerEndpoint:
        """The endpoint to bind, parsed once: an ``ssl:`` one reads its files here (and Twisted checks that the key is
        the certificate's), so a port bound again can be checked before the old one is released. BindError if unusable."""
        if self._parsed is None:
            interface = self.host.replace(":", "\\:")
            try:
                self._parsed = server_endpoint(self.reactor, self.endpoint or f"tcp:{self.port}:interface={interface}")
            except ValueError as e:
                raise BindError(f"cannot listen on {self.host}:{self.port} for {', '.join(self.labels)}: {e}") from None
        return self._parsed

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        direct = self.endpoint is None or self.endpoint.partition(":")[0] in DIRECT_ENDPOINTS
        site = self.site = QuietSite(self.router, self.reactor, self.max_body_size or SINK_ONLY_BODY_LIMIT,
                                     self.policy, self.descriptors, self.stopping, direct)
        site.http2 = self.http2
        endpoint = self.resolve()
        outcome: list[IListeningPort | Failure] = []
        endpoint.listen(site).addBoth(outcome.append)
        result = outcome[0] if outcome else None  # TCP endpoints answer synchronously
        if isinstance(result, Failure):
            reason = result.value
            raise BindError(
                f"cannot listen on {self.host}:{self.port} for {', '.join(self.labels)}: "
                f"{getattr(reason, 'socketError', None) or reason}"
            )
        self.listening = result
        self.log.info(
            "listening on {host}:{port} for {connectors}",
            host=self.host, port=self.bound_port, connectors=", ".join(self.labels),
        )

    def startService(self) -> None:
        if self.listening is None:
            self.privilegedStartService()
        super().startService()

    def stopService(self) -> Deferred | None:
        super().stopService()
        if self.listening is None:
            return None
        listening, self.listening = self.listening, None
        return listening.stopListening()
