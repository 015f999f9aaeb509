"""One listening port, shared by every sink and ingest source that names it.

A port is bound once, so connectors are grouped by (host, port): one
``Site`` per port and one resource per path. Binding happens in
``privilegedStartService`` and a failure is raised there, so the daemon exits
instead of running without its port (a plain endpoint service would only log).
"""

from __future__ import annotations

import json
from collections import Counter

from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.iweb import IRequest
from twisted.web.error import UnsupportedMethod
from twisted.web.resource import IResource, Resource

from .config import normalise_path
from .limits import should_log
from .safety import internal_error, undecodable_header

#: body limit on a port that only serves sinks (subscribing needs no body)
SINK_ONLY_BODY_LIMIT = 64 * 1024


class BindError(Exception):
    """A listener could not bind; the message names the connectors and the port."""


def json_error(request: IRequest, code: int, message: str, **fields: object) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps({"error": message, **fields}).encode() + b"\n"


class PathRouter(Resource):
    """Dispatches on the exact path (query string ignored, trailing slash optional)."""

    isLeaf = True

    log = Logger()

    def __init__(self) -> None:
        super().__init__()
        self.routes: dict[str, IResource] = {}
        #: requests refused here, by reason ("not-found", "method-not-allowed", "body-too-large")
        self.rejected: Counter[str] = Counter()

    def reject(self, request: IRequest, code: int, reason: str, message: str, **fields: object) -> bytes:
        self.rejected[reason] += 1
        count = self.rejected[reason]
        if should_log(count):  # a scanner must not flood the log; the count is in /metrics
            self.log.info(
                "refused {method} {path} from {peer}: {message} ({reason}, {count} so far)",
                method=request.method.decode("latin-1"), path=request.path.decode("latin-1", "replace"),
                peer=getattr(request.getClientAddress(), "host", "?"), message=message, reason=reason, count=count,
            )
        return json_error(request, code, message, reason=reason, **fields)

    def add(self, path: str, resource: IResource) -> None:
        self.routes[normalise_path(path)] = resource

    def render(self, request: IRequest) -> object:
        body = self._dispatch(request)
        if request.method == b"HEAD" and isinstance(body, bytes) and body:
            # a HEAD refusal: the head a GET would get, no body (else twisted.web drops the
            # body itself and logs a warning for every such request: a log flood)
            request.setHeader(b"Content-Length", b"%d" % len(body))
            return b""
        return body

    def _dispatch(self, request: IRequest) -> object:
        path = normalise_path(request.path.decode("utf-8", "replace"))
        bad_header = undecodable_header(request)  # here, once for every resource (safety.py)
        if bad_header is not None:
            return self.reject(request, 400, "invalid-header", f"the {bad_header} header is not UTF-8 text")
        resource = self.routes.get(path)
        if resource is None:
            return self.reject(request, 404, "not-found", f"nothing is served at {path}", paths=sorted(self.routes))
        try:
            return resource.render(request)
        except UnsupportedMethod as e:
            allowed = [m.decode() for m in e.allowedMethods]
            request.setHeader(b"Allow", ", ".join(allowed).encode())
            message = f"{request.method.decode('latin-1')} is not allowed on {path}"
            return self.reject(request, 405, "method-not-allowed", message, allowed=allowed)
        except Exception:  # a bug: a counted, sampled 500, never a traceback per request
            return internal_error(request, Failure(), self.rejected, self.log, f"the resource at {path}")


class LimitedRequest(server.Request):
    """A request whose body is refused with 413 as soon as it passes the port's limit.

    Twisted would otherwise read any body, however large, before a resource
    sees it. The exact per-path limit is checked again by the ingest resource.
    """

    _refused = False
    _received = 0

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        # Nothing here reads form fields: skip Twisted's Content-Type parse through the
        # email package on every POST (7 % of the daemon's CPU under publish load, bench/).
        self._parsePOSTFormSubmission = False

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length)
        if length is not None and length > self.channel.site.max_body_size:
            self.requestHeaders.removeHeader(b"Expect")  # no "100 Continue" after our 413
            self._refuse()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.channel.site.max_body_size:
            self._refuse()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self._refused:
            super().requestReceived(command, path, version)

    def process(self) -> None:
        if self.path == b"*" and self.method != b"OPTIONS":  # Twisted answers 405 itself; count it too
            self.channel.site.resource.rejected["method-not-allowed"] += 1
        super().process()

    def _refuse(self) -> None:
        self._refused = True
        site = self.channel.site
        limit = site.max_body_size
        site.resource.rejected["body-too-large"] += 1
        site.resource.log.info(
            "refused a request body from {peer}: larger than {limit} bytes",
            peer=getattr(self.channel.transport.getPeer(), "host", "?"), limit=limit, reason="body-too-large",
        )
        body = json.dumps({"error": f"the request body is larger than {limit} bytes"}).encode() + b"\n"
        transport = self.channel.transport
        transport.write(
            b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        transport.loseConnection()


class QuietSite(server.Site):
    """A Site that logs no access lines: an SSE request is only logged when it
    finishes, which is misleading; sinks and ingest log what matters themselves."""

    requestFactory = LimitedRequest
    noisy = False

    def __init__(self, resource: IResource, reactor: object, max_body_size: int) -> None:
        super().__init__(resource, reactor=reactor)
        self.max_body_size = max_body_size

    def log(self, request: IRequest) -> None:
        pass

    def buildProtocol(self, addr: object) -> object:
        from .malformed import watch_bad_requests  # counts the 400s of Twisted's own parser

        return watch_bad_requests(super().buildProtocol(addr), self.resource)


class ListenerService(Service):
    """Binds one (host, port) for the connectors that share it."""

    log = Logger()

    def __init__(self, reactor: object, host: str, port: int) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.router = PathRouter()
        self.labels: list[str] = []
        self.max_body_size: int | None = None  # the largest limit of the ingests on this port
        self.listening: IListeningPort | None = None
        #: the endpoint string to bind with (TLS, server.endpoint; see tls.py); None: plain TCP
        self.endpoint: str | None = None
        self.setName(f"listener:{host}:{port}")

    def add(self, path: str, resource: IResource, label: str, max_body_size: int | None = None) -> None:
        self.router.add(path, resource)
        self.labels.append(f"{label} at {normalise_path(path)}")
        if max_body_size is not None:
            self.max_body_size = max(self.max_body_size or 0, max_body_size)

    @property
    def bound_port(self) -> int:
        """The port actually bound (differs from ``port`` when that is 0)."""
        assert self.listening is not None, "not listening"
        return self.listening.getHost().port

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        site = QuietSite(self.router, self.reactor, self.max_body_size or SINK_ONLY_BODY_LIMIT)
        interface = self.host.replace(":", "\\:")
        endpoint = endpoints.serverFromString(self.reactor, self.endpoint or f"tcp:{self.port}:interface={interface}")
        outcome: list[object] = []
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
