"""The guard in front of every sink and ingest resource: limits, access control, then the resource.

Checks that decide whether a request may reach a sink or an ingest live here,
in one place, so ``sink.py`` and ``ingest.py`` only deal with streams and
bodies. The decisions themselves are pure (``limits.py``, ``auth.py``); this
module is the thin Twisted glue: read the client address and credentials,
answer refusals (503 with ``Retry-After``, 401 with ``WWW-Authenticate``,
403), count and log them without secrets, keep the per-address stream counts
in step with ``notifyFinish``, and end a stream when its token expires.

Order: CORS first (a listed origin's preflight is answered without
credentials, an unlisted origin is refused), then rate and caps (cheap, and
they keep a flood from costing a bcrypt check each), then credentials, then
the resource.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from typing import Any, Callable
from urllib.parse import parse_qs

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from .auth import Allowed, Authenticator, Credentials, Denied, NoAuth, build_authenticator
from .config import ConnectorDef
from .cors import CorsPolicy
from .limits import Admission, Refusal, RequestRate, should_log
from .sse import encode_comment

EXPIRED = encode_comment("access token expired; reconnect with a new one")

__all__ = ["Guard", "sink_guard", "ingest_guard", "client_host"]


def credentials(request: IRequest, cookie: str = "", query_token: bool = False) -> Credentials:
    """Credentials from the Authorization header, else the named cookie, else (if allowed) ``access_token``."""
    header = request.getHeader("authorization")
    if header:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "basic":
            try:
                user, colon, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
            except ValueError:  # not base64 (binascii.Error), not ASCII, not UTF-8 (found by tests/test_fuzz.py)
                return Credentials(basic=("", ""))  # malformed: refused as wrong credentials
            return Credentials(basic=(user, password) if colon else ("", ""))
        if scheme.lower() == "bearer":
            return Credentials(bearer=value.strip(), bearer_from="header")
    if cookie:
        value = request.getCookie(cookie.encode("latin-1"))
        if value:
            return Credentials(bearer=value.decode("latin-1").strip(), bearer_from="cookie")
    if query_token:
        values = parse_qs(request.uri.partition(b"?")[2].decode("latin-1")).get("access_token")
        if values and values[-1]:
            return Credentials(bearer=values[-1], bearer_from="query")
    return Credentials()


def client_host(request: IRequest) -> str:
    """The peer's address (never a forwarded header: those are the client's to forge)."""
    address = request.getClientAddress()
    return str(getattr(address, "host", None) or address)


class Guard(Resource):
    """Wraps a sink's or an ingest's resource; refuses what its limits do not allow.

    ``rejected`` counts refusals by reason (the wrapped connector's own
    ``rejected`` counter, so they show up where operators already look).
    """

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        inner: IResource,
        connector: ConnectorDef,
        clock: IReactorTime,
        rejected: Counter[str],
        *,
        admission: Admission | None = None,
        request_rate: RequestRate | None = None,
        authenticator: Authenticator | None = None,
        on_expiry: Callable[[IRequest], None] | None = None,
        methods: tuple[str, ...] = ("GET",),
    ) -> None:
        super().__init__()
        self.inner = inner
        self.connector = connector
        self.clock = clock
        self.rejected = rejected
        self.admission = admission
        self.request_rate = request_rate
        self.authenticator = authenticator or NoAuth()
        self.on_expiry = on_expiry
        self.cors = CorsPolicy(connector.options.get("cors.origins", ()), connector.options.get("cors.credentials", False),
                               connector.options.get("cors.max.age", 600), methods)
        self.cookie: str = connector.options.get("auth.cookie", "")
        self.query_token: bool = connector.options.get("auth.query.token", False)

    def render(self, request: IRequest) -> Any:
        host = client_host(request)
        method = request.method
        origin = request.getHeader("origin")
        if self.cors.enabled and origin is not None:
            if not self.cors.allows(origin):
                return self.refuse(request, 403, Refusal("origin-not-allowed", f"origin {origin[:100]} may not use this endpoint", 0), host)
            wanted = request.getHeader("access-control-request-method")
            if method == b"OPTIONS" and wanted is not None:  # a preflight: answered here, no credentials needed
                granted = self.cors.preflight(origin, wanted, request.getHeader("access-control-request-headers") or "")
                if granted is None:
                    return self.refuse(request, 403, Refusal("preflight-not-allowed", f"{wanted[:20]} or a requested header is not allowed here", 0), host)
                for name, value in granted:
                    request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
                request.setResponseCode(204)
                return b""
            for name, value in self.cors.headers(origin):  # on refusals too, so the page can read them
                request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
        if self.request_rate is not None and method == b"POST":
            refusal = self.request_rate.check(host)
            if refusal is not None:
                return self.refuse(request, 503, refusal, host)
        stream = self.admission is not None and method == b"GET"
        if stream:
            refusal = self.admission.check(host)
            if refusal is not None:
                return self.refuse(request, 503, refusal, host)
        if isinstance(self.authenticator, NoAuth):
            decision: Allowed | Denied = Allowed("anonymous")
        else:
            decision = self.authenticator.check(credentials(request, self.cookie, self.query_token), self.clock.seconds())
        if isinstance(decision, Denied):
            return self.deny(request, decision, host)
        if stream:
            self.admission.opened(host)
            request.notifyFinish().addBoth(self._stream_ended, host)
        result = self.inner.render(request)
        if result is NOT_DONE_YET and decision.expires is not None and self.on_expiry is not None:
            self._close_at_expiry(request, decision)
        return result

    def _stream_ended(self, result: object, host: str) -> None:
        assert self.admission is not None
        self.admission.closed(host)

    def _close_at_expiry(self, request: IRequest, decision: Allowed) -> None:
        """A stream may not outlive its token: end it at ``exp`` (on the injected clock)."""
        assert decision.expires is not None and self.on_expiry is not None
        timer = self.clock.callLater(max(0.0, decision.expires - self.clock.seconds()), self.on_expiry, request)
        request.notifyFinish().addBoth(lambda _: timer.cancel() if timer.active() else None)

    def deny(self, request: IRequest, denied: Denied, host: str) -> bytes:
        headers = {}
        challenge = self.authenticator.challenge
        if denied.status == 401 and challenge:
            if challenge.startswith("Bearer") and denied.reason != "missing-credentials":
                challenge += ', error="invalid_token"'  # RFC 6750: a token was given and is not good
            headers["WWW-Authenticate"] = challenge
        elif denied.status == 403 and challenge and challenge.startswith("Bearer"):
            headers["WWW-Authenticate"] = challenge + ', error="insufficient_scope"'
        return self.refuse(request, denied.status, Refusal(denied.reason, denied.message, 0), host, **headers)

    def refuse(self, request: IRequest, code: int, refusal: Refusal, host: str, **headers: str) -> bytes:
        self.rejected[refusal.reason] += 1
        count = self.rejected[refusal.reason]
        if should_log(count):
            self.log.warn(
                "{connector} refused {method} from {peer}: {message} ({reason}, {count} so far)",
                connector=self.connector.label, method=request.method.decode("latin-1"), peer=host,
                message=refusal.message, reason=refusal.reason, count=count,
            )
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"application/json")
        if code == 503:
            request.setHeader(b"Retry-After", str(refusal.retry_after).encode())
        for name, value in headers.items():
            request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
        return json.dumps({"error": refusal.message, "reason": refusal.reason}).encode() + b"\n"


def sink_guard(connector: ConnectorDef, resource: IResource, sink: Any, clock: IReactorTime) -> Guard:
    admission = Admission(
        connector["max.subscribers"],
        connector["max.subscribers.per.address"],
        connector["max.connections.per.second"],
        clock.seconds,
        connector["limit.retry.after"],
    )

    def expired(request: IRequest) -> None:
        for subscriber in tuple(sink.subscribers):
            if subscriber.request is request:
                sink.counters["closed_token_expired"] += 1
                Guard.log.info("closing subscriber {peer} of sink {sink}: its access token expired",
                               peer=subscriber.peer, sink=sink.name)
                sink.close(subscriber, EXPIRED)

    return Guard(resource, connector, clock, sink.rejected, admission=admission,
                 authenticator=build_authenticator(connector.options, connector.stream), on_expiry=expired,
                 methods=("GET", "HEAD"))


def ingest_guard(connector: ConnectorDef, resource: IResource, rejected: Counter[str], clock: IReactorTime) -> Guard:
    return Guard(resource, connector, clock, rejected, request_rate=RequestRate(connector["max.requests.per.second"], clock.seconds),
                 authenticator=build_authenticator(connector.options, connector.stream), methods=("POST",))
