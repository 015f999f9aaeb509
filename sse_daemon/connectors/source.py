"""The SSE source (``type: sse``): subscribes to an SSE endpoint and publishes what it receives.

The upstream this spec comes from gave up for good on the first dropped
connection, fed 404 pages to the mapper and never sent ``Last-Event-ID``
(see the research notes). Here the decisions are pure and tested on their
own (:class:`ReconnectPolicy`, :func:`judge_response`, :func:`describe_failure`,
:class:`RecentIds`); :class:`SseSourceService` is the Twisted glue: treq with
an unbuffered body, our own body protocol (so stopping can close the
connection and backpressure can pause it), timers on the injected reactor.
"""

from __future__ import annotations

import base64
import enum
import random
from email.utils import parsedate_to_datetime
from collections import Counter, OrderedDict
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

from treq.client import HTTPClient
from twisted.application.service import Service
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web import error as web_error, http
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    RedirectAgent,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
    _HTTP11ClientFactory,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS, IResponse

from sse_daemon.bus.memory import IBus
from sse_daemon.config.model import ConnectorDef
from sse_daemon.config.options import SseSourceOptions
from sse_daemon.mapping.mappers import IMapper, MappingError
from sse_daemon.events.schema import Event
from sse_daemon.wire.jsondocs import JsonDocumentSplitter
from sse_daemon.policy.limits import LogRate, should_log  # a bad upstream must not flood the log
from sse_daemon.policy.redact import redact_url, redact_urls
from sse_daemon.wire.eventstream import EventStreamParser, Message, Rejection

#: redirects followed for one request before it counts as a failure
MAX_REDIRECTS = 10
#: ids remembered for de-duplication when worker.count > 1
DEDUP_WINDOW = 10_000
#: backoff never goes below this, so ``retry: 0`` cannot make failures spin
MIN_BACKOFF = 0.01
#: a parser line may hold a whole event plus its field name
LINE_SLACK = 64
#: what Twisted adds when a chunked body is cut short (private; absent means nothing to filter)
_DATA_LOSS = getattr(http, "_DataLoss", ())


# --------------------------------------------------------------------------- pure decisions


#: the longest wait a server can ask for, with ``retry:`` or ``Retry-After`` (seconds); asking for
#: more (a 20-digit ``retry:`` would be 10^16 s) gets this
SERVER_WAIT_MAX = 600.0
#: the same bound for ``Retry-After`` (one name per header in the logs and docs)
RETRY_AFTER_MAX = SERVER_WAIT_MAX


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """How long to wait before the next connection attempt, and what counts as a failure.

    After a stream that worked ends, wait the server's ``retry:`` (or the
    initial delay): that is the WHATWG "reestablish" case and the server set
    its pace. After the n-th failure in a row, back off exponentially from
    the larger of the two, up to ``maximum`` (or the server's ``retry:`` if
    that is larger: it asked for at least that), and take off a random part
    of up to half ("equal jitter") so many clients do not return in step.
    A server's ``retry:`` counts for at most :data:`SERVER_WAIT_MAX`.
    """

    initial: float = 1.0
    maximum: float = 30.0
    jitter: Callable[[], float] = random.random  # in [0, 1)

    def delay(self, failures: int, retry_ms: int | None) -> float:
        # min() on the int first: a huge int from anywhere never meets a float (OverflowError)
        retry = None if retry_ms is None else min(max(retry_ms, 0), int(SERVER_WAIT_MAX * 1000)) / 1000
        if failures <= 0:
            return self.initial if retry is None else retry
        base = max(self.initial, retry or 0.0, MIN_BACKOFF)
        ceiling = max(self.maximum, base)
        raw = min(ceiling, base * 2 ** min(failures - 1, 62))
        return raw * (1 - 0.5 * self.jitter())

    def stream_failed(self, delivered: int, lasted: float) -> bool:
        """Whether a stream that ended (cleanly or not) was a failure: it delivered no event and
        was open for less than ``maximum`` seconds. An upstream answering ``retry: 0`` and
        closing at once (or sending only comments) then backs off like one that refuses;
        a quiet stream cut after a long while (an idle proxy) does not."""
        return delivered == 0 and lasted < self.maximum

    @staticmethod
    def failures_after(failures: int, failed: bool, delivered: int) -> int:
        """The count of failures in a row after an attempt: a failure adds one, or makes it 1
        when its stream had delivered events first; anything else starts over."""
        if not failed:
            return 0
        return 1 if delivered else failures + 1


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²" is a digit to str.isdigit, and no number to float()
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


class Verdict(enum.Enum):
    STREAM = "stream"  # read the body as an event stream
    STOP = "stop"  # the server asked us to stop (204)
    RETRY = "retry"  # a failure: back off and try again


def media_type(content_type: str | None) -> str:
    """``Text/Event-Stream; charset=utf-8`` -> ``text/event-stream``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def judge_response(code: int, phrase: str, content_type: str | None, raw: bool = False,
                   reconnect_on_client_error: bool = True) -> tuple[Verdict, str]:
    """What a response head means for the source, and why.

    Only 200 with ``text/event-stream`` is a stream (as WHATWG requires);
    204 stops the source as the standard says. Everything else is a failure
    that is retried with backoff, unlike a browser, which gives up: a daemon
    must outlive a server's bad minute, and its error body must never reach
    the mapper. Without ``reconnect_on_client_error`` (the option
    ``reconnect.on.client.error: false``) a 4xx other than 429, and a 200
    that is no event stream, stop the source as they stop a browser's
    EventSource. With ``raw`` (``sse.format: raw``) any 200 is a stream of
    JSON documents, whatever its Content-Type: the original sink sent the
    mapper's type.
    """
    status = f"HTTP {code} {phrase}".rstrip()
    give_up = Verdict.RETRY if reconnect_on_client_error else Verdict.STOP
    then = "" if reconnect_on_client_error else " (reconnect.on.client.error is false)"
    if code == 204:
        return Verdict.STOP, f"the server answered {status}: it asks clients to stop"
    if code != 200:
        client_error = 400 <= code < 500 and code != 429
        return (give_up if client_error else Verdict.RETRY), f"the server answered {status}" + (then if client_error else "")
    if raw:
        return Verdict.STREAM, status
    found = media_type(content_type)
    if found != "text/event-stream":
        return give_up, (
            f"the server answered {status} with Content-Type {content_type!r}, not text/event-stream"
            if content_type else f"the server answered {status} without a Content-Type (expected text/event-stream)"
        ) + then
    return Verdict.STREAM, status


def describe_failure(reason: BaseException | Failure) -> str:
    """A one-line cause for the log: refused, DNS, TLS, redirects, lost connection."""
    if isinstance(reason, Failure):
        reason = reason.value
    if isinstance(reason, ResponseDone):
        return "the server ended the stream"
    if isinstance(reason, http.PotentialDataLoss):
        return "the server closed the connection"
    if isinstance(reason, (ResponseNeverReceived, ResponseFailed)):
        # _DataLoss only repeats that a chunked body was cut short
        inner = [describe_failure(f) for f in reason.reasons if not isinstance(f.value, _DATA_LOSS)]
        what = "no response" if isinstance(reason, ResponseNeverReceived) else "the response failed"
        return f"{what}: {'; '.join(inner) or type(reason).__name__}"
    if isinstance(reason, web_error.InfiniteRedirection):
        return f"more than {MAX_REDIRECTS} redirects (last to {redact_url(_text(reason.location))})"
    if isinstance(reason, web_error.RedirectWithNoLocation):
        return f"redirect {_text(reason.status)} without a Location header"
    if isinstance(reason, net_error.DNSLookupError):
        return _strip_period(reason)  # "DNS lookup failed: <why>" (a host name: the URL's credentials are never in it)
    if isinstance(reason, net_error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, net_error.TimeoutError):
        return "TCP connect timed out"
    if isinstance(reason, (net_error.ConnectionDone, net_error.ConnectionLost)):
        return "connection closed" if isinstance(reason, net_error.ConnectionDone) else "connection lost"
    if _is_tls_error(reason):
        return f"TLS error: {_tls_text(reason)}"
    text = redact_urls(str(reason).strip())  # an exception's text may quote a URL
    return f"{type(reason).__name__}: {text}" if text else type(reason).__name__


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _strip_period(reason: BaseException) -> str:
    return str(reason).strip().rstrip(".") or type(reason).__name__


def _is_tls_error(reason: BaseException) -> bool:
    try:
        from OpenSSL.SSL import Error as SSLError
    except ImportError:  # pragma: no cover - pyOpenSSL is needed for https anyway
        return False
    return isinstance(reason, SSLError)


def _tls_text(reason: BaseException) -> str:
    # pyOpenSSL errors carry [(library, function, reason), ...]
    details = reason.args[0] if reason.args and isinstance(reason.args[0], list) else []
    texts = [item[-1] for item in details if isinstance(item, tuple) and item]
    return ", ".join(str(t) for t in texts) or str(reason) or type(reason).__name__


class RecentIds:
    """The last ``size`` ids seen: enough to spot the same event arriving on another connection."""

    def __init__(self, size: int = DEDUP_WINDOW) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._ids

    def add(self, event_id: str) -> bool:
        """Remember ``event_id``; False if it was already there (a duplicate)."""
        if event_id in self._ids:
            return False
        self._ids[event_id] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return True


# --------------------------------------------------------------------------- Twisted glue


class BodyReceiver(Protocol):
    """Hands body bytes on as they arrive and keeps the transport.

    treq's ``collect`` cannot be cancelled and would keep the connection open
    (pitfall P3); with the transport we can close it, and pause it when
    downstream cannot keep up.
    """

    def __init__(self, on_data: Callable[[bytes], None]) -> None:
        self._on_data = on_data
        self.done: Deferred[None] = Deferred()  # fires (never fails) once the body has ended
        self.reason: Failure | None = None
        self.closing = False
        self.paused = False

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        if self.paused:
            transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        self._on_data(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.transport = None
        self.reason = reason
        if not self.done.called:
            self.done.callback(None)

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.loseConnection()

    def pause(self) -> None:
        self.paused = True
        if self.transport is not None:
            self.transport.pauseProducing()

    def resume(self) -> None:
        self.paused = False
        if self.transport is not None:
            self.transport.resumeProducing()


class _QuietClientFactory(_HTTP11ClientFactory):
    noisy = False


class _Discard(Protocol):
    """Closes a response we will not read (an error page, a wrong content type)."""

    def makeConnection(self, transport: Any) -> None:
        transport.stopProducing()


@dataclass(slots=True)
class _Outcome:
    stop: bool = False
    failure: str | None = None  # set when the attempt counts as a failure
    ended: str | None = None  # why a good stream ended
    retry_after: float | None = None  # seconds a 429 or 503 asked to wait (Retry-After)
    delivered: int = 0  # events (messages) the stream carried


@dataclass(eq=False, slots=True)
class _Connection:
    """One of the ``worker.count`` connections and its own stream state."""

    index: int
    parser: EventStreamParser
    splitter: JsonDocumentSplitter | None = None  # sse.format raw: the body is JSON documents
    failures: int = 0  # consecutive failed attempts
    connected: bool = False
    got_data: bool = False  # this stream has sent bytes (comments and retry: lines included)
    delivered: int = 0  # messages this stream dispatched: only these make it a stream that worked
    timed_out: str | None = None
    previous_id: str = ""  # id of the last message: a message carrying the same one set none of its own
    loop: Deferred | None = None
    request: Deferred | None = None
    waiting: Deferred | None = None
    receiver: BodyReceiver | None = None
    timer: IDelayedCall | None = None  # connect timeout, then read timeout
    last_error: str | None = None

    def cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


class SseSourceService(Service):
    """Keeps ``worker.count`` connections to ``receiver.url`` and publishes their events.

    Operator figures are plain attributes: ``connected``, ``reconnects``,
    ``last_event_id``, ``counters`` and ``rejected`` (parser rejections by
    reason); ``mapping_errors`` counts unmappable messages by reason.
    """

    log = Logger()

    def __init__(
        self,
        connector: ConnectorDef[SseSourceOptions],
        mapper: IMapper,
        bus: IBus,
        reactor: Any,
        *,
        jitter: Callable[[], float] = random.random,
        tls_policy: IPolicyForHTTPS | None = None,
    ) -> None:
        self.connector = connector
        self.source_name = connector.name
        self.setName(f"source:{connector.name}")
        self.mapper = mapper
        self.bus = bus
        self.reactor = reactor
        url = connector.options.receiver_url
        #: what is shown (logs, status): credentials masked; ``_request_url`` is what is requested
        self.url: str = str(url)
        self._request_url: str = url.request_url
        self._url_credentials: tuple[str, str] | None = url.credentials
        self.stream = connector.stream
        self.event_types: frozenset[str] = frozenset(connector.options.event_types)
        self.policy = ReconnectPolicy(
            connector.options.reconnect_initial_delay, connector.options.reconnect_max_delay, jitter
        )
        self.connect_timeout: float = connector.options.connect_timeout
        self.read_timeout: float = connector.options.read_timeout
        self.max_event_size: int = connector.options.max_event_size
        self.max_events: int = connector.options.max_events_per_message
        self.workers: int = connector.options.worker_count
        self.headers: tuple[tuple[str, str], ...] = connector.options.headers
        self.raw: bool = connector.options.sse_format == "raw"
        self.reconnect_on_client_error: bool = connector.options.reconnect_on_client_error
        #: connect and stream-ended lines (info): at most 50 per 10 s, however fast an upstream cycles
        self._routine_log = LogRate(reactor.seconds)

        self.reconnects = 0
        self.last_event_id = ""
        self.counters: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.mapping_errors: Counter[str] = Counter()
        self.stopped_reason: str | None = None  # set when the server told us to stop (204)
        self.recent_ids = RecentIds()
        self.paused = False

        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.pool._factory = _QuietClientFactory  # one "Starting factory" log line per reconnect is noise
        agent = Agent(reactor, contextFactory=tls_policy or BrowserLikePolicyForHTTPS(), pool=self.pool)
        self._http = HTTPClient(RedirectAgent(agent, redirectLimit=MAX_REDIRECTS))
        self._connections: list[_Connection] = []
        self._halted = False

    # -- figures

    @property
    def connected(self) -> bool:
        return any(c.connected for c in self._connections)

    @property
    def connections_up(self) -> int:
        return sum(c.connected for c in self._connections)

    # -- service

    def startService(self) -> None:
        super().startService()
        self._halted = False
        self.stopped_reason = None
        # A restarted service keeps each connection's Last-Event-ID and retry.
        parsers = [c.parser for c in self._connections]
        self._connections = [self._new_connection(i, parsers[i] if i < len(parsers) else None) for i in range(self.workers)]
        self.log.info(
            "source {source} subscribing to {url} with {workers} connection(s) for stream {stream}",
            source=self.source_name, url=self.url, workers=self.workers, stream=self.stream,
        )
        for conn in self._connections:
            conn.loop = Deferred.fromCoroutine(self._run(conn))
            conn.loop.addErrback(
                lambda f, conn=conn: self.log.failure(
                    "source {source} connection {worker} stopped unexpectedly", f, source=self.source_name, worker=conn.index
                )
            )

    def stopService(self) -> Deferred:
        """Close every connection and timer at once; fires when all are closed."""
        super().stopService()
        self._halt()
        loops = [c.loop for c in self._connections if c.loop is not None]
        d: Deferred = DeferredList(loops, consumeErrors=True)
        d.addCallback(lambda _: self.pool.closeCachedConnections())
        d.addCallback(lambda _: self.log.info("source {source} stopped", source=self.source_name))
        return d

    def resume_after(self, last_event_id: str | None) -> None:
        """Start (again) from this Last-Event-ID: the cursor a leased source's last holder saved (lease.py)."""
        if not last_event_id:
            return
        if not self._connections:
            self._connections = [self._new_connection(i) for i in range(self.workers)]
        for conn in self._connections:
            conn.parser.last_event_id = last_event_id
        self.last_event_id = last_event_id

    def pause(self) -> None:
        """Stop reading (backpressure): the server's writes queue in TCP buffers, not here."""
        self.paused = True
        for conn in self._connections:
            if conn.receiver is not None:
                conn.receiver.pause()
                conn.cancel_timer()  # a paused stream is silent by our choice

    def resume(self) -> None:
        self.paused = False
        for conn in self._connections:
            if conn.receiver is not None:
                conn.receiver.resume()
                self._arm_read_timeout(conn)

    def _new_connection(self, index: int, parser: EventStreamParser | None = None) -> _Connection:
        limit = self.max_event_size
        splitter = JsonDocumentSplitter(limit) if self.raw else None
        return _Connection(index, parser or EventStreamParser(max_line=limit + LINE_SLACK, max_event=limit), splitter)

    def _halt(self) -> None:
        self._halted = True
        for conn in self._connections:
            conn.cancel_timer()
            if conn.waiting is not None:
                conn.waiting.cancel()
            if conn.request is not None:
                conn.request.cancel()
            if conn.receiver is not None:
                conn.receiver.close()

    # -- one connection's life

    async def _run(self, conn: _Connection) -> None:
        while not self._halted:
            try:
                outcome = await self._attempt(conn)
            except Exception:
                # A bug must not leave the source dead: log it and treat it as a failure.
                self.log.failure("source {source} connection {worker} failed unexpectedly", source=self.source_name, worker=conn.index)
                outcome = _Outcome(failure="internal error (see the traceback above)")
            if self._halted:
                break
            if outcome.stop:
                self._server_stop(outcome.failure or "stopped by the server")
                break
            try:
                delay = self._next_delay(conn, outcome)
            except Exception:  # nothing an upstream sends may end this loop: wait the longest and go on
                self.log.failure("source {source} connection {worker}: choosing the reconnect delay failed",
                                 source=self.source_name, worker=conn.index)
                delay = self.policy.maximum
            conn.waiting = deferLater(self.reactor, delay, lambda: None)
            try:
                await conn.waiting
            except CancelledError:
                break
            finally:
                conn.waiting = None
            self.reconnects += 1

    def _next_delay(self, conn: _Connection, outcome: _Outcome) -> float:
        """Count the attempt (policy.failures_after), pick the wait, say so in the log."""
        conn.failures = self.policy.failures_after(conn.failures, outcome.failure is not None, outcome.delivered)
        if outcome.failure is not None:
            conn.last_error = outcome.failure
            self.counters["failures"] += 1
        delay = self.policy.delay(conn.failures, conn.parser.retry)
        if outcome.retry_after is not None:  # the server said when; a little later, so its clients do not return together
            delay = max(delay, min(outcome.retry_after, RETRY_AFTER_MAX) * (1 + 0.1 * self.policy.jitter()))
        if outcome.failure is not None:  # bounded by the backoff itself: a few lines per reconnect.max.delay
            self.log.warn(
                "source {source} ({url}, connection {worker}): {cause}; retrying in {delay:.2f}s (failure {failures} in a row)",
                source=self.source_name, url=self.url, worker=conn.index, cause=outcome.failure,
                delay=delay, failures=conn.failures,
            )
            return delay
        allowed, held = self._routine_log.allow()
        if allowed:
            self.log.info(
                "source {source} ({url}, connection {worker}): stream ended ({cause}); reconnecting in {delay:.2f}s with Last-Event-ID {last_event_id!r}{held_back}",
                source=self.source_name, url=self.url, worker=conn.index, cause=outcome.ended,
                delay=delay, last_event_id=conn.parser.last_event_id,
                held_back=f" ({held} connect and reconnect lines held back)" if held else "",
            )
        return delay

    async def _attempt(self, conn: _Connection) -> _Outcome:
        conn.got_data = False
        conn.delivered = 0
        conn.timed_out = None
        headers = self._request_headers(conn)
        self.counters["attempts"] += 1
        self.log.debug(
            "source {source} connection {worker} requesting {url} (Last-Event-ID {last_event_id!r})",
            source=self.source_name, worker=conn.index, url=self.url, last_event_id=conn.parser.last_event_id,
        )
        request = self._http.get(self._request_url, headers=headers, unbuffered=True, allow_redirects=False)
        conn.request = request
        if self.connect_timeout > 0:
            conn.timer = self.reactor.callLater(self.connect_timeout, self._connect_timed_out, conn)
        try:
            response: IResponse = await request
        except CancelledError:
            if self._halted:
                return _Outcome()
            return _Outcome(failure=conn.timed_out or "request cancelled")
        except Exception as e:
            if self._halted:
                return _Outcome()
            if conn.timed_out:
                return _Outcome(failure=conn.timed_out)
            return _Outcome(failure=describe_failure(e))
        finally:
            conn.request = None
            conn.cancel_timer()

        content_type = response.headers.getRawHeaders(b"content-type", [None])[0]
        phrase = response.phrase.decode("latin-1", "replace") if isinstance(response.phrase, bytes) else str(response.phrase)
        verdict, reason = judge_response(
            response.code, phrase, content_type.decode("latin-1", "replace") if content_type else None, self.raw,
            self.reconnect_on_client_error,
        )
        if verdict is not Verdict.STREAM:
            response.deliverBody(_Discard())
            self.counters["bad_responses"] += 1
            wait = None
            if response.code in (429, 503):
                header = response.headers.getRawHeaders(b"retry-after", [None])[0]
                wait = retry_after(header.decode("latin-1", "replace") if header else None, self.reactor.seconds())
                if wait is not None:
                    reason += f" (Retry-After: {wait:g}s{'' if wait <= RETRY_AFTER_MAX else f', capped at {RETRY_AFTER_MAX:g}s'})"
            return _Outcome(stop=verdict is Verdict.STOP, failure=reason, retry_after=wait)

        receiver = BodyReceiver(partial(self._data, conn))
        receiver.paused = self.paused
        conn.receiver = receiver
        conn.connected = True
        self.counters["streams"] += 1
        opened = self.reactor.seconds()
        final_url = _final_url(response)
        allowed, held = self._routine_log.allow()
        if allowed:
            self.log.info(
                "source {source} connected to {url}{via} (connection {worker}, Last-Event-ID {last_event_id!r}){held_back}",
                source=self.source_name, url=self.url, worker=conn.index, last_event_id=conn.parser.last_event_id,
                via="" if final_url in (None, self._request_url) else f" via {redact_url(final_url)}",
                held_back=f" ({held} connect and reconnect lines held back)" if held else "",
            )
        response.deliverBody(receiver)
        self._arm_read_timeout(conn)
        try:
            await receiver.done
        finally:
            conn.connected = False
            conn.receiver = None
            conn.cancel_timer()
        for item in self._delivering(conn, self._items(conn, None)):  # drops an unfinished event, resets for the next stream
            self._handle(conn, item)
        delivered = conn.delivered
        if self._halted:
            return _Outcome()
        if conn.timed_out:
            self.counters["read_timeouts"] += 1
            return _Outcome(failure=conn.timed_out, delivered=delivered)
        cause = describe_failure(receiver.reason) if receiver.reason is not None else "closed"
        if self.policy.stream_failed(delivered, self.reactor.seconds() - opened):
            # whatever its retry: said: a server that only opens and closes must not set the pace
            what = "any event" if conn.got_data else "anything"
            return _Outcome(failure=f"the stream ended before sending {what} ({cause})")
        return _Outcome(ended=cause, delivered=delivered)

    def _request_headers(self, conn: _Connection) -> Headers:
        headers = Headers()
        headers.setRawHeaders(b"Accept", [b"text/event-stream"])
        headers.setRawHeaders(b"Cache-Control", [b"no-cache"])
        if self._url_credentials is not None:  # user:password@ in receiver.url, as curl sends it (headers may override)
            token = base64.b64encode(":".join(self._url_credentials).encode("utf-8")).decode("ascii")
            headers.setRawHeaders(b"Authorization", [f"Basic {token}".encode("ascii")])
        for name, value in self.headers:
            headers.setRawHeaders(name.encode("latin-1"), [value.encode("utf-8")])
        if conn.parser.last_event_id:
            headers.setRawHeaders(b"Last-Event-ID", [conn.parser.last_event_id.encode("utf-8")])
        return headers

    def _connect_timed_out(self, conn: _Connection) -> None:
        conn.timer = None
        conn.timed_out = f"no response within {self.connect_timeout:g}s (connect.timeout)"
        if conn.request is not None:
            conn.request.cancel()

    def _arm_read_timeout(self, conn: _Connection) -> None:
        conn.cancel_timer()
        if self.read_timeout > 0 and conn.receiver is not None and not self.paused:
            conn.timer = self.reactor.callLater(self.read_timeout, self._read_timed_out, conn)

    def _read_timed_out(self, conn: _Connection) -> None:
        conn.timer = None
        conn.timed_out = f"nothing received for {self.read_timeout:g}s (read.timeout)"
        if conn.receiver is not None:
            conn.receiver.close()

    def _server_stop(self, reason: str) -> None:
        self.stopped_reason = reason
        self.log.warn(
            "source {source} ({url}): {reason}; the source stops until the daemon restarts",
            source=self.source_name, url=self.url, reason=reason,
        )
        self._halt()

    # -- data

    def _data(self, conn: _Connection, data: bytes) -> None:
        # Nothing may escape into the HTTP client: it would drop the connection.
        with self.log.failuresHandled(
            "source {source} failed to handle data from {url}", level=LogLevel.error,
            source=self.source_name, url=self.url,
        ) as handled:
            self.counters["bytes_in"] += len(data)
            conn.got_data = True  # the failure count is reset by events only (ReconnectPolicy.failures_after)
            if conn.timer is not None:
                conn.timer.reset(self.read_timeout)
            for item in self._delivering(conn, self._items(conn, data)):
                self._handle(conn, item)
            if conn is self._leader():
                self.last_event_id = conn.parser.last_event_id
        if handled.failed:
            self.counters["internal_errors"] += 1

    def _items(self, conn: _Connection, data: bytes | None) -> list[Message | Rejection]:
        """What the body's bytes hold (``data`` None: the body ended)."""
        if conn.splitter is None:
            return conn.parser.feed(data) if data is not None else conn.parser.close()
        found = conn.splitter.feed(data) if data is not None else conn.splitter.close()
        return [Message(item) if isinstance(item, str) else item for item in found]

    @staticmethod
    def _delivering(conn: _Connection, items: list[Message | Rejection]) -> list[Message | Rejection]:
        """Count the messages among ``items``: a stream that carried one has worked."""
        conn.delivered += sum(isinstance(item, Message) for item in items)
        return items

    def _leader(self) -> _Connection | None:
        """The lowest-numbered connection that is up: the one that delivers messages without ids."""
        return next((c for c in self._connections if c.connected), None)

    def _handle(self, conn: _Connection, item: Message | Rejection) -> None:
        if isinstance(item, Rejection):
            self.rejected[item.reason] += 1
            total = sum(self.rejected.values())
            if should_log(total):
                what = {
                    "line-too-long": f"a line longer than {conn.parser.max_line} characters",
                    "not-json": "text between JSON documents that is not JSON",
                }.get(item.reason, f"{item.size} characters of data")
                self.log.warn(
                    "source {source} ({url}): skipped an event ({reason}: {what}; max.event.size is {limit}); {total} skipped so far",
                    source=self.source_name, url=self.url, reason=item.reason, what=what,
                    limit=self.max_event_size, total=total,
                )
            return
        self.counters["messages"] += 1
        if self.event_types and item.event not in self.event_types:
            self.counters["filtered"] += 1
            return
        if not self._first_delivery(conn, item):
            self.counters["duplicates"] += 1
            return
        try:  # every value is checked here (validate.py, through the mapper): what no sink could write is refused
            values = self.mapper.decode(item.data, self.max_events)
        except MappingError as e:
            self._unmapped(item, e.reason, str(e))
            return
        except Exception as e:  # a mapper bug must not stop the stream, nor write a traceback per message
            if should_log(self.mapping_errors["mapper-error"] + 1):
                self.log.failure("source {source}: the mapper failed", source=self.source_name)
            self._unmapped(item, "mapper-error", f"{type(e).__name__}: {e}")
            return
        now = self.reactor.seconds()
        events = [Event(v, id=item.id or None, type=item.event, ingress=now) for v in values]
        self.log.debug(
            "source {source}: message {id!r} ({event}) -> {count} event(s)",
            source=self.source_name, id=item.id, event=item.event, count=len(events),
        )
        self.counters["events_in"] += len(events)
        self.bus.publish(self.stream, events)

    def _first_delivery(self, conn: _Connection, message: Message) -> bool:
        """With several connections, let each event through once.

        An event with an id of its own passes the first time that id is seen.
        Without an id, copies cannot be told apart, so only the leading
        connection delivers it.
        """
        if self.workers == 1:
            return True
        own_id = bool(message.id) and message.id != conn.previous_id
        conn.previous_id = message.id
        if not own_id:
            return conn is self._leader()
        return self.recent_ids.add(message.id)

    def _unmapped(self, message: Message, reason: str, text: str) -> None:
        self.counters["mapping_errors"] += 1
        self.mapping_errors[reason] += 1
        if should_log(self.counters["mapping_errors"]):
            payload = message.data if len(message.data) <= 200 else message.data[:197] + "..."
            self.log.warn(
                "source {source} ({url}): message {id!r} does not map ({reason}): {error}; payload {payload!r}; {total} so far",
                source=self.source_name, url=self.url, id=message.id, reason=reason, error=text,
                payload=payload, total=self.counters["mapping_errors"],
            )


def _final_url(response: IResponse) -> str | None:
    request = getattr(response, "request", None)
    uri = getattr(request, "absoluteURI", None)
    return uri.decode("utf-8", "replace") if isinstance(uri, bytes) else None
