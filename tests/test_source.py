"""The SSE source: pure reconnect decisions, then the adapter over a fake server or real sockets.

Tests whose point is the source's own behaviour run against :class:`FakeServer`
(``StubTreq``, no sockets); those whose point is the socket (a server that goes
away, refused ports, DNS, TLS, reads split across TCP segments, redirects, real
servers) use 127.0.0.1. Timing is checked on a ``task.Clock`` (through
:class:`ClockedReactor`); the other tests use small real delays and wait for
results with ``wait_for``, never with sleeps. The client alone is tested in
``test_client.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest
import pytest_twisted
from OpenSSL import SSL
from twisted.internet import defer, error as net_error, protocol, reactor, threads
from twisted.internet.ssl import Certificate
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.web import error as web_error
from twisted.web.client import BrowserLikePolicyForHTTPS, ResponseFailed, ResponseNeverReceived

from sse_daemon.bus.memory import MemoryBus
from sse_daemon.config.errors import ConfigError
from sse_daemon.config.model import ConnectorDef
from sse_daemon.config.validate import validate
from sse_daemon.config.yamlfile import load_yaml
from sse_daemon.mapping.mappers import make_mapper
from sse_daemon.events.schema import Event, parse_schema
from sse_daemon.connectors import source as source_module
from sse_daemon.connectors.ingeststream import BEHIND_RETRY
from sse_daemon.connectors.source import (
    BodyReceiver,
    RecentIds,
    ReconnectPolicy,
    SseSourceService,
    Verdict,
    describe_failure,
    judge_response,
)
from sse_daemon.client import http_client
from sse_daemon.policy.connections import Stopping
from sse_daemon.wire.eventstream import encode_comment, encode_event

from .conftest import deadline, raw_request, wait_for
from .sse_servers import STALL, Canned, ClockedReactor, FakeResolver, FakeServer, ScriptedServer, ServerTLS, self_signed

REPO = Path(__file__).resolve().parent.parent
FAST = {"reconnect.initial.delay": 0.02, "reconnect.max.delay": 0.1}


def payload(text: str) -> str:
    return json.dumps({"param1": text}, ensure_ascii=False)


def source_def(url: str, **options: Any) -> ConnectorDef:
    entry = {"type": "sse", "schema": "param1 string", "receiver.url": url, **options}
    text = json.dumps({"sources": {"Src": entry}})  # JSON is YAML
    return validate(load_yaml(text, "test.yaml")).sources[0]


class Harness:
    """Starts sources and servers for a test and stops them all afterwards."""

    def __init__(self) -> None:
        self.sources: list[SseSourceService] = []
        self.servers: list[ScriptedServer] = []

    def server(self, *, start: bool = True, **kwargs: Any) -> ScriptedServer:
        """A server on a real socket (127.0.0.1, port 0): for tests where the socket is the point."""
        server = ScriptedServer(**kwargs)
        if start:
            server.start()
        self.servers.append(server)
        return server

    def fake(self, **kwargs: Any) -> FakeServer:
        """The same server without sockets (StubTreq): give ``http=server.http`` to the source."""
        server = FakeServer(**kwargs)
        self.servers.append(server)
        return server

    def source(self, url: str, *, reactor_: Any = reactor, jitter: Callable[[], float] = lambda: 0.0,
               tls_policy: Any = None, http: Any = None, stopping: Stopping | None = None,
               **options: Any) -> tuple[SseSourceService, list[Event]]:
        connector = source_def(url, **options)
        bus = MemoryBus()
        events: list[Event] = []
        bus.subscribe("Src", events.extend)
        mapper = make_mapper(connector.options.mapping, parse_schema("param1 string"))
        if http is None:
            http = http_client(reactor, tls_policy)  # real sockets; timers on reactor_ (a ClockedReactor's Clock)
        service = SseSourceService(connector, mapper, bus, reactor_, http, jitter=jitter, stopping=stopping)
        service.startService()
        self.sources.append(service)
        return service, events

    async def close(self) -> None:
        for source in self.sources:
            if source.running:
                stopped = defer.maybeDeferred(source.stopService)
                for server in self.servers:
                    if isinstance(server, FakeServer):
                        server.stub.flush()  # the source's close reaches a fake server
                await deadline(stopped)
        for server in self.servers:
            await server.stop()


@pytest.fixture
def harness():
    h = Harness()
    yield h
    pytest_twisted.blockon(deadline(defer.ensureDeferred(h.close())))


def values(events: list[Event]) -> list[str]:
    return [e.values["param1"] for e in events]


def causes(logged: list[dict]) -> list[str]:
    return [e["cause"] for e in logged if "cause" in e]


async def next_timer(clock_reactor: ClockedReactor, source: SseSourceService) -> float:
    """Wait until the source is between attempts; return the delay it chose."""
    clock = clock_reactor.clock
    await wait_for(lambda: not source.connected and any(c.active() for c in clock.getDelayedCalls())
                   and all(c.client._request is None and c.client._receiver is None for c in source._connections),
                   what="a reconnect timer")
    (call,) = [c for c in clock.getDelayedCalls() if c.active()]
    return call.getTime() - clock.seconds()


# --------------------------------------------------------------------------- pure decisions


@pytest.mark.reactor_free
def test_backoff_doubles_up_to_the_cap_and_jitter_takes_off_at_most_half() -> None:
    policy = ReconnectPolicy(initial=1.0, maximum=30.0, jitter=lambda: 0.0)
    assert [policy.delay(n, None) for n in range(0, 8)] == [1.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert policy.delay(10_000, None) == 30.0  # no overflow
    almost_one = ReconnectPolicy(initial=1.0, maximum=30.0, jitter=lambda: 0.999999)
    assert [round(almost_one.delay(n, None), 3) for n in (1, 2, 6)] == [0.5, 1.0, 15.0]
    assert almost_one.delay(0, None) == 1.0  # a stream that worked and ended: no jitter


@pytest.mark.reactor_free
def test_server_retry_sets_the_pace_and_is_the_backoff_floor() -> None:
    policy = ReconnectPolicy(initial=1.0, maximum=30.0, jitter=lambda: 0.0)
    assert policy.delay(0, 250) == 0.25  # the stream ended: wait exactly retry
    assert policy.delay(1, 250) == 1.0  # failures back off from the larger of initial and retry
    assert policy.delay(1, 5000) == 5.0
    assert policy.delay(3, 5000) == 20.0
    assert policy.delay(9, 45_000) == 45.0  # the server asked for longer than our cap: it wins
    spin = ReconnectPolicy(initial=0.01, maximum=1.0, jitter=lambda: 0.0)
    assert spin.delay(0, 0) == 0.0 and spin.delay(1, 0) == 0.01  # retry: 0 cannot make failures spin


@pytest.mark.reactor_free
@pytest.mark.parametrize(
    "code, content_type, verdict, words",
    [
        (200, "text/event-stream", Verdict.STREAM, "HTTP 200"),
        (200, "Text/Event-Stream; charset=utf-8", Verdict.STREAM, "HTTP 200"),
        (200, "text/html", Verdict.RETRY, "Content-Type 'text/html', not text/event-stream"),
        (200, None, Verdict.RETRY, "without a Content-Type"),
        (204, None, Verdict.STOP, "asks clients to stop"),
        (201, "text/event-stream", Verdict.RETRY, "HTTP 201"),
        (404, "text/event-stream", Verdict.RETRY, "HTTP 404 Not Found"),
        (500, "text/plain", Verdict.RETRY, "HTTP 500 Internal Server Error"),
        (503, None, Verdict.RETRY, "HTTP 503"),
    ],
)
def test_what_a_response_head_means(code: int, content_type: str | None, verdict: Verdict, words: str) -> None:
    phrase = {404: "Not Found", 500: "Internal Server Error"}.get(code, "")
    found, reason = judge_response(code, phrase, content_type)
    assert found is verdict
    assert words in reason


@pytest.mark.reactor_free
def test_failures_are_described_with_their_cause() -> None:
    tls = SSL.Error([("SSL routines", "", "certificate verify failed")])
    assert describe_failure(net_error.ConnectionRefusedError()) == "connection refused"
    assert describe_failure(Failure(net_error.DNSLookupError("no results for hostname lookup: x.test"))) == \
        "DNS lookup failed: no results for hostname lookup: x.test"
    assert describe_failure(ResponseNeverReceived([Failure(tls)])) == "no response: TLS error: certificate verify failed"
    loop = ResponseFailed([Failure(web_error.InfiniteRedirection(b"307", b"loop", location=b"http://a/loop"))])
    assert describe_failure(loop) == "the response failed: more than 10 redirects (last to http://a/loop)"
    assert describe_failure(ResponseFailed([Failure(net_error.ConnectionLost())])) == "the response failed: connection lost"
    assert describe_failure(ValueError("odd")) == "ValueError: odd"


@pytest.mark.reactor_free
def test_recent_ids_are_bounded() -> None:
    ids = RecentIds(size=3)
    assert [ids.add(x) for x in "abca"] == [True, True, True, False]
    assert ids.add("d") and "a" not in ids and len(ids) == 3
    assert ids.add("a")  # forgotten, so new again


@pytest.mark.reactor_free
def test_source_options_defaults_and_checks() -> None:
    src = source_def("https://example.org/sse")
    assert (src.options.worker_count, src.options.event_types, src.options.reconnect_initial_delay, src.options.reconnect_max_delay,
            src.options.connect_timeout, src.options.read_timeout, src.options.max_event_size) == (1, (), 1.0, 30.0, 30.0, 60.0, 4 << 20)
    assert source_def("http://a/", **{"worker.count": "3"}).options.worker_count == 3
    assert source_def("http://a/", **{"event.types": "a, b"}).options.event_types == ("a", "b")
    assert source_def("http://a/", **{"event.types": ["a"]}).options.event_types == ("a",)
    with pytest.raises(ConfigError, match=r"'worker.count': expected an integer from 1 to 16, found 0"):
        source_def("http://a/", **{"worker.count": 0})
    with pytest.raises(ConfigError, match=r"'reconnect.initial.delay': expected a number of at least 0.01"):
        source_def("http://a/", **{"reconnect.initial.delay": 0})
    with pytest.raises(ConfigError, match=r"sink 'S': option 'worker.count': expected an integer from 1 to 64, found 65"):
        validate(load_yaml("sinks:\n  S: {type: sse-server, schema: 'a string', server.port: 1, worker.count: 65}\n", "t.yaml"))


class _FakeTransport:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Callable[[], None]:
        return lambda: self.calls.append(name)


@pytest.mark.reactor_free
def test_body_receiver_keeps_the_transport_to_pause_and_close() -> None:
    got: list[bytes] = []
    receiver = BodyReceiver(got.append)
    receiver.paused = True  # paused before the body starts: the transport starts paused
    transport = _FakeTransport()
    receiver.makeConnection(transport)
    receiver.dataReceived(b"abc")
    receiver.resume()
    receiver.pause()
    receiver.close()
    assert transport.calls == ["pauseProducing", "resumeProducing", "pauseProducing", "stopProducing"]
    receiver.connectionLost(Failure(net_error.ConnectionDone()))
    assert got == [b"abc"] and receiver.done.called and receiver.transport is None
    receiver.close()  # after the end: harmless


@pytest_twisted.ensureDeferred
async def test_a_reads_messages_are_published_at_once_and_one_that_does_not_map_leaves_the_others_be(harness: Harness) -> None:
    """A relay publishes what one read of the upstream holds in one publish (the sink's steps run once
    for all of it); a message that does not map is counted and left out, alone, and order is kept."""
    server = harness.fake()
    source, events = harness.source(server.url(), http=server.http)
    calls: list[list[str]] = []
    source.bus.subscribe("Src", lambda published: calls.append(values(list(published))))
    await wait_for(lambda: source.connected, what="connection")
    good = [encode_event(payload(text), id=str(n)) for n, text in enumerate("abcd", start=1)]
    server.write(good[0] + good[1] + encode_event("not json", id="x") + good[2] + encode_comment("tick") + good[3])
    await wait_for(lambda: len(events) == 4, what="four events")
    assert calls == [["a", "b", "c"], ["d"]], "one publish for each run of messages in the read"
    assert [e.id for e in events] == ["1", "2", "3", "4"] and source.mapping_errors["invalid-json"] == 1


# --------------------------------------------------------------------------- timing, on a Clock


@pytest_twisted.ensureDeferred
async def test_retry_field_sets_the_reconnect_delay(harness: Harness) -> None:
    server = harness.fake(retry=250)
    clocked = ClockedReactor()
    source, events = harness.source(server.url(), http=server.http, reactor_=clocked)
    await wait_for(lambda: source.connected, what="connection")
    server.publish(payload("a"))
    await wait_for(lambda: len(events) == 1, what="event a")
    server.end_streams()
    assert await next_timer(clocked, source) == 0.25
    clocked.clock.advance(0.249)
    assert source.counters["attempts"] == 1 and source.reconnects == 0
    clocked.clock.advance(0.001)
    assert source.counters["attempts"] == 2 and source.reconnects == 1
    await wait_for(lambda: len(server.seen) == 2 and source.connected, what="the reconnect")
    assert server.seen[1].last_event_id == "1"
    server.publish(payload("b"))
    await wait_for(lambda: len(events) == 2, what="event b")
    assert values(events) == ["a", "b"] and source.counters["failures"] == 0


@pytest_twisted.ensureDeferred
async def test_repeated_failures_back_off_exponentially_then_reset(harness: Harness) -> None:
    server = harness.fake()
    server.script.extend([Canned(500, b"oops"), Canned(503), Canned(404), Canned(502)])
    clocked = ClockedReactor()
    source, events = harness.source(
        server.url(), http=server.http, reactor_=clocked, **{"reconnect.initial.delay": 1, "reconnect.max.delay": 5}
    )
    delays = []
    for _ in range(4):
        delays.append(await next_timer(clocked, source))
        clocked.clock.advance(delays[-1])
    assert delays == [1.0, 2.0, 4.0, 5.0]
    await wait_for(lambda: source.connected, what="the fifth attempt to stream")
    server.publish(payload("a"))
    await wait_for(lambda: len(events) == 1, what="event a")
    server.end_streams()
    assert await next_timer(clocked, source) == 1.0  # data arrived: the failure count was reset
    assert source.counters["failures"] == 4 and source.counters["bad_responses"] == 4


@pytest_twisted.ensureDeferred
async def test_retry_after_on_429_and_503_is_honoured(harness: Harness) -> None:
    """A server that says when to come back (our own sink's limits do) is not asked again before."""
    server = harness.fake()
    server.script.extend([Canned(503, headers=(("Retry-After", "7"),)), Canned(429, headers=(("Retry-After", "3"),)),
                          Canned(500, headers=(("Retry-After", "60"),))])
    clocked = ClockedReactor()
    with capturedLogs() as logged:
        source, events = harness.source(server.url(), http=server.http, reactor_=clocked, **{"reconnect.initial.delay": 1, "reconnect.max.delay": 5})
        delays = []
        for _ in range(3):
            delays.append(await next_timer(clocked, source))
            clocked.clock.advance(delays[-1])
    assert delays == [7.0, 3.0, 4.0], "503 and 429 wait as asked (above the backoff); a 500's Retry-After is not a promise"
    assert "the server answered HTTP 503 Service Unavailable (Retry-After: 7s)" in causes(logged)
    await wait_for(lambda: source.connected, what="the fourth attempt to stream")


@pytest.mark.reactor_free
def test_retry_after_values() -> None:
    from sse_daemon.connectors.source import retry_after

    now = 1445412475.0  # Wed, 21 Oct 2015 07:27:55 GMT
    assert retry_after("120", now) == 120.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now) == 5.0
    assert retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now) == 0.0  # already past
    for bad in (None, "", "soon", "1.5", "-3", "Wed, 21 Oct 2015 07:28:00"):
        assert retry_after(bad, now) is None, bad


@pytest_twisted.ensureDeferred
async def test_silent_stream_is_dropped_after_read_timeout_and_heartbeats_keep_it(harness: Harness) -> None:
    server = harness.fake()
    server.script.append(STALL)  # the head, then nothing at all
    clocked = ClockedReactor()
    source, events = harness.source(server.url(), http=server.http, reactor_=clocked, **{"read.timeout": 10})
    await wait_for(lambda: source.connected, what="connection")
    clocked.clock.advance(9.9)
    server.write(encode_comment("heartbeat"))
    await wait_for(lambda: source.counters["bytes_in"] > 0, what="the heartbeat")
    clocked.clock.advance(9.9)  # 19.8 s after connecting, 9.9 s after the heartbeat
    assert source.connected
    with capturedLogs() as logged:
        clocked.clock.advance(0.1)
        server.stub.flush()  # the source's close reaches the fake server
        await wait_for(lambda: not source.connected, what="the drop")
        delay = await next_timer(clocked, source)
    assert "nothing received for 10s (read.timeout)" in causes(logged)
    assert source.counters["read_timeouts"] == 1
    assert not server.streams, "the server saw the connection close"
    clocked.clock.advance(delay)
    await wait_for(lambda: source.connected, what="the reconnect")
    server.publish(payload("a"))
    await wait_for(lambda: len(events) == 1, what="event a")


@pytest_twisted.ensureDeferred
async def test_pause_stops_the_read_timeout_until_resumed(harness: Harness) -> None:
    """Paused on purpose is not a stall. (StubTreq does not pause its body: that reading stops is checked over real
    sockets: test_a_stream_opened_while_reading_is_held_stays_unread.)"""
    server = harness.fake()
    clocked = ClockedReactor()
    source, events = harness.source(server.url(), http=server.http, reactor_=clocked, **{"read.timeout": 10})
    await wait_for(lambda: source.connected and server.streams, what="a stream")
    source.pause()
    assert not any(c.active() for c in clocked.clock.getDelayedCalls())  # paused on purpose: not a stall
    clocked.clock.advance(60)
    assert source.connected
    server.publish(payload("held"))
    source.resume()
    assert [c.getTime() for c in clocked.clock.getDelayedCalls() if c.active()] == [70.0]
    await wait_for(lambda: len(events) == 1, what="the event held while paused")
    assert values(events) == ["held"]


async def sleep_turns(turns: int) -> None:
    """Let the real reactor run ``turns`` times (what a held connection would have read by then, it would have)."""
    for _ in range(turns):
        waiting: defer.Deferred = defer.Deferred()
        reactor.callLater(0, waiting.callback, None)
        await waiting


def slow_acknowledging_source(harness: Harness, server: ScriptedServer, clocked: ClockedReactor,
                              behind: Callable[[str, int], float | None] | None = None) -> tuple[SseSourceService, list]:
    """A source over a real socket whose bus acknowledges each event only when the test fires its
    Deferred (a history file, Redis); its timers on ``clocked``'s Clock."""
    connector = source_def(server.url())
    bus = MemoryBus()
    waiting: list[tuple[Event, defer.Deferred]] = []

    def acknowledged_later(events: Sequence[Event]) -> defer.Deferred:
        acknowledged: defer.Deferred = defer.Deferred()
        waiting.extend((event, acknowledged) for event in events)  # one message, one event here
        return acknowledged

    bus.subscribe("Src", acknowledged_later)
    mapper = make_mapper(connector.options.mapping, parse_schema("param1 string"))
    service = SseSourceService(connector, mapper, bus, clocked, http_client(reactor), jitter=lambda: 0.0, behind=behind)
    service.startService()
    harness.sources.append(service)
    return service, waiting


@pytest_twisted.ensureDeferred
async def test_reading_is_held_while_too_many_events_await_acknowledgement(harness: Harness, monkeypatch) -> None:
    monkeypatch.setattr(source_module, "MAX_UNSETTLED", 4)
    server = harness.server()
    source, waiting = slow_acknowledging_source(harness, server, ClockedReactor())
    await wait_for(lambda: source.connected and server.streams, what="a stream")
    for n in range(5):
        server.publish(payload(f"e{n}"))
    await wait_for(lambda: len(waiting) == 5, what="five events read")
    assert source._holds == {"acknowledgements"}, "more than 4 unacknowledged: the upstream is not read"
    for n in range(5, 8):
        server.publish(payload(f"e{n}"))
    await sleep_turns(20)  # bytes on their way would be read within a few turns; none are
    assert len(waiting) == 5, "held: what the upstream sends waits in TCP buffers"
    for _, acknowledged in waiting[:2]:  # 3 left: more than half the bound
        acknowledged.callback(None)
    assert source._holds == {"acknowledgements"}
    for _, acknowledged in waiting[2:4]:  # 1 left: read again
        acknowledged.callback(None)
    assert not source._holds
    await wait_for(lambda: len(waiting) == 8, what="the held events read once acknowledgements caught up")
    assert [event.values["param1"] for event, _ in waiting] == [f"e{n}" for n in range(8)]
    for _, acknowledged in waiting[4:]:
        acknowledged.callback(None)
    assert source._unsettled == 0 and source.counters["reading_held"] == 1


@pytest_twisted.ensureDeferred
async def test_a_stream_opened_while_reading_is_held_stays_unread(harness: Harness, monkeypatch) -> None:
    """twisted.web resumes a body's transport once its protocol is connected: a hold that began
    before the stream (it outlived the last one: a lease's restart, a stream that ended) must pause
    it again, or the new stream is read on without bound while the source counts itself held."""
    monkeypatch.setattr(source_module, "MAX_UNSETTLED", 2)
    server = harness.server()
    clocked = ClockedReactor()
    source, waiting = slow_acknowledging_source(harness, server, clocked)
    await wait_for(lambda: source.connected and server.streams, what="a stream")
    for n in range(3):
        server.publish(payload(f"e{n}"))
    await wait_for(lambda: len(waiting) == 3 and source._holds == {"acknowledgements"}, what="the hold")
    await deadline(source.stopService())  # the acknowledgements are still awaited: the hold stays
    source.startService()
    await wait_for(lambda: source.connected and server.streams, what="a stream opened while held")
    for n in range(3, 6):
        server.publish(payload(f"e{n}"))
    await sleep_turns(20)
    assert len(waiting) == 3, "held: the new stream's bytes wait in TCP buffers"
    for _, acknowledged in waiting:
        acknowledged.callback(None)
    assert not source._holds
    await wait_for(lambda: len(waiting) == 6, what="the new stream's events once released")
    for _, acknowledged in waiting[3:]:
        acknowledged.callback(None)


@pytest_twisted.ensureDeferred
async def test_reading_is_held_while_a_shared_buss_fanout_is_behind(harness: Harness) -> None:
    lag: list[float] = [3.0]
    server = harness.server()
    clocked = ClockedReactor()
    source, waiting = slow_acknowledging_source(harness, server, clocked, behind=lambda stream, incoming: lag[0] or None)
    await wait_for(lambda: source.connected and server.streams, what="a stream")
    server.publish(payload("first"))
    await wait_for(lambda: len(waiting) == 1, what="the first event")
    assert source._holds == {"fan-out"}
    server.publish(payload("second"))
    clocked.clock.advance(BEHIND_RETRY)  # looked at again: still behind
    await sleep_turns(20)
    assert source._holds == {"fan-out"} and len(waiting) == 1
    lag[0] = 0.0
    clocked.clock.advance(BEHIND_RETRY)
    assert not source._holds
    await wait_for(lambda: len(waiting) == 2, what="the second event, once the fan-out caught up")
    for _, acknowledged in waiting:
        acknowledged.callback(None)
    assert source.counters["events_in"] == 2


@pytest_twisted.ensureDeferred
async def test_a_source_stopped_while_held_for_the_fanout_reads_again_when_restarted(harness: Harness) -> None:
    """A leased source is stopped and started as its lease comes and goes: no hold may outlive a stop."""
    lag: list[float] = [3.0]
    server = harness.server()
    source, waiting = slow_acknowledging_source(harness, server, ClockedReactor(), behind=lambda stream, incoming: lag[0] or None)
    await wait_for(lambda: source.connected and server.streams, what="a stream")
    server.publish(payload("first"))
    await wait_for(lambda: len(waiting) == 1, what="the first event")
    assert source._holds == {"fan-out"}
    await deadline(source.stopService())
    assert not source._holds, "a stale hold would keep its next holds from pausing anything"
    lag[0] = 0.0
    source.startService()
    await wait_for(lambda: source.connected and server.streams, what="a stream again")
    server.publish(payload("second"))
    await wait_for(lambda: len(waiting) == 2, what="the second event, read after the restart")
    for _, acknowledged in waiting:
        acknowledged.callback(None)


@pytest_twisted.ensureDeferred
async def test_server_that_never_answers_hits_the_connect_timeout(harness: Harness) -> None:
    accepted: list[protocol.Protocol] = []
    lost: list[protocol.Protocol] = []

    class Mute(protocol.Protocol):
        def connectionMade(self) -> None:
            accepted.append(self)

        def connectionLost(self, reason: Any = None) -> None:
            lost.append(self)

    factory = protocol.Factory.forProtocol(Mute)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        clocked = ClockedReactor()
        source, _ = harness.source(f"http://127.0.0.1:{port.getHost().port}/", reactor_=clocked,
                                   **{"connect.timeout": 5})
        await wait_for(lambda: accepted, what="the TCP connection")
        with capturedLogs() as logged:
            clocked.clock.advance(5)
            await next_timer(clocked, source)
        assert "no response within 5s (connect.timeout)" in causes(logged)
        await wait_for(lambda: lost, what="the server to see the request abandoned")
        await deadline(defer.maybeDeferred(source.stopService))
        assert not clocked.clock.getDelayedCalls()
    finally:
        await deadline(defer.maybeDeferred(port.stopListening))


@pytest_twisted.ensureDeferred
async def test_204_stops_the_source_for_good(harness: Harness) -> None:
    server = harness.server()
    server.script.append(Canned(204, content_type=None))
    clocked = ClockedReactor()
    source, _ = harness.source(server.url(), reactor_=clocked)
    with capturedLogs() as logged:
        await wait_for(lambda: source.stopped_reason, what="the source to stop")
    assert "HTTP 204" in source.stopped_reason
    assert any(e.get("reason") == source.stopped_reason for e in logged)
    assert not clocked.clock.getDelayedCalls() and not source.connected
    await wait_for(lambda: not server.channels, what="the connection to close")
    assert len(server.seen) == 1


@pytest_twisted.ensureDeferred
async def test_stop_cancels_a_pending_reconnect_and_closes_streams_at_once(harness: Harness) -> None:
    server = harness.server()
    server.script.append(Canned(500))
    clocked = ClockedReactor()
    waiting, _ = harness.source(server.url(), reactor_=clocked)
    await next_timer(clocked, waiting)
    await deadline(defer.maybeDeferred(waiting.stopService))
    assert not clocked.clock.getDelayedCalls()

    streaming, _ = harness.source(server.url(), reactor_=clocked)
    await wait_for(lambda: streaming.connected and server.streams, what="a stream")
    await deadline(defer.maybeDeferred(streaming.stopService))
    assert not streaming.connected and not clocked.clock.getDelayedCalls()
    await wait_for(lambda: not server.streams, what="the server to see the stream end")


# --------------------------------------------------------------------------- real servers


@pytest_twisted.ensureDeferred
async def test_reads_this_projects_sink_and_resumes_from_its_history(daemon) -> None:
    upstream = await daemon("""\
        streams:
          Readings: "param1 string"
        sources:
          Publish:
            type: http
            stream: Readings
            receiver.url: http://127.0.0.1:0/publish
        sinks:
          Out:
            type: sse-server
            stream: Readings
            server.host: 127.0.0.1
            server.port: 0
            server.path: events
        """)
    port = upstream.port_of("Out")
    downstream = await daemon(f"""\
        sources:
          Src:
            type: sse
            schema: "param1 string"
            receiver.url: http://127.0.0.1:{port}/events
            reconnect.initial.delay: 0.02
        sinks:
          Shown:
            type: log
            stream: Src
        """)
    source = downstream.sources["Src"]
    assert isinstance(source, SseSourceService)
    events: list[Event] = []
    downstream.bus.subscribe("Src", events.extend)
    await wait_for(lambda: source.connected, what="the source to connect to the sink")

    async def post(text: str) -> None:
        body = payload(text).encode()
        client = await raw_request(port, b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                   b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        assert b" 200 " in await client.wait_for(b'"accepted": 1')
        await client.close()

    await post("one")
    await post("two")
    await wait_for(lambda: len(events) == 2, what="two events")
    sink = upstream.sinks["Out"].sink
    sink.close_all()  # the sink ends every stream; the source must resume from its history
    await post("three")  # published while the source is away (or not yet back)
    await wait_for(lambda: len(events) == 3 and source.connected, what="the resumed stream")
    await post("four")
    await wait_for(lambda: len(events) == 4, what="event four")
    assert values(events) == ["one", "two", "three", "four"]
    sink_ids = [event_id for event_id, _ in sink.history._entries]
    assert [e.id for e in events] == [str(i) for i in sink_ids]
    assert source.last_event_id == str(sink_ids[-1]) and source.reconnects >= 1
    assert sink.counters["events_replayed"] <= 1


@pytest_twisted.ensureDeferred
async def test_reads_sse_starlette_under_uvicorn_and_resumes_each_time_it_ends(harness: Harness) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.sse_servers", "starlette"], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        first = await deadline(threads.deferToThread(server.stdout.readline))
        assert first.startswith("PORT "), first
        source, events = harness.source(f"http://127.0.0.1:{int(first.split()[1])}/events?count=3")
        await wait_for(lambda: len(events) >= 9, what="nine events over three streams")
    finally:
        await harness.close()  # our connections first, so uvicorn has none to wait for
        server.terminate()
        try:
            output, _ = await deadline(threads.deferToThread(server.communicate, timeout=20))
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    nine = events[:9]
    assert values(nine) == [f"s{n}" for n in range(1, 10)]
    assert [e.id for e in nine] == [str(n) for n in range(1, 10)] and {e.type for e in nine} == {"reading"}
    last_ids = [line.split()[1] for line in output.splitlines() if line.startswith("LAST-EVENT-ID")]
    assert last_ids[:3] == ["-", "3", "6"], output
    assert source.counters["failures"] == 0 and source.reconnects >= 2


@pytest_twisted.ensureDeferred
async def test_resumes_after_the_server_drops_the_connection(harness: Harness) -> None:
    server = harness.server()
    source, events = harness.source(server.url(), **FAST)
    for text in "abc":
        server.publish(payload(text))
    await wait_for(lambda: len(events) == 3, what="three events")
    server.drop()
    server.publish(payload("d"))  # nobody is connected: only the server's history has these
    server.publish(payload("e"))
    await wait_for(lambda: len(events) == 5, what="the events sent while away")
    server.publish(payload("f"))
    await wait_for(lambda: len(events) == 6, what="event f")
    assert values(events) == list("abcdef") and [e.id for e in events] == ["1", "2", "3", "4", "5", "6"]
    assert [s.last_event_id for s in server.seen] == [None, "3"]
    assert source.reconnects == 1 and source.last_event_id == "6"


@pytest_twisted.ensureDeferred
async def test_resumes_after_the_server_restarts(harness: Harness) -> None:
    server = harness.server()
    source, events = harness.source(server.url(), **FAST)
    for text in "abc":
        server.publish(payload(text))
    await wait_for(lambda: len(events) == 3, what="three events")
    with capturedLogs() as logged:
        await server.stop()
        server.publish(payload("d"))
        server.publish(payload("e"))
        await wait_for(lambda: source.counters["failures"] >= 2, what="refused reconnects")
        server.start()  # same port, same history
        await wait_for(lambda: len(events) == 5, what="the events from while it was down")
    assert "connection refused" in causes(logged)
    server.publish(payload("f"))
    await wait_for(lambda: len(events) == 6, what="event f")
    assert values(events) == list("abcdef") and [e.id for e in events] == ["1", "2", "3", "4", "5", "6"]
    assert server.seen[-1].last_event_id == "3" and not source.rejected


@pytest_twisted.ensureDeferred
async def test_error_answers_never_reach_the_mapper_and_the_source_recovers(harness: Harness) -> None:
    poison = b"data: " + payload("poison").encode() + b"\n\n"
    server = harness.fake()
    server.script.extend([
        Canned(404, poison, "text/event-stream"),
        Canned(500, poison, "text/event-stream"),
        Canned(200, poison, "text/html"),
        Canned(200, poison, "application/json"),
    ])
    with capturedLogs() as logged:
        source, events = harness.source(server.url(), http=server.http, **FAST)
        await wait_for(lambda: source.connected, what="the fifth attempt to stream")
    server.publish(payload("good"))
    await wait_for(lambda: len(events) == 1, what="the good event")
    assert values(events) == ["good"] and source.counters["messages"] == 1
    found = causes(logged)
    assert found[0] == "the server answered HTTP 404 Not Found"
    assert found[1] == "the server answered HTTP 500 Internal Server Error"
    assert "Content-Type 'text/html', not text/event-stream" in found[2]
    assert "Content-Type 'application/json'" in found[3]
    assert source.counters["failures"] == 4 and source.stopped_reason is None


@pytest_twisted.ensureDeferred
async def test_refused_port_is_retried_until_a_server_appears(harness: Harness) -> None:
    probe = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
    free = probe.getHost().port
    await deadline(defer.maybeDeferred(probe.stopListening))
    source, events = harness.source(f"http://127.0.0.1:{free}/events", **FAST)
    await wait_for(lambda: source.counters["failures"] >= 3, what="refused attempts")
    assert not source.connected and source.running
    server = harness.server(start=False)
    server.start(free)
    server.publish(payload("late"))
    await wait_for(lambda: len(events) == 1, what="the event once the server is up")
    assert values(events) == ["late"]


@pytest_twisted.ensureDeferred
async def test_dns_failure_is_retried_until_the_name_resolves(harness: Harness) -> None:
    server = harness.server()
    resolver = FakeResolver()
    previous = reactor.installNameResolver(resolver)
    try:
        with capturedLogs() as logged:
            source, events = harness.source(f"http://sse.test:{server.port_number}/events", **FAST)
            await wait_for(lambda: source.counters["failures"] >= 2, what="failed lookups")
        assert "DNS lookup failed: no results for hostname lookup: sse.test" in causes(logged)
        resolver.table["sse.test"] = "127.0.0.1"
        server.publish(payload("found"))
        await wait_for(lambda: len(events) == 1, what="the event once the name resolves")
    finally:
        reactor.installNameResolver(previous)
    assert values(events) == ["found"] and server.seen[-1].headers["host"] == f"sse.test:{server.port_number}"


@pytest_twisted.ensureDeferred
async def test_https_with_an_untrusted_certificate_is_a_logged_failure_and_a_trusted_one_streams(harness: Harness) -> None:
    cert, key = self_signed()
    server = harness.server(start=False)
    server.start(tls=ServerTLS(cert, key))
    server.publish(payload("secret"))
    with capturedLogs() as logged:
        untrusted, nothing = harness.source(server.url(), **FAST)
        await wait_for(lambda: untrusted.counters["failures"] >= 2, what="TLS failures")
    assert any("TLS error" in c and "certificate verify failed" in c for c in causes(logged)), causes(logged)
    trusted, events = harness.source(
        server.url(), tls_policy=BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(cert)), **FAST
    )
    await wait_for(lambda: len(events) == 1, what="the event over https")
    assert values(events) == ["secret"] and not nothing and untrusted.running


@pytest_twisted.ensureDeferred
async def test_one_mib_payload_in_small_writes_arrives_whole(harness: Harness) -> None:
    server = harness.server()
    source, events = harness.source(server.url())
    await wait_for(lambda: source.connected and server.streams, what="a stream")
    text = ("0123456789abcdé\n" * (1 << 16))[: (1 << 20) - 20]  # multi-byte characters get split too
    frame = encode_event(payload(text), id="big")
    assert len(frame) > 1 << 20
    await server.write_slowly(frame, piece=4093)
    server.publish(payload("after"))
    await wait_for(lambda: len(events) == 2, what="the big event and the next one")
    assert events[0].values["param1"] == text and events[0].id == "big"
    assert values(events)[1] == "after" and not source.rejected and source.counters["mapping_errors"] == 0


@pytest_twisted.ensureDeferred
async def test_bad_payloads_are_counted_while_good_ones_flow(harness: Harness) -> None:
    server = harness.fake()
    source, events = harness.source(server.url(), http=server.http, **{"max.event.size": 1000})
    await wait_for(lambda: source.connected and server.streams, what="a stream")
    with capturedLogs() as logged:
        server.publish(payload("a"))
        server.publish("{not json")
        server.publish(json.dumps({"param1": [1]}))
        server.publish(json.dumps({"other": "x"}))
        server.publish(payload("x" * 2000))  # one line over the limit
        server.publish(payload("y" * 600) + "\n" + "z" * 600)  # an event over the limit, line by line
        server.publish(json.dumps([{"param1": "b"}, {"param1": "c"}]))
        await wait_for(lambda: len(events) == 3, what="the good events")
    assert values(events) == ["a", "b", "c"] and events[1].id == events[2].id == "7"
    assert dict(source.mapping_errors) == {"invalid-json": 1, "wrong-type": 1, "missing-attribute": 1}
    assert dict(source.rejected) == {"line-too-long": 1, "event-too-large": 1}
    assert source.counters["messages"] == 5 and source.counters["events_in"] == 3 and source.connected
    reasons = {e.get("reason") for e in logged}
    assert {"invalid-json", "wrong-type", "missing-attribute", "line-too-long", "event-too-large"} <= reasons


@pytest_twisted.ensureDeferred
async def test_redirects_are_followed_and_a_loop_is_a_retried_failure(harness: Harness) -> None:
    server = harness.server()
    server.publish(payload("moved"))
    source, events = harness.source(server.url("/moved"), **FAST)
    await wait_for(lambda: len(events) == 1, what="the event behind two redirects")
    assert [s.path for s in server.seen] == ["/moved", "/redirect", "/events"]
    with capturedLogs() as logged:
        looping, _ = harness.source(server.url("/loop"), **FAST)
        await wait_for(lambda: looping.counters["failures"] >= 2, what="redirect loops")
    assert any("more than 10 redirects" in c for c in causes(logged))
    assert looping.running and values(events) == ["moved"]


@pytest_twisted.ensureDeferred
async def test_event_types_keeps_only_the_listed_types(harness: Harness) -> None:
    server = harness.fake()
    source, events = harness.source(server.url(), http=server.http, **{"event.types": "reading, alarm"})
    server.publish(payload("r"), event="reading")
    server.publish(payload("m"))
    server.publish(payload("o"), event="other")
    server.publish(payload("a"), event="alarm")
    await wait_for(lambda: len(events) == 2, what="the two wanted events")
    assert [(e.values["param1"], e.type) for e in events] == [("r", "reading"), ("a", "alarm")]
    assert source.counters["filtered"] == 2 and source.counters["messages"] == 4


@pytest_twisted.ensureDeferred
async def test_request_headers(harness: Harness) -> None:
    server = harness.fake()
    source, events = harness.source(server.url(), http=server.http, headers="'X-Token:abc','Accept-Language:fr'", **FAST)
    server.publish(payload("a"))
    await wait_for(lambda: len(events) == 1, what="event a")
    server.drop()
    await wait_for(lambda: len(server.seen) == 2, what="the reconnect")
    first, second = server.seen
    assert first.headers["accept"] == "text/event-stream" and first.headers["cache-control"] == "no-cache"
    assert first.headers["x-token"] == "abc" and first.headers["accept-language"] == "fr"
    assert first.last_event_id is None and second.last_event_id == "1"


@pytest_twisted.ensureDeferred
async def test_two_connections_deliver_each_event_once_and_cover_for_each_other(harness: Harness) -> None:
    server = harness.fake()
    source, events = harness.source(server.url(), http=server.http, **{"worker.count": 2}, **FAST)
    await wait_for(lambda: source.connections_up == 2 and len(server.streams) == 2, what="two connections")
    for text in "abc":
        server.publish(payload(text))
    await wait_for(lambda: source.counters["messages"] == 6, what="both connections to get a, b, c")
    assert values(events) == list("abc") and source.counters["duplicates"] == 3
    server.streams[0].transport.abortConnection()  # one connection drops...
    server.stub.flush()
    server.publish(payload("d"))  # ...the other delivers meanwhile
    server.publish(payload("e"))
    await wait_for(lambda: source.connections_up == 2 and source.counters["messages"] == 10,
                   what="the dropped connection to come back and replay d, e")
    assert values(events) == list("abcde") and source.counters["duplicates"] == 5
    assert [s.last_event_id for s in server.seen[2:]] == ["3"]
    server.publish(payload("no id"), id=None)  # copies cannot be told apart: only one connection delivers
    await wait_for(lambda: source.counters["messages"] == 12, what="the id-less event on both")
    assert values(events) == list("abcde") + ["no id"] and source.reconnects == 1


@pytest_twisted.ensureDeferred
async def test_an_oversized_event_is_not_asked_for_again_on_reconnect(harness: Harness) -> None:
    """The refused event's id still counts: the reconnect resumes after it, so the server
    does not resend it to be refused on every reconnect."""
    server = harness.fake()
    source, events = harness.source(server.url(), http=server.http, **{"max.event.size": 1000, **FAST})
    await wait_for(lambda: source.connected and server.streams, what="a stream")
    server.publish(payload("a"))
    refused = server.publish(payload("x" * 2000))
    await wait_for(lambda: source.rejected["line-too-long"] == 1, what="the oversized event refused")
    server.end_streams()
    await wait_for(lambda: len(server.seen) == 2 and source.connected, what="the reconnect")
    assert server.seen[1].last_event_id == refused
    server.publish(payload("b"))
    await wait_for(lambda: len(events) == 2, what="event b")
    assert values(events) == ["a", "b"] and source.rejected["line-too-long"] == 1, "refused once, not again"


@pytest_twisted.ensureDeferred
async def test_a_stream_ended_by_the_daemons_own_shutdown_is_not_reconnected(harness: Harness) -> None:
    """Seen on SIGTERM: the drain closes the sink this source reads, and the log said
    "stream ended ...; reconnecting in 2.41s" just before "source ... stopped"."""
    server = harness.fake(retry=2410)
    stopping = Stopping()
    clocked = ClockedReactor()
    with capturedLogs() as logged:
        source, events = harness.source(server.url(), http=server.http, reactor_=clocked, stopping=stopping)
        server.publish(payload("a"))
        stopping.begin()  # the daemon's shutdown has begun: its drain closes streams
        server.end_streams()
        await deadline(defer.maybeDeferred(source.stopService))
    text = [formatEvent(e) for e in logged]
    assert not [line for line in text if "reconnecting in" in line or "retrying in" in line], text
    assert text[-1] == "source Src stopped" and values(events) == ["a"]
    assert not clocked.clock.getDelayedCalls() and len(server.seen) == 1


@pytest_twisted.ensureDeferred
async def test_before_shutdown_an_ended_stream_is_reconnected_and_said_so(harness: Harness) -> None:
    server = harness.fake(retry=2410)
    clocked = ClockedReactor()
    with capturedLogs() as logged:
        source, events = harness.source(server.url(), http=server.http, reactor_=clocked, stopping=Stopping())
        server.publish(payload("a"))
        server.end_streams()
        delay = await next_timer(clocked, source)
    assert delay == 2.41
    assert any("stream ended" in formatEvent(e) and "reconnecting in 2.41s" in formatEvent(e) for e in logged)


@pytest_twisted.ensureDeferred
async def test_a_bug_past_the_mapper_is_counted_logged_sampled_and_the_stream_goes_on(harness) -> None:
    """The source's own safety net (a bus that raises instead of failing its Deferred): counted as an
    internal error, its traceback logged for the first ones only, and the next message still taken."""
    server = harness.server()
    source, events = harness.source(server.url())
    await wait_for(lambda: source.connected and server.streams, what="a stream")
    real_publish = source.bus.publish
    calls = []

    def broken(stream: str, batch: list) -> Any:
        calls.append(batch)
        if len(calls) <= 30:
            raise RuntimeError("bug in the bus")
        return real_publish(stream, batch)

    source.bus.publish = broken  # type: ignore[method-assign]
    with capturedLogs() as logged:
        for n in range(31):
            server.publish(payload(f"m{n}"))
        await wait_for(lambda: len(events) == 1, what="the message after the failing ones")
    assert values(events) == ["m30"] and source.connected
    assert source.counters["internal_errors"] == 30
    tracebacks = [e for e in logged if e.get("log_failure") is not None]
    assert 0 < len(tracebacks) < 30, "sampled, not one per message"


def _wedge(server: ScriptedServer) -> None:
    """The server's side stops reading, as a wedged upstream (or one whose host froze) does: it
    answers nothing more, a TLS close_notify included."""
    for request in server.streams:
        request.transport.pauseProducing()


@pytest_twisted.ensureDeferred
async def test_a_wedged_https_upstream_is_dropped_by_the_read_timeout_and_reconnected(harness: Harness) -> None:
    """Dropping a stream cannot wait for the peer's TLS close_notify: a silent peer sends none."""
    cert, key = self_signed()
    server = harness.server(start=False)
    server.start(tls=ServerTLS(cert, key))
    source, events = harness.source(
        server.url(), tls_policy=BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(cert)),
        **FAST, **{"read.timeout": 0.2},
    )
    await wait_for(lambda: source.connected and server.streams, what="a stream over https")
    server.publish(payload("one"))
    await wait_for(lambda: len(events) == 1, what="the first event")
    _wedge(server)
    await wait_for(lambda: source.counters["read_timeouts"] == 1, what="the read timeout")
    await wait_for(lambda: len(server.seen) == 2, what="a new request after the read timeout")
    assert server.seen[-1].last_event_id == "1"


@pytest_twisted.ensureDeferred
async def test_a_held_https_stream_closes_at_once_on_stop(harness: Harness) -> None:
    """A held stream is not read, so a TLS close_notify from the peer would never be seen."""
    cert, key = self_signed()
    server = harness.server(start=False)
    server.start(tls=ServerTLS(cert, key))
    source, events = harness.source(
        server.url(), tls_policy=BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(cert)), **FAST,
    )
    await wait_for(lambda: source.connected and server.streams, what="a stream over https")
    source.pause()
    stopped = defer.maybeDeferred(source.stopService)
    await wait_for(lambda: stopped.called, timeout=5, what="the stop of a held https stream")
    assert not source.connected


@pytest_twisted.ensureDeferred
async def test_a_redirect_to_another_origin_does_not_carry_the_sources_own_headers(daemon, harness: Harness) -> None:
    """An API key in a source's ``headers`` goes to its upstream only: an upstream that redirects to another origin
    (another port here; a plain-http one alike) gets the request without it, as Authorization and Cookie."""
    from twisted.web import resource, server as web_server

    target = harness.server()
    target.publish(payload("behind a redirect"))

    class Elsewhere(resource.Resource):
        isLeaf = True

        def render_GET(self, request: web_server.Request) -> bytes:
            request.setResponseCode(302)
            request.setHeader(b"Location", target.url("/events").encode())
            return b"moved\n"

    redirector = reactor.listenTCP(0, web_server.Site(Elsewhere()), interface="127.0.0.1")
    try:
        service = await daemon(f"""
sources:
  Src:
    type: sse
    receiver.url: "http://127.0.0.1:{redirector.getHost().port}/start"
    stream: Src
    schema: "param1 string"
    headers: "X-Api-Key:a-key-for-the-first-origin-only,X-Tenant:acme"
sinks:
  Out: {{type: log, stream: Src}}
""")
        await wait_for(lambda: service.sources["Src"].counters["events_in"] == 1, what="the event behind the redirect")
        (seen,) = target.seen
        assert "x-api-key" not in seen.headers and "x-tenant" not in seen.headers, seen.headers
        assert seen.headers["accept"] == "text/event-stream", "the request is otherwise the same"
    finally:
        await redirector.stopListening()
