"""The guard in front of every sink and ingest resource: limits, access control, then the resource.

Checks that decide whether a request may reach a sink or an ingest live here,
in one place, so ``sink.py`` and ``ingest.py`` only deal with streams and
bodies. The decisions themselves are pure (``limits.py``, ``auth.py``); this
module is the thin Twisted glue: read the client address and credentials,
answer refusals (503 or 429 with ``Retry-After``, 401 with
``WWW-Authenticate``, 403), count and log them without secrets, keep the
per-address stream counts in step with ``notifyFinish``, and end a stream when
its token expires, or when a reload's fresh credentials no longer let it in
(:meth:`Guard.renew`).

The order of checks (docs/sink.md, "Order of checks"): a refusal that costs the
daemon nothing must not spend a budget that valid clients need.

1. the port's router: a path served here (404) and headers that are UTF-8 text (400);
2. the method (405), before anything else is spent on it;
3. CORS: an unlisted ``Origin`` is refused (403); a preflight is answered without credentials;
4. the client address's own limits: ``max.subscribers.per.address`` (checked, nothing
   spent), ``max.requests.per.second`` (the address's own bucket) and, for passwords,
   ``auth.failures.per.minute``: a flood from one address spends only that address's budget;
5. credentials: a cookie-authenticated POST must not be a simple cross-site request
   (403), then the check itself; a password is hashed in passwords.py's pool and the
   request answered when it is done (503 at once when the pool is full);
6. the limits every client shares: ``max.subscribers`` and ``max.connections.per.second``
   (a token is taken only by a request that passed everything above);
7. the resource.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Collection, Iterable, Protocol
from urllib.parse import parse_qs
from weakref import WeakKeyDictionary

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.error import UnsupportedMethod
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from sse_daemon.edge.auth import (
    Allowed, Authenticator, BasicAuth, Credentials, Denied, NoAuth, PasswordCheck, build_authenticator,
)
from sse_daemon.config.credentials import AccessSecrets
from sse_daemon.config.model import ConnectorDef
from sse_daemon.config.options import AccessOptions, HttpSourceOptions, SseServerOptions
from sse_daemon.edge.cors import CorsPolicy
from sse_daemon.policy.limits import Admission, LogRate, Refusal, RequestRate, should_log
from sse_daemon.edge.passwords import PasswordGate, PasswordPool, PoolStopped
from sse_daemon.edge.safety import internal_error
from sse_daemon.wire.eventstream import encode_comment

EXPIRED = encode_comment("access token expired; reconnect with a new one")
REVOKED = encode_comment("credentials no longer valid; reconnect with valid ones")
#: open streams checked again per reactor turn after fresh credentials (a JWT's signature is checked again)
RECHECK_SLICE = 200
#: what NoAuth decides for every request
ANONYMOUS = NoAuth().check(Credentials(), 0.0)

__all__ = ["Guard", "Passage", "sink_guard", "ingest_guard", "build_access", "client_host", "EXPIRED", "REVOKED",
           "GuardedSink", "GuardedIngest"]


class GuardedSink(Protocol):
    """What a sink's guard reaches in its sink (connectors/sink/core.py's SseSink): the streams it ends when a
    token expires or fresh credentials no longer let them in, and where it counts them."""

    name: str
    subscribers: Any  # a set of subscribers, each with its ``request`` and ``peer``
    counters: Counter[str]
    rejected: Counter[str]
    routine_lines: LogRate  # its connect and leave lines' budget, which an expiry's line shares

    def close(self, subscriber: Any, final: bytes = b"") -> None: ...
    def stream_requests(self) -> list[Any]: ...
    def end_streams(self, requests: Collection[Any], final: bytes) -> int: ...


class GuardedIngest(Protocol):
    """What an ingest's guard reaches in its ingest (connectors/ingest.py's IngestResource): the streaming
    publishes it cuts short when fresh credentials no longer let them in, and where it counts refusals."""

    rejected: Counter[str]

    def stream_requests(self) -> list[Any]: ...
    def end_streams(self, requests: Collection[Any], reason: str) -> int: ...


@dataclass(frozen=True, slots=True)
class Passage:
    """Where a request goes once a guard let it through, when that is not the guard's own resource:
    a hub (connectors/sink/hub.py) passes one request through the guard of every stream it names.

    ``proceed(request)`` renders it (bytes, or NOT_DONE_YET); ``stream`` is named in every refusal
    (``SSE-Refused-Stream`` and the JSON body) so a subscriber knows which stream it may not read;
    ``on_expiry`` ends the stream when a token expires (the guard's own otherwise)."""

    proceed: Callable[[Request], Any]
    stream: str | None = None
    on_expiry: Callable[[IRequest], None] | None = None


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


#: media types a page of any origin may POST without a preflight (the Fetch standard's CORS-safelisted ones)
SIMPLE_CONTENT_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain", "")
#: methods that change nothing: a cross-site one is harmless (CORS hides its answer)
SAFE_METHODS = (b"GET", b"HEAD", b"OPTIONS")


def cross_site_risk(request: IRequest, cors: CorsPolicy) -> bool:
    """Whether a request with ambient credentials (a cookie) could have been sent by a page of
    any origin: a browser sends a "simple" POST (form or text/plain body, no custom header)
    cross-site with the site's cookies, without asking first. An origin listed by name in
    ``cors.origins``, a non-simple Content-Type (``application/json``) or ``X-Requested-With``
    (both need a preflight, which an unlisted origin does not pass) make it safe."""
    origin = request.getHeader("origin")
    if origin is not None and origin.rstrip("/") in cors.origins:  # by name: '*' lets any page post
        return False
    if request.getHeader("x-requested-with") is not None:
        return False
    media_type = (request.getHeader("content-type") or "").partition(";")[0].strip().lower()
    return media_type in SIMPLE_CONTENT_TYPES


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
        connector: ConnectorDef[AccessOptions],
        clock: IReactorTime,
        rejected: Counter[str],
        *,
        admission: Admission | None = None,
        request_rate: RequestRate | None = None,
        authenticator: Authenticator | None = None,
        passwords: PasswordGate | None = None,
        on_expiry: Callable[[IRequest], None] | None = None,
        open_streams: Callable[[], Iterable[IRequest]] | None = None,
        on_revoked: Callable[[list[IRequest]], None] | None = None,
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
        self.passwords = passwords  # runs the authenticator's PasswordChecks (auth.type basic)
        self.on_expiry = on_expiry
        #: a sink's open streams, and what ends those that fresh credentials no longer let in (:meth:`renew`)
        self.open_streams = open_streams
        self.on_revoked = on_revoked
        #: for passwords: the users file's entry each admitted request was verified against (held weakly)
        self._verified_with: WeakKeyDictionary[IRequest, str] = WeakKeyDictionary()
        #: fresh credentials taken so far (:meth:`renew`): a recheck for older ones stops; a hub compares it (:meth:`recheck_since`)
        self.renewals = 0
        self.methods = tuple(m.encode("ascii") for m in methods)
        access = connector.options
        self.cors = CorsPolicy(access.cors_origins, access.cors_credentials, access.cors_max_age, methods)
        self.cookie: str = access.auth_cookie
        self.query_token: bool = access.auth_query_token
        #: no auth.type: every request is the anonymous one, without reading credentials it would not look at
        self.open = isinstance(self.authenticator, NoAuth)
        self._own = Passage(self.inner.render)

    def render(self, request: Request) -> Any:
        return self.pass_through(request, self._own)

    def pass_through(self, request: Request, passage: Passage) -> Any:
        """Every check, in order; then ``passage.proceed`` (instead of the resource) renders the request."""
        host = client_host(request)
        method = request.method
        origin = request.getHeader("origin")
        preflight = self.cors.enabled and method == b"OPTIONS" and origin is not None \
            and request.getHeader("access-control-request-method") is not None
        if method not in self.methods and not preflight:
            raise UnsupportedMethod(self.methods)  # the router's 405, before anything is spent
        if self.cors.enabled and origin is not None:
            if not self.cors.allows(origin):
                return self.refuse(request, 403, Refusal("origin-not-allowed", f"origin {origin[:100]} may not use this endpoint", 0), host, passage.stream)
            if preflight:  # answered here, no credentials needed
                wanted = request.getHeader("access-control-request-method") or ""
                granted = self.cors.preflight(origin, wanted, request.getHeader("access-control-request-headers") or "")
                if granted is None:
                    return self.refuse(request, 403, Refusal("preflight-not-allowed", f"{wanted[:20]} or a requested header is not allowed here", 0), host, passage.stream)
                for name, value in granted:
                    request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
                request.setResponseCode(204)
                return b""
            for name, value in self.cors.headers(origin):  # on refusals too, so the page can read them
                request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
        limited = self._address_limits(request, host)
        if limited is not None:
            return self.refuse(request, *limited, host, passage.stream)
        if self.open:
            return self._admit(request, host, ANONYMOUS, passage)
        presented = credentials(request, self.cookie, self.query_token)
        if presented.bearer_from == "cookie" and method not in SAFE_METHODS and cross_site_risk(request, self.cors):
            return self.refuse(request, 403, Refusal(
                "cross-site-request", "a POST authenticated by a cookie must come from an origin listed in cors.origins "
                "or carry a non-simple Content-Type such as application/json", 0), host, passage.stream)
        decision = self.authenticator.check(presented, self.clock.seconds())
        if isinstance(decision, PasswordCheck):
            return self._check_password(request, host, decision, passage)
        if isinstance(decision, Allowed) and isinstance(self.authenticator, BasicAuth):  # a verified password, cached
            return self._admit(request, host, decision, passage, self.authenticator.users[decision.identity])
        return self._admit(request, host, decision, passage)

    def _address_limits(self, request: IRequest, host: str) -> tuple[int, Refusal] | None:
        """The client address's own budgets: a flood from one address spends only its own.

        An address past ``auth.failures.per.minute`` is refused before its credentials are
        looked at, even ones that would be found in the cache: else it could go on guessing
        against the cache, at no cost, while refused any hash."""
        refusal = None
        if self.request_rate is not None and request.method == b"POST":
            refusal = self.request_rate.check(host)
        elif self.admission is not None and request.method == b"GET":
            refusal = self.admission.check_address(host)
        if refusal is not None:
            return 503, refusal
        failures = self.passwords.failures.check(host) if self.passwords is not None else None
        return (429, failures) if failures is not None else None

    def _admit(self, request: Request, host: str, decision: Allowed | Denied, passage: Passage, verified_with: str | None = None) -> Any:
        """After the credentials: the limits every client shares, then the resource. ``verified_with``: the users
        file's entry a password was verified against, remembered (weakly) for a stream that stays open, which
        :meth:`renew` compares with the fresh entry (a request answered at once is not remembered)."""
        if isinstance(decision, Denied):
            return self.deny(request, decision, host, passage.stream)
        if self.admission is not None and request.method == b"GET":
            # the address's cap again: a password check may have let others from it in meanwhile
            refusal = self.admission.check_address(host) or self.admission.check_global()
            if refusal is not None:
                return self.refuse(request, 503, refusal, host, passage.stream)
            self.admission.opened(host)
            request.notifyFinish().addBoth(self._stream_ended, host)
        result = passage.proceed(request)
        if result is NOT_DONE_YET and verified_with is not None and self.open_streams is not None:
            self._verified_with[request] = verified_with
        on_expiry = passage.on_expiry or self.on_expiry
        if result is NOT_DONE_YET and decision.expires is not None and on_expiry is not None:
            self._close_at_expiry(request, decision, on_expiry)
        return result

    def _check_password(self, request: Request, host: str, check: PasswordCheck, passage: Passage) -> object:
        """Hash off the reactor (passwords.py); the request is answered when the check is done."""
        if self.passwords is None:  # a BasicAuth is always built with its gate (sink_guard, ingest_guard)
            raise RuntimeError(f"{self.connector.label} has no password pool")
        left: list[bool] = []
        request.notifyFinish().addBoth(lambda _: left.append(True))  # before our answer: the client left
        decided = self.passwords.decide(check, host, lambda: bool(left))
        decided.addCallback(self._decided, request, host, left, passage, check)
        decided.addErrback(self._failed, request, host, left, passage)
        return NOT_DONE_YET

    def _decided(self, decision: Allowed | Denied | None, request: Request, host: str, left: list[bool], passage: Passage,
                 check: PasswordCheck) -> None:
        if decision is None or left:  # the client left: it costs nothing more
            return
        if isinstance(decision, Allowed) and not self._current_entry(check.user, check.hashed):
            decision = Denied(401, "bad-credentials", "wrong user name or password")  # fresh credentials came while it was hashed
        body = self._admit(request, host, decision, passage, check.hashed)
        if body is not NOT_DONE_YET:
            finish(request, body)

    def _failed(self, failure: Failure, request: Request, host: str, left: list[bool], passage: Passage) -> None:
        if left:
            return
        body: bytes | int
        if failure.check(PoolStopped):
            body = self.refuse(request, 503, Refusal("shutting-down", "the server is shutting down; retry later", 1), host, passage.stream)
        else:
            body = internal_error(request, failure, self.rejected, self.log, self.connector.label)
        if isinstance(body, bytes):  # else NOT_DONE_YET: the connection was closed
            finish(request, body)

    def _current_entry(self, user: str, hashed: str | None) -> bool:
        """Whether ``hashed`` is still ``user``'s entry in the users file the guard holds now."""
        return isinstance(self.authenticator, BasicAuth) and hashed is not None and self.authenticator.users.get(user) == hashed

    # -- fresh credentials (a reload read the users, tokens or JWT key files again: daemon/plan.py)

    def renew(self, authenticator: Authenticator, passwords: PasswordGate | None) -> None:
        """Check requests against ``authenticator`` from now on; then, a slice a reactor turn, end the open
        streams (``open_streams``) whose credentials it no longer lets in, through ``on_revoked``."""
        if passwords is not None and self.passwords is not None:
            passwords.failures = self.passwords.failures  # a reload does not reset an address's failed guesses
        if isinstance(authenticator, BasicAuth) and isinstance(self.authenticator, BasicAuth):
            authenticator.remember_from(self.authenticator)
        self.authenticator, self.passwords = authenticator, passwords
        self.open = isinstance(authenticator, NoAuth)
        self.renewals += 1  # a pass still running for older credentials stops: this one checks them all
        if self.open_streams is None or self.on_revoked is None:
            return
        self._recheck(self.renewals, list(self.open_streams()), [])

    def recheck_since(self, renewals: int, request: IRequest) -> None:
        """``request`` passed this guard when it had taken ``renewals`` fresh credentials, and opened its stream only
        now (a hub connection waited for another stream's password check): fresher ones checked no stream of it, so
        it is checked here, and ended if they no longer let it in."""
        if renewals != self.renewals and self.on_revoked is not None and not self.still_allowed(request, self.clock.seconds()):
            self.on_revoked([request])

    def _recheck(self, number: int, waiting: list[IRequest], revoked: list[IRequest]) -> None:
        if number != self.renewals:
            return
        now = self.clock.seconds()
        for request in waiting[:RECHECK_SLICE]:
            if not self.still_allowed(request, now):
                revoked.append(request)
        del waiting[:RECHECK_SLICE]
        if waiting:
            self.clock.callLater(0, self._recheck, number, waiting, revoked)
        elif revoked and self.on_revoked is not None:
            self.on_revoked(revoked)

    def still_allowed(self, request: IRequest, now: float) -> bool:
        """Whether the credentials ``request`` came with pass the guard's present ones. A password is not
        hashed again: its user's entry must be the one it was verified against (a changed one is a new password).
        A token that only reached its ``exp`` is not revoked: its stream's expiry timer ends it, as token-expired."""
        if self.open:
            return True
        presented = credentials(request, self.cookie, self.query_token)
        if isinstance(self.authenticator, BasicAuth):
            return presented.basic is not None and self._current_entry(presented.basic[0], self._verified_with.get(request))
        decision = self.authenticator.check(presented, now)
        return isinstance(decision, Allowed) or (isinstance(decision, Denied) and decision.reason == "token-expired")

    def _stream_ended(self, result: object, host: str) -> None:
        assert self.admission is not None
        self.admission.closed(host)

    def _close_at_expiry(self, request: Request, decision: Allowed, on_expiry: Callable[[IRequest], None]) -> None:
        """A stream may not outlive its token: end it at ``exp`` (on the injected clock)."""
        assert decision.expires is not None
        timer = self.clock.callLater(max(0.0, decision.expires - self.clock.seconds()), on_expiry, request)
        request.notifyFinish().addBoth(lambda _: timer.cancel() if timer.active() else None)

    def deny(self, request: IRequest, denied: Denied, host: str, stream: str | None = None) -> bytes:
        headers = {}
        challenge = self.authenticator.challenge
        if denied.status == 401 and challenge:
            if challenge.startswith("Bearer") and denied.reason != "missing-credentials":
                challenge += ', error="invalid_token"'  # RFC 6750: a token was given and is not good
            headers["WWW-Authenticate"] = challenge
        elif denied.status == 403 and challenge and challenge.startswith("Bearer"):
            headers["WWW-Authenticate"] = challenge + ', error="insufficient_scope"'
        return self.refuse(request, denied.status, Refusal(denied.reason, denied.message, denied.retry_after), host, stream, **headers)

    def refuse(self, request: IRequest, code: int, refusal: Refusal, host: str, stream: str | None = None, **headers: str) -> bytes:
        """Answer a refusal; ``stream``: the one a hub request may not read, named in the answer."""
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
        if refusal.retry_after > 0:
            request.setHeader(b"Retry-After", str(refusal.retry_after).encode())
        for name, value in headers.items():
            request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
        if stream is None:
            return json.dumps({"error": refusal.message, "reason": refusal.reason}).encode() + b"\n"
        request.setHeader(b"SSE-Refused-Stream", stream.encode("latin-1", "replace"))
        return json.dumps({"error": f"stream {stream}: {refusal.message}", "reason": refusal.reason, "stream": stream}).encode() + b"\n"


def finish(request: IRequest, body: bytes) -> None:
    """Write what a resource rendered after the fact, as twisted.web's Request.render would have."""
    if request.method == b"HEAD":
        if body:
            request.setHeader(b"Content-Length", b"%d" % len(body))
        request.write(b"")
    else:
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.write(body)
    request.finish()


def build_access(options: AccessOptions, stream: str, pool: PasswordPool, clock: IReactorTime,
                 access: AccessSecrets | None = None) -> tuple[Authenticator, PasswordGate | None]:
    """The authenticator ``auth.*`` options describe and, for passwords, the gate that checks
    them on ``pool``: what a Guard takes as ``authenticator`` and ``passwords``. ``access``: the
    secrets, read already (else the files and variables the options name are read now)."""
    authenticator = build_authenticator(options, stream, access=access)
    if not isinstance(authenticator, BasicAuth):
        return authenticator, None
    return authenticator, PasswordGate(authenticator, pool, clock, options.auth_failures_per_minute)


def sink_guard(connector: ConnectorDef[SseServerOptions], resource: IResource, sink: GuardedSink, clock: IReactorTime, pool: PasswordPool,
               access: AccessSecrets | None = None) -> Guard:
    admission = Admission(
        connector.options.max_subscribers,
        connector.options.max_subscribers_per_address,
        connector.options.max_connections_per_second,
        clock.seconds,
        connector.options.limit_retry_after,
    )

    def expired(request: IRequest) -> None:
        for subscriber in tuple(sink.subscribers):
            if subscriber.request is request:
                sink.counters["closed_token_expired"] += 1
                log, _ = sink.routine_lines.allow()  # tokens minted together expire together: one line each would flood
                if log:
                    Guard.log.info("closing subscriber {peer} of sink {sink}: its access token expired",
                                   peer=subscriber.peer, sink=sink.name)
                sink.close(subscriber, EXPIRED)

    def revoked(requests: list[IRequest]) -> None:
        ended = sink.end_streams(requests, REVOKED)
        if ended:
            sink.counters["closed_credentials_revoked"] += ended
            Guard.log.info("closed {count} stream(s) of sink {sink}: the credentials they came with are no longer valid",
                           count=ended, sink=sink.name)

    authenticator, passwords = build_access(connector.options, connector.stream, pool, clock, access)
    return Guard(resource, connector, clock, sink.rejected, admission=admission, authenticator=authenticator,
                 passwords=passwords, on_expiry=expired, methods=("GET", "HEAD"),
                 open_streams=sink.stream_requests, on_revoked=revoked)


def ingest_guard(connector: ConnectorDef[HttpSourceOptions], resource: IResource, ingest: GuardedIngest, clock: IReactorTime,
                 pool: PasswordPool) -> Guard:
    """An ingest's ``resource`` (connectors/ingest.py's IngestResource, which is also ``ingest``) behind its guard.
    A streaming publish may not outlive its credentials: one whose token reaches its ``exp``, or whose credentials
    a renewal revokes, is cut short (its answer says ``"ended": "token-expired"`` or ``"credentials-revoked"``)."""

    def cut(requests: list[IRequest], reason: str, why: str) -> None:
        ended = ingest.end_streams(requests, reason)
        if ended:
            ingest.rejected[reason] += ended  # the rest of their bodies: sse_daemon_source_events_rejected
            Guard.log.info("cut {count} streaming publish(es) to ingest {source} short: {why}",
                           count=ended, source=connector.name, why=why)

    def expired(request: IRequest) -> None:
        cut([request], "token-expired", "the access token it came with expired")

    def revoked(requests: list[IRequest]) -> None:
        cut(requests, "credentials-revoked", "the credentials they came with are no longer valid")

    authenticator, passwords = build_access(connector.options, connector.stream, pool, clock)
    return Guard(resource, connector, clock, ingest.rejected, request_rate=RequestRate(connector.options.max_requests_per_second, clock.seconds),
                 authenticator=authenticator, passwords=passwords, methods=("POST",), on_expiry=expired,
                 open_streams=ingest.stream_requests, on_revoked=revoked)
