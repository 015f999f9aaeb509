"""An ``EventSource`` for Twisted programs: one connection to an SSE endpoint, kept open.

It does what a browser's ``EventSource`` does (WHATWG HTML, "9.2 Server-sent
events"): it sends ``Accept: text/event-stream`` and, on every reconnect,
``Last-Event-ID``; it waits the server's ``retry:`` after a stream that worked;
a 204 closes it for good. Unlike a browser it retries failures (error
statuses, wrong Content-Type, refused connections, timeouts) with an
exponential backoff, unless told to give up on client errors; and it honours
``Retry-After`` on 429 and 503.

The caller hears of everything through an :class:`EventSourceHandler`:
``opened``, ``message``, ``comment``, ``rejected`` (an event over the size
limit) and ``interrupted`` (each with why, whether and when it reconnects).
Every collaborator is passed in: an HTTP client (treq's ``HTTPClient``, or
``StubTreq`` in tests) and a clock for the timers (the reactor, or a
``task.Clock``). The decisions themselves are pure (:mod:`.decisions`).
"""

from __future__ import annotations

import base64
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger, LogLevel
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from sse_daemon.client.body import BodyReceiver, Discard
from sse_daemon.client.decisions import ReconnectPolicy, Verdict, judge_response, reconnect_delay, retry_after, RETRY_AFTER_MAX
from sse_daemon.client.failures import describe_failure
from sse_daemon.client.http import HttpGet
from sse_daemon.policy.limits import excerpt, should_log
from sse_daemon.policy.redact import redact_url, split_userinfo
from sse_daemon.wire.eventstream import Comment, EventStreamParser, Item, Message, Rejection
from sse_daemon.wire.jsondocs import JsonDocumentSplitter

__all__ = ["EventSource", "EventSourceHandler", "Handler", "Interruption", "Opened", "Settings"]

#: a parser line may hold a whole event plus its field name
LINE_SLACK = 64


@dataclass(frozen=True, slots=True)
class Settings:
    """What an :class:`EventSource` connects to and how it behaves; times in seconds, 0 turns a timeout off."""

    url: str  # may hold ``user:password@``: sent as Basic credentials, never shown
    headers: tuple[tuple[str, str], ...] = ()  # sent on every request (after the defaults: they may override)
    last_event_id: str = ""  # the first request's Last-Event-ID (resume from there)
    connect_timeout: float = 30.0  # from the request to the response head
    read_timeout: float = 60.0  # silence on an open stream (comments count) before it is dropped
    reconnect: ReconnectPolicy = field(default_factory=ReconnectPolicy)
    reconnect_on_client_error: bool = True  # False: a 4xx (not 429) or a non-stream 200 closes for good, as in a browser
    max_event_size: int = 1 << 20  # characters of data; a larger event is skipped and reported as rejected
    json_documents: bool = False  # the body is back-to-back JSON documents, each one a message (any Content-Type)
    label: str = ""  # names this client in its own log lines (default: "event source <url>")

    def __post_init__(self) -> None:
        scheme = self.url.partition(":")[0].lower() if "://" in self.url else ""
        if scheme not in ("http", "https"):
            raise ValueError(f"Settings.url must be an http:// or https:// URL, got {redact_url(self.url)!r}")
        for name in ("connect_timeout", "read_timeout"):
            value = getattr(self, name)
            if not value >= 0 or value == float("inf"):  # NaN fails >= too
                raise ValueError(f"Settings.{name} must be a number of seconds >= 0 (0: no limit), got {value!r}")
        if self.max_event_size < 1:
            raise ValueError(f"Settings.max_event_size must be at least 1 character, got {self.max_event_size!r}")


@dataclass(frozen=True, slots=True)
class Opened:
    """A stream is open: a 200 with ``text/event-stream`` arrived."""

    url: str  # where the stream came from (after redirects), credentials masked
    redirected: bool
    last_event_id: str  # what the request sent ("" for none)


@dataclass(frozen=True, slots=True)
class Interruption:
    """A connection attempt or a stream ended.

    ``failed`` tells a failure (no stream, a timeout, a stream that ended before
    any event) from a stream that worked and ended; ``reconnect_in`` is the
    wait before the next attempt, or None when the client has closed for good
    (a 204, or a client error when it does not reconnect on those).
    """

    reason: str
    failed: bool
    reconnect_in: float | None
    failures: int  # failures in a row, this one included
    last_event_id: str  # what the next request will send
    kind: str  # "no-response", "connect-timeout", "bad-response", "read-timeout", "ended", "closed", "internal"

    @property
    def will_reconnect(self) -> bool:
        return self.reconnect_in is not None


class EventSourceHandler(Protocol):
    """What an :class:`EventSource` tells its caller; each call happens on the reactor thread."""

    def opened(self, opened: Opened) -> None: ...

    def messages(self, messages: Sequence[Message]) -> None:
        """The messages one read of the stream completed, in order (a fast stream's read holds many)."""

    def comment(self, text: str) -> None: ...

    def rejected(self, rejection: Rejection) -> None: ...

    def interrupted(self, interruption: Interruption) -> None: ...


class Handler:
    """An :class:`EventSourceHandler` that ignores everything: subclass it and override what you need."""

    def opened(self, opened: Opened) -> None:
        pass

    def messages(self, messages: Sequence[Message]) -> None:
        """Each to :meth:`message`: override this one to take a read's messages at once."""
        for message in messages:
            self.message(message)

    def message(self, message: Message) -> None:
        pass

    def comment(self, text: str) -> None:
        pass

    def rejected(self, rejection: Rejection) -> None:
        pass

    def interrupted(self, interruption: Interruption) -> None:
        pass


@dataclass(slots=True)
class _Outcome:
    kind: str = "ended"
    stop: bool = False
    failure: str | None = None  # set when the attempt counts as a failure
    ended: str | None = None  # why a good stream ended
    retry_after: float | None = None  # seconds a 429 or 503 asked to wait (Retry-After)
    delivered: int = 0  # messages the stream carried


class EventSource:
    """Keeps one stream to ``settings.url`` open, reconnecting as the standard says.

    ``start()`` begins; ``stop()`` closes at once (no further calls to the
    handler) and fires when everything is closed; calling ``stop()`` from
    ``interrupted`` cancels the reconnect it announced. A stopped client may be
    started again: it keeps its Last-Event-ID and the server's ``retry:``.

    Figures: ``connected``, ``last_event_id``, ``retry`` (ms, from the server),
    ``failures`` (in a row), ``closed_reason`` and ``counters`` (``attempts``,
    ``streams``, ``reconnects``, ``failures``, ``bad_responses``,
    ``read_timeouts``, ``bytes_in``, ``internal_errors``).
    """

    log = Logger()

    def __init__(self, settings: Settings, handler: EventSourceHandler, http: HttpGet, clock: IReactorTime) -> None:
        self.settings = settings
        self.handler = handler
        #: a Handler that did not override ``messages``: its ``message`` is called here, one guarded call each
        self._one_by_one = type(handler).messages is Handler.messages
        self._http = http
        self._clock = clock
        self._request_url, self._credentials = split_userinfo(settings.url)
        #: the URL as shown in logs and reports: credentials and secret parameters masked
        self.url = redact_url(settings.url)
        self.label = settings.label or f"event source {self.url}"
        self.policy = settings.reconnect
        size = settings.max_event_size
        self.parser = EventStreamParser(max_line=size + LINE_SLACK, max_event=size, comments=True)
        self.parser.last_event_id = settings.last_event_id
        self._splitter = JsonDocumentSplitter(size) if settings.json_documents else None

        self.counters: Counter[str] = Counter()
        self.failures = 0
        self.last_error: str | None = None
        self.closed_reason: str | None = None  # set when the server (or a client error) closed it for good
        self.connected = False
        self.paused = False
        self._halted = True
        self._run_id = 0  # which start() the running loop belongs to: one stopped and started again ends its old loop
        self._loop: Deferred[None] | None = None
        self._request: Deferred | None = None
        self._waiting: Deferred | None = None
        self._receiver: BodyReceiver | None = None
        self._timer: IDelayedCall | None = None  # connect timeout, then read timeout
        self._timed_out: str | None = None
        self._delivered = 0

    # -- figures

    @property
    def last_event_id(self) -> str:
        return self.parser.last_event_id

    @last_event_id.setter
    def last_event_id(self, value: str) -> None:
        """Resume from ``value`` on the next request (a cursor saved elsewhere)."""
        self.parser.last_event_id = value

    @property
    def retry(self) -> int | None:
        """The server's ``retry:`` in milliseconds, or None if it sent none."""
        return self.parser.retry

    @property
    def running(self) -> bool:
        return not self._halted

    # -- lifecycle

    def start(self) -> None:
        """Connect, and keep connecting until stopped (or closed for good by the server)."""
        if not self._halted:
            return
        self._halted = False
        self.closed_reason = None
        self._run_id += 1
        self._loop = Deferred.fromCoroutine(self._run(self._run_id, self._loop))
        self._loop.addErrback(lambda f: self.log.failure("{label} stopped unexpectedly", f, label=self.label))

    def stop(self) -> Deferred[None]:
        """Close the stream, cancel any request or pending reconnect; fires once all is closed."""
        self._halted = True
        self._cancel_timer()
        if self._waiting is not None:
            self._waiting.cancel()
        if self._request is not None:
            self._request.cancel()
        if self._receiver is not None:
            self._receiver.close()
        loop = self._loop
        return succeed(None) if loop is None or loop.called else _when_done(loop)

    def pause(self) -> None:
        """Stop reading (backpressure): the server's writes queue in TCP buffers, not here.
        The read timeout is off meanwhile: a paused stream is silent by our choice."""
        self.paused = True
        if self._receiver is not None:
            self._receiver.pause()
            self._cancel_timer()

    def resume(self) -> None:
        self.paused = False
        if self._receiver is not None:
            self._receiver.resume()
            self._arm_read_timeout()

    # -- one attempt after another

    def _stopped(self, run: int) -> bool:
        """Whether the loop of ``run`` must end: stop() was called (and maybe start() again since)."""
        return self._halted or run != self._run_id

    async def _run(self, run: int, previous: Deferred[None] | None) -> None:
        if previous is not None and not previous.called:
            await _when_done(previous)  # started again before the old loop was done: it shares our state
        while not self._stopped(run):
            try:
                outcome = await self._attempt(run)
            except Exception:
                # A bug must not leave the client dead: log it and treat it as a failure.
                self.log.failure("{label} failed unexpectedly", label=self.label)
                outcome = _Outcome(kind="internal", failure="internal error (see the traceback above)")
            if self._stopped(run):
                break
            if outcome.stop:
                self._halted = True
                self.closed_reason = outcome.failure or "stopped by the server"
                self._tell(self.handler.interrupted, Interruption(self.closed_reason, True, None, self.failures,
                                                       self.last_event_id, "closed"))
                break
            try:
                delay = self._count(outcome)
            except Exception:  # nothing an upstream sends may end this loop: wait the longest and go on
                self.log.failure("{label}: choosing the reconnect delay failed", label=self.label)
                delay = self.policy.maximum
            failed = outcome.failure is not None
            self._tell(self.handler.interrupted, Interruption(
                (outcome.failure if failed else outcome.ended) or "closed", failed, delay, self.failures,
                self.last_event_id, outcome.kind,
            ))
            if self._stopped(run):  # the handler stopped us
                break
            self._waiting = deferLater(self._clock, delay, lambda: None)
            try:
                await self._waiting
            except CancelledError:
                break
            finally:
                self._waiting = None
            self.counters["reconnects"] += 1

    def _count(self, outcome: _Outcome) -> float:
        """Count the attempt (policy.failures_after) and pick the wait."""
        self.failures = self.policy.failures_after(self.failures, outcome.failure is not None, outcome.delivered)
        if outcome.failure is not None:
            self.last_error = outcome.failure
            self.counters["failures"] += 1
        return reconnect_delay(self.policy, self.failures, self.parser.retry, outcome.retry_after)

    async def _attempt(self, run: int) -> _Outcome:
        self._delivered = 0
        self._timed_out = None
        got_data = [False]
        headers = self._request_headers()
        self.counters["attempts"] += 1
        self.log.debug("{label} requesting {url} (Last-Event-ID {last_event_id!r})",
                       label=self.label, url=self.url, last_event_id=excerpt(self.last_event_id))
        request = self._http.get(self._request_url, headers=headers, unbuffered=True, allow_redirects=False)
        self._request = request
        if self.settings.connect_timeout > 0:
            self._timer = self._clock.callLater(self.settings.connect_timeout, self._connect_timed_out)
        try:
            response: IResponse = await request
        except CancelledError:
            if self._stopped(run):
                return _Outcome()
            return _Outcome(kind="connect-timeout", failure=self._timed_out or "request cancelled")
        except Exception as e:
            if self._stopped(run):
                return _Outcome()
            if self._timed_out:
                return _Outcome(kind="connect-timeout", failure=self._timed_out)
            return _Outcome(kind="no-response", failure=describe_failure(e))
        finally:
            self._request = None
            self._cancel_timer()

        content_type = response.headers.getRawHeaders(b"content-type", [None])[0]
        phrase = response.phrase.decode("latin-1", "replace") if isinstance(response.phrase, bytes) else str(response.phrase)
        verdict, reason = judge_response(
            response.code, phrase, content_type.decode("latin-1", "replace") if content_type else None,
            self.settings.json_documents, self.settings.reconnect_on_client_error,
        )
        if verdict is not Verdict.STREAM:
            response.deliverBody(Discard())
            self.counters["bad_responses"] += 1
            wait = None
            if response.code in (429, 503):
                header = response.headers.getRawHeaders(b"retry-after", [None])[0]
                wait = retry_after(header.decode("latin-1", "replace") if header else None, self._clock.seconds())
                if wait is not None:
                    reason += f" (Retry-After: {wait:g}s{'' if wait <= RETRY_AFTER_MAX else f', capped at {RETRY_AFTER_MAX:g}s'})"
            return _Outcome(kind="bad-response", stop=verdict is Verdict.STOP, failure=reason, retry_after=wait)

        def data(chunk: bytes) -> None:
            got_data[0] = True  # the failure count is reset by events only (ReconnectPolicy.failures_after)
            self._data(chunk)

        receiver = BodyReceiver(data)
        receiver.paused = self.paused
        self._receiver = receiver
        self.connected = True
        self.counters["streams"] += 1
        opened = self._clock.seconds()
        final_url = _final_url(response)
        redirected = final_url not in (None, self._request_url)
        self._tell(self.handler.opened, Opened(redact_url(final_url) if redirected and final_url else self.url, redirected,
                                    self.last_event_id))
        receiver.receive(response)
        self._arm_read_timeout()
        try:
            await receiver.done
        finally:
            self.connected = False
            self._receiver = None
            self._cancel_timer()
        self._dispatch(self._items(None))  # drops an unfinished event, resets for the next stream
        delivered = self._delivered
        if self._stopped(run):
            return _Outcome()
        if self._timed_out:
            self.counters["read_timeouts"] += 1
            return _Outcome(kind="read-timeout", failure=self._timed_out, delivered=delivered)
        cause = describe_failure(receiver.reason) if receiver.reason is not None else "closed"
        if self.policy.stream_failed(delivered, self._clock.seconds() - opened):
            # whatever its retry: said: a server that only opens and closes must not set the pace
            what = "any event" if got_data[0] else "anything"
            return _Outcome(failure=f"the stream ended before sending {what} ({cause})")
        return _Outcome(ended=cause, delivered=delivered)

    def _request_headers(self) -> Headers:
        headers = Headers()
        headers.setRawHeaders(b"Accept", [b"text/event-stream"])
        headers.setRawHeaders(b"Cache-Control", [b"no-cache"])
        if self._credentials is not None:  # user:password@ in the URL, as curl sends it (headers may override)
            token = base64.b64encode(":".join(self._credentials).encode("utf-8")).decode("ascii")
            headers.setRawHeaders(b"Authorization", [f"Basic {token}".encode("ascii")])
        for name, value in self.settings.headers:
            headers.setRawHeaders(name.encode("latin-1"), [value.encode("utf-8")])
        if self.last_event_id:
            headers.setRawHeaders(b"Last-Event-ID", [self.last_event_id.encode("utf-8")])
        return headers

    # -- timers

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _connect_timed_out(self) -> None:
        self._timer = None
        self._timed_out = f"no response within {self.settings.connect_timeout:g}s (connect.timeout)"
        if self._request is not None:
            self._request.cancel()

    def _arm_read_timeout(self) -> None:
        self._cancel_timer()
        if self.settings.read_timeout > 0 and self._receiver is not None and not self.paused:
            self._timer = self._clock.callLater(self.settings.read_timeout, self._read_timed_out)

    def _read_timed_out(self) -> None:
        self._timer = None
        self._timed_out = f"nothing received for {self.settings.read_timeout:g}s (read.timeout)"
        if self._receiver is not None:
            self._receiver.close()

    # -- data

    def _data(self, data: bytes) -> None:
        # Nothing may escape into the HTTP client: it would drop the connection. (A plain try: this runs for
        # every read, and failuresHandled's context manager is a generator's cost each time.)
        try:
            self.counters["bytes_in"] += len(data)
            if self._timer is not None:
                self._timer.reset(self.settings.read_timeout)
            self._dispatch(self._items(data))
        except Exception:
            self.log.failure("{label} failed to handle data from {url}", level=LogLevel.error, label=self.label, url=self.url)
            self.counters["internal_errors"] += 1

    def _items(self, data: bytes | None) -> list[Item]:
        """What the body's bytes hold (``data`` None: the body ended)."""
        if self._splitter is None:
            return self.parser.feed(data) if data is not None else self.parser.close()
        found = self._splitter.feed(data) if data is not None else self._splitter.close()
        return [Message(item) if isinstance(item, str) else item for item in found]

    def _dispatch(self, items: list[Item]) -> None:
        run: list[Message] = []  # messages in a row: handed over at once
        for item in items:
            if isinstance(item, Message):
                run.append(item)
                continue
            if run:
                self._messages(run)
                run = []
            if self._halted:  # a handler called stop(): nothing more, as a browser's close()
                return
            if isinstance(item, Comment):
                self._call(self.handler.comment, item.text)
            else:
                self._call(self.handler.rejected, item)
        if run:
            self._messages(run)

    def _messages(self, messages: list[Message]) -> None:
        if self._halted:
            return
        self._delivered += len(messages)  # a stream that carried one has worked
        if not self._one_by_one:
            self._call(self.handler.messages, messages)
            return
        for message in messages:  # Handler.messages, with each message guarded: one failing loses no other
            if self._halted:
                return
            self._call(self.handler.message, message)  # type: ignore[attr-defined]

    def _call(self, call: Callable[[Any], None], argument: object) -> None:
        """A handler's ``messages``, ``message``, ``comment`` or ``rejected``: a failure is counted and
        logged (sampled: a handler failing on every event must not flood the log), never the end of
        the other items of the read, of the stream or of the client."""
        try:
            call(argument)
        except Exception:
            self.counters["internal_errors"] += 1
            if should_log(self.counters["internal_errors"]):
                self.log.failure("{label}: the handler failed ({errors} times so far)", level=LogLevel.error,
                                 label=self.label, errors=self.counters["internal_errors"])

    def _tell(self, call: Callable[[Any], None], report: Opened | Interruption) -> None:
        """``opened`` or ``interrupted``: a failing handler is logged, never the end of the client."""
        with self.log.failuresHandled("{label}: the handler failed on {report!r}", label=self.label, report=report) as handled:
            call(report)
        if handled.failed:
            self.counters["internal_errors"] += 1


def _when_done(loop: Deferred[None]) -> Deferred[None]:
    """A Deferred that fires (with None, never failing) when ``loop`` has, leaving ``loop`` as it is."""
    done: Deferred[None] = Deferred()

    def fire(result: object) -> object:
        done.callback(None)
        return result

    loop.addBoth(fire)
    return done


def _final_url(response: IResponse) -> str | None:
    request = getattr(response, "request", None)
    uri = getattr(request, "absoluteURI", None)
    return uri.decode("utf-8", "replace") if isinstance(uri, bytes) else None
