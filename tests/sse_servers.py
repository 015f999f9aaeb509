"""SSE servers for the source tests.

- :class:`ScriptedServer`: a Twisted server we control on 127.0.0.1 port 0.
  It keeps every event it published (ids ``1``, ``2``, ... unless told
  otherwise), replays after the ``Last-Event-ID`` a client sends, records
  every request's headers, and can be told to answer the next requests with
  an error, a stall or a 204, to drop its streams or to restart on the same port.
- :class:`ClockedReactor`: the real reactor for sockets, a ``task.Clock`` for
  time, so reconnect timing is exact while bytes still cross real sockets.
- ``python -m tests.sse_servers starlette``: sse-starlette under uvicorn on a
  socket bound here (port 0), printing ``PORT <n>`` and then one
  ``LAST-EVENT-ID <id>`` line per request: a server nobody here wrote.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import sys
from collections import deque
from dataclasses import dataclass
from typing import Any

from treq.testing import StubTreq
from twisted.internet import defer, reactor as global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import (
    IHostnameResolver,
    IHostResolution,
    IOpenSSLContextFactory,
    IReactorPluggableNameResolver,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.task import Clock, deferLater
from twisted.web import server
from twisted.web.resource import Resource
from zope.interface import implementer

from sse_daemon.wire.eventstream import encode_comment, encode_event


# --------------------------------------------------------------------------- scripted Twisted server


@dataclass(frozen=True)
class Canned:
    """A whole, non-stream response for one request."""

    code: int
    body: bytes = b""
    content_type: str | None = "text/plain"
    headers: tuple[tuple[str, str], ...] = ()


#: answer with a stream head and then nothing at all, not even a comment
STALL = "stall"


@dataclass
class Seen:
    path: str
    headers: dict[str, str]

    @property
    def last_event_id(self) -> str | None:
        return self.headers.get("last-event-id")


@dataclass
class _Entry:
    id: str | None
    frame: bytes


class _Router(Resource):
    isLeaf = True

    def __init__(self, owner: "ScriptedServer") -> None:
        super().__init__()
        self.owner = owner

    def render_GET(self, request: server.Request) -> object:
        return self.owner._render(request)


class _TrackingSite(server.Site):
    """Knows its open connections, so a test can end them and wait until they are gone."""

    noisy = False

    def __init__(self, owner: "ScriptedServer") -> None:
        super().__init__(_Router(owner), reactor=owner.reactor)
        self.owner = owner

    def log(self, request: server.Request) -> None:
        pass

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channels = self.owner.channels
        channels.add(channel)
        lost = channel.connectionLost

        def connectionLost(reason: Any) -> None:
            channels.discard(channel)
            lost(reason)

        channel.connectionLost = connectionLost
        return channel


class ScriptedServer:
    """An SSE server whose every move the test decides."""

    def __init__(self, reactor: Any = global_reactor, *, retry: int | None = None) -> None:
        self.reactor = reactor
        self.retry = retry  # sent at the start of every stream
        self.entries: list[_Entry] = []
        self.seen: list[Seen] = []
        self.script: deque[Canned | str] = deque()  # answers for the next requests to /events
        self.streams: list[server.Request] = []
        self.channels: set[Any] = set()
        self.port_number = 0
        self._listening: Any = None
        self._tls: Any = None
        self._next_id = 1

    # -- lifecycle

    def start(self, port: int | None = None, tls: Any = None) -> int:
        """Listen (again) on ``port`` (default: the port used before, or a free one)."""
        self._tls = tls if tls is not None else self._tls
        number = self.port_number if port is None else port
        site = _TrackingSite(self)
        if self._tls is not None:
            self._listening = global_reactor.listenSSL(number, site, self._tls, interface="127.0.0.1")
        else:
            self._listening = global_reactor.listenTCP(number, site, interface="127.0.0.1")
        self.port_number = self._listening.getHost().port
        return self.port_number

    async def stop(self) -> None:
        """Like a crash or a restart: cut every connection, stop listening."""
        from .conftest import deadline, wait_for  # not at import: the uvicorn subprocess imports this module

        for channel in list(self.channels):
            # Site wraps each HTTPChannel; the transport is on the wrapped one.
            getattr(channel, "_channel", channel).transport.abortConnection()
        self.streams.clear()
        await deadline(wait_for(lambda: not self.channels, what="server connections to close"))
        if self._listening is not None:
            listening, self._listening = self._listening, None
            await deadline(defer.maybeDeferred(listening.stopListening))

    def url(self, path: str = "/events") -> str:
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port_number}{path}"

    # -- what goes out

    def publish(self, data: str, *, event: str | None = None, id: str | None | bool = True) -> str | None:
        """Store and send one event; ``id=True`` numbers it, ``None``/``False`` sends none."""
        if id is True:
            event_id: str | None = str(self._next_id)
            self._next_id += 1
        else:
            event_id = id or None
        frame = encode_event(data, id=event_id, event=event)
        self.entries.append(_Entry(event_id, frame))
        self.write(frame)
        return event_id

    def write(self, raw: bytes) -> None:
        for request in list(self.streams):
            request.write(raw)

    async def write_slowly(self, raw: bytes, piece: int) -> None:
        """Send ``raw`` in small writes, one per reactor turn, so reads split it anywhere."""
        for start in range(0, len(raw), piece):
            self.write(raw[start:start + piece])
            await deferLater(global_reactor, 0, lambda: None)

    def drop(self) -> None:
        """Cut every stream, as a crashing proxy would."""
        for request in list(self.streams):
            request.transport.abortConnection()
        self.streams.clear()

    def end_streams(self) -> None:
        """End every stream cleanly (the chunked body ends)."""
        for request in list(self.streams):
            self.streams.remove(request)
            request.finish()

    def ids_after(self, last_event_id: str | None) -> list[str | None]:
        return [e.id for e in self._after(last_event_id)]

    def _after(self, last_event_id: str | None) -> list[_Entry]:
        if not last_event_id:
            return list(self.entries)
        for index in range(len(self.entries) - 1, -1, -1):
            if self.entries[index].id == last_event_id:
                return self.entries[index + 1:]
        return list(self.entries)

    # -- requests

    def _render(self, request: server.Request) -> object:
        path = request.path.decode()
        headers = {k.decode().lower(): v[-1].decode("utf-8") for k, v in request.requestHeaders.getAllRawHeaders()}
        self.seen.append(Seen(path, headers))
        if path == "/redirect":
            return self._redirect(request, 302, b"/events")
        if path == "/moved":
            return self._redirect(request, 301, b"/redirect")
        if path == "/loop":
            return self._redirect(request, 307, b"/loop")
        if path != "/events":
            return self._canned(request, Canned(404, b"no such path\n"))
        answer = self.script.popleft() if self.script else None
        if isinstance(answer, Canned):
            return self._canned(request, answer)
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        if answer == STALL:
            request.write(b"")  # sends the head, nothing else
            self.streams.append(request)
            request.notifyFinish().addBoth(lambda _: request in self.streams and self.streams.remove(request))
            return server.NOT_DONE_YET
        opening = encode_comment("scripted stream open")
        if self.retry is not None:
            opening = f"retry: {self.retry}\n\n".encode() + opening
        request.write(opening)
        for entry in self._after(headers.get("last-event-id")):
            request.write(entry.frame)
        self.streams.append(request)
        request.notifyFinish().addBoth(lambda _: request in self.streams and self.streams.remove(request))
        return server.NOT_DONE_YET

    @staticmethod
    def _redirect(request: server.Request, code: int, location: bytes) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"Location", location)
        return b"moved\n"

    @staticmethod
    def _canned(request: server.Request, answer: Canned) -> bytes:
        request.setResponseCode(answer.code)
        if answer.content_type is not None:
            request.setHeader(b"Content-Type", answer.content_type.encode())
        for name, value in answer.headers:
            request.setHeader(name.encode(), value.encode())
        return b"" if answer.code == 204 else answer.body


class FakeServer(ScriptedServer):
    """A :class:`ScriptedServer` without sockets: served through treq's ``StubTreq`` (iosim pumps).

    ``http`` is the HTTP client to give the source or client under test. Every
    request and every write is pumped through at once, so what the server
    sends has arrived when the call returns; nothing waits on the reactor.
    """

    def __init__(self, *, retry: int | None = None) -> None:
        super().__init__(retry=retry)
        self.stub = StubTreq(_Router(self))
        self.http = _FlushingClient(self.stub)

    def start(self, port: int | None = None, tls: Any = None) -> int:
        return 0

    async def stop(self) -> None:
        self.drop()

    def url(self, path: str = "/events") -> str:
        return f"http://upstream.test{path}"

    def write(self, raw: bytes) -> None:
        super().write(raw)
        self.stub.flush()

    def drop(self) -> None:
        super().drop()
        self.stub.flush()

    def end_streams(self) -> None:
        super().end_streams()
        self.stub.flush()


class _FlushingClient:
    """``StubTreq.get`` that pumps the request (and whatever answers it) through at once."""

    def __init__(self, stub: StubTreq) -> None:
        self.stub = stub

    def get(self, url: str, **kwargs: Any) -> defer.Deferred:
        d = self.stub.get(url, **kwargs)
        self.stub.flush()
        return d


# --------------------------------------------------------------------------- time and names under test control


@implementer(IReactorTime, IReactorTCP, IReactorPluggableNameResolver)
class ClockedReactor:
    """Real sockets, fake time: ``callLater`` and ``seconds`` go to a ``task.Clock``."""

    def __init__(self, clock: Clock | None = None, real: Any = global_reactor) -> None:
        self.clock = clock if clock is not None else Clock()
        self._real = real

    def callLater(self, delay: float, f: Any, *args: Any, **kwargs: Any) -> Any:
        return self.clock.callLater(delay, f, *args, **kwargs)

    def seconds(self) -> float:
        return self.clock.seconds()

    def getDelayedCalls(self) -> Any:
        return self.clock.getDelayedCalls()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
class FakeResolver:
    """Resolves the names in ``table`` (to 127.0.0.1 and the like); any other name does not exist."""

    def __init__(self, table: dict[str, str] | None = None) -> None:
        self.table = dict(table or {})
        self.lookups: list[str] = []

    def resolveHostName(self, resolutionReceiver: Any, hostName: str, portNumber: int = 0,
                        addressTypes: Any = None, transportSemantics: str = "TCP") -> Any:
        self.lookups.append(hostName)
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        address = self.table.get(hostName)
        if address is not None:
            resolutionReceiver.addressResolved(IPv4Address("TCP", address, portNumber))
        resolutionReceiver.resolutionComplete()
        return resolution


# --------------------------------------------------------------------------- TLS


def self_signed(ip: str = "127.0.0.1") -> tuple[bytes, bytes]:
    """A throwaway certificate (PEM) for ``ip`` and its key (PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sse-daemon test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@implementer(IOpenSSLContextFactory)
class ServerTLS:
    """A server context factory from PEM text (cryptography objects, no deprecated pyOpenSSL ones)."""

    def __init__(self, cert_pem: bytes, key_pem: bytes) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        from OpenSSL import SSL

        self._context = SSL.Context(SSL.TLS_SERVER_METHOD)
        self._context.use_certificate(x509.load_pem_x509_certificate(cert_pem))
        self._context.use_privatekey(load_pem_private_key(key_pem, None))

    def getContext(self) -> Any:
        return self._context


# --------------------------------------------------------------------------- sse-starlette under uvicorn


def _starlette_app() -> Any:
    from sse_starlette import EventSourceResponse, ServerSentEvent
    from starlette.applications import Starlette
    from starlette.routing import Route

    async def events(request: Any) -> Any:
        last = request.headers.get("last-event-id")
        print(f"LAST-EVENT-ID {last or '-'}", flush=True)
        start = int(last) + 1 if last else 1
        count = int(request.query_params.get("count", "3"))

        async def stream() -> Any:
            # Ends after `count` events; the client must come back for the rest.
            for n in range(start, start + count):
                yield ServerSentEvent(data=json.dumps({"param1": f"s{n}"}), id=str(n), event="reading", retry=20)

        return EventSourceResponse(stream())

    return Starlette(routes=[Route("/events", events)])


def serve_starlette() -> None:
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(
        _starlette_app(), log_level="warning", lifespan="off", access_log=False, timeout_graceful_shutdown=2
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    if sys.argv[1:] == ["starlette"]:
        serve_starlette()
    else:
        raise SystemExit("usage: python -m tests.sse_servers starlette")
