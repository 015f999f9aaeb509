"""The SSE client on its own: no daemon, no sockets.

Every test drives :class:`EventSource` with treq's ``StubTreq`` (through
:class:`FakeServer`, which pumps each request and write through at once) and
a ``task.Clock`` for its timers, so each step has happened when the call
returns and time moves only when a test advances it.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from sse_daemon.client import EventSource, Handler, Interruption, Opened, ReconnectPolicy, Settings
from sse_daemon.wire.eventstream import Message, Rejection, encode_comment

from .sse_servers import STALL, Canned, FakeServer

pytestmark = pytest.mark.reactor_free

SSE = "text/event-stream"
NO_JITTER = ReconnectPolicy(initial=1.0, maximum=5.0, jitter=lambda: 0.0)


class Recorder(Handler):
    """Keeps every report, in order."""

    def __init__(self) -> None:
        self.reports: list[object] = []

    def opened(self, opened: Opened) -> None:
        self.reports.append(opened)

    def message(self, message: Message) -> None:
        self.reports.append(message)

    def comment(self, text: str) -> None:
        self.reports.append(("comment", text))

    def rejected(self, rejection: Rejection) -> None:
        self.reports.append(rejection)

    def interrupted(self, interruption: Interruption) -> None:
        self.reports.append(interruption)

    def of(self, kind: type) -> list:
        return [r for r in self.reports if isinstance(r, kind)]

    @property
    def data(self) -> list[str]:
        return [m.data for m in self.of(Message)]


def client(server: FakeServer, clock: Clock, handler: Handler | None = None, **settings: object) -> tuple[EventSource, Recorder]:
    recorder = handler if isinstance(handler, Recorder) else Recorder()
    options = {"reconnect": NO_JITTER, **settings}
    source = EventSource(Settings(server.url(), **options), handler or recorder, server.http, clock)  # type: ignore[arg-type]
    source.start()
    return source, recorder


def pending(clock: Clock) -> list[float]:
    """The waits of the timers still set, from now."""
    return [call.getTime() - clock.seconds() for call in clock.getDelayedCalls() if call.active()]


def test_reports_open_comments_and_messages_in_order() -> None:
    server, clock = FakeServer(), Clock()
    source, got = client(server, clock)
    server.write(b": hello\n\nevent: reading\nid: 7\ndata: one\ndata: two\n\n")
    assert got.reports == [
        Opened("http://upstream.test/events", False, ""),
        ("comment", "scripted stream open"),
        ("comment", "hello"),
        Message("one\ntwo", "reading", "7"),
    ]
    assert source.connected and source.last_event_id == "7" and source.counters["streams"] == 1


def test_a_reads_messages_come_at_once_and_in_order_around_comments_and_rejections() -> None:
    """``messages`` gets each run of messages one read completed (a relay publishes each run at once);
    a handler that overrides only ``message`` still hears every one, in order."""

    class Runs(Recorder):
        def messages(self, messages) -> None:  # type: ignore[no-untyped-def]
            self.reports.append([m.data for m in messages])

    server, clock = FakeServer(), Clock()
    source, got = client(server, clock, Runs(), max_event_size=8)
    server.write(b"data: a\n\ndata: b\n\n: note\n\ndata: c\n\ndata: " + b"x" * 20 + b"\n\ndata: d\n\ndata: e\n")
    server.write(b"\ndata: f\n\n")
    assert got.reports[2:] == [["a", "b"], ("comment", "note"), ["c"], Rejection("event-too-large", 20), ["d"], ["e", "f"]]
    plain_server = FakeServer()
    _, plain = client(plain_server, Clock())
    plain_server.write(b"data: a\n\ndata: b\n\n: note\n\ndata: c\n\n")
    assert plain.data == ["a", "b", "c"]


def test_reconnects_after_the_servers_retry_with_last_event_id() -> None:
    server, clock = FakeServer(retry=250), Clock()
    source, got = client(server, clock)
    server.publish("a")
    server.end_streams()
    (ended,) = got.of(Interruption)
    assert ended == Interruption("the server ended the stream", False, 0.25, 0, "1", "ended") and ended.will_reconnect
    assert not source.connected and pending(clock) == [0.25]
    clock.advance(0.249)
    assert len(server.seen) == 1
    clock.advance(0.001)
    assert [s.last_event_id for s in server.seen] == [None, "1"]
    assert source.connected and source.counters["reconnects"] == 1 and source.retry == 250
    server.publish("b")
    assert got.data == ["a", "b"]


def test_failures_back_off_say_why_and_honour_retry_after() -> None:
    server, clock = FakeServer(), Clock()
    server.script.extend([Canned(500, b"data: poison\n\n", SSE), Canned(503, headers=(("Retry-After", "7"),)),
                          Canned(200, b"data: poison\n\n", "text/html"), Canned(404)])
    source, got = client(server, clock)
    delays = []
    for _ in range(4):
        (wait,) = pending(clock)
        delays.append(wait)
        clock.advance(wait)
    assert delays == [1.0, 7.0, 4.0, 5.0]
    reports = got.of(Interruption)
    assert [(r.reason, r.failures, r.kind) for r in reports] == [
        ("the server answered HTTP 500 Internal Server Error", 1, "bad-response"),
        ("the server answered HTTP 503 Service Unavailable (Retry-After: 7s)", 2, "bad-response"),
        ("the server answered HTTP 200 OK with Content-Type 'text/html', not text/event-stream", 3, "bad-response"),
        ("the server answered HTTP 404 Not Found", 4, "bad-response"),
    ]
    assert all(r.failed and r.will_reconnect for r in reports)
    assert source.connected and not got.of(Message), "an error body never reaches the handler"
    server.publish("good")
    server.end_streams()
    assert got.of(Interruption)[-1].reconnect_in == 1.0, "an event resets the failure count"
    assert source.counters["failures"] == 4 and source.counters["bad_responses"] == 4


def test_204_closes_for_good() -> None:
    server, clock = FakeServer(), Clock()
    server.script.append(Canned(204))
    source, got = client(server, clock)
    (closed,) = got.of(Interruption)
    assert not closed.will_reconnect and closed.kind == "closed" and "HTTP 204" in closed.reason
    assert source.closed_reason == closed.reason and not source.running and not pending(clock)


def test_client_errors_close_like_a_browser_when_asked() -> None:
    server, clock = FakeServer(), Clock()
    server.script.extend([Canned(429), Canned(401)])
    source, got = client(server, clock, reconnect_on_client_error=False)
    clock.advance(pending(clock)[0])  # 429 is "slow down", retried
    first, second = got.of(Interruption)
    assert first.will_reconnect and not second.will_reconnect
    assert second.reason == "the server answered HTTP 401 Unauthorized (reconnect.on.client.error is false)"
    assert not source.running and not pending(clock) and len(server.seen) == 2


def test_a_server_that_never_answers_hits_the_connect_timeout() -> None:
    server, clock = FakeServer(), Clock()
    server._render = _hang(server)  # type: ignore[method-assign]
    source, got = client(server, clock, connect_timeout=5)
    clock.advance(4.9)
    assert not got.reports
    clock.advance(0.1)
    (timed_out,) = got.of(Interruption)
    assert (timed_out.reason, timed_out.kind, timed_out.reconnect_in) == \
        ("no response within 5s (connect.timeout)", "connect-timeout", 1.0)


def _hang(server: FakeServer):
    from twisted.web.server import NOT_DONE_YET

    def render(request: object) -> object:
        server.seen.append(None)  # type: ignore[arg-type]
        return NOT_DONE_YET  # no head, ever

    return render


def test_a_silent_stream_is_dropped_after_the_read_timeout_and_comments_keep_it() -> None:
    server, clock = FakeServer(), Clock()
    server.script.append(STALL)
    source, got = client(server, clock, read_timeout=10)
    clock.advance(9.9)
    server.write(encode_comment("heartbeat"))
    clock.advance(9.9)
    assert source.connected and ("comment", "heartbeat") in got.reports
    clock.advance(0.1)
    server.stub.flush()  # the client's close reaches the fake server
    (dropped,) = got.of(Interruption)
    assert (dropped.reason, dropped.kind, dropped.failed) == ("nothing received for 10s (read.timeout)", "read-timeout", True)
    assert not source.connected and source.counters["read_timeouts"] == 1 and not server.streams


def test_paused_streams_have_no_read_timeout_until_resumed() -> None:
    server, clock = FakeServer(), Clock()
    source, got = client(server, clock, read_timeout=10)
    source.pause()
    assert not pending(clock)
    clock.advance(60)
    assert source.connected
    source.resume()
    assert pending(clock) == [10]


def test_stop_closes_at_once_and_says_nothing_more() -> None:
    server, clock = FakeServer(), Clock()
    source, got = client(server, clock)
    done = source.stop()
    server.stub.flush()
    assert done.called and not source.connected and not source.running and not server.streams
    assert not got.of(Interruption) and not pending(clock)
    source.start()  # a stopped client starts again, from where it was
    assert source.connected and len(server.seen) == 2


def test_stopping_in_interrupted_cancels_the_announced_reconnect() -> None:
    server, clock = FakeServer(), Clock()

    class StopOnError(Recorder):
        def interrupted(self, interruption: Interruption) -> None:
            super().interrupted(interruption)
            source.stop()

    handler = StopOnError()
    source = EventSource(Settings(server.url(), reconnect=NO_JITTER), handler, server.http, clock)
    source.start()
    server.end_streams()
    assert len(handler.of(Interruption)) == 1 and not pending(clock) and not source.running


def test_stopping_in_opened_closes_the_stream_before_it_is_read() -> None:
    server, clock = FakeServer(), Clock()

    class StopOnOpen(Recorder):
        def opened(self, opened: Opened) -> None:
            super().opened(opened)
            source.stop()

    handler = StopOnOpen()
    source = EventSource(Settings(server.url(), reconnect=NO_JITTER), handler, server.http, clock)
    source.start()
    server.publish("after the stop")
    assert not source.connected and not server.streams and not source.running
    assert handler.reports == [Opened("http://upstream.test/events", False, "")], "nothing more after stop()"


def test_request_headers_credentials_and_the_initial_last_event_id() -> None:
    server, clock = FakeServer(), Clock()
    url = "http://reader:s%40cret@upstream.test/events?access_token=t"
    with capturedLogs() as logged:
        source = EventSource(Settings(url, headers=(("X-Token", "abc"),), last_event_id="41"), Recorder(), server.http, clock)
        source.start()
    (seen,) = server.seen
    assert seen.headers["authorization"] == "Basic cmVhZGVyOnNAY3JldA=="  # reader:s@cret
    assert seen.headers["x-token"] == "abc" and seen.last_event_id == "41" and seen.headers["accept"] == SSE
    assert source.url == "http://***@upstream.test/events?access_token=***"
    assert "s%40cret" not in repr(logged) and "access_token=t" not in repr(logged)


def test_the_initial_last_event_id_is_resent_after_a_stream_that_carried_no_event() -> None:
    """The stream's opening comment block ends with a blank line: it must not blank the id to resume from."""
    server, clock = FakeServer(), Clock()
    source, got = client(server, clock, last_event_id="41")
    server.end_streams()
    clock.advance(5)
    assert [s.last_event_id for s in server.seen] == ["41", "41"] and source.last_event_id == "41"


def test_oversized_events_are_rejected_and_their_id_still_counts() -> None:
    server, clock = FakeServer(), Clock()
    source, got = client(server, clock, max_event_size=100)
    server.publish("x" * 200)
    server.publish("small")
    assert got.of(Rejection) == [Rejection("line-too-long", 165)] and got.data == ["small"]
    server.end_streams()
    clock.advance(1)
    assert server.seen[-1].last_event_id == "2"


def test_a_failing_handler_neither_drops_the_stream_nor_stops_the_client() -> None:
    server, clock = FakeServer(), Clock()

    class Broken(Recorder):
        def message(self, message: Message) -> None:
            raise RuntimeError("bug")

        def opened(self, opened: Opened) -> None:
            raise RuntimeError("bug")

    with capturedLogs() as logged:
        source, got = client(server, clock, Broken())
        server.publish("a")
        server.publish("b")
    assert source.connected and source.counters["internal_errors"] == 3
    assert sum(1 for e in logged if e.get("log_failure") is not None) == 3


def test_json_documents_mode_takes_any_content_type() -> None:
    server, clock = FakeServer(), Clock()
    server.script.append(Canned(200, b'{"a": 1}[2]{"b"', "application/json"))
    source, got = client(server, clock, json_documents=True)
    assert got.data == ['{"a": 1}', "[2]"]
    assert [json.loads(d) for d in got.data] == [{"a": 1}, [2]]


def test_a_stream_that_ends_before_any_event_is_a_failure() -> None:
    server, clock = FakeServer(retry=0), Clock()
    source, got = client(server, clock)
    server.end_streams()
    (ended,) = got.of(Interruption)
    assert ended.failed and ended.reason == "the stream ended before sending any event (the server ended the stream)"
    assert ended.reconnect_in == 1.0, "retry: 0 does not set the pace of a server that only opens and closes"


def test_settings_are_frozen_and_replaceable() -> None:
    settings = Settings("http://a/")
    assert replace(settings, read_timeout=0).read_timeout == 0 and settings.read_timeout == 60.0
