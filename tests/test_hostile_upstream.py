"""Issue 12, section 8: an upstream that sends absurd ``retry:`` values, opens and closes at once,
or answers errors cannot stop the SSE source, park it, make it spin, or flood the log.

Pure decisions first (vectors), then the same over real sockets on 127.0.0.1 with
:class:`ScriptedServer` as the hostile upstream.
"""

from __future__ import annotations

import base64

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import capturedLogs, formatEvent

from sse_daemon.client import EventSource, Interruption, Settings, http_client
from sse_daemon.compat import MAX_RESPONSE_HEAD
from sse_daemon.connectors.source import SERVER_WAIT_MAX, ReconnectPolicy, Verdict, describe_failure, judge_response, retry_after

from .conftest import deadline, wait_for
from .sse_servers import STALL, Canned, ClockedReactor
from .test_client import Recorder
from .test_source import Harness, harness, next_timer, payload, values  # noqa: F401  (harness is a fixture)

SSE = "text/event-stream"


# --------------------------------------------------------------------------- pure: the clamp and the backoff decision


@pytest.mark.reactor_free
@pytest.mark.parametrize("failures, retry_ms, expected", [
    (0, 250, 0.25),
    (0, 600_000, 600.0),
    (0, 600_001, 600.0),
    (0, 2**31 - 1, 600.0),  # the parser's largest
    (0, 10**20, 600.0),  # 20 digits: was 10^17 s
    (0, 10**400, 600.0),  # 401 digits: was OverflowError, outside the source's handling
    (3, 10**400, 600.0),
    (1, 0, 1.0),  # retry: 0 never shortens a backoff
    (0, -5, 0.0),  # not from the parser, but harmless
])
def test_server_retry_is_clamped_and_never_overflows(failures: int, retry_ms: int, expected: float) -> None:
    policy = ReconnectPolicy(initial=1.0, maximum=30.0, jitter=lambda: 0.0)
    assert policy.delay(failures, retry_ms) == expected
    assert SERVER_WAIT_MAX == 600.0


@pytest.mark.reactor_free
@pytest.mark.parametrize("delivered, lasted, failed", [
    (0, 0.0, True),  # opened and closed at once (retry: 0 and close): a failure
    (0, 29.9, True),  # comments and retry: lines only, for less than reconnect.max.delay
    (0, 30.0, False),  # a quiet stream that lived long (an idle proxy cut it): not a spin
    (1, 0.0, False),  # one event is a stream that worked
    (500, 3.0, False),
])
def test_a_stream_without_events_is_a_failure_unless_it_lived_long(delivered: int, lasted: float, failed: bool) -> None:
    assert ReconnectPolicy(initial=1.0, maximum=30.0).stream_failed(delivered, lasted) is failed


@pytest.mark.reactor_free
@pytest.mark.parametrize("before, failed, delivered, after", [
    (0, True, 0, 1),
    (4, True, 0, 5),  # another failure in a row
    (4, True, 3, 1),  # events, then a read timeout: the row starts again at 1
    (4, False, 3, 0),  # a stream that worked resets the count
    (4, False, 0, 0),  # a long quiet stream too
])
def test_failures_after_an_attempt(before: int, failed: bool, delivered: int, after: int) -> None:
    assert ReconnectPolicy.failures_after(before, failed, delivered) == after


@pytest.mark.reactor_free
@pytest.mark.parametrize("code, content_type, raw, default, browser_like", [
    (200, SSE, False, Verdict.STREAM, Verdict.STREAM),
    (204, None, False, Verdict.STOP, Verdict.STOP),
    (400, SSE, False, Verdict.RETRY, Verdict.STOP),
    (401, "text/plain", False, Verdict.RETRY, Verdict.STOP),
    (403, None, False, Verdict.RETRY, Verdict.STOP),
    (404, "text/html", False, Verdict.RETRY, Verdict.STOP),
    (410, None, False, Verdict.RETRY, Verdict.STOP),
    (429, None, False, Verdict.RETRY, Verdict.RETRY),  # slow down, not go away
    (500, None, False, Verdict.RETRY, Verdict.RETRY),
    (503, None, False, Verdict.RETRY, Verdict.RETRY),
    (200, "text/html", False, Verdict.RETRY, Verdict.STOP),
    (200, None, False, Verdict.RETRY, Verdict.STOP),
    (200, "application/json", True, Verdict.STREAM, Verdict.STREAM),  # sse.format raw takes any type
])
def test_client_errors_stop_the_source_only_when_asked(code, content_type, raw, default, browser_like) -> None:
    assert judge_response(code, "", content_type, raw)[0] is default
    verdict, reason = judge_response(code, "", content_type, raw, reconnect_on_client_error=False)
    assert verdict is browser_like
    if browser_like is Verdict.STOP and code != 204:
        assert "reconnect.on.client.error is false" in reason


@pytest.mark.reactor_free
def test_odd_retry_after_values_and_failure_texts_raise_nothing() -> None:
    assert retry_after("\u00b2", 0.0) is None, "a digit to str.isdigit, no number to float(): was a ValueError"
    assert retry_after("\u0661", 0.0) is None
    assert retry_after("9" * 400, 0.0) == float("inf")  # capped at 600 s where it is used
    text = describe_failure(ValueError("cannot reach http://u:hunter2@h/e?token=t"))
    assert text == "ValueError: cannot reach http://***@h/e?token=***"


# --------------------------------------------------------------------------- over sockets


@pytest.mark.parametrize("digits", [20, 400, 5000])
@pytest_twisted.ensureDeferred
async def test_an_absurd_retry_neither_stops_nor_parks_the_source(harness: Harness, digits: int) -> None:
    """Seen: a 309+ digit ``retry:`` raised OverflowError outside the source's handling and the
    source stopped for good ("connection 0 stopped unexpectedly"); 20 digits parked it for 10^16 s."""
    server = harness.server()
    first = b"retry: " + b"9" * digits + b"\n\n" + b'data: {"param1": "a"}\nid: 1\n\n'
    server.script.append(Canned(200, first, SSE))
    clocked = ClockedReactor()
    with capturedLogs() as logged:
        source, events = harness.source(server.url(), reactor_=clocked)
        await wait_for(lambda: events, what="the event before the absurd retry")
        delay = await next_timer(clocked, source)
        assert delay == SERVER_WAIT_MAX, "the server's wait, clamped"
        clocked.clock.advance(delay)
        await wait_for(lambda: source.connected and len(server.seen) == 2, what="the reconnect after the longest wait")
    server.publish(payload("b"))
    await wait_for(lambda: len(events) == 2, what="event b")
    assert values(events) == ["a", "b"] and server.seen[1].last_event_id == "1"
    assert not [e for e in logged if e.get("log_failure") is not None], "no traceback"
    assert source.running and source.stopped_reason is None


@pytest_twisted.ensureDeferred
async def test_an_upstream_that_sends_only_retry_and_comments_backs_off(harness: Harness) -> None:
    """The failure count used to reset on any byte: ``retry: 0`` or a comment made every
    reconnect immediate. Now only an event resets it."""
    server = harness.server()
    server.script.extend([Canned(200, b"retry: 0\n\n", SSE), Canned(200, b": hello\n\n: still here\n\n", SSE)] * 3)
    clocked = ClockedReactor()
    source, events = harness.source(server.url(), reactor_=clocked, **{"reconnect.initial.delay": 1, "reconnect.max.delay": 5})
    delays = []
    for _ in range(6):
        delays.append(await next_timer(clocked, source))
        clocked.clock.advance(delays[-1])
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    await wait_for(lambda: source.connected, what="the seventh attempt to stream")
    server.publish(payload("a"))
    await wait_for(lambda: events, what="event a")
    server.end_streams()
    assert await next_timer(clocked, source) == 0.0, "an event: a stream that worked, paced by its retry: 0"
    assert source.counters["failures"] == 6


@pytest_twisted.ensureDeferred
async def test_a_quiet_stream_that_lived_long_is_no_failure(harness: Harness) -> None:
    server = harness.server()
    server.script.append(STALL)
    clocked = ClockedReactor()
    source, _ = harness.source(server.url(), reactor_=clocked, **{"reconnect.initial.delay": 1, "reconnect.max.delay": 5,
                                                                  "read.timeout": 0})
    await wait_for(lambda: source.connected and server.streams, what="the quiet stream")
    clocked.clock.advance(5)
    server.end_streams()
    assert await next_timer(clocked, source) == 1.0
    assert source.counters["failures"] == 0


@pytest_twisted.ensureDeferred
async def test_retry_zero_and_close_backs_off_and_the_log_stays_bounded(harness: Harness, log_events) -> None:
    """Seen: an upstream answering ``retry: 0`` and closing at once got 735 requests/s and
    4,000 log lines in 2.7 s. Measured over a 2 s window on the real reactor."""
    server = harness.server()
    server.script.extend([Canned(200, b"retry: 0\n\n", SSE)] * 20_000)  # bounded: more than main reaches in 2 s
    window = 2.0
    source, _ = harness.source(server.url(), **{"reconnect.initial.delay": 0.05, "reconnect.max.delay": 0.5})
    await deferLater(reactor, window, lambda: None)  # the measurement window itself, not a wait for a result
    requests, lines = len(server.seen), len([e for e in log_events if "source" in e])
    await harness.close()
    # backoff 0.025-0.05, 0.05-0.1, ... up to 0.25-0.5 s: about 8 requests in 2 s
    assert 3 <= requests <= 40, f"{requests} requests in {window}s"
    assert lines <= 150, f"{lines} log lines (debug included) for {requests} requests"
    assert source.counters["failures"] >= requests - 1
    assert all("before sending anything" in e["cause"] or "before sending any event" in e["cause"]
               for e in log_events if "cause" in e)


@pytest.mark.parametrize("answer", [Canned(404, b"gone"), Canned(401, b"who?"), Canned(200, b"<html>", "text/html")])
@pytest_twisted.ensureDeferred
async def test_reconnect_on_client_error_false_stops_like_a_browser(harness: Harness, answer: Canned) -> None:
    server = harness.server()
    server.script.append(answer)
    clocked = ClockedReactor()
    with capturedLogs() as logged:
        source, _ = harness.source(server.url(), reactor_=clocked, **{"reconnect.on.client.error": False})
        await wait_for(lambda: source.stopped_reason, what="the source to stop")
    assert "reconnect.on.client.error is false" in source.stopped_reason
    assert any(e.get("reason") == source.stopped_reason for e in logged)
    assert not clocked.clock.getDelayedCalls() and len(server.seen) == 1


@pytest_twisted.ensureDeferred
async def test_reconnect_on_client_error_false_still_retries_429_and_5xx(harness: Harness) -> None:
    server = harness.server()
    server.script.extend([Canned(429), Canned(503), Canned(500)])
    clocked = ClockedReactor()
    source, events = harness.source(server.url(), reactor_=clocked, **{"reconnect.on.client.error": False,
                                                                       "reconnect.initial.delay": 1})
    for _ in range(3):
        clocked.clock.advance(await next_timer(clocked, source))
    await wait_for(lambda: source.connected, what="the fourth attempt to stream")
    assert source.stopped_reason is None and source.counters["failures"] == 3


@pytest_twisted.ensureDeferred
async def test_credentials_in_the_url_are_sent_as_basic_and_never_logged(harness: Harness, log_events) -> None:
    """``user:password@`` in receiver.url is sent as ``Authorization: Basic`` (as curl does),
    not as part of the host name (on main: a DNS lookup of 'user:hunter2@127.0.0.1', logged)."""
    server = harness.server()
    server.script.append(Canned(503))
    url = server.url().replace("://", "://feed%40user:hunter2@") + "?access_token=tok-123456&n=1"
    source, events = harness.source(url, **{"reconnect.initial.delay": 0.02, "reconnect.max.delay": 0.1})
    await wait_for(lambda: source.connected, what="the stream after a 503")
    server.publish(payload("a"))
    await wait_for(lambda: events, what="event a")
    sent = server.seen[-1].headers
    assert sent["authorization"] == "Basic " + base64.b64encode(b"feed@user:hunter2").decode()
    server.drop()
    await wait_for(lambda: len(server.seen) == 3 and source.connected, what="the reconnect")
    text = "\n".join(formatEvent(e) or "" for e in log_events) + repr(log_events)
    assert "hunter2" not in text and "tok-123456" not in text and "feed%40user" not in text
    shown = f"http://***@127.0.0.1:{server.port_number}/events?access_token=***&n=1"
    assert source.url == shown
    messages = [formatEvent(e) for e in log_events if e.get("source") == "Src"]
    for words in ("subscribing to", "HTTP 503", "connected to", "stream ended"):
        assert any(words in m and shown in m for m in messages), words


class _EndlessHead(Protocol):
    """An upstream that answers a status line and then header lines, never the blank line that ends
    the head, up to ``CAP`` bytes, written as the client reads them (a push producer's pace)."""

    CAP = 16 * 1024 * 1024
    LINE = b"X-Pad: " + b"a" * 1000 + b"\r\n"

    def __init__(self) -> None:
        self.sent = 0
        self.paused = False
        self.closed: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.sent < self.CAP and self.transport.connected:
            self.transport.write(self.LINE * 64)
            self.sent += len(self.LINE) * 64

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.paused = True

    def connectionLost(self, reason: object = None) -> None:
        self.closed.callback(None)


@pytest_twisted.ensureDeferred
async def test_a_response_head_that_never_ends_is_given_up_past_its_bound() -> None:
    """Seen: twisted.web's client kept every header line of a head without end (8 MiB of them read,
    the connection still open) until the connect timeout; an upstream chose how much it held."""
    upstream: list[_EndlessHead] = []

    def build(addr: object) -> _EndlessHead:
        upstream.append(_EndlessHead())
        return upstream[-1]

    factory = Factory()
    factory.buildProtocol = build  # type: ignore[method-assign]
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    got = Recorder()
    source = EventSource(Settings(f"http://127.0.0.1:{port.getHost().port}/", connect_timeout=0), got, http_client(reactor), reactor)
    try:
        source.start()
        (interruption,) = await wait_for(lambda: got.of(Interruption), timeout=10, what="the head given up")
        assert f"the response head is over {MAX_RESPONSE_HEAD} bytes" in interruption.reason
        assert interruption.kind == "no-response" and interruption.will_reconnect
        await deadline(upstream[0].closed, 10)
        assert upstream[0].sent < _EndlessHead.CAP, "the client cut the connection, not the upstream"
    finally:
        await source.stop()
        await port.stopListening()
